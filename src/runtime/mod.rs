//! The container runtime: pod sandboxes (pinned namespaces), overlayfs root
//! filesystems, OCI bundles for libcontainer, and one `skiff-shim` per
//! container that outlives the daemon.
//!
//! On-disk layout, all of it findable again after a crash:
//! - `<root>/pods/<uid>/pod.json`: the pod as last applied
//! - `<root>/pods/<uid>/containers/<id>/`: `meta.json`, `bundle/` (config.json,
//!   rootfs mount point), `upper/`, `work/`, and the shim's `state.json`/`exit.json`
//! - `<root>/pods/<uid>/logs/<container>/<restart>.log`: CRI-format logs, rotated by
//!   the shim to `<restart>.log.<YYYYMMDD-hhmmss.nanos>`
//! - `<run>/netns/<uid>`, `<run>/ns/<uid>/{ipc,uts}`: pinned namespaces
//! - `<run>/runtime/<id>`: libcontainer's state; cgroup `/skiff/pod<uid>/<id>`

pub mod apparmor;
pub(crate) use hostkit::atomic;
pub mod cgkill;
pub mod cgroupfs;
pub mod crilog;
pub mod devices;
pub mod etc_files;
pub mod exec_seccomp;
pub mod network;
pub mod pidfd;
pub mod pidns;
pub mod pod_cgroup;
pub mod private;
pub mod process;
pub mod propagation;
pub mod pty;
pub mod pull;
pub mod resources;
pub mod rootfs_file;
pub mod seccomp;
pub mod security;
pub mod shim;
pub mod spec;
pub mod supervise;
pub mod termination;
pub mod usage;
pub mod volumes;

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use images::{Image, ImageStore};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tracing::{debug, warn};

use self::pidfd::PidFd;
use self::shim::{EXIT_FILE, ExitRecord, STATE_FILE, ShimState, write_atomic};

/// Prefix of container IDs in pod status, like `containerd://`.
pub const ID_SCHEME: &str = "skiff://";

/// Runtime errors; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Namespace(#[from] netns::Error),
    #[error("{0}")]
    Network(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Why a container could not be started; maps to the kubelet's waiting reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// `ErrImageNeverPull` / `ErrImagePull`.
    ImageMissing {
        reason: &'static str,
        message: String,
    },
    /// `CreateContainerConfigError` or `CreateContainerError`: nothing ran.
    Config {
        reason: &'static str,
        message: String,
    },
    /// The runtime could not start the process (`StartError`, exit code 128).
    Start(String),
}

/// A pod's pinned namespaces.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `None`: the host's network (`hostNetwork`).
    pub net: Option<PathBuf>,
    /// `None`: the host's IPC namespace (`hostIPC`).
    pub ipc: Option<PathBuf>,
    pub uts: PathBuf,
    /// `hosts`, `hostname` and `resolv.conf` for the pod's containers.
    pub etc: PathBuf,
    /// The pod's IP (the node's for `hostNetwork` pods).
    pub ip: Option<std::net::IpAddr>,
}

/// The pod network being attached in the background (CNI ADD on a thread of its own) while
/// the pod's first container is created; see [`PodRuntime::create_sandbox_overlapped`].
/// Clones wait for the same outcome. Ready means attached *and* `/etc/hosts` final.
#[derive(Clone)]
pub struct PendingNetwork(tokio::sync::watch::Receiver<Option<Result<std::net::IpAddr, String>>>);

/// The sending half of a [`PendingNetwork`]: whoever attaches the network reports here once.
/// Dropped without a report, the network counts as failed.
pub struct NetworkReport(tokio::sync::watch::Sender<Option<Result<std::net::IpAddr, String>>>);

impl PendingNetwork {
    pub fn channel() -> (NetworkReport, PendingNetwork) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (NetworkReport(tx), PendingNetwork(rx))
    }

    /// The pod's IP once its network is ready, or why it could not be set up (the
    /// message of the [`RuntimeError`] the sequential path would have returned).
    pub async fn wait(&self) -> Result<std::net::IpAddr, String> {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no network result".into())),
            Err(_) => Err("the pod network setup ended without a result".into()),
        }
    }
}

impl NetworkReport {
    pub fn send(self, result: Result<std::net::IpAddr, String>) {
        let _ = self.0.send(Some(result));
    }
}

/// The record the daemon keeps next to each container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub init: bool,
    pub restart: u32,
    pub image: String,
    pub image_id: String,
    pub log_path: PathBuf,
    pub created_at: String,
}

/// A container's supervisor as the pod worker sees it: something to signal
/// and to wait for.
/// What [`PodRuntime::exec`] returns: (exit code, combined output) or an error.
pub type ExecFuture = Pin<Box<dyn Future<Output = Result<(i32, String), String>> + Send>>;

pub trait Process: Send + Sync {
    /// Sends `signal` (the shim forwards SIGTERM and turns SIGUSR1 into SIGKILL).
    fn signal(&self, signal: i32);
    /// Resolves when the supervisor has exited (its exit record is then on disk).
    fn exited(&self) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// A handle to signal the process later from another task.
    fn signal_handle(&self) -> Box<dyn Fn(i32) + Send + Sync>;
}

impl Process for PidFd {
    fn signal(&self, signal: i32) {
        if let Err(e) = PidFd::signal(self, signal) {
            warn!(pid = self.pid(), signal, error = %e, "signalling shim");
        }
    }

    fn exited(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let watch = self.try_clone();
        Box::pin(async move {
            if let Ok(w) = watch {
                let _ = w.exited().await;
            }
        })
    }

    fn signal_handle(&self) -> Box<dyn Fn(i32) + Send + Sync> {
        let fd = self.try_clone().ok();
        Box::new(move |sig| {
            if let Some(fd) = &fd {
                let _ = PidFd::signal(fd, sig);
            }
        })
    }
}

