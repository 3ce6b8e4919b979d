//! The `RuntimeDefault` seccomp profile: Docker's and containerd's default profile, shipped
//! as data and turned into the OCI `linux.seccomp` section for one container.
//!
//! `seccomp_default.json` is moby's published `profiles/seccomp/default.json`
//! (github.com/moby/profiles, Apache-2.0), unchanged. Its rules carry conditions that
//! containerd and Docker resolve per container, and so does [`runtime_default`]:
//! - `includes.caps`: the rule holds only if the container has every listed capability
//!   (`unshare`, `mount`, `setns` need CAP_SYS_ADMIN, `ptrace` of others CAP_SYS_PTRACE, ...);
//! - `excludes.caps`: the rule is dropped if it has any of them. This is how `clone` gets
//!   its flag mask (no CLONE_NEWNS/NEWUTS/NEWIPC/NEWUSER/NEWPID/NEWNET/NEWCGROUP without
//!   CAP_SYS_ADMIN) and `clone3`, whose flags sit in memory a filter cannot read, fails
//!   with ENOSYS so that libc falls back to `clone`;
//! - `includes.arches`/`excludes.arches` (Go's architecture names) and `includes.minKernel`;
//! - `archMap`: the native architecture and its compat ones (x86 and x32 on x86_64).

use serde::Deserialize;
use serde_json::{Value, json};

/// moby's default profile, as published.
const MOBY_DEFAULT: &str = include_str!("seccomp_default.json");

/// Why a profile could not be turned into an OCI section.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("parsing the default seccomp profile: {0}")]
    Parse(#[from] serde_json::Error),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "nullable")]
    includes: Filter,
    #[serde(default, deserialize_with = "nullable")]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "nullable")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default, deserialize_with = "nullable")]
    value_two: u64,
    op: String,
}

/// A field that may be missing or `null` (moby's Go encoder writes empty lists as `null`).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the profile's conditions are resolved against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The container's capabilities (its bounding set).
    pub caps: &'a [String],
    /// Go's name of the architecture (`amd64`, `arm64`, ...), as the profile's `arches`.
    pub arch: &'a str,
    /// The kernel's version (major, minor).
    pub kernel: (u32, u32),
}

impl Target<'_> {
    /// libseccomp's name of the native architecture, as the profile's `archMap`.
    fn seccomp_arch(&self) -> &'static str {
        match self.arch {
            "amd64" => "SCMP_ARCH_X86_64",
            "386" | "x86" => "SCMP_ARCH_X86",
            "arm64" => "SCMP_ARCH_AARCH64",
            "arm" => "SCMP_ARCH_ARM",
            "ppc64le" => "SCMP_ARCH_PPC64LE",
            "s390x" => "SCMP_ARCH_S390X",
            "riscv64" => "SCMP_ARCH_RISCV64",
            "loong64" => "SCMP_ARCH_LOONGARCH64",
            "mips64le" => "SCMP_ARCH_MIPSEL64",
            _ => "SCMP_ARCH_NATIVE",
        }
    }
}

/// Go's name of the architecture skiff runs on, which the profile's `arches` use.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        other => other,
    }
}

/// The running kernel's (major, minor); (0, 0) when unknown, which drops `minKernel` rules.
pub fn host_kernel() -> (u32, u32) {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| parse_kernel(&u.release().to_string_lossy()))
        .unwrap_or((0, 0))
}

fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The RuntimeDefault profile for a container with capabilities `caps` on this host.
pub fn runtime_default(caps: &[String]) -> Result<Value, SeccompError> {
    translate(
        MOBY_DEFAULT,
        &Target {
            caps,
            arch: host_arch(),
            kernel: host_kernel(),
        },
    )
}

