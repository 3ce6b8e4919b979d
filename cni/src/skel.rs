//! The plugin side of the protocol: read `CNI_*` variables and the stdin
//! config, dispatch to a [`Plugin`], print the result or the spec's error JSON
//! and pick the exit code. Plugin binaries are one line around [`main`].

use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::types::{
    CURRENT_VERSION, CniResult, Code, ErrorResult, SUPPORTED_VERSIONS, VersionInfo,
    version_at_least,
};

/// The verbs of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach; must be idempotent.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Drop everything not in the valid attachments (1.1.0).
    Gc,
    /// Report readiness (1.1.0).
    Status,
}

impl Command {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// Everything a plugin gets from its caller.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, GC, STATUS).
    pub container_id: String,
    /// `CNI_NETNS`; may be empty for DEL.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
    /// The raw stdin config (needed unchanged for delegation to IPAM).
    pub stdin: Vec<u8>,
    /// The config's `cniVersion`.
    pub version: String,
}

/// A plugin: one function per verb. VERSION is answered by the skeleton.
pub trait Plugin {
    /// Versions the plugin speaks.
    fn supported_versions(&self) -> &[&str] {
        SUPPORTED_VERSIONS
    }
    /// ADD: returns the result to print.
    fn add(&self, args: &CmdArgs) -> Result<CniResult, ErrorResult>;
    /// DEL: idempotent.
    fn del(&self, args: &CmdArgs) -> Result<(), ErrorResult>;
    /// CHECK.
    fn check(&self, args: &CmdArgs) -> Result<(), ErrorResult>;
    /// GC with the valid attachments from the config.
    fn gc(&self, args: &CmdArgs) -> Result<(), ErrorResult>;
    /// STATUS.
    fn status(&self, args: &CmdArgs) -> Result<(), ErrorResult>;
}

/// Runs `plugin` with the process environment and stdin; returns the exit code.
pub fn main(plugin: &dyn Plugin) -> i32 {
    let mut stdin = Vec::new();
    // A read failure leaves stdin empty, which then fails as a decoding error.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = run(plugin, &|k| std::env::var(k).ok(), &stdin, &mut out);
    let _ = out.flush();
    code
}

/// The testable core of [`main`]: `env` looks variables up, `out` gets the JSON.
pub fn run(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    out: &mut dyn Write,
) -> i32 {
    // Catching panics keeps the promise of always answering with error JSON.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(plugin, env, stdin)
    }))
    .unwrap_or_else(|_| Err(ErrorResult::new(Code::Internal, "plugin panicked")));
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
            1
        }
    }
}

fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, ErrorResult> {
    let get = |k: &str| env(k).unwrap_or_default();
    let cmd_str = get("CNI_COMMAND");
    let command = match Command::parse(&cmd_str) {
        Some(c) => c,
        None if cmd_str.is_empty() => {
            return Err(ErrorResult::new(
                Code::InvalidEnvironment,
                "required env variables [CNI_COMMAND] missing",
            ));
        }
        None => {
            return Err(ErrorResult::new(
                Code::InvalidEnvironment,
                format!("unknown CNI_COMMAND: {cmd_str}"),
            ));
        }
    };
    if command == Command::Version {
        // The config may be empty here; answer in its version when there is one.
        let v = serde_json::from_slice::<Value>(stdin).ok();
        let asked = v
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        let info = VersionInfo {
            cni_version: asked.unwrap_or(CURRENT_VERSION).to_string(),
            supported_versions: plugin
                .supported_versions()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        return Ok(Some(serde_json::to_value(info).unwrap_or_default()));
    }
    let required: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status | Command::Version => &["CNI_PATH"],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| get(k).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(ErrorResult::new(
            Code::InvalidEnvironment,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let container_id = get("CNI_CONTAINERID");
    let ifname = get("CNI_IFNAME");
    if !container_id.is_empty() && !valid_container_id(&container_id) {
        return Err(ErrorResult::new(
            Code::InvalidEnvironment,
            "invalid characters in containerID",
        )
        .with_details(container_id));
    }
    if !ifname.is_empty()
        && let Err(why) = validate_ifname(&ifname)
    {
        return Err(ErrorResult::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_IFNAME: {why}"),
        )
        .with_details(ifname));
    }
    let config: Value = serde_json::from_slice(stdin).map_err(|e| {
        ErrorResult::new(
            Code::DecodingFailure,
            "failed to decode network configuration",
        )
        .with_details(e.to_string())
    })?;
    if !config.is_object() {
        return Err(ErrorResult::new(
            Code::DecodingFailure,
            "network configuration is not a JSON object",
        ));
    }
    let version = match config.get("cniVersion") {
        None => "0.1.0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ErrorResult::new(
                Code::DecodingFailure,
                "cniVersion must be a string",
            ));
        }
    };
    if !plugin.supported_versions().contains(&version.as_str()) {
        return Err(ErrorResult::new(
            Code::IncompatibleVersion,
            format!(
                "incompatible CNI versions; config is \"{version}\", plugin supports {:?}",
                plugin.supported_versions()
            ),
        ));
    }
    let min = match command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min
        && !version_at_least(&version, min)
    {
        return Err(ErrorResult::new(
            Code::IncompatibleVersion,
            format!(
                "config version \"{version}\" does not allow {}",
                command.as_str()
            ),
        ));
    }
    let args = CmdArgs {
        command,
        container_id,
        netns: get("CNI_NETNS"),
        ifname,
        args: parse_cni_args(&get("CNI_ARGS"))?,
        path: std::env::split_paths(&get("CNI_PATH"))
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        stdin: stdin.to_vec(),
        version: version.clone(),
    };
    match command {
        Command::Add => plugin.add(&args).map(|r| Some(r.to_value(&version))),
        Command::Del => plugin.del(&args).map(|()| None),
        Command::Check => plugin.check(&args).map(|()| None),
        Command::Gc => plugin.gc(&args).map(|()| None),
        Command::Status => plugin.status(&args).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// `K1=V1;K2=V2` into pairs; a part without `=` is invalid (code 4).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, ErrorResult> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    ErrorResult::new(
                        Code::InvalidEnvironment,
                        format!("invalid CNI_ARGS pair {p:?}"),
                    )
                })
        })
        .collect()
}

