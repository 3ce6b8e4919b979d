//! Root tests for `pods/attach` (issue 10) with the real kubectl (and the Python client for a
//! terminal with resizes) against a real skiffd in the test's throwaway netns: the live output
//! of a container's main process, its stdin (`stdin: true`, `stdinOnce`), one stdin writer
//! at a time, a terminal (`tty: true`), and `kubectl run -i --rm`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::kubectl::Kubectl as Api;
use common::{IMAGE, require_root};

/// A pod of one container `main` running `script`, with `extra` lines added to the container.
fn pod(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {script:?}]\n{extra}"
    )
}

fn apply_running(api: &Api, name: &str, yaml: &str) {
    let f = api.file(&format!("{name}.yaml"), yaml);
    api.ok(&["apply", "-f", &f]);
    api.until(&format!("{name} running"), |k| {
        k.run(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
            .stdout
            == b"Running"
    });
}

/// `kubectl attach` started in the background, its stdout lines on a channel.
struct Attached {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Attached {
    fn spawn(api: &Api, args: &[&str], stdin: bool) -> Attached {
        let mut cmd = api.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("kubectl");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Attached { child, lines }
    }

    /// The next line that satisfies `f`, within 30 s.
    fn line_where(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if f(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("kubectl attach printed no {what} within 30 s"),
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl attach` shows a running container's output from now on; `-i` feeds a container
/// with `stdin: true` (read back from its output and its log), `stdinOnce` closes its stdin
/// when that session ends, and a container without `stdin: true` refuses `-i` with a reason.
#[test]
#[ignore = "needs root"]
fn kubectl_attach_streams_output_and_feeds_stdin() {
    require_root();
    let api = Api::start();

    // Output: lines printed after the attach, not the ones before.
    apply_running(
        &api,
        "ticker",
        &pod(
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            "",
        ),
    );
    api.until("ticker's first lines", |k| {
        String::from_utf8_lossy(&k.run(&["logs", "ticker"]).stdout).contains("tick 3")
    });
    let logged = String::from_utf8_lossy(&api.run(&["logs", "ticker"]).stdout).into_owned();
    let last: u64 = logged
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .unwrap();
    let attached = Attached::spawn(&api, &["attach", "ticker"], false);
    let number = |l: &str| l.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
    let first = attached.line_where("tick line", |l| number(l).is_some());
    let first = number(&first).unwrap();
    assert!(
        first > last,
        "attach replayed old output: {first} <= {last}"
    );
    let later = attached.line_where("later tick", |l| number(l).is_some_and(|n| n > first));
    assert!(number(&later).unwrap() > first);
    drop(attached);

    // Without stdin: true, -i is refused with the reason, before anything is attached.
    let err = api.fails(&["attach", "-i", "ticker"]);
    assert!(err.contains("stdin: true"), "{err}");

    // stdin: true, stdinOnce: a `cat` gets the piped input, then EOF when the session ends.
    apply_running(
        &api,
        "echo",
        &pod(
            "echo",
            "cat; echo stdin closed",
            "    stdin: true\n    stdinOnce: true\n",
        ),
    );
    let mut attached = Attached::spawn(&api, &["attach", "-i", "echo"], true);
    let mut input = attached.child.stdin.take().unwrap();
    input.write_all(b"hello through attach\n").unwrap();
    attached.line_where("echoed input", |l| l == "hello through attach");
    drop(input);
    attached.line_where("the end of stdin", |l| l == "stdin closed");
    let status = attached.child.wait().unwrap();
    assert!(status.success(), "kubectl attach -i: {}", attached.stderr());
    api.until("echo completed", |k| {
        k.run(&["get", "pod", "echo", "-o", "jsonpath={.status.phase}"])
            .stdout
            == b"Succeeded"
    });
    let logs = api.ok(&["logs", "echo"]);
    assert!(
        logs.contains("hello through attach\nstdin closed"),
        "{logs}"
    );
}

/// One stdin writer at a time: a second `attach -i` is refused while the first lasts; without
/// `stdinOnce` the container's stdin stays open after a session, so the next one may write.
#[test]
#[ignore = "needs root"]
fn kubectl_attach_allows_one_stdin_writer_at_a_time() {
    require_root();
    let api = Api::start();
    apply_running(
        &api,
        "shared",
        &pod(
            "shared",
            "while read l; do echo got $l; done; echo eof",
            "    stdin: true\n",
        ),
    );
    let mut first = Attached::spawn(&api, &["attach", "-i", "shared"], true);
    let mut input = first.child.stdin.take().unwrap();
    input.write_all(b"one\n").unwrap();
    first.line_where("first input echoed", |l| l == "got one");
    let err = api.fails(&["attach", "-i", "shared"]);
    assert!(err.contains("another attach session"), "{err}");
    // Output-only sessions are welcome meanwhile.
    let watcher = Attached::spawn(&api, &["attach", "shared"], false);
    // Once the watcher's session is open, its output follows the next input.
    api.until("the watcher's session", |_| {
        input.write_all(b"ping\n").unwrap();
        watcher
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|l| l == "got ping")
    });
    drop(input);
    let _ = first.child.kill();
    let _ = first.child.wait();
    // The writer is gone, stdin is still open: a second writer gets through.
    let mut second = Attached::spawn(&api, &["attach", "-i", "shared"], true);
    let mut input = second.child.stdin.take().unwrap();
    api.until("the second writer's input echoed", |_| {
        // The first session may take a moment to be gone at the monitor.
        if input.write_all(b"two\n").is_err() {
            return false;
        }
        second
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|l| l == "got two")
    });
    let logs = api.ok(&["logs", "shared"]);
    assert!(!logs.contains("eof"), "stdin was closed: {logs}");
}

/// `kubectl run -i --rm --restart=Never` attaches after the create, prints the output of the
/// pod fed with kubectl's stdin, and deletes the pod.
#[test]
#[ignore = "needs root"]
fn kubectl_run_interactive_prints_and_removes_the_pod() {
    require_root();
    let api = Api::start();
    api.import_tagged("attach");
    let image = "skiff.test/busybox:attach";
    let mut cmd = api.command(&[
        "run",
        "once",
        "-i",
        "--rm",
        "--restart=Never",
        &format!("--image={image}"),
        "--image-pull-policy=Never",
        "--command",
        "--",
        "sh",
        "-c",
        "read v; echo got $v",
    ]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"value\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("got value"), "{text}");
    assert!(text.contains("pod \"once\" deleted"), "{text}");
    api.until("once gone", |k| !k.exists(&["get", "pod", "once"]));
}

/// A `tty: true, stdin: true` container: its shell runs on a terminal of its container's own
/// devpts; the Python client (`v4.channel.k8s.io`) drives it through attach with resizes, and
/// `kubectl attach -it` (`v5.channel.k8s.io`) under script(1) sends its terminal's size.
#[test]
#[ignore = "needs root"]
fn attach_drives_a_terminal_with_resizes() {
    require_root();
    let api = Api::start();
    apply_running(
        &api,
        "term",
        &pod("term", "exec sh", "    stdin: true\n    tty: true\n"),
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/attach_tty.py");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", api.node.host.path().display()))
        .arg("/usr/bin/python3")
        .arg(&script)
        .arg(&api.kubeconfig)
        .args(["default", "term"])
        .env("HOME", api.node.dir())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/dev/pts/0"),
        "not the container's terminal: {text}"
    );
    assert!(!text.contains("not a tty"), "{text}");
    assert!(
        text.contains("CLOSED"),
        "the session outlived the shell: {text}"
    );
    api.until("term completed", |k| {
        k.run(&["get", "pod", "term", "-o", "jsonpath={.status.phase}"])
            .stdout
            == b"Succeeded"
    });

    // kubectl attach -it under script(1): its own terminal's size reaches the container.
    apply_running(
        &api,
        "term2",
        &pod("term2", "exec sh", "    stdin: true\n    tty: true\n"),
    );
    // script(1) gives kubectl a terminal (33x77) and types into it what the pipe brings.
    let cmd = format!(
        "(sleep 3; printf 'stty size; exit\\n'; sleep 10) | script -qec 'stty rows 33 cols 77; {} --kubeconfig {} attach -it term2' /dev/null",
        api.bin.display(),
        api.kubeconfig.display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", api.node.host.path().display()))
        .args(["timeout", "60", "sh", "-c", &cmd])
        .env("HOME", api.node.dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("33 77"),
        "window size not applied: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
