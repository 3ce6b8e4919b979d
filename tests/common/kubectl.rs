//! The real kubectl against a test node's TLS API: [`Kubectl::start`] brings up a node in its
//! throwaway netns with the test image and writes the kubeconfig `skiff kubeconfig` prints;
//! every call runs kubectl inside that netns. Shared by the tests that drive skiffd the way a
//! user does (tests/kubectl_write.rs, workloads.rs, batch.rs, portforward.rs).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Node;

/// How long [`Kubectl::until`] polls before it fails the test.
const UNTIL: Duration = Duration::from_secs(90);

pub struct Kubectl {
    pub node: Node,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
}

impl Kubectl {
    /// A node with its TLS API and the test image.
    pub fn start() -> Kubectl {
        Kubectl::start_with(&[])
    }

    /// As [`Kubectl::start`], with more skiffd flags.
    pub fn start_with(flags: &[&str]) -> Kubectl {
        let bin = super::kubectl_bin().expect(
            "kubectl is not installed: the kubectl tests need the real kubectl (see README)",
        );
        let mut node = Node::new();
        node.host_ip_cmd(&["link", "set", "lo", "up"]);
        node.extra_flags(flags);
        node.start_daemon();
        node.import_image();
        let kubeconfig = super::kubeconfig(&node);
        Kubectl {
            node,
            kubeconfig,
            bin,
        }
    }

    /// The kubectl command for `args`, in the node's netns, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.host.path().display()))
            .arg(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.node.dir())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(env.iter().copied())
            .output()
            .expect("running kubectl")
    }

    /// kubectl that must succeed; its stdout and stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    pub fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_env(args, env);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubectl {args:?}: {text}\n--- skiffd log ---\n{}",
            self.node.log_tail(40)
        );
        text
    }

    /// kubectl that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Whether kubectl succeeds (`get` of something that may not exist).
    pub fn exists(&self, args: &[&str]) -> bool {
        self.run(args).status.success()
    }

    /// kubectl with `-o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {a:?}: {e}: {text}"))
    }

    /// The `items` of a list from [`Kubectl::json`].
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Writes `text` to `name` in the node's directory; its path, for `-f`.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.node.dir().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Imports the test image again as `skiff.test/busybox:<tag>`: a second image for rollouts,
    /// and one kubectl's generators can use (for `:latest` they would set pullPolicy Always).
    pub fn import_tagged(&self, tag: &str) {
        let copy = self.node.dir().join(format!("image-{tag}"));
        let st = std::process::Command::new("cp")
            .arg("-r")
            .arg(super::test_image())
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success(), "copying the test image");
        let index = copy.join("index.json");
        let text = std::fs::read_to_string(&index)
            .unwrap()
            .replace(
                "skiff.test/busybox:latest",
                &format!("skiff.test/busybox:{tag}"),
            )
            .replace(
                "\"org.opencontainers.image.ref.name\":\"latest\"",
                &format!("\"org.opencontainers.image.ref.name\":\"{tag}\""),
            );
        std::fs::write(&index, text).unwrap();
        let out = self
            .node
            .skiff(&["image", "import", copy.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "importing the image tagged {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `f` until it holds, for up to `secs` seconds.
    pub fn until_within(&self, secs: u64, what: &str, mut f: impl FnMut(&Kubectl) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- skiffd log ---\n{}",
                self.node.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `f` over kubectl's output until it holds.
    pub fn until(&self, what: &str, f: impl FnMut(&Kubectl) -> bool) {
        self.until_within(UNTIL.as_secs(), what, f)
    }
}