/// What the pod workers need from a container runtime. The real one is
/// [`Runtime`]; unit tests drive the workers with a fake.
pub trait PodRuntime: Send + Sync + 'static {
    fn load_pod(&self, uid: &str) -> Option<Pod>;
    fn save_pod(&self, pod: &Pod) -> Result<(), RuntimeError>;
    fn pods_on_disk(&self) -> Vec<String>;
    fn create_sandbox(&self, pod: &Pod) -> Result<Sandbox, RuntimeError>;
    /// Like [`PodRuntime::create_sandbox`], but the pod network may still be being attached
    /// when this returns: then the sandbox has no IP yet, its `/etc/hosts` lacks the pod's
    /// entry, and the [`PendingNetwork`] tells when both are done. The caller must pass it
    /// to the next container start ([`StartRequest::network`]), which creates the container
    /// meanwhile but lets it run only once the network is ready (and tears it down, with
    /// an error, when it fails), and must wait for it before anything else uses the sandbox.
    /// A failure means the sandbox failed, as an `Err` of `create_sandbox` would.
    fn create_sandbox_overlapped(
        &self,
        pod: &Pod,
    ) -> Result<(Sandbox, Option<PendingNetwork>), RuntimeError> {
        self.create_sandbox(pod).map(|sb| (sb, None))
    }
    fn remove_sandbox(&self, uid: &str) -> Result<(), RuntimeError>;
    /// Whether every namespace of the sandbox is still pinned (someone may have
    /// unmounted or removed one); a sandbox that is not must be re-created.
    fn sandbox_intact(&self, _sandbox: &Sandbox) -> bool {
        true
    }
    /// [`PodRuntime::sandbox_intact`] for the pod's sandbox as it would be found again
    /// (after a restart, before `create_sandbox` would quietly make new namespaces).
    fn sandbox_pinned(&self, _pod: &Pod) -> bool {
        true
    }
    fn remove_pod_state(&self, uid: &str) -> Result<(), RuntimeError>;
    fn list_containers(&self, uid: &str) -> Vec<Found>;
    fn exit_record(&self, uid: &str, id: &str) -> Option<ExitRecord>;
    fn release_container_fs(&self, uid: &str, id: &str);
    /// The `state.terminated.message` of a finished container instance, before its
    /// filesystem is released (see [`termination`]).
    fn termination_message(
        &self,
        _uid: &str,
        _id: &str,
        _c: &Container,
        _exit_code: i32,
    ) -> Option<String> {
        None
    }
    fn remove_container(&self, uid: &str, id: &str);
    /// Frees network attachments of every pod not in `live_uids`.
    fn gc_network(&self, live_uids: &[String]);
    /// Runs a command in a running container: (exit code, combined output).
    fn exec(&self, id: &str, argv: Vec<String>, timeout: Duration) -> ExecFuture;
    /// Sets up (or refreshes in place) the pod's volumes.
    fn setup_volumes(
        &self,
        pod: &Pod,
        cx: &crate::pod::env::EnvContext<'_>,
    ) -> Result<std::collections::BTreeMap<String, volumes::Ready>, String>;
    fn start<'a>(
        &'a self,
        req: StartRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Handle, StartError>> + Send + 'a>>;
    /// Disk use of the pod's local ephemeral storage, as the kubelet counts it: each running
    /// container's writable layer plus its logs, and each disk-backed emptyDir.
    fn ephemeral_usage(
        &self,
        _uid: &str,
        _containers: &[(String, String)],
        _empty_dirs: &[String],
    ) -> EphemeralUsage {
        EphemeralUsage::default()
    }
}

/// Bytes used on disk, see [`PodRuntime::ephemeral_usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EphemeralUsage {
    /// Container name -> writable layer + logs.
    pub containers: std::collections::BTreeMap<String, u64>,
    /// emptyDir volume name -> contents.
    pub empty_dirs: std::collections::BTreeMap<String, u64>,
    /// The pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`: writable by its
    /// containers and outside their writable layers, so counted for the pod as a whole (the
    /// kubelet's fix of CVE-2020-8557).
    pub pod_files: u64,
}

/// Disk use of a directory tree (allocated blocks, like `du`), not crossing into other
/// filesystems and not following links.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(path) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

impl PodRuntime for Runtime {
    fn load_pod(&self, uid: &str) -> Option<Pod> {
        Runtime::load_pod(self, uid)
    }
    fn ephemeral_usage(
        &self,
        uid: &str,
        containers: &[(String, String)],
        empty_dirs: &[String],
    ) -> EphemeralUsage {
        blocking(|| {
            let pod = self.pod_dir(uid);
            EphemeralUsage {
                containers: containers
                    .iter()
                    .map(|(name, id)| {
                        let layer = disk_usage(&self.container_dir(uid, id).join("upper"));
                        let logs = disk_usage(&pod.join("logs").join(name));
                        (name.clone(), layer + logs)
                    })
                    .collect(),
                empty_dirs: empty_dirs
                    .iter()
                    .map(|v| {
                        (
                            v.clone(),
                            disk_usage(&pod.join("volumes/empty-dir").join(v)),
                        )
                    })
                    .collect(),
                pod_files: disk_usage(&pod.join("etc")),
            }
        })
    }
    fn save_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        Runtime::save_pod(self, pod)
    }
    fn pods_on_disk(&self) -> Vec<String> {
        Runtime::pods_on_disk(self)
    }
    fn create_sandbox(&self, pod: &Pod) -> Result<Sandbox, RuntimeError> {
        blocking(|| Runtime::create_sandbox(self, pod))
    }
    fn create_sandbox_overlapped(
        &self,
        pod: &Pod,
    ) -> Result<(Sandbox, Option<PendingNetwork>), RuntimeError> {
        blocking(|| Runtime::create_sandbox_overlapped(self, pod))
    }
    fn remove_sandbox(&self, uid: &str) -> Result<(), RuntimeError> {
        blocking(|| Runtime::remove_sandbox(self, uid))
    }
    fn remove_pod_state(&self, uid: &str) -> Result<(), RuntimeError> {
        Runtime::remove_pod_state(self, uid)
    }
    fn sandbox_intact(&self, sandbox: &Sandbox) -> bool {
        sandbox
            .net
            .iter()
            .chain(sandbox.ipc.iter())
            .chain(std::iter::once(&sandbox.uts))
            .all(|p| netns::is_pinned(p))
    }
    fn sandbox_pinned(&self, pod: &Pod) -> bool {
        let spec = pod.spec.as_ref();
        let sb = self.sandbox_paths(
            pod.metadata.uid.as_deref().unwrap_or_default(),
            spec.and_then(|s| s.host_network).unwrap_or(false),
            spec.and_then(|s| s.host_ipc).unwrap_or(false),
        );
        PodRuntime::sandbox_intact(self, &sb)
    }
    fn list_containers(&self, uid: &str) -> Vec<Found> {
        Runtime::list_containers(self, uid)
    }
    fn exit_record(&self, uid: &str, id: &str) -> Option<ExitRecord> {
        Runtime::exit_record(self, uid, id)
    }
    fn termination_message(
        &self,
        uid: &str,
        id: &str,
        c: &Container,
        exit_code: i32,
    ) -> Option<String> {
        Runtime::termination_message(self, uid, id, c, exit_code)
    }
    fn release_container_fs(&self, uid: &str, id: &str) {
        Runtime::release_container_fs(self, uid, id)
    }
    fn remove_container(&self, uid: &str, id: &str) {
        Runtime::remove_container(self, uid, id)
    }
    fn gc_network(&self, live_uids: &[String]) {
        blocking(|| Runtime::gc_network(self, live_uids))
    }
    fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(i32, String), String>> + Send>> {
        let mut cmd = self.exec_command(id, &argv);
        Box::pin(async move {
            let child = cmd.spawn().map_err(|e| format!("starting exec: {e}"))?;
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Err(_) => Err(format!(
                    "command {:?} timed out after {timeout:?}",
                    argv.join(" ")
                )),
                Ok(Err(e)) => Err(format!("exec: {e}")),
                Ok(Ok(out)) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    Ok((out.status.code().unwrap_or(126), text))
                }
            }
        })
    }
    fn setup_volumes(
        &self,
        pod: &Pod,
        cx: &crate::pod::env::EnvContext<'_>,
    ) -> Result<std::collections::BTreeMap<String, volumes::Ready>, String> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let pod_dir = self.pod_dir(uid);
        let pvc_dir = self.pvc_dir();
        blocking(|| {
            volumes::setup(
                &volumes::Layout {
                    pod_dir: &pod_dir,
                    pvc_dir: &pvc_dir,
                    service_accounts: self.service_accounts.as_deref(),
                },
                pod,
                cx,
            )
        })
    }
    fn start<'a>(
        &'a self,
        req: StartRequest<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Handle, StartError>> + Send + 'a>> {
        Box::pin(Runtime::start(self, req))
    }
}

