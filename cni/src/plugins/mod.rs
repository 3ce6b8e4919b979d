//! skiff's plugins; each module holds one plugin's ADD, DEL, CHECK, GC and STATUS.

pub mod bridge;
pub mod host_local;
pub mod portmap;

use std::time::Duration;

use sha2::{Digest, Sha512};

use crate::invoke::{ProcessRunner, Runner, find_plugin};
use crate::skel::{CmdArgs, Command};
use crate::types::{CniResult, Code, ErrorResult};

/// iptables' limit on chain names, as the reference plugins use it.
const MAX_CHAIN_LENGTH: usize = 28;

/// The reference plugins' per-container chain name:
/// `CNI-<prefix><hex sha512(name + id)>` cut to 28 characters.
pub fn chain_name(network: &str, container_id: &str, prefix: &str) -> String {
    let hash = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut s = format!("CNI-{prefix}{hex}");
    s.truncate(MAX_CHAIN_LENGTH);
    s
}

/// The reference plugins' rule comment: `name: "<net>" id: "<id>"`.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

/// Runs the delegated (IPAM) plugin `kind` from `CNI_PATH` with the same
/// stdin and environment, as the reference `ipam.Exec*` helpers do; the
/// delegate's error code is passed on unchanged.
pub fn delegate(
    kind: &str,
    args: &CmdArgs,
    command: Command,
) -> Result<Option<CniResult>, ErrorResult> {
    let binary = find_plugin(kind, &args.path).ok_or_else(|| {
        ErrorResult::new(
            Code::InvalidNetworkConfig,
            format!("failed to find plugin {kind:?} in path {:?}", args.path),
        )
    })?;
    let cni_args: Vec<String> = args.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cni_path = std::env::join_paths(&args.path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let env = vec![
        ("CNI_COMMAND".to_string(), command.as_str().to_string()),
        ("CNI_CONTAINERID".to_string(), args.container_id.clone()),
        ("CNI_NETNS".to_string(), args.netns.clone()),
        ("CNI_IFNAME".to_string(), args.ifname.clone()),
        ("CNI_ARGS".to_string(), cni_args.join(";")),
        ("CNI_PATH".to_string(), cni_path),
    ];
    let out = ProcessRunner::default()
        .run(&binary, &env, &args.stdin, Duration::from_secs(60))
        .map_err(|e| {
            ErrorResult::new(Code::Internal, format!("running IPAM plugin {kind}"))
                .with_details(e.to_string())
        })?;
    if !out.success {
        return Err(
            serde_json::from_slice::<ErrorResult>(&out.stdout).unwrap_or_else(|_| {
                ErrorResult::new(Code::Internal, format!("IPAM plugin {kind} failed"))
                    .with_details(String::from_utf8_lossy(&out.stdout).into_owned())
            }),
        );
    }
    if command != Command::Add {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        ErrorResult::new(
            Code::DecodingFailure,
            format!("decoding result of IPAM plugin {kind}"),
        )
        .with_details(e.to_string())
    })?;
    CniResult::from_value(v).map(Some).map_err(|e| {
        ErrorResult::new(
            Code::DecodingFailure,
            format!("decoding result of IPAM plugin {kind}"),
        )
        .with_details(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_reference() {
        let c = chain_name("mynet", "cid", "");
        assert_eq!(c.len(), 28);
        assert!(c.starts_with("CNI-"));
        assert!(chain_name("mynet", "cid", "DN-").starts_with("CNI-DN-"));
        // sha512("mynetcid") starts with these hex digits (computed with sha512sum).
        let expected = std::process::Command::new("sh")
            .args(["-c", "printf %s mynetcid | sha512sum"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout)[..24].to_string());
        if let Ok(hex) = expected {
            assert_eq!(&c[4..], hex);
        }
        assert_eq!(comment("n", "c"), r#"name: "n" id: "c""#);
    }
}
