//! What a container runs: command, args, environment and working directory,
//! merged from the pod spec and the image config the way the kubelet does.

use std::collections::HashMap;

use images::ImageConfig;
use k8s_openapi::api::core::v1::Container;

/// The process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

/// Merges image defaults with the container spec.
///
/// Kubernetes' rules: `command` replaces the image's Entrypoint (and drops its
/// Cmd), `args` replaces Cmd; `env` (already resolved, see `pod::env`)
/// overrides the image's variables by name; `$(VAR)` in command and args
/// expands from the container's variables (`$$` escapes), unknown references
/// stay as written.
pub fn resolve(
    c: &Container,
    image: &ImageConfig,
    env_in: &[(String, String)],
) -> Result<Process, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = env.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k.to_string(), v.to_string());
    }
    for (k, v) in env_in {
        set(&mut env, k.clone(), v.clone());
    }
    let vars: HashMap<String, String> = env_in.iter().cloned().collect();
    let expand_all = |v: &Vec<String>| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    let args = match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut a = expand_all(cmd);
            a.extend(expand_all(args.as_ref().unwrap_or(&Vec::new())));
            a
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut a = image.entrypoint.clone();
            a.extend(expand_all(args));
            a
        }
        _ => {
            let mut a = image.entrypoint.clone();
            a.extend(image.cmd.iter().cloned());
            a
        }
    };
    if args.is_empty() {
        return Err("no command specified: the image has no Entrypoint or Cmd and the container has no command".into());
    }
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| image.working_dir.clone());
    Ok(Process {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
    })
}

/// Longest single argument or environment string `execve` takes (`MAX_ARG_STRLEN`, 32 pages).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Why `execve` would refuse `args` and `env` with `E2BIG`, if it would: a string longer than
/// `MAX_ARG_STRLEN`, or strings and pointers together over a quarter of the stack limit
/// `stack_limit` (the process inherits skiffd's `RLIMIT_STACK`), as the kernel counts
/// (`fs/exec.c`). Found before the container is created, the start fails as a missing
/// executable does (`StartError`, exit code 128), not as a process that ran and failed.
pub fn exec_too_long(args: &[String], env: &[String], stack_limit: u64) -> Option<String> {
    let argv0 = args.first().map(String::as_str).unwrap_or_default();
    if let Some(s) = args
        .iter()
        .chain(env)
        .find(|s| s.len() + 1 > MAX_ARG_STRLEN)
    {
        let what = if args.contains(s) {
            "an argument"
        } else {
            "an environment variable"
        };
        return Some(format!(
            "exec: {argv0:?}: argument list too long: {what} of {} bytes (at most {} each)",
            s.len(),
            MAX_ARG_STRLEN - 1
        ));
    }
    let ptr = std::mem::size_of::<usize>();
    let total: usize = args.iter().chain(env).map(|s| s.len() + 1 + ptr).sum();
    // The kernel's bounds: at most 3/4 of the default 8 MiB stack (an unlimited stack too),
    // at least 32 pages whatever the stack limit.
    let limit = (stack_limit / 4).min(6 << 20).max(MAX_ARG_STRLEN as u64);
    (total as u64 > limit).then(|| {
        format!("exec: {argv0:?}: argument list too long: {total} bytes of arguments and environment (at most {limit})")
    })
}

// moved to kube/expand.rs; re-exported for callers not yet updated
pub use crate::kube::expand::expand;

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) against
/// the container's `/etc/passwd` and `/etc/group` (their contents, read safely with
/// `rootfs_file`).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == u)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == u)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .ok_or_else(|| {
                format!("unable to find user {u}: no matching entries in passwd file")
            })?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/app".into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        let p = resolve(&container("name: c"), &img, &[]).unwrap();
        assert_eq!(p.args, vec!["/entry", "default"]);
        assert_eq!(p.cwd, "/app");
        let p = resolve(&container("name: c\nargs: [x]"), &img, &[]).unwrap();
        assert_eq!(p.args, vec!["/entry", "x"]);
        let p = resolve(&container("name: c\ncommand: [sh]"), &img, &[]).unwrap();
        assert_eq!(p.args, vec!["sh"]);
        let p = resolve(
            &container("name: c\ncommand: [sh]\nargs: [-c, x]\nworkingDir: /w"),
            &img,
            &[],
        )
        .unwrap();
        assert_eq!(p.args, vec!["sh", "-c", "x"]);
        assert_eq!(p.cwd, "/w");
        let empty = ImageConfig::default();
        assert!(
            resolve(&container("name: c"), &empty, &[])
                .unwrap_err()
                .contains("no command")
        );
    }

    #[test]
    fn env_overrides_the_image_and_expands_in_command() {
        let c = container("name: c\ncommand: [echo, '$(B)', '$$(B)', '$(PATH)']");
        let env = vec![
            ("A".to_string(), "spec".to_string()),
            ("B".to_string(), "b".to_string()),
        ];
        let p = resolve(&c, &image(), &env).unwrap();
        assert_eq!(p.env, vec!["PATH=/bin", "A=spec", "B=b"]);
        // Image variables are not used for expansion, as on a kubelet.
        assert_eq!(p.args, vec!["echo", "b", "$(B)", "$(PATH)"]);
    }

    #[test]
    fn command_lines_execve_would_refuse_are_found() {
        let short = vec!["sh".to_string(), "-c".to_string(), "true".to_string()];
        assert_eq!(exec_too_long(&short, &["A=b".to_string()], 8 << 20), None);
        let long_arg = vec!["sh".to_string(), "x".repeat(MAX_ARG_STRLEN)];
        let e = exec_too_long(&long_arg, &[], 8 << 20).unwrap();
        assert!(
            e.contains("exec: \"sh\": argument list too long: an argument"),
            "{e}"
        );
        let long_env = vec![format!("A={}", "x".repeat(MAX_ARG_STRLEN))];
        assert!(
            exec_too_long(&short, &long_env, 8 << 20)
                .unwrap()
                .contains("environment variable")
        );
        // Many strings, each short: the total counts against a quarter of the stack limit.
        let many: Vec<String> = (0..30_000).map(|i| format!("arg-{i:060}")).collect();
        assert!(
            exec_too_long(&many, &[], 8 << 20)
                .unwrap()
                .contains("bytes of arguments and environment")
        );
        assert_eq!(exec_too_long(&many, &[], 64 << 20), None);
        assert!(exec_too_long(&vec!["y".repeat(100); 80_000], &[], u64::MAX).is_some());
    }

    #[test]
    fn users_resolve_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let read = |p| {
            let d = super::super::rootfs_file::read(dir.path(), p, 1 << 20)
                .unwrap()
                .unwrap();
            String::from_utf8(d).unwrap()
        };
        let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
        assert_eq!(resolve_user("", &passwd, &group).unwrap(), (0, 0));
        assert_eq!(
            resolve_user("nobody", &passwd, &group).unwrap(),
            (65534, 65534)
        );
        assert_eq!(
            resolve_user("1000:50", &passwd, &group).unwrap(),
            (1000, 50)
        );
        assert_eq!(
            resolve_user("65534:staff", &passwd, &group).unwrap(),
            (65534, 50)
        );
        assert!(
            resolve_user("ghost", &passwd, &group)
                .unwrap_err()
                .contains("unable to find user ghost")
        );
    }
}
