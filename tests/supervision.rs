//! Root integration tests: the shim under hostile output, shims killed, state
//! files torn, the pod's network namespace removed from under it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Node, pod_yaml, require_root};
use serde_json::Value;

fn main_container(pod: &Value) -> &Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "main"))
        .unwrap_or_else(|| panic!("no status for container main in {pod}"))
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

fn id_of(pod: &Value) -> String {
    main_container(pod)["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("skiff://")
        .to_string()
}

fn container_dir(node: &Node, pod: &Value) -> PathBuf {
    node.root
        .join("pods")
        .join(uid_of(pod))
        .join("containers")
        .join(id_of(pod))
}

/// (shim pid, container init pid) from the shim's state.json.
fn shim_state(node: &Node, pod: &Value) -> (i32, i32) {
    let st: Value = serde_json::from_slice(
        &std::fs::read(container_dir(node, pod).join("state.json")).unwrap(),
    )
    .unwrap();
    (
        st["shimPid"].as_i64().unwrap() as i32,
        st["pid"].as_i64().unwrap() as i32,
    )
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Host pids of every process in the pod's cgroups (any hierarchy).
fn pod_processes(uid: &str) -> Vec<i32> {
    let needle = format!("/skiff/pod{uid}/");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| cg.contains(&needle))
        })
        .collect()
}

/// User + system CPU seconds of a process.
fn cpu_time(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf with a constant name.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The log files of the pod's container `main`, run `restart`.
fn log_files(node: &Node, pod: &Value, restart: u32) -> Vec<PathBuf> {
    let dir = node.root.join("pods").join(uid_of(pod)).join("logs/main");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{restart}.log"))
        })
        .collect();
    files.sort();
    files
}

#[test]
#[ignore = "needs root"]
fn one_endless_line_keeps_the_shim_flat_and_is_logged_as_partial_records() {
    require_root();
    let mut node = Node::new();
    node.extra_flags(&[
        "--container-log-max-size",
        "1Mi",
        "--container-log-max-files",
        "3",
    ]);
    node.start_daemon();
    node.import_image();
    node.write_manifest(
        "flood.yaml",
        &pod_yaml("flood", "yes abcdefghijklmnop | tr -d '\\n'"),
    );
    let pod = node.wait_running("flood");
    let (mon, _) = shim_state(&node, &pod);
    // Let the flood get going, then watch the monitor's memory for a while.
    node.wait_for("a rotated log file", Duration::from_secs(20), || {
        (log_files(&node, &pod, 0).len() > 1).then_some(())
    });
    let start = rss_kib(mon).expect("monitor RSS");
    let cpu0 = cpu_time(mon).unwrap_or(0.0);
    let mut peak = start;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        peak = peak.max(rss_kib(mon).expect("the monitor died"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu_secs = cpu_time(mon).unwrap_or(0.0) - cpu0;
    eprintln!(
        "skiff-shim-mon under one endless line: RSS {start} KiB -> peak {peak} KiB, {cpu_secs:.1} s CPU in 5 s"
    );
    assert!(
        peak < start + 2048,
        "skiff-shim-mon grew from {start} KiB to {peak} KiB under one endless line"
    );
    assert!(peak < 16 * 1024, "skiff-shim-mon uses {peak} KiB");
    // The log, while the flood goes on: at most 3 files of at most 1 MiB, every record
    // a well-formed P record of 16 KiB (the last of a file may be being written).
    let files = log_files(&node, &pod, 0);
    assert!(!files.is_empty() && files.len() <= 3, "{files:?}");
    let mut records = 0;
    for f in &files {
        // Rotated away meanwhile: fine.
        let Ok(raw) = std::fs::read(f) else { continue };
        assert!(
            raw.len() <= 1 << 20,
            "{} is {} bytes",
            f.display(),
            raw.len()
        );
        let lines: Vec<&[u8]> = raw
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for line in &lines[..lines.len().saturating_sub(1)] {
            let fields: Vec<&[u8]> = line.splitn(4, |&b| b == b' ').collect();
            assert_eq!(fields.len(), 4, "malformed record in {}", f.display());
            assert!(
                std::str::from_utf8(fields[0])
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .is_ok()
            );
            assert_eq!(fields[1], b"stdout");
            assert_eq!(fields[2], b"P");
            assert_eq!(fields[3].len(), 16 * 1024);
            records += 1;
        }
    }
    assert!(records > 10, "only {records} records");
    node.remove_manifest("flood.yaml");
    node.wait_gone("flood");
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

#[test]
#[ignore = "needs root"]
fn chatty_container_logs_rotate_within_limits_and_logs_reads_across_rotations() {
    require_root();
    let mut node = Node::new();
    node.extra_flags(&[
        "--container-log-max-size",
        "64Ki",
        "--container-log-max-files",
        "3",
    ]);
    node.start_daemon();
    node.import_image();
    // 8000 numbered lines of ~100 bytes in batches: ~800 KiB, a dozen rotations.
    let script = "i=0; while [ $i -lt 8000 ]; do j=0; while [ $j -lt 200 ]; do \
        echo \"line $i pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad-pad\"; \
        i=$((i+1)); j=$((j+1)); done; sleep 0.1; done";
    node.write_manifest(
        "chatty.yaml",
        &pod_yaml("chatty", script).replace("spec:\n", "spec:\n  restartPolicy: Never\n"),
    );
    let pod = node.wait_for("chatty to start", Duration::from_secs(20), || {
        let p = node.pod("chatty")?;
        main_container(&p)["state"]["running"]
            .is_object()
            .then_some(p)
    });
    // Follows the log through every rotation until the container ends.
    let out = node.skiff_ok(&["logs", "-f", "chatty"]);
    let nums: Vec<u32> = out
        .lines()
        .map(|l| {
            l.split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad line {l:?}"))
        })
        .collect();
    assert_eq!(nums.last(), Some(&7999), "follow stopped early");
    for w in nums.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "lines lost or repeated while following across a rotation"
        );
    }
    node.wait_for("chatty to finish", Duration::from_secs(20), || {
        (node.pod("chatty")?["status"]["phase"] == "Succeeded").then_some(())
    });
    let files = log_files(&node, &pod, 0);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 64 * 1024, "{} is {len} bytes", f.display());
    }
    let tail = node.skiff_ok(&["logs", "chatty", "--tail", "3"]);
    let last: Vec<&str> = tail.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(last, ["7997", "7998", "7999"], "{tail}");
    // Without --tail: everything still on disk, in order, across the files.
    let all = node.skiff_ok(&["logs", "chatty"]);
    let nums: Vec<u32> = all
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        nums.len() > 1000 && nums.windows(2).all(|w| w[1] == w[0] + 1),
        "{} lines",
        nums.len()
    );
    assert_eq!(nums.last(), Some(&7999));
}