/// Turns a profile in Docker's format into an OCI `linux.seccomp` section for `target`.
pub fn translate(profile: &str, target: &Target<'_>) -> Result<Value, SeccompError> {
    let p: Profile = serde_json::from_str(profile)?;
    let native = target.seccomp_arch();
    let architectures: Vec<String> = p
        .arch_map
        .iter()
        .filter(|a| a.architecture == native)
        .flat_map(|a| {
            std::iter::once(a.architecture.clone()).chain(a.sub_architectures.iter().cloned())
        })
        .collect();
    let has = |c: &String| target.caps.contains(c);
    let mut syscalls = Vec::new();
    for rule in &p.syscalls {
        let inc = &rule.includes;
        let exc = &rule.excludes;
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == target.arch) {
            continue;
        }
        if exc.arches.iter().any(|a| a == target.arch) {
            continue;
        }
        if !inc.caps.iter().all(has) || exc.caps.iter().any(has) {
            continue;
        }
        if inc
            .min_kernel
            .as_deref()
            .and_then(parse_kernel)
            .is_some_and(|min| target.kernel < min)
        {
            continue;
        }
        let mut out = json!({"names": rule.names, "action": rule.action});
        if let Some(e) = rule.errno_ret {
            out["errnoRet"] = json!(e);
        }
        if !rule.args.is_empty() {
            out["args"] = rule
                .args
                .iter()
                .map(|a| json!({"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}))
                .collect();
        }
        syscalls.push(out);
    }
    let mut section = json!({"defaultAction": p.default_action, "syscalls": syscalls});
    if let Some(e) = p.default_errno_ret {
        section["defaultErrnoRet"] = json!(e);
    }
    if !architectures.is_empty() {
        section["architectures"] = json!(architectures);
    }
    Ok(section)
}

/// Adapts an OCI seccomp section to libcontainer 0.7, which reads the operands of
/// `SCMP_CMP_MASKED_EQ` the other way round from the OCI spec and runc (spec: `value` is
/// the mask, `valueTwo` the value it must equal; libcontainer masks with `valueTwo`).
/// Unadapted, Docker's `clone` rule `flags & 0x7E020000 == 0` becomes `flags & 0 ==
/// 0x7E020000` and no process could fork. Both the container's init and `skiff exec`
/// load the filter through libcontainer, so the swapped form is what `config.json` holds.
pub fn for_libcontainer(mut section: Value) -> Value {
    for rule in section["syscalls"].as_array_mut().into_iter().flatten() {
        for arg in rule["args"].as_array_mut().into_iter().flatten() {
            if arg["op"] == "SCMP_CMP_MASKED_EQ" {
                let mask = arg["value"].take();
                let value = arg.get("valueTwo").cloned().unwrap_or(json!(0));
                arg["value"] = value;
                arg["valueTwo"] = mask;
            }
        }
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::DEFAULT_CAPS;

    /// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
    const NAMESPACE_FLAGS: u64 = 0x7E02_0000;

    fn caps(extra: &[&str]) -> Vec<String> {
        DEFAULT_CAPS
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    fn profile(caps: &[String], arch: &str) -> Value {
        translate(
            MOBY_DEFAULT,
            &Target {
                caps,
                arch,
                kernel: (6, 1),
            },
        )
        .unwrap()
    }

    /// Rules naming `name`: (action, args, errnoRet).
    fn rules_for<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .collect()
    }

    fn allowed_unconditionally(p: &Value, name: &str) -> bool {
        rules_for(p, name)
            .iter()
            .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
    }

    #[test]
    fn default_caps_get_the_clone_mask_and_clone3_enosys() {
        let p = profile(&caps(&[]), "amd64");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(
            clone[0]["args"],
            json!([{"index": 0, "value": NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(
            (clone3[0]["action"].as_str(), clone3[0]["errnoRet"].as_u64()),
            (Some("SCMP_ACT_ERRNO"), Some(38))
        );
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "bpf",
            "kexec_load",
            "init_module",
            "reboot",
            "keyctl",
            "open_by_handle_at",
        ] {
            assert!(rules_for(&p, denied).is_empty(), "{denied} allowed");
        }
        // CAP_SYS_CHROOT is a default capability: chroot comes with it.
        for allowed in [
            "read",
            "execve",
            "fork",
            "wait4",
            "socket",
            "arch_prctl",
            "chroot",
        ] {
            assert!(!rules_for(&p, allowed).is_empty(), "{allowed} refused");
        }
    }

    #[test]
    fn capabilities_open_their_syscall_groups() {
        let p = profile(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]), "amd64");
        for name in [
            "clone",
            "clone3",
            "unshare",
            "setns",
            "mount",
            "ptrace",
            "process_vm_readv",
        ] {
            assert!(
                allowed_unconditionally(&p, name),
                "{name} not allowed with the capability"
            );
        }
        // No ENOSYS for clone3 and no mask on clone with CAP_SYS_ADMIN.
        assert!(
            rules_for(&p, "clone3")
                .iter()
                .all(|r| r["action"] == "SCMP_ACT_ALLOW")
        );
        assert!(
            rules_for(&p, "clone")
                .iter()
                .all(|r| r.get("args").is_none())
        );
        // Dropping a default capability drops its syscall.
        let without_chroot: Vec<String> = caps(&[])
            .into_iter()
            .filter(|c| c != "CAP_SYS_CHROOT")
            .collect();
        assert!(rules_for(&profile(&without_chroot, "amd64"), "chroot").is_empty());
    }

    #[test]
    fn arches_and_kernel_versions_select_rules() {
        let arm = profile(&caps(&[]), "arm64");
        assert_eq!(
            arm["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        assert!(rules_for(&arm, "arch_prctl").is_empty());
        assert!(!rules_for(&arm, "arm_fadvise64_64").is_empty());
        let old = translate(
            MOBY_DEFAULT,
            &Target {
                caps: &caps(&[]),
                arch: "amd64",
                kernel: (4, 4),
            },
        )
        .unwrap();
        assert!(rules_for(&old, "process_vm_readv").is_empty());
        assert!(!rules_for(&profile(&caps(&[]), "amd64"), "process_vm_readv").is_empty());
        assert_eq!(parse_kernel("6.18.44-fc-v1147"), Some((6, 18)));
    }

    #[test]
    fn masked_eq_operands_are_swapped_for_libcontainer_only() {
        let p = for_libcontainer(profile(&caps(&[]), "amd64"));
        let clone = rules_for(&p, "clone");
        assert_eq!(clone[0]["args"][0]["value"], 0);
        assert_eq!(clone[0]["args"][0]["valueTwo"], NAMESPACE_FLAGS);
        // Other comparisons keep their operands.
        let socket = rules_for(&p, "socket");
        assert!(
            socket
                .iter()
                .any(|r| r["args"][0]["value"] == 38 && r["args"][0]["op"] == "SCMP_CMP_LT")
        );
        // And it still parses as an OCI section.
        let _: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).unwrap();
    }
}