/// The reference skeleton's rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface name rules (what `dev_valid_name` accepts).
pub fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("contains / : or whitespace");
    }
    Ok(())
}

/// Decodes a plugin's typed config, mapping syntax errors to code 6 and
/// shape errors (missing or mistyped fields) to code 7.
pub fn decode_config<T: serde::de::DeserializeOwned>(stdin: &[u8]) -> Result<T, ErrorResult> {
    serde_json::from_slice(stdin).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => Code::InvalidNetworkConfig,
            _ => Code::DecodingFailure,
        };
        ErrorResult::new(code, "invalid network configuration").with_details(e.to_string())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Runs a plugin with the given env and stdin; returns (exit code, stdout JSON).
    pub(crate) fn call(plugin: &dyn Plugin, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let code = run(plugin, &|k| env.get(k).cloned(), stdin.as_bytes(), &mut out);
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out).expect("stdout is JSON")
        };
        (code, v)
    }

    struct Nop;
    impl Plugin for Nop {
        fn add(&self, a: &CmdArgs) -> Result<CniResult, ErrorResult> {
            Ok(CniResult::new(&a.version))
        }
        fn del(&self, _: &CmdArgs) -> Result<(), ErrorResult> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<(), ErrorResult> {
            Ok(())
        }
        fn gc(&self, _: &CmdArgs) -> Result<(), ErrorResult> {
            panic!("boom")
        }
        fn status(&self, _: &CmdArgs) -> Result<(), ErrorResult> {
            Ok(())
        }
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/bin"),
    ];

    #[test]
    fn error_codes() {
        let cfg = r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        assert_eq!(call(&Nop, ADD, cfg).0, 0);
        let (rc, v) = call(&Nop, &ADD[1..], cfg);
        assert_eq!((rc, v["code"].as_u64()), (1, Some(4)));
        let (_, v) = call(&Nop, &ADD[..4], cfg);
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_PATH"));
        let (_, v) = call(&Nop, &[("CNI_COMMAND", "FROB")], cfg);
        assert_eq!(v["code"], 4);
        let (_, v) = call(&Nop, ADD, "{not json");
        assert_eq!(v["code"], 6);
        let (_, v) = call(&Nop, ADD, r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#);
        assert_eq!(v["code"], 1);
        let mut bad_if = ADD.to_vec();
        bad_if[3] = ("CNI_IFNAME", "eth0/evil");
        assert_eq!(call(&Nop, &bad_if, cfg).1["code"], 4);
        let mut bad_id = ADD.to_vec();
        bad_id[1] = ("CNI_CONTAINERID", "../x");
        assert_eq!(call(&Nop, &bad_id, cfg).1["code"], 4);
        let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/bin")];
        // GC needs 1.1.0 ...
        assert_eq!(call(&Nop, &gc, cfg).1["code"], 1);
        // ... and a panic becomes error JSON, not a crash.
        let (rc, v) = call(&Nop, &gc, r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#);
        assert_eq!((rc, v["code"].as_u64()), (1, Some(999)));
    }

    #[test]
    fn version_verb() {
        let (rc, v) = call(
            &Nop,
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"1.0.0"}"#,
        );
        assert_eq!(rc, 0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "1.1.0")
        );
    }

    #[test]
    fn cni_args() {
        assert_eq!(parse_cni_args("A=1;B=2").unwrap().len(), 2);
        assert_eq!(parse_cni_args("").unwrap().len(), 0);
        assert_eq!(parse_cni_args("A").unwrap_err().code, 4);
    }
}
