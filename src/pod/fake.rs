//! A fake container runtime for unit tests of the pod workers: containers
//! are scripted (run, exit after a while with a code, fail to start, lack an
//! image) and every call is recorded. Time is tokio's, so tests can pause it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::runtime::shim::ExitRecord;
use crate::runtime::{
    ContainerMeta, Found, Handle, PendingNetwork, PodRuntime, Process, RuntimeError, Sandbox,
    StartError, StartRequest,
};

/// How a scripted container behaves.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Exit by itself after this long, with `code`.
    pub exit_after: Option<Duration>,
    pub code: i32,
    /// Exit 0 on SIGTERM (otherwise only SIGKILL stops it, like a PID 1 without a handler).
    pub exits_on_term: bool,
    /// Fail to start with this message.
    pub start_error: Option<String>,
    /// Report the image as missing.
    pub no_image: bool,
}

/// One recorded start.
#[derive(Debug, Clone)]
pub struct Started {
    pub name: String,
    pub restart: u32,
    pub at: Instant,
    pub id: String,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    started: Vec<Started>,
    exits: HashMap<String, (ExitRecord, Instant)>,
    signals: Vec<(String, i32)>,
    execs: Vec<Vec<String>>,
    sandboxes_removed: u32,
    next: u32,
    usage: crate::runtime::EphemeralUsage,
    network: NetScript,
    /// Sandboxes created with their network attached first / in the background.
    sequential_sandboxes: u32,
    overlapped_sandboxes: u32,
    /// Containers created for an overlapped start and removed again (network failed).
    aborted: Vec<String>,
    /// `save_pod` fails (a full disk) while set.
    save_fails: bool,
    /// Pods saved successfully, in order.
    saved: Vec<Pod>,
}

/// How the fake pod network behaves.
#[derive(Debug, Clone, Default)]
pub struct NetScript {
    /// How long the (background) attach takes.
    pub delay: Duration,
    /// Attaching fails with this message.
    pub error: Option<String>,
}

/// The fake runtime.
#[derive(Default, Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    pub fn script(&self, name: &str, s: Script) {
        self.state.lock().unwrap().scripts.insert(name.into(), s);
    }

    pub fn started(&self) -> Vec<Started> {
        self.state.lock().unwrap().started.clone()
    }

    /// When each container instance exited.
    pub fn exit_time(&self, id: &str) -> Option<Instant> {
        self.state.lock().unwrap().exits.get(id).map(|e| e.1)
    }

    pub fn signals(&self) -> Vec<(String, i32)> {
        self.state.lock().unwrap().signals.clone()
    }

    pub fn execs(&self) -> Vec<Vec<String>> {
        self.state.lock().unwrap().execs.clone()
    }

    pub fn sandboxes_removed(&self) -> u32 {
        self.state.lock().unwrap().sandboxes_removed
    }

    /// How the pod network behaves from now on.
    pub fn network(&self, n: NetScript) {
        self.state.lock().unwrap().network = n;
    }

    /// (sequential, overlapped) sandbox creations so far.
    pub fn sandboxes_created(&self) -> (u32, u32) {
        let st = self.state.lock().unwrap();
        (st.sequential_sandboxes, st.overlapped_sandboxes)
    }

    /// Containers created while the network was attached, then removed as it failed.
    pub fn aborted(&self) -> Vec<String> {
        self.state.lock().unwrap().aborted.clone()
    }

    /// Makes `save_pod` fail with ENOSPC (`true`) or work again.
    pub fn set_save_fails(&self, fails: bool) {
        self.state.lock().unwrap().save_fails = fails;
    }

    /// How many times a pod was saved successfully.
    pub fn saves(&self) -> usize {
        self.state.lock().unwrap().saved.len()
    }

    /// What [`PodRuntime::ephemeral_usage`] reports from now on.
    pub fn set_usage(&self, usage: crate::runtime::EphemeralUsage) {
        self.state.lock().unwrap().usage = usage;
    }
}

struct FakeProc {
    id: String,
    tx: watch::Sender<bool>,
    state: Arc<Mutex<State>>,
    exits_on_term: bool,
}

fn exit(
    state: &Arc<Mutex<State>>,
    tx: &watch::Sender<bool>,
    id: &str,
    code: i32,
    signal: Option<i32>,
) {
    {
        let mut st = state.lock().unwrap();
        if st.exits.contains_key(id) {
            return;
        }
        let rec = ExitRecord {
            exit_code: code,
            signal,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            finished_at: Timestamp::now().to_string(),
        };
        st.exits.insert(id.to_string(), (rec, Instant::now()));
    }
    let _ = tx.send(true);
}

impl Process for FakeProc {
    fn signal(&self, signal: i32) {
        self.state
            .lock()
            .unwrap()
            .signals
            .push((self.id.clone(), signal));
        match signal {
            libc::SIGTERM if self.exits_on_term => exit(&self.state, &self.tx, &self.id, 0, None),
            libc::SIGUSR1 | libc::SIGKILL => exit(&self.state, &self.tx, &self.id, 137, Some(9)),
            _ => {}
        }
    }

    fn signal_handle(&self) -> Box<dyn Fn(i32) + Send + Sync> {
        let me = FakeProc {
            id: self.id.clone(),
            tx: self.tx.clone(),
            state: self.state.clone(),
            exits_on_term: self.exits_on_term,
        };
        Box::new(move |sig| me.signal(sig))
    }

    fn exited(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|v| *v).await;
        })
    }
}