/// A started container.
pub struct Handle {
    pub meta: ContainerMeta,
    pub started_at: Timestamp,
    pub shim: Box<dyn Process>,
}

/// A container found on disk (after a daemon restart).
pub struct Found {
    pub meta: ContainerMeta,
    pub state: Option<ShimState>,
    pub exit: Option<ExitRecord>,
    /// The live shim, when it is still running.
    pub shim: Option<Box<dyn Process>>,
}

/// Everything needed to start one container.
pub struct StartRequest<'a> {
    pub pod: &'a Pod,
    pub sandbox: &'a Sandbox,
    pub container: &'a Container,
    pub init: bool,
    pub restart: u32,
    /// The container's environment, resolved (see `pod::env`).
    pub env: Vec<(String, String)>,
    /// The pod's volumes, set up.
    pub volumes: &'a std::collections::BTreeMap<String, volumes::Ready>,
    /// The pod network still being attached: the container is created now and started
    /// only once it is ready; when it fails, the container is removed again and the start
    /// fails (the caller reports the network's error, not this one).
    pub network: Option<PendingNetwork>,
}

/// The runtime; cheap to share behind an `Arc`.
pub struct Runtime {
    root: PathBuf,
    run: PathBuf,
    shim: PathBuf,
    pub images: ImageStore,
    nofile: u64,
    /// `--pod-pids-limit`; none when negative.
    pids_limit: Option<i64>,
    log_limits: supervise::LogLimits,
    /// The pod network; `None` leaves pods with loopback only.
    network: Option<network::PodNetwork>,
    /// Registry pulls; `None`: local images only.
    pull: Option<std::sync::Arc<pull::ImageService>>,
    /// `--seccomp-default`: RuntimeDefault for containers that name no profile.
    seccomp_default: bool,
    /// Issues the tokens of `serviceAccountToken` volume sources.
    service_accounts: Option<std::sync::Arc<crate::serviceaccount::ServiceAccounts>>,
}

impl Runtime {
    pub fn new(root: &Path, run: &Path, shim: &Path) -> Result<Runtime, RuntimeError> {
        // Root's only, fixed when an older skiffd (or an admin) left them open: the modes
        // of these directories are what keeps other host users out of every pod's files.
        for d in [
            root.to_path_buf(),
            run.to_path_buf(),
            root.join("pods"),
            run.join("netns"),
            run.join("ns"),
            run.join("runtime"),
        ] {
            private::ensure_private(&d).map_err(io_err("creating", &d))?;
        }
        for e in fs::read_dir(root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = private::ensure_private(&e.path());
        }
        let images = ImageStore::open(root.join("images")).map_err(|e| RuntimeError::Io {
            op: "opening image store",
            path: root.join("images"),
            source: io::Error::other(e.to_string()),
        })?;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(1024);
        Ok(Runtime {
            root: root.to_path_buf(),
            run: run.to_path_buf(),
            shim: shim.to_path_buf(),
            images,
            nofile,
            pids_limit: None,
            log_limits: supervise::LogLimits::default(),
            network: None,
            pull: None,
            seccomp_default: false,
            service_accounts: None,
        })
    }

    /// Sets the issuer of service account tokens for pod volumes.
    pub fn with_service_accounts(
        mut self,
        sa: std::sync::Arc<crate::serviceaccount::ServiceAccounts>,
    ) -> Self {
        self.service_accounts = Some(sa);
        self
    }

    /// The root dir (`--root-dir`).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Sets when containers' logs are rotated (`--container-log-max-size`,
    /// `--container-log-max-files`).
    pub fn with_log_limits(mut self, limits: supervise::LogLimits) -> Self {
        self.log_limits = limits;
        self
    }

    /// Sets the pids cgroup limit of every container (`--pod-pids-limit`).
    pub fn with_pids_limit(mut self, limit: i64) -> Self {
        self.pids_limit = (limit > 0).then_some(limit);
        self
    }

    /// Gives pods a network through CNI.
    pub fn with_network(mut self, network: network::PodNetwork) -> Self {
        self.network = Some(network);
        self
    }

