//! Root integration tests for the holes of issue 13 closed in the runtime: containers cannot
//! rewrite their own cgroup limits nor see the host's cgroup tree, the RuntimeDefault seccomp
//! profile refuses new namespaces through `clone` as well as `unshare`, and
//! `shareProcessNamespace` puts a pod's containers in one PID namespace.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Node, pod_yaml, require_root};
use serde_json::Value;

/// A pod whose single container `main` runs `script`, with extra YAML under the container
/// (`cextra`, indented 4) and the spec (`sextra`, indented 2).
fn pod_with(name: &str, script: &str, cextra: &str, sextra: &str) -> String {
    let mut y = pod_yaml(name, script);
    for l in cextra.lines() {
        y.push_str(&format!("    {l}\n"));
    }
    for l in sextra.lines() {
        y.push_str(&format!("  {l}\n"));
    }
    y
}

/// `skiff exec POD [-c C] -- sh -c SCRIPT`: (exit code, stdout + stderr).
fn exec(node: &Node, pod: &str, c: Option<&str>, script: &str) -> (i32, String) {
    let mut args = vec!["exec", pod];
    if let Some(c) = c {
        args.extend(["-c", c]);
    }
    args.extend(["--", "sh", "-c", script]);
    let out = node.skiff(&args);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn exec_ok(node: &Node, pod: &str, c: Option<&str>, script: &str) -> String {
    let (code, out) = exec(node, pod, c, script);
    assert_eq!(code, 0, "exec {script:?} in {pod} failed: {out}");
    out
}

fn container_id(pod: &Value, c: &str) -> String {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == c))
        .and_then(|s| s["containerID"].as_str())
        .and_then(|s| s.strip_prefix("skiff://"))
        .unwrap_or_else(|| panic!("no containerID for {c} in {pod}"))
        .to_string()
}