/// A pod whose container writes nothing and sleeps: one process per copy.
fn sleeper(name: &str) -> String {
    pod_yaml(name, "exec sleep 3600")
}

/// Polls until the pod runs again with `restarts` restarts, checking at every step that
/// never more than one copy of its container runs.
fn wait_recovered_without_duplicates(node: &Node, name: &str, uid: &str, restarts: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let procs = pod_processes(uid);
        assert!(
            procs.len() <= 1,
            "two copies of the container run at once: {procs:?}"
        );
        if let Some(p) = node.pod(name) {
            let c = main_container(&p);
            if c["state"]["running"].is_object()
                && c["restartCount"] == restarts
                && procs.len() == 1
            {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not recover\n{}",
            node.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root"]
fn a_killed_shim_never_leaves_a_second_copy_running() {
    require_root();
    let node = Node::start();
    node.write_manifest("victim.yaml", &sleeper("victim"));
    let pod = node.wait_running("victim");
    let uid = uid_of(&pod);
    let (shim, init) = shim_state(&node, &pod);
    assert_eq!(pod_processes(&uid), [init]);
    sigkill(shim);
    let again = wait_recovered_without_duplicates(&node, "victim", &uid, 1);
    assert!(!alive(init), "the old container ({init}) still runs");
    assert_ne!(id_of(&again), id_of(&pod));
    // The same with skiffd down while it happens.
    let (shim, init) = shim_state(&node, &again);
    let mut node = node;
    node.kill_daemon();
    sigkill(shim);
    node.start_daemon();
    wait_recovered_without_duplicates(&node, "victim", &uid, 2);
    assert!(!alive(init), "the old container ({init}) still runs");
}

#[test]
#[ignore = "needs root"]
fn torn_state_files_neither_duplicate_nor_orphan_containers() {
    require_root();
    let mut node = Node::new();
    // The torn meta.json hides the image's only user from image GC for a moment.
    node.extra_flags(&["--image-gc-high-threshold", "100"]);
    node.start_daemon();
    node.import_image();
    node.write_manifest("torn.yaml", &sleeper("torn"));
    let pod = node.wait_running("torn");
    let uid = uid_of(&pod);
    let (_, init) = shim_state(&node, &pod);
    // state.json cut in half: the shim is found again and the container adopted.
    node.kill_daemon();
    let state = container_dir(&node, &pod).join("state.json");
    let text = std::fs::read(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    node.start_daemon();
    let again = wait_recovered_without_duplicates(&node, "torn", &uid, 0);
    assert_eq!(
        id_of(&again),
        id_of(&pod),
        "the running container was replaced"
    );
    assert!(alive(init));
    // meta.json cut in half: the container cannot be matched to the spec any more;
    // it is killed before a replacement starts.
    node.kill_daemon();
    let meta = container_dir(&node, &pod).join("meta.json");
    let text = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    node.start_daemon();
    let replaced = wait_recovered_without_duplicates(&node, "torn", &uid, 0);
    assert_ne!(id_of(&replaced), id_of(&pod));
    assert!(!alive(init), "the old container ({init}) still runs");
    node.remove_manifest("torn.yaml");
    node.wait_gone("torn");
    assert!(pod_processes(&uid).is_empty());
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

#[test]
#[ignore = "needs root"]
fn removing_a_pod_after_its_shim_was_killed_leaves_nothing() {
    require_root();
    let mut node = Node::start();
    node.write_manifest("orphan.yaml", &sleeper("orphan"));
    let pod = node.wait_running("orphan");
    let uid = uid_of(&pod);
    let (shim, init) = shim_state(&node, &pod);
    // skiffd down, shim killed, manifest gone: the container is found through its cgroup.
    node.kill_daemon();
    sigkill(shim);
    node.remove_manifest("orphan.yaml");
    node.start_daemon();
    node.wait_gone("orphan");
    node.wait_for("the pod's state removed", Duration::from_secs(10), || {
        (!node.root.join("pods").join(&uid).exists()).then_some(())
    });
    assert!(!alive(init), "the container ({init}) still runs");
    assert!(pod_processes(&uid).is_empty(), "{:?}", pod_processes(&uid));
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

#[test]
#[ignore = "needs root"]
fn a_pod_whose_network_namespace_was_removed_gets_a_new_sandbox() {
    use std::net::{IpAddr, SocketAddr};
    require_root();
    let mut node = Node::start();
    let web = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    imagePullPolicy: Never\n    command: [sh, -c, \"mkdir -p /www && echo sandboxed > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n",
        common::IMAGE
    );
    node.write_manifest("web.yaml", &web);
    let pod = node.wait_running("web");
    let uid = uid_of(&pod);
    let ip_of = |p: &Value| {
        p["status"]["podIP"]
            .as_str()
            .unwrap()
            .parse::<IpAddr>()
            .unwrap()
    };
    let old_ip = ip_of(&pod);
    let host_ns = node.host.path();
    let get = |ip: IpAddr| common::http_get_in(&host_ns, SocketAddr::new(ip, 8080));
    node.wait_for("host -> pod", Duration::from_secs(10), || get(old_ip));
    let (_, init) = shim_state(&node, &pod);
    // Someone unpins and removes the pod's network namespace.
    let pin = node.run.join("netns").join(&uid);
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&pin).unwrap();
    let again = node.wait_for(
        "the pod running again in a new sandbox",
        Duration::from_secs(40),
        || {
            let p = node.pod("web")?;
            let c = main_container(&p);
            (c["state"]["running"].is_object() && c["restartCount"] == 1 && c["ready"] == true)
                .then_some(p)
        },
    );
    assert!(!alive(init), "the old container still runs");
    assert!(netns_pinned(&pin), "no new pinned network namespace");
    let new_ip = ip_of(&again);
    let body = node.wait_for(
        "host -> pod in its new sandbox",
        Duration::from_secs(10),
        || get(new_ip),
    );
    assert_eq!(body.trim(), "sandboxed");
    // The old lease went back to the pool (host-local hands out the next address).
    assert_eq!(node.allocations(), [new_ip.to_string()]);
    let events = node.skiff_ok(&["get", "events"]);
    assert!(
        events.contains("SandboxChanged")
            && events.contains("Pod sandbox changed, it will be killed and re-created."),
        "{events}"
    );
    assert_ne!(new_ip, old_ip);
    // The same while skiffd is down: the adopted container is not left in the old one.
    let (_, init) = shim_state(&node, &again);
    node.kill_daemon();
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&pin).unwrap();
    node.start_daemon();
    let third = node.wait_for(
        "the pod running again after a restart",
        Duration::from_secs(40),
        || {
            let p = node.pod("web")?;
            let c = main_container(&p);
            (c["state"]["running"].is_object() && c["restartCount"] == 2 && c["ready"] == true)
                .then_some(p)
        },
    );
    assert!(!alive(init), "the old container still runs");
    let ip = ip_of(&third);
    let body = node.wait_for(
        "host -> pod after the restart",
        Duration::from_secs(10),
        || get(ip),
    );
    assert_eq!(body.trim(), "sandboxed");
    assert_eq!(node.allocations(), [ip.to_string()]);
    node.remove_manifest("web.yaml");
    node.wait_gone("web");
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

fn netns_pinned(path: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673)
}