    /// Gives pods without a seccomp profile RuntimeDefault (`--seccomp-default`).
    pub fn with_seccomp_default(mut self, on: bool) -> Self {
        self.seccomp_default = on;
        self
    }

    /// Pulls images from registries for container starts.
    pub fn with_image_service(mut self, service: std::sync::Arc<pull::ImageService>) -> Self {
        self.pull = Some(service);
        self
    }

    pub fn image_service(&self) -> Option<&std::sync::Arc<pull::ImageService>> {
        self.pull.as_ref()
    }

    /// The image (`repo@digest` or id) of every container on disk, running or not: what image
    /// GC must keep.
    pub fn container_images(&self) -> Vec<String> {
        let mut out = Vec::new();
        for uid in self.pods_on_disk() {
            let dir = self.pod_dir(&uid).join("containers");
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let meta = fs::read(e.path().join("meta.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ContainerMeta>(&b).ok());
                out.extend(meta.map(|m| m.image_id));
            }
        }
        out
    }

    pub fn network(&self) -> Option<&network::PodNetwork> {
        self.network.as_ref()
    }

    /// Frees network attachments of pods that no longer exist.
    pub fn gc_network(&self, live_uids: &[String]) {
        if let Some(n) = &self.network {
            let live: Vec<(String, PathBuf)> = live_uids
                .iter()
                .map(|u| (u.clone(), self.run.join("netns").join(u)))
                .collect();
            n.gc(&live);
        }
    }

    /// Where persistent volume claims live.
    pub fn pvc_dir(&self) -> PathBuf {
        self.root.join("volumes").join("pvc")
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn container_dir(&self, uid: &str, id: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(id)
    }

    /// Log file of one run of a container.
    pub fn log_path(&self, uid: &str, name: &str, restart: u32) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(name)
            .join(format!("{restart}.log"))
    }

    /// A terminal in the running container `id` for an exec: (master, slave).
    pub fn exec_terminal(
        &self,
        id: &str,
    ) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        pty::open_in_container(&self.runtime_root(), id)
    }

    fn runtime_root(&self) -> PathBuf {
        self.run.join("runtime")
    }

    /// UIDs of every pod with state on disk.
    pub fn pods_on_disk(&self) -> Vec<String> {
        let mut uids: Vec<String> = fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        uids.sort();
        uids
    }