/// Removes every manifest and checks that skiff left nothing behind.
fn remove_all_and_check_leftovers(node: &Node) {
    for e in std::fs::read_dir(&node.manifests).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    node.wait_for("every pod to be removed", Duration::from_secs(60), || {
        node.pods().is_empty().then_some(())
    });
    let mut last = Vec::new();
    let clean = (0..100).any(|_| {
        last = node.leftovers();
        if last.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(clean, "left behind: {last:?}\n{}", node.log_tail(40));
}

fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The host path of the container's cgroup file `file` of `controller` (v1) or the unified one.
fn host_cgroup_file(pod: &Value, c: &str, controller: &str, file: &str) -> PathBuf {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let rel = format!("skiff/pod{uid}/{}", container_id(pod, c));
    let base = Path::new("/sys/fs/cgroup");
    if unified() {
        base.join(rel).join(file)
    } else {
        base.join(controller).join(rel).join(file)
    }
}

/// Issue 13 item 2: a container's cgroupfs is read-only and shows its own cgroup only, so it
/// can neither lift its memory or pids limit nor reach the host's hierarchies (`name=systemd`).
#[test]
#[ignore = "needs root"]
fn containers_cannot_rewrite_their_cgroup_limits_nor_see_the_hosts_tree() {
    require_root();
    let mut node = Node::new();
    node.extra_flags(&["--pod-pids-limit", "300"]);
    node.start_daemon();
    node.import_image();
    node.write_manifest(
        "cg.yaml",
        &pod_with(
            "cg",
            "exec sleep 100000",
            "resources: {limits: {memory: 32Mi}}",
            "",
        ),
    );
    let pod = node.wait_running("cg");
    let (mem_file, mem_in, pids_in) = if unified() {
        (
            "memory.max",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/pids.max",
        )
    } else {
        (
            "memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/pids/pids.max",
        )
    };
    // The container reads its own limits: its cgroup is the root of what it sees.
    assert_eq!(
        exec_ok(&node, "cg", None, &format!("cat {mem_in}")).trim(),
        "33554432"
    );
    assert_eq!(
        exec_ok(&node, "cg", None, &format!("cat {pids_in}")).trim(),
        "300"
    );
    for (file, value) in [(mem_in, "-1"), (mem_in, "max"), (pids_in, "max")] {
        let (code, out) = exec(&node, "cg", None, &format!("echo {value} > {file}"));
        assert_ne!(code, 0, "writing {value} to {file} succeeded");
        assert!(out.contains("Read-only file system"), "{file}: {out}");
    }
    // Not one writable place in the whole cgroupfs, name=systemd included.
    let (code, out) = exec(
        &node,
        "cg",
        None,
        "for d in /sys/fs/cgroup /sys/fs/cgroup/*/; do mkdir $d/escape 2>&1 && echo WROTE $d; done; true",
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("WROTE"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    // Only its own cgroup: no skiff/ tree, no other pod, no host cgroups below the root,
    // and no hierarchy that holds no cgroup of the container (the host's name=systemd).
    let listing = exec_ok(
        &node,
        "cg",
        None,
        "find /sys/fs/cgroup -mindepth 1 -type d | sort",
    );
    assert!(!listing.contains("skiff"), "{listing}");
    if !unified() {
        let subdirs = exec_ok(&node, "cg", None, "find /sys/fs/cgroup -mindepth 2 -type d");
        assert!(
            subdirs.trim().is_empty(),
            "cgroups below the container's own: {subdirs}"
        );
        let (code, out) = exec(&node, "cg", None, "ls /sys/fs/cgroup/systemd");
        assert_ne!(code, 0, "name=systemd visible: {out}");
    }
    // The limits on the host are untouched.
    let host = std::fs::read_to_string(host_cgroup_file(&pod, "main", "memory", mem_file)).unwrap();
    assert_eq!(host.trim(), "33554432");
    let host = std::fs::read_to_string(host_cgroup_file(&pod, "main", "pids", "pids.max")).unwrap();
    assert_eq!(host.trim(), "300");
    // A privileged container keeps a writable cgroupfs, as on Kubernetes.
    node.write_manifest(
        "priv.yaml",
        &pod_with(
            "priv",
            "exec sleep 100000",
            "securityContext: {privileged: true}",
            "",
        ),
    );
    node.wait_running("priv");
    exec_ok(
        &node,
        "priv",
        None,
        &format!("test -w {mem_in} && grep -q cgroup /proc/mounts"),
    );
    let mounts = exec_ok(&node, "priv", None, "grep ' /sys/fs/cgroup' /proc/mounts");
    assert!(mounts.lines().any(|l| l.contains(" rw,")), "{mounts}");
    remove_all_and_check_leftovers(&node);
}

/// A static test program: for each argument, `clone` (or `clone3`) with those namespace
/// flags, and one line `<arg>: ok` or `<arg>: <strerror>`.
const CLONE_TEST_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        long flags = 0, r;
        if (strcmp(argv[i], "user") == 0) flags = CLONE_NEWUSER;
        if (strcmp(argv[i], "user+mnt") == 0) flags = CLONE_NEWUSER | CLONE_NEWNS;
        if (strcmp(argv[i], "clone3") == 0) {
            struct clone_args a;
            memset(&a, 0, sizeof a);
            a.exit_signal = SIGCHLD;
            r = syscall(SYS_clone3, &a, sizeof a);
        } else {
            r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
        }
        if (r == 0) _exit(0);
        if (r < 0) {
            printf("%s: %s\n", argv[i], strerror(errno));
        } else {
            waitpid(r, 0, 0);
            printf("%s: ok\n", argv[i]);
        }
    }
    return 0;
}
"#;

/// Builds the clone test program into a fresh directory (for a hostPath volume).
fn build_clone_test(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("clonetest");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let src = dir.join("clonetest.c");
    std::fs::write(&src, CLONE_TEST_C).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(bin_dir.join("clonetest"))
        .arg(&src)
        .output()
        .expect("running cc (a C compiler with static libc is needed)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin_dir
}

/// Issue 13 item 9: RuntimeDefault is Docker's default profile: no new namespaces through
/// `unshare` nor `clone` without CAP_SYS_ADMIN, `clone3` answers ENOSYS (libc then falls back
/// to `clone`), everyday programs still run, in the container and in `skiff exec`.
/// `--seccomp-default` gives it to pods without a profile; `Unconfined` stays unconfined.
#[test]
#[ignore = "needs root"]
fn seccomp_runtime_default_refuses_namespaces_through_clone_and_is_the_node_default() {
    require_root();
    let mut node = Node::new();
    node.extra_flags(&["--seccomp-default"]);
    node.start_daemon();
    node.import_image();
    let bin_dir = build_clone_test(node.dir());
    let volume = format!(
        "volumes: [{{name: t, hostPath: {{path: {}, type: Directory}}}}]",
        bin_dir.display()
    );
    let script = "/t/clonetest plain user user+mnt clone3; unshare -U true && echo UNSHARE-OK || echo UNSHARE-FAILED; exec sleep 100000";
    for (name, sc) in [
        ("rd", "seccompProfile: {type: RuntimeDefault}"),
        ("nodefault", ""),
        ("unconf", "seccompProfile: {type: Unconfined}"),
    ] {
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_with(
                name,
                script,
                &format!("volumeMounts: [{{name: t, mountPath: /t}}]\nsecurityContext: {{{sc}}}"),
                &volume,
            ),
        );
    }
    for name in ["rd", "nodefault", "unconf"] {
        node.wait_running(name);
    }
    let log = |pod: &str| {
        node.wait_for(
            &format!("the clone test in {pod}"),
            Duration::from_secs(30),
            || {
                let out = node.skiff(&["logs", pod]);
                let l = String::from_utf8_lossy(&out.stdout).into_owned();
                l.contains("UNSHARE-").then_some(l)
            },
        )
    };
    let confined = [
        "plain: ok",
        "user: Operation not permitted",
        "user+mnt: Operation not permitted",
        "clone3: Function not implemented",
        "UNSHARE-FAILED",
    ];
    for pod in ["rd", "nodefault"] {
        let l = log(pod);
        // Nothing of the runtime's own (e.g. warnings about syscalls this kernel lacks) in it.
        assert!(l.starts_with("plain: ok\n"), "{pod}: {l}");
        for want in confined {
            assert!(l.contains(want), "{pod}: {want:?} not in:\n{l}");
        }
        assert_eq!(
            exec_ok(&node, pod, None, "grep Seccomp: /proc/1/status"),
            "Seccomp:\t2\n"
        );
        // skiff exec loads the same filter.
        let out = exec_ok(&node, pod, None, "/t/clonetest plain user user+mnt clone3");
        for want in &confined[..4] {
            assert!(out.contains(want), "exec in {pod}: {want:?} not in:\n{out}");
        }
        // Everyday workloads: a shell pipeline, a web server and a client.
        let page = exec_ok(
            &node,
            pod,
            None,
            "httpd -p 127.0.0.1:8080 -h /var/www && wget -qO- http://127.0.0.1:8080/ | head -c 200 && ps | grep -c httpd",
        );
        assert!(!page.trim().is_empty(), "{page}");
    }
    let l = log("unconf");
    for want in [
        "plain: ok",
        "user: ok",
        "user+mnt: ok",
        "clone3: ok",
        "UNSHARE-OK",
    ] {
        assert!(l.contains(want), "unconf: {want:?} not in:\n{l}");
    }
    assert_eq!(
        exec_ok(&node, "unconf", None, "grep Seccomp: /proc/1/status"),
        "Seccomp:\t0\n"
    );
    remove_all_and_check_leftovers(&node);
}

fn pause_pid(node: &Node, pod: &Value) -> i32 {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let text = std::fs::read_to_string(node.run.join("ns").join(uid).join("pause.pid"))
        .expect("pause.pid");
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Issue 13 item 8 / issue 16: `shareProcessNamespace: true` puts every container of the pod in
/// one PID namespace whose PID 1 is an infra process that reaps orphans; it survives a skiffd
/// restart, a container restarted later joins it again, and pod deletion leaves nothing.
#[test]
#[ignore = "needs root"]
fn share_process_namespace_gives_the_pod_one_pid_namespace() {
    require_root();
    let mut node = Node::start();
    let mut y = pod_yaml("shared", "exec sleep 100001");
    y = y.replace(
        "  containers:\n",
        "  shareProcessNamespace: true\n  containers:\n",
    );
    y.push_str(&format!(
        "  - name: second\n    image: {}\n    imagePullPolicy: Never\n    command: [sh, -c, 'exec sleep 100002']\n",
        common::IMAGE
    ));
    node.write_manifest("shared.yaml", &y);
    // A pod without it keeps a PID namespace per container.
    node.write_manifest(
        "alone.yaml",
        &pod_with("alone", "exec sleep 100003", "", ""),
    );
    let pod = node.wait_running("shared");
    node.wait_running("alone");
    let pause = pause_pid(&node, &pod);
    assert!(Path::new(&format!("/proc/{pause}")).exists());
    let sees = |node: &Node, c: &str, want: &str| {
        let ps = exec_ok(node, "shared", Some(c), "ps -o pid,args");
        assert!(ps.contains(want), "{c} does not see {want:?}:\n{ps}");
        ps
    };
    sees(&node, "second", "sleep 100001");
    let ps = sees(&node, "main", "sleep 100002");
    // PID 1 is the infra process, not a container's.
    let first = ps.lines().nth(1).unwrap_or_default().trim().to_string();
    assert!(first.starts_with("1 ") && first.contains("pause"), "{ps}");
    assert_eq!(
        exec_ok(&node, "shared", Some("main"), "readlink /proc/self/ns/pid"),
        exec_ok(
            &node,
            "shared",
            Some("second"),
            "readlink /proc/self/ns/pid"
        )
    );
    let alone = exec_ok(&node, "alone", None, "ps -o args");
    assert!(
        !alone.contains("sleep 100001") && !alone.contains("pause"),
        "{alone}"
    );
    // Orphans are reaped by PID 1: no zombie stays once the orphaned sleep is done.
    exec_ok(
        &node,
        "shared",
        Some("second"),
        "sh -c 'sleep 0.3 &' ; true",
    );
    node.wait_for("the orphan to be reaped", Duration::from_secs(10), || {
        let ps = exec_ok(&node, "shared", Some("main"), "ps -o stat,args");
        let busy = ps
            .lines()
            .any(|l| l.contains("sleep 0.3") || l.trim_start().starts_with('Z'));
        (!busy).then_some(())
    });
    // The infra process holds no capability and nothing of the host's filesystem.
    let status = std::fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    assert!(
        std::fs::read_dir(format!("/proc/{pause}/root"))
            .unwrap()
            .next()
            .is_none()
    );

    // A restarted skiffd adopts it: the same namespace, and a container restarted after
    // that joins it again.
    node.stop_daemon();
    node.start_daemon();
    let pod = node.wait_running("shared");
    assert_eq!(pause_pid(&node, &pod), pause);
    sees(&node, "second", "sleep 100001");
    let (code, out) = exec(
        &node,
        "shared",
        Some("second"),
        "kill $(ps -o pid,args | awk '$2 == \"sleep\" && $3 == \"100001\" {print $1}')",
    );
    assert_eq!(code, 0, "{out}");
    node.wait_for("main to restart", Duration::from_secs(30), || {
        let p = node.pod("shared")?;
        let st = p["status"]["containerStatuses"].as_array()?;
        st.iter()
            .any(|c| c["name"] == "main" && c["restartCount"] == 1 && c["ready"] == true)
            .then_some(())
    });
    sees(&node, "second", "sleep 100001");
    assert_eq!(pause_pid(&node, &node.pod("shared").unwrap()), pause);

    // Deleting the pod removes the infra process too.
    node.remove_manifest("shared.yaml");
    node.wait_gone("shared");
    node.wait_for("the pause process to exit", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pause}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    });
    remove_all_and_check_leftovers(&node);
}
