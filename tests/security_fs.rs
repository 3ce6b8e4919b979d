//! Root integration tests: what an unprivileged host user, or a hostile image or pod, can do
//! to the node's files (issue 13: file modes, the image's passwd, /etc/hosts writes).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{IMAGE, Node, require_root};

/// Runs `argv` as `nobody` (uid and gid 65534, no groups); (exit code, stdout+stderr).
fn as_nobody(argv: &[&str]) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .output()
        .expect("running setpriv");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
#[ignore = "needs root"]
fn other_host_users_reach_no_pod_files_and_no_setuid_binary() {
    require_root();
    let mut node = Node::new();
    // The node's dirs below a world-traversable parent, as /var/lib and /run are, and a root
    // dir an older skiffd left 0755: both must end up closed.
    std::fs::set_permissions(node.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(node.root.join("pods")).unwrap();
    for d in [&node.root, &node.root.join("pods")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    node.start_daemon();
    node.import_image();
    node.write_manifest(
        "suid.yaml",
        &format!(
            r#"apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: s3cr3t
---
apiVersion: v1
kind: Pod
metadata:
  name: suid
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    securityContext: {{allowPrivilegeEscalation: true}}
    env: [{{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}]
    command: [sh, -c, 'cp /bin/busybox /suid-bb && chmod 4755 /suid-bb && echo made-$PASSWORD && exec sleep 3600']
    volumeMounts: [{{name: creds, mountPath: /etc/creds}}]
  - name: user
    image: {IMAGE}
    imagePullPolicy: Never
    securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
    command: [sh, -c, 'ls / >/dev/null && echo secret=$(cat /etc/creds/password) && exec sleep 3600']
    volumeMounts: [{{name: creds, mountPath: /etc/creds}}]
  volumes: [{{name: creds, secret: {{secretName: creds}}}}]
"#
        ),
    );
    let pod = node.wait_running("suid");
    node.wait_for("the setuid copy", Duration::from_secs(10), || {
        node.skiff_ok(&["logs", "suid", "-c", "main"])
            .contains("made-s3cr3t")
            .then_some(())
    });
    // A non-root container still reads its Secret and its own rootfs below the closed dirs.
    let user = node.wait_for(
        "the non-root container's output",
        Duration::from_secs(10),
        || {
            let l = node.skiff_ok(&["logs", "suid", "-c", "user"]);
            l.contains("secret=").then_some(l)
        },
    );
    assert!(user.contains("secret=s3cr3t"), "{user}");

    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let pod_dir = node.root.join("pods").join(uid);
    let containers: Vec<PathBuf> = std::fs::read_dir(pod_dir.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let main = containers
        .iter()
        .find(|c| c.join("upper/suid-bb").exists())
        .expect("the container that made the setuid copy")
        .clone();
    let targets = [
        pod_dir.join("volumes/secret/creds/password"),
        main.join("bundle/config.json"),
        pod_dir.join("logs/main/0.log"),
        pod_dir.join("pod.json"),
        main.join("upper/suid-bb"),
        main.join("bundle/rootfs/suid-bb"),
    ];
    for t in &targets {
        // Root sees it: a refusal below is about permissions, not a wrong path.
        assert!(t.exists(), "{} missing", t.display());
        let (code, out) = as_nobody(&["cat", t.to_str().unwrap()]);
        assert_ne!(code, 0, "nobody read {}: {out}", t.display());
        assert!(
            !out.contains("s3cr3t"),
            "nobody read {}: {out}",
            t.display()
        );
    }
    for bin in [
        main.join("upper/suid-bb"),
        main.join("bundle/rootfs/suid-bb"),
    ] {
        assert_eq!(mode(&bin) & 0o4000, 0o4000, "the copy is setuid");
        let (code, out) = as_nobody(&[bin.to_str().unwrap(), "sh", "-c", "echo euid=$(id -u)"]);
        assert!(
            code != 0 && !out.contains("euid="),
            "nobody ran {}: {out}",
            bin.display()
        );
    }

    // The modes themselves: directories 0700, files 0600, the old 0755 root dir fixed.
    for d in [
        &node.root,
        &node.run,
        &node.root.join("pods"),
        &pod_dir,
        &main,
        &main.join("bundle"),
        &pod_dir.join("logs/main"),
    ] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    for f in [
        main.join("bundle/config.json"),
        main.join("meta.json"),
        pod_dir.join("pod.json"),
        pod_dir.join("logs/main/0.log"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let log = std::fs::read_to_string(node.dir().join("skiffd.log")).unwrap_or_default();
    assert!(
        log.contains("made it private"),
        "the fix of the root dir is logged"
    );
}

/// The unpacked layer of the test image (the directory holding its `etc/passwd`).
fn test_image_layer(node: &Node) -> PathBuf {
    let mut stack = vec![node.root.join("images")];
    while let Some(d) = stack.pop() {
        if d.join("etc/passwd").is_file() && d.join("bin").is_dir() {
            return d;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    panic!(
        "no unpacked layer with etc/passwd under {}",
        node.root.display()
    );
}

#[test]
#[ignore = "needs root"]
fn an_image_passwd_that_is_a_fifo_fails_that_container_only() {
    require_root();
    let node = Node::start();
    // What a crafted layer unpacks to: `etc/passwd -> ../fifo`, a FIFO nobody ever writes to.
    // Reading it on the host would block a thread of skiffd forever.
    let layer = test_image_layer(&node);
    nix::unistd::mkfifo(
        &layer.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::remove_file(layer.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("../fifo", layer.join("etc/passwd")).unwrap();
    node.write_manifest("fifo.yaml", &common::pod_yaml("fifo", "exec sleep 3600"));
    let w = node.wait_for(
        "fifo/main waiting with CreateContainerError",
        Duration::from_secs(30),
        || {
            let p = node.pod("fifo")?;
            let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
            (w["reason"] == "CreateContainerError").then_some(w)
        },
    );
    let msg = w["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("/etc/passwd is not a regular file (a FIFO)"),
        "{w}"
    );
    // skiffd is not stuck: the pod goes away when its manifest does.
    node.remove_manifest("fifo.yaml");
    node.wait_gone("fifo");
}

#[test]
#[ignore = "needs root"]
fn writes_to_etc_hosts_count_against_the_ephemeral_storage_limit() {
    require_root();
    let node = Node::start();
    // CVE-2020-8557: /etc/hosts is the pod's file, bind-mounted, outside the writable layer.
    node.write_manifest(
        "hosts.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hosts\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    resources: {{limits: {{ephemeral-storage: 20Mi}}}}\n    command: [sh, -c, 'dd if=/dev/zero of=/etc/hosts bs=1000000 count=30 2>/dev/null; sync; exec sleep 3600']\n"
        ),
    );
    let status = node.wait_for("hosts evicted", Duration::from_secs(40), || {
        let p = node.pod("hosts")?;
        (p["status"]["phase"] == "Failed").then(|| p["status"].clone())
    });
    assert_eq!(status["reason"], "Evicted", "{status}");
    assert_eq!(
        status["message"],
        "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi.",
        "{status}"
    );
    // And the files cannot grow without bound even without a limit: they sit on a capped tmpfs.
    node.write_manifest(
        "flood.yaml",
        &common::pod_yaml("flood", "dd if=/dev/zero of=/etc/resolv.conf bs=1048576 count=100 2>/dev/null; echo rc=$?; exec sleep 3600"),
    );
    node.wait_running("flood");
    let logs = node.wait_for("the flood to end", Duration::from_secs(30), || {
        let l = node.skiff_ok(&["logs", "flood"]);
        l.contains("rc=").then_some(l)
    });
    assert!(
        !logs.contains("rc=0"),
        "100 MiB written into /etc/resolv.conf: {logs}"
    );
    let (_, size) = node.exec_sh("flood", "stat -c %s /etc/resolv.conf");
    let size: u64 = size
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("stat: {size}"));
    assert!(size <= 64 << 20, "resolv.conf grew to {size} bytes");
    node.remove_manifest("hosts.yaml");
    node.remove_manifest("flood.yaml");
    node.wait_gone("hosts");
    node.wait_gone("flood");
    let left = node.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[test]
#[ignore = "needs root"]
fn a_command_line_too_long_for_execve_is_a_start_error() {
    require_root();
    let node = Node::start();
    let arg = "x".repeat(200_000);
    node.write_manifest(
        "long.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: long\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [echo, {arg}]\n"
        ),
    );
    let t = node.wait_for("long/main terminated", Duration::from_secs(30), || {
        let p = node.pod("long")?;
        let c = &p["status"]["containerStatuses"][0];
        let t = c["state"]["terminated"].clone();
        let t = if t.is_null() {
            c["lastState"]["terminated"].clone()
        } else {
            t
        };
        (!t.is_null()).then_some(t)
    });
    assert_eq!(t["exitCode"], 128, "{t}");
    assert_eq!(t["reason"], "StartError", "{t}");
    assert!(
        t["message"]
            .as_str()
            .unwrap_or_default()
            .contains("argument list too long"),
        "{t}"
    );
}