    /// Saves the pod spec next to its state, for adoption after a restart.
    pub fn save_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let dir = self.pod_dir(uid);
        private::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let json = serde_json::to_vec(pod).unwrap_or_default();
        write_atomic(&dir, "pod.json", &json).map_err(io_err("writing pod.json in", &dir))
    }

    pub fn load_pod(&self, uid: &str) -> Option<Pod> {
        let data = fs::read(self.pod_dir(uid).join("pod.json")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Where pod `uid`'s network namespace is pinned (`None`: a `hostNetwork` pod), for
    /// `kubectl port-forward`.
    pub fn pod_netns(&self, uid: &str, host_network: bool) -> Option<PathBuf> {
        self.sandbox_paths(uid, host_network, true).net
    }

    fn sandbox_paths(&self, uid: &str, host_network: bool, host_ipc: bool) -> Sandbox {
        Sandbox {
            net: (!host_network).then(|| self.run.join("netns").join(uid)),
            ipc: (!host_ipc).then(|| self.run.join("ns").join(uid).join("ipc")),
            uts: self.run.join("ns").join(uid).join("uts"),
            etc: self.pod_dir(uid).join("etc"),
            ip: None,
        }
    }

    /// Creates (or finds again) the pod's namespaces. The UTS namespace gets
    /// the pod's hostname (`spec.hostname`, else the pod name).
    pub fn create_sandbox(&self, pod: &Pod) -> Result<Sandbox, RuntimeError> {
        self.sandbox_with(pod, false).map(|(sb, _)| sb)
    }

    /// [`Runtime::create_sandbox`], with the CNI ADD moved to a thread of its own when the pod
    /// gets a CNI network: the namespaces and the pod files (`/etc/hosts` without the pod's
    /// own entry yet) are there when this returns, and the thread, once the ADD is done,
    /// rewrites `/etc/hosts` in place with the IP and then reports the [`PendingNetwork`].
    pub fn create_sandbox_overlapped(
        &self,
        pod: &Pod,
    ) -> Result<(Sandbox, Option<PendingNetwork>), RuntimeError> {
        self.sandbox_with(pod, true)
    }

    fn sandbox_with(
        &self,
        pod: &Pod,
        overlap: bool,
    ) -> Result<(Sandbox, Option<PendingNetwork>), RuntimeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let host_ipc = spec.and_then(|s| s.host_ipc).unwrap_or(false);
        let mut sb = self.sandbox_paths(uid, host_network, host_ipc);
        let mut deferred = None;
        if let Some(net) = &sb.net {
            netns::create(net, netns::Kind::Net, None)?;
            if let Some(network) = &self.network {
                if overlap {
                    deferred = Some(network.config().clone());
                } else {
                    let ip = network.attach(pod, net).map_err(RuntimeError::Network)?;
                    sb.ip = Some(ip);
                }
            }
        } else {
            sb.ip = network::node_ip();
        }
        if let Some(ipc) = &sb.ipc {
            netns::create(ipc, netns::Kind::Ipc, None)?;
        }
        // spec.hostname or the pod name; host network pods keep the node's, as on a kubelet.
        netns::create(
            &sb.uts,
            netns::Kind::Uts,
            Some(&etc_files::hostname_of(pod)),
        )?;
        let ip = sb.ip.map(|i| i.to_string());
        let pod_dir = self.pod_dir(uid);
        private::create_dir_all(&pod_dir).map_err(io_err("creating", &pod_dir))?;
        // A size-capped tmpfs: the files are writable from the containers, and nothing else
        // would bound them (removed with the pod's other tmpfs mounts, `unmount_below`).
        fs::create_dir_all(&sb.etc).map_err(io_err("creating", &sb.etc))?;
        volumes::mount_tmpfs(&sb.etc, Some(etc_files::SIZE_LIMIT)).map_err(|e| {
            RuntimeError::Io {
                op: "mounting the pod files' tmpfs on",
                path: sb.etc.clone(),
                source: io::Error::other(e),
            }
        })?;
        etc_files::write(&sb.etc, pod, ip.as_deref())
            .map_err(io_err("writing pod files in", &sb.etc))?;
        // Nothing can fail after this point: the thread is never left running for a
        // sandbox the caller believes failed (a retry would ADD the same pod twice at once).
        let pending = match (deferred, &sb.net) {
            (Some(cfg), Some(net)) => Some(attach_in_background(
                cfg,
                pod.clone(),
                net.clone(),
                sb.etc.clone(),
            )),
            _ => None,
        };
        Ok((sb, pending))
    }

    /// Removes the pod's namespaces and its cgroup parent. Idempotent.
    pub fn remove_sandbox(&self, uid: &str) -> Result<(), RuntimeError> {
        let sb = self.sandbox_paths(uid, false, false);
        if let Some(net) = &sb.net {
            if let Some(network) = &self.network {
                // DEL works on a netns that is already gone; an error is logged
                // and the next start's GC frees what it could not.
                if let Err(e) = network.detach(uid, net) {
                    warn!(uid, error = %e, "CNI DEL failed");
                }
            }
            netns::remove(net)?;
        }
        if let Some(ipc) = &sb.ipc {
            netns::remove(ipc)?;
        }
        netns::remove(&sb.uts)?;
        pidns::remove(&self.run.join("ns").join(uid));
        let _ = fs::remove_dir(self.run.join("ns").join(uid));
        remove_pod_cgroups(uid);
        Ok(())
    }

    /// Removes everything of a pod on disk (after its containers are gone).
    pub fn remove_pod_state(&self, uid: &str) -> Result<(), RuntimeError> {
        for found in self.list_containers(uid) {
            self.remove_container(uid, &found.meta.id);
        }
        let dir = self.pod_dir(uid);
        // tmpfs volumes and subPath binds.
        volumes::unmount_below(&dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &dir)(e)),
        }
    }

    /// Containers of a pod on disk, oldest first.
    pub fn list_containers(&self, uid: &str) -> Vec<Found> {
        let dir = self.pod_dir(uid).join("containers");
        let mut found: Vec<Found> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let d = e.path();
                if never_started(&d) {
                    // Created while the pod network was set up, then abandoned at the start
                    // gate (its daemon died): nothing of it ever ran, so it is no container
                    // of the pod's history, just leftovers.
                    let id = e.file_name().to_string_lossy().into_owned();
                    debug!(uid, id = %id, "removing a container that was created but never started");
                    self.remove_container(uid, &id);
                    return None;
                }
                let id = e.file_name().to_string_lossy().into_owned();
                let meta: ContainerMeta = match fs::read(d.join("meta.json"))
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(m) => m,
                    Err(e) => {
                        // Without its record the container cannot be matched to the pod's
                        // spec; left alone it would run on next to its replacement. Its
                        // cgroup finds whatever of it still runs.
                        warn!(uid, id = %id, error = %e, "container record unreadable; killing and removing the container");
                        self.remove_container(uid, &id);
                        return None;
                    }
                };
                let mut state: Option<ShimState> = fs::read(d.join(STATE_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let exit: Option<ExitRecord> = fs::read(d.join(EXIT_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if state.is_none() && exit.is_none() && d.join(STATE_FILE).exists() {
                    // state.json torn (a crash while it was written, a full disk): find the
                    // shim by its command line instead, and write the record again.
                    state = recover_shim_state(&meta);
                    match &state {
                        Some(s) => {
                            warn!(uid, id = %meta.id, shim_pid = s.shim_pid, "state.json unreadable; found the container's shim again");
                            if let Ok(json) = serde_json::to_vec(s) {
                                let _ = shim::write_durable(&d, STATE_FILE, &json);
                            }
                        }
                        None => warn!(uid, id = %meta.id, "state.json unreadable and no shim left; the container is killed through its cgroup"),
                    }
                }
                let shim = match (&state, &exit) {
                    (Some(s), None) => live_shim(s.shim_pid, &meta.id)
                        .map(|p| Box::new(p) as Box<dyn Process>),
                    _ => None,
                };
                Some(Found {
                    meta,
                    state,
                    exit,
                    shim,
                })
            })
            .collect();
        found.sort_by(|a, b| a.meta.created_at.cmp(&b.meta.created_at));
        found
    }

    /// Reads the exit record a shim left, if any.
    pub fn exit_record(&self, uid: &str, id: &str) -> Option<ExitRecord> {
        fs::read(self.container_dir(uid, id).join(EXIT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The termination message of a finished container instance (see [`termination`]).
    pub fn termination_message(
        &self,
        uid: &str,
        id: &str,
        c: &Container,
        exit_code: i32,
    ) -> Option<String> {
        let dir = self.container_dir(uid, id);
        let log = fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerMeta>(&b).ok())
            .map(|m| m.log_path);
        termination::message(c, &dir, log.as_deref(), exit_code)
    }

    /// Frees a finished container's filesystem but keeps its records
    /// (`meta.json`, `exit.json`) so its last state survives a daemon restart.
    pub fn release_container_fs(&self, uid: &str, id: &str) {
        // A shim that died without finishing (SIGKILL) leaves its container running.
        cgkill::kill_and_remove(&cgkill::container_cgroup(uid, id));
        let dir = self.container_dir(uid, id);
        let rootfs = dir.join("bundle/rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => warn!(path = %rootfs.display(), error = %e, "unmounting container rootfs"),
        }
        for sub in ["bundle", "upper", "work"] {
            let _ = fs::remove_dir_all(dir.join(sub));
        }
        let state = self.runtime_root().join(id);
        if state.exists() {
            let _ = fs::remove_dir_all(&state);
        }
    }

    /// Unmounts and deletes one container's directory (its log stays). Idempotent.
    pub fn remove_container(&self, uid: &str, id: &str) {
        cgkill::kill_and_remove(&cgkill::container_cgroup(uid, id));
        let dir = self.container_dir(uid, id);
        let rootfs = dir.join("bundle/rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => warn!(path = %rootfs.display(), error = %e, "unmounting container rootfs"),
        }
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %dir.display(), error = %e, "removing container directory");
        }
        // libcontainer state of a shim that died without cleaning up.
        let state = self.runtime_root().join(id);
        if state.exists() {
            let _ = fs::remove_dir_all(&state);
        }
    }

    /// Looks up the image of a container according to its pull policy.
    pub fn find_image(&self, c: &Container) -> Result<Image, StartError> {
        let reference = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        match self.images.resolve(&reference) {
            Ok(Some(img)) => Ok(img),
            Ok(None) if policy == "Never" => Err(StartError::ImageMissing {
                reason: "ErrImageNeverPull",
                message: format!(
                    "Container image \"{reference}\" is not present with pull policy of Never"
                ),
            }),
            Ok(None) => Err(StartError::ImageMissing {
                reason: "ErrImagePull",
                message: format!(
                    "image \"{reference}\" is not present on this node and pulling from registries is not supported yet; load it with `skiff image import`"
                ),
            }),
            Err(e) => Err(StartError::ImageMissing {
                reason: "InvalidImageName",
                message: format!("Failed to apply default image tag \"{reference}\": {e}"),
            }),
        }
    }

    /// Creates the container's rootfs and bundle and starts it under a new shim.
    pub async fn start(&self, req: StartRequest<'_>) -> Result<Handle, StartError> {
        let uid = req.pod.metadata.uid.clone().unwrap_or_default();
        // Held until the container's record is on disk, so image GC keeps the image.
        let (image, _starting) = match &self.pull {
            Some(service) => {
                let e = service.ensure(req.pod, req.container).await?;
                (e.image, Some(e.starting))
            }
            None => (self.find_image(req.container)?, None),
        };
        let id = new_container_id();
        let dir = self.container_dir(&uid, &id);
        let cfg_err = |message: String| StartError::Config {
            reason: "CreateContainerError",
            message,
        };
        let meta = ContainerMeta {
            id: id.clone(),
            name: req.container.name.clone(),
            init: req.init,
            restart: req.restart,
            image: req.container.image.clone().unwrap_or_default(),
            image_id: image
                .names
                .first()
                .map(|n| format!("{}@{}", repository_of(n), image.manifest_digest))
                .unwrap_or_else(|| image.id.clone()),
            log_path: self.log_path(&uid, &req.container.name, req.restart),
            created_at: Timestamp::now().to_string(),
        };
        let prepared = blocking(|| self.prepare(&dir, &meta, &image, &req)).inspect_err(|_e| {
            self.remove_container(&uid, &id);
        });
        let bundle = prepared?;
        let mut cmd = tokio::process::Command::new(&self.shim);
        cmd.arg("start")
            .arg("--id")
            .arg(&id)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--state-dir")
            .arg(&dir)
            .arg("--log")
            .arg(&meta.log_path)
            .arg("--log-max-size")
            .arg(self.log_limits.max_size.to_string())
            .arg("--log-max-files")
            .arg(self.log_limits.max_files.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(false);
        match private::file_options().open(dir.join("shim.log")) {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        // The start gate: the shim creates the container, then waits for one byte on
        // this pipe before it starts it (EOF: remove it, fail). Both ends are close-on-exec
        // here, so no other child (CNI plugins run meanwhile) inherits them; the read end
        // becomes the shim's fd GATE_FD, which the shim marks close-on-exec itself.
        let gate = match &req.network {
            Some(net) => {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
                    self.remove_container(&uid, &id);
                    cfg_err(format!("creating the start gate pipe: {e}"))
                })?;
                let raw = std::os::fd::AsRawFd::as_raw_fd(&r);
                cmd.arg("--gate-fd").arg(shim::GATE_FD.to_string());
                // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if raw == shim::GATE_FD {
                            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                                return Err(io::Error::last_os_error());
                            }
                        } else if libc::dup2(raw, shim::GATE_FD) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some((r, w, net.clone()))
            }
            None => None,
        };
        let spawned = cmd.spawn();
        // The shim has its copy of the read end (or failed to start).
        let gate = gate.map(|(r, w, net)| {
            drop(r);
            (w, net)
        });
        let mut child = spawned.map_err(|e| {
            self.remove_container(&uid, &id);
            cfg_err(format!("starting {}: {e}", self.shim.display()))
        })?;
        if let Some((w, net)) = gate {
            match net.wait().await {
                Ok(ip) => {
                    debug!(container = %meta.name, id = %id, %ip, "pod network ready; releasing the container");
                    // A shim that failed already is gone: EPIPE, and its error line follows.
                    let _ = io::Write::write_all(&mut fs::File::from(w), b"g");
                }
                Err(e) => {
                    // Closing without a byte: the shim removes the container and exits.
                    debug!(container = %meta.name, id = %id, error = %e, "pod network failed; aborting the created container");
                    drop(w);
                }
            }
        }
        let shim_pid = child.id().unwrap_or_default() as i32;
        let shim = PidFd::open(shim_pid);
        let stdout = child.stdout.take();
        // The shim is reaped by a task of its own; it lives on after we return.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let mut line = String::new();
        if let Some(out) = stdout {
            let mut reader = tokio::io::BufReader::new(out);
            let read =
                tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line)).await;
            if read.is_err() {
                line = "error timed out waiting for the container to start".into();
            }
        }
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ") {
            debug!(container = %meta.name, id = %id, pid, "container started");
            // Least recently used order for image GC.
            if let Err(e) = self.images.touch(&image.id) {
                warn!(image = %image.id, error = %e, "marking image used");
            }
            let shim = shim.map_err(|e| StartError::Start(format!("watching shim: {e}")))?;
            let started_at = fs::read(dir.join(STATE_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<ShimState>(&b).ok())
                .and_then(|s| s.started_at.parse().ok())
                .unwrap_or_else(Timestamp::now);
            Ok(Handle {
                meta,
                started_at,
                shim: Box::new(shim),
            })
        } else {
            let msg = line.strip_prefix("error ").unwrap_or(line);
            let log = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
            if !log.trim().is_empty() {
                warn!(container = %meta.name, id = %id, shim_log = %log.trim(), "container start failed");
            }
            let msg = if msg.is_empty() {
                format!("shim exited without a result: {}", log.trim())
            } else {
                msg.to_string()
            };
            self.remove_container(&uid, &id);
            Err(StartError::Start(msg))
        }
    }

    fn prepare(
        &self,
        dir: &Path,
        meta: &ContainerMeta,
        image: &Image,
        req: &StartRequest<'_>,
    ) -> Result<PathBuf, StartError> {
        let cfg_err = |message: String| StartError::Config {
            reason: "CreateContainerError",
            message,
        };
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        // The container dir and bundle are root's only; the rootfs mount point and `upper`
        // keep 0755 below them, for `upper`'s mode becomes the mode of the container's `/`.
        private::create_dir_all(&bundle)
            .map_err(|e| cfg_err(format!("creating {}: {e}", bundle.display())))?;
        for d in [&rootfs, &dir.join("upper"), &dir.join("work")] {
            fs::create_dir_all(d).map_err(|e| cfg_err(format!("creating {}: {e}", d.display())))?;
        }
        if let Some(parent) = meta.log_path.parent() {
            private::create_dir_all(parent)
                .map_err(|e| cfg_err(format!("creating {}: {e}", parent.display())))?;
        }
        let json = serde_json::to_vec(meta).unwrap_or_default();
        shim::write_durable(dir, "meta.json", &json)
            .map_err(|e| cfg_err(format!("writing meta.json: {e}")))?;
        let layers = self
            .images
            .layer_dirs(image)
            .map_err(|e| cfg_err(format!("image {}: {e}", image.id)))?;
        mount_overlay(&rootfs, &layers, &dir.join("upper"), &dir.join("work"))
            .map_err(|e| cfg_err(format!("mounting root filesystem: {e}")))?;
        let config_err = |message: String| StartError::Config {
            reason: "CreateContainerConfigError",
            message,
        };
        let process =
            process::resolve(req.container, &image.config, &req.env).map_err(config_err)?;
        // The container inherits skiffd's stack limit (the spec sets no RLIMIT_STACK).
        let stack = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_STACK)
            .map(|(soft, _)| soft)
            .unwrap_or(8 << 20);
        if let Some(why) = process::exec_too_long(&process.args, &process.env, stack) {
            return Err(StartError::Start(why));
        }
        // The image's user database, read inside its rootfs, never following it onto the
        // host, regular files only, size-capped (issue 13): a hostile image fails only itself.
        let user_db = |path: &str| {
            rootfs_file::read(&rootfs, path, rootfs_file::MAX_USER_DB)
                .map(|d| String::from_utf8_lossy(&d.unwrap_or_default()).into_owned())
                .map_err(|e| cfg_err(format!("reading the image's user database: {e}")))
        };
        let (passwd, group) = (user_db("/etc/passwd")?, user_db("/etc/group")?);
        let image_user =
            process::resolve_user(&image.config.user, &passwd, &group).map_err(config_err)?;
        let gid_of = |uid: u32| {
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == uid.to_string())
                .and_then(|f| f[3].parse().ok())
        };
        let sec = security::compute(
            req.pod,
            req.container,
            image_user,
            gid_of,
            self.seccomp_default,
        )
        .map_err(config_err)?;
        let cgroup = resources::cgroup(req.container, self.pids_limit).map_err(config_err)?;
        pod_cgroup::apply(
            Path::new("/sys/fs/cgroup"),
            req.pod.metadata.uid.as_deref().unwrap_or_default(),
            req.pod,
        )
        .map_err(config_err)?;
        let seccomp = match &sec.seccomp {
            security::Seccomp::Unconfined => None,
            security::Seccomp::RuntimeDefault => {
                Some(seccomp::runtime_default(&sec.caps).map_err(|e| cfg_err(e.to_string()))?)
            }
            security::Seccomp::Localhost(rel) => {
                let path = self.root.join("seccomp").join(rel);
                let text = fs::read(&path)
                    .map_err(|e| config_err(format!("seccomp profile {}: {e}", path.display())))?;
                Some(
                    serde_json::from_slice(&text).map_err(|e| {
                        config_err(format!("seccomp profile {}: {e}", path.display()))
                    })?,
                )
            }
        };
        let seccomp = seccomp.map(seccomp::for_libcontainer);
        let pod_uid = req.pod.metadata.uid.as_deref().unwrap_or_default();
        // shareProcessNamespace: every container joins the namespace of the pod's pause
        // process, started (again) here when there is none alive.
        let share = req
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false);
        let pid_ns = if share && !sec.host_pid {
            let dir = self.run.join("ns").join(pod_uid);
            Some(pidns::ensure(&dir, &self.shim).map_err(|e| cfg_err(e.to_string()))?)
        } else {
            None
        };
        let mut binds = self.binds(req, &process.env).map_err(config_err)?;
        let message_path = termination::path_of(req.container);
        if !binds.iter().any(|b| b.destination == message_path) {
            let source = termination::create(dir)
                .map_err(|e| cfg_err(format!("creating the termination message file: {e}")))?;
            binds.push(spec::Bind {
                source,
                destination: message_path.to_string(),
                read_only: false,
                propagation: "rprivate",
            });
        }
        let spec = spec::render(&spec::ContainerSpec {
            rootfs: rootfs.clone(),
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            uid: sec.uid,
            gid: sec.gid,
            additional_gids: sec.additional_gids.clone(),
            net_ns: req.sandbox.net.clone(),
            ipc_ns: req.sandbox.ipc.clone(),
            uts_ns: Some(req.sandbox.uts.clone()),
            cgroups_path: format!("/skiff/pod{pod_uid}/{}", meta.id),
            binds,
            nofile_limit: self.nofile,
            caps: Some(sec.caps.clone()),
            privileged: sec.privileged,
            read_only_rootfs: sec.read_only_rootfs,
            no_new_privs: sec.no_new_privs,
            seccomp,
            sysctls: sec.sysctls.clone(),
            host_pid: sec.host_pid,
            pid_ns,
            cgroup,
            cgroupfs: cgroupfs::detect(),
            devices: if sec.privileged {
                devices::host_devices(Path::new("/dev"))
            } else {
                Vec::new()
            },
            apparmor_profile: apparmor::for_container(req.pod, req.container)
                .map_err(config_err)?,
        });
        let data = serde_json::to_vec_pretty(&spec).unwrap_or_default();
        write_atomic(&bundle, "config.json", &data)
            .map_err(|e| cfg_err(format!("writing config.json: {e}")))?;
        Ok(bundle)
    }

    /// The container's bind mounts: its volumeMounts (subPaths bound safely
    /// first) and the pod's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    fn binds(&self, req: &StartRequest<'_>, env: &[String]) -> Result<Vec<spec::Bind>, String> {
        let c = req.container;
        let pod_uid = req.pod.metadata.uid.as_deref().unwrap_or_default();
        let vars: std::collections::HashMap<String, String> = env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        let mut binds = Vec::new();
        for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
            let field = format!("volumeMounts[{i}]");
            let vol = req
                .volumes
                .get(&vm.name)
                .ok_or_else(|| format!("{field}: volume {:?} not found in the pod", vm.name))?;
            if !vm.mount_path.starts_with('/') {
                return Err(format!("{field}.mountPath: must be an absolute path"));
            }
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(s), Some(e)) if !s.is_empty() && !e.is_empty() => {
                    return Err(format!(
                        "{field}: subPath and subPathExpr are mutually exclusive"
                    ));
                }
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(process::expand(e, &vars)),
                _ => None,
            };
            let source = match sub {
                Some(sub) => {
                    let target = self
                        .pod_dir(pod_uid)
                        .join("volume-subpaths")
                        .join(&vm.name)
                        .join(&c.name)
                        .join(i.to_string());
                    volumes::bind_subpath(&vol.path, &sub, &target)
                        .map_err(|e| format!("{field}: subPath {sub:?}: {e}"))?
                }
                None => vol.path.clone(),
            };
            let propagation = match vm.mount_propagation.as_deref() {
                None | Some("None") => "rprivate",
                Some("HostToContainer") => "rslave",
                Some("Bidirectional") if privileged => "rshared",
                Some("Bidirectional") => {
                    return Err(format!(
                        "{field}.mountPropagation: Bidirectional is allowed only in privileged containers"
                    ));
                }
                Some(other) => {
                    return Err(format!(
                        "{field}.mountPropagation: Unsupported value {other:?}"
                    ));
                }
            };
            binds.push(spec::Bind {
                source,
                destination: vm.mount_path.clone(),
                read_only: vm.read_only.unwrap_or(false) || vol.read_only,
                propagation,
            });
        }
        for (file, dest) in [
            ("hosts", "/etc/hosts"),
            ("hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            let src = req.sandbox.etc.join(file);
            if src.exists() && !binds.iter().any(|b| b.destination == dest) {
                binds.push(spec::Bind {
                    source: src,
                    destination: dest.into(),
                    read_only: false,
                    propagation: "rprivate",
                });
            }
        }
        Ok(binds)
    }

    /// A command that runs `argv` inside a running container (`skiff-shim exec`).
    pub fn exec_command(&self, id: &str, argv: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.shim);
        cmd.arg("exec")
            .arg("--id")
            .arg(id)
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// CNI ADD for `pod` on a thread of its own, then its `/etc/hosts` entry (in place, the
/// file may be bind-mounted into a created container already); reports the IP or the
/// error, worded as [`Runtime::create_sandbox`] would have returned it.
fn attach_in_background(
    cfg: network::NetConfig,
    pod: Pod,
    netns: PathBuf,
    etc: PathBuf,
) -> PendingNetwork {
    let (report, pending) = PendingNetwork::channel();
    let work = move || {
        let network = network::PodNetwork::new(cfg);
        let result = network
            .attach(&pod, &netns)
            .map_err(RuntimeError::Network)
            .and_then(|ip| {
                etc_files::write_hosts(&etc, &pod, Some(&ip.to_string()))
                    .map_err(io_err("writing pod files in", &etc))
                    .map(|()| ip)
            });
        report.send(result.map_err(|e| e.to_string()));
    };
    if let Err(e) = std::thread::Builder::new()
        .name("cni-add".into())
        .spawn(work)
    {
        // The closure (and with it the report) is dropped: waiters see a failure.
        warn!(error = %e, "starting the CNI ADD thread");
    }
    pending
}