impl PodRuntime for FakeRuntime {
    fn ephemeral_usage(
        &self,
        _uid: &str,
        containers: &[(String, String)],
        empty_dirs: &[String],
    ) -> crate::runtime::EphemeralUsage {
        let all = self.state.lock().unwrap().usage.clone();
        crate::runtime::EphemeralUsage {
            containers: all
                .containers
                .into_iter()
                .filter(|(n, _)| containers.iter().any(|(c, _)| c == n))
                .collect(),
            empty_dirs: all
                .empty_dirs
                .into_iter()
                .filter(|(n, _)| empty_dirs.contains(n))
                .collect(),
            pod_files: all.pod_files,
        }
    }
    fn load_pod(&self, _uid: &str) -> Option<Pod> {
        None
    }
    fn save_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap();
        if st.save_fails {
            return Err(RuntimeError::Io {
                op: "writing pod.json in",
                path: "/fake".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        st.saved.push(pod.clone());
        Ok(())
    }
    fn pods_on_disk(&self) -> Vec<String> {
        Vec::new()
    }
    fn create_sandbox(&self, _pod: &Pod) -> Result<Sandbox, RuntimeError> {
        let mut st = self.state.lock().unwrap();
        st.sequential_sandboxes += 1;
        if let Some(e) = &st.network.error {
            return Err(RuntimeError::Network(e.clone()));
        }
        Ok(Sandbox {
            net: None,
            ipc: Some("/fake/ipc".into()),
            uts: "/fake/uts".into(),
            etc: "/fake/etc".into(),
            ip: Some("10.244.0.9".parse().unwrap()),
        })
    }
    fn create_sandbox_overlapped(
        &self,
        _pod: &Pod,
    ) -> Result<(Sandbox, Option<PendingNetwork>), RuntimeError> {
        let net = {
            let mut st = self.state.lock().unwrap();
            st.overlapped_sandboxes += 1;
            st.network.clone()
        };
        let sb = Sandbox {
            net: None,
            ipc: Some("/fake/ipc".into()),
            uts: "/fake/uts".into(),
            etc: "/fake/etc".into(),
            ip: None,
        };
        let (report, pending) = PendingNetwork::channel();
        let outcome = match net.error {
            Some(e) => Err(e),
            None => Ok("10.244.0.9".parse().unwrap()),
        };
        tokio::spawn(async move {
            tokio::time::sleep(net.delay).await;
            report.send(outcome);
        });
        Ok((sb, Some(pending)))
    }
    fn remove_sandbox(&self, _uid: &str) -> Result<(), RuntimeError> {
        self.state.lock().unwrap().sandboxes_removed += 1;
        Ok(())
    }
    fn remove_pod_state(&self, _uid: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn list_containers(&self, _uid: &str) -> Vec<Found> {
        Vec::new()
    }
    fn exit_record(&self, _uid: &str, id: &str) -> Option<ExitRecord> {
        self.state
            .lock()
            .unwrap()
            .exits
            .get(id)
            .map(|e| e.0.clone())
    }
    fn release_container_fs(&self, _uid: &str, _id: &str) {}
    fn remove_container(&self, _uid: &str, _id: &str) {}
    fn gc_network(&self, _live_uids: &[String]) {}
    fn exec(
        &self,
        _id: &str,
        argv: Vec<String>,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(i32, String), String>> + Send>> {
        // `true`/`false` scripts: the first word decides the exit code.
        let code = if argv.first().map(String::as_str) == Some("false") {
            1
        } else {
            0
        };
        self.state.lock().unwrap().execs.push(argv);
        Box::pin(async move { Ok((code, String::new())) })
    }
    fn setup_volumes(
        &self,
        _pod: &Pod,
        _cx: &crate::kube::env::EnvContext<'_>,
    ) -> Result<std::collections::BTreeMap<String, crate::runtime::volumes::Ready>, String> {
        Ok(Default::default())
    }
    fn start<'a>(
        &'a self,
        req: StartRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Handle, StartError>> + Send + 'a>> {
        Box::pin(async move {
            let name = req.container.name.clone();
            let (script, id) = {
                let mut st = self.state.lock().unwrap();
                st.next += 1;
                let id = format!("c{}", st.next);
                (st.scripts.get(&name).cloned().unwrap_or_default(), id)
            };
            if script.no_image {
                return Err(StartError::ImageMissing {
                    reason: "ErrImageNeverPull",
                    message: "not present".into(),
                });
            }
            // As the real runtime: created now, started only once the network is ready.
            if let Some(net) = &req.network
                && let Err(e) = net.wait().await
            {
                self.state.lock().unwrap().aborted.push(name.clone());
                return Err(StartError::Start(format!("network failed: {e}")));
            }
            self.state.lock().unwrap().started.push(Started {
                name: name.clone(),
                restart: req.restart,
                at: Instant::now(),
                id: id.clone(),
            });
            if let Some(msg) = script.start_error {
                return Err(StartError::Start(msg));
            }
            let (tx, _) = watch::channel(false);
            let proc = FakeProc {
                id: id.clone(),
                tx: tx.clone(),
                state: self.state.clone(),
                exits_on_term: script.exits_on_term,
            };
            if let Some(after) = script.exit_after {
                let state = self.state.clone();
                let id = id.clone();
                let code = script.code;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    exit(&state, &tx, &id, code, None);
                });
            }
            Ok(Handle {
                meta: ContainerMeta {
                    id,
                    name,
                    init: req.init,
                    restart: req.restart,
                    image: String::new(),
                    image_id: "fake@sha256:0".into(),
                    log_path: "/dev/null".into(),
                    created_at: Timestamp::now().to_string(),
                },
                started_at: Timestamp::now(),
                shim: Box::new(proc),
            })
        })
    }
}