// moved to util.rs; re-exported for callers not yet updated
pub(crate) use crate::util::blocking;

/// `docker.io/library/busybox:latest` -> `docker.io/library/busybox`.
fn repository_of(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// True for a container whose shim waited at the start gate and did not start it (see
/// [`shim::GATED_FILE`]). A shim still there is left a moment to delete what it created:
/// with its daemon gone, it has seen EOF on the gate and is on its way out.
fn never_started(dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(dir.join(shim::GATED_FILE)) else {
        return false;
    };
    if dir.join(STATE_FILE).exists() {
        return false;
    }
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let gated = || dir.join(shim::GATED_FILE).exists() && !dir.join(STATE_FILE).exists();
        while gated() && live_shim(pid, &id).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Released just now (the shim removes the file before it starts the container)?
    !dir.join(STATE_FILE).exists() && dir.join(shim::GATED_FILE).exists()
}

/// Finds the live shim of a container whose `state.json` cannot be read, by its
/// command line (`skiff-shim-mon supervise --id <id> --pid <pid> ...`, or the
/// `skiff-shim start` that has not handed over yet).
fn recover_shim_state(meta: &ContainerMeta) -> Option<ShimState> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(shim_pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let value = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
        };
        let is_shim = args.first().is_some_and(|a| a.contains("skiff-shim"));
        if !is_shim || value("--id") != Some(&meta.id) {
            continue;
        }
        let pid = value("--pid").and_then(|p| p.parse().ok()).or_else(|| {
            // Still `skiff-shim start`: its only child is the container's init.
            fs::read_to_string(format!("/proc/{shim_pid}/task/{shim_pid}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })?;
        return Some(ShimState {
            pid,
            shim_pid,
            // The real start time went with the file; creation is the closest we know.
            started_at: meta.created_at.clone(),
        });
    }
    None
}

/// Returns a pidfd for a shim that still runs, checking that the PID was not reused.
fn live_shim(pid: i32, id: &str) -> Option<PidFd> {
    let fd = PidFd::open(pid).ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    (text.contains("skiff-shim") && text.contains(id)).then_some(fd)
}

fn new_container_id() -> String {
    let mut buf = [0u8; 32];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mounts the image layers (lowest first) with a private upper dir at `target`.
fn mount_overlay(target: &Path, layers: &[PathBuf], upper: &Path, work: &Path) -> io::Result<()> {
    if layers.is_empty() {
        return Err(io::Error::other("image has no layers"));
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(io::Error::from)
}

/// Kills whatever still runs in `/skiff/pod<uid>` (a container whose shim died) and
/// removes it, with its children, from every cgroup hierarchy.
fn remove_pod_cgroups(uid: &str) {
    cgkill::kill_and_remove(&cgkill::pod_cgroup(uid));
}
