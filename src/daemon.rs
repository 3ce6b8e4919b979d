//! skiffd's core: wires the manifest source, the pod manager, the runtime
//! and the API together and runs them until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::manifest::source::{self, DirSource};
use crate::pod::manager::{self, Manager};
use crate::pod::worker::Ctx;
use crate::runtime::Runtime;
use crate::runtime::network::{NetConfig, PodNetwork};
use crate::store::Store;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("another skiffd is already running with root dir {root} (lock {lock})")]
    AlreadyRunning {
        root: std::path::PathBuf,
        lock: std::path::PathBuf,
    },
    #[error("locking {path}: {source}")]
    Lock {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serving the API on {path}: {source}")]
    Api {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs skiffd until `shutdown` resolves. Containers keep running after it
/// returns; the next skiffd adopts them.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let _lock = lock_root(&config.root_dir)?;
    let network = PodNetwork::new(NetConfig {
        conf_dir: config.cni_conf_dir.clone(),
        bin_dirs: config.cni_bin_dirs.clone(),
        cache_dir: config.cni_cache_dir.clone(),
        data_dir: config.root_dir.join("cni/networks"),
        pod_cidr: config.pod_cidr.clone(),
        mtu: 1500,
    });
    if let Err(e) = network.setup_node() {
        tracing::warn!(conf_dir = %config.cni_conf_dir.display(), error = %e, "preparing the pod network");
    }
    let runtime = Arc::new(
        Runtime::new(&config.root_dir, &config.run_dir, &config.shim_path)?
            .with_pids_limit(config.pod_pids_limit)
            .with_network(network),
    );
    let store = Arc::new(Store::new(config.node_name.clone()));
    let ctx = Arc::new(Ctx {
        runtime: runtime.clone() as Arc<dyn crate::runtime::PodRuntime>,
        store: store.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let alloc = crate::service::alloc::Allocator::load(
        &config.root_dir.join("services.json"),
        config.service_cluster_ip_range,
        config.service_node_port_range,
    );
    let proxier = crate::proxy::Proxier::new(
        crate::proxy::RealIptables::new(),
        crate::proxy::RealConntrack::new(),
        crate::proxy::RuleConfig {
            cluster_cidr: Some(config.cluster_cidr),
            ..Default::default()
        },
    );
    let services = tokio::spawn(crate::service::run(
        crate::service::Controller::new(store.clone(), alloc, proxier),
        std::time::Duration::from_secs(30),
        config.cleanup_iptables_on_exit,
        stopped(stop_rx.clone()),
    ));

    let (resync_tx, resync_rx) = mpsc::unbounded_channel();
    let state = Arc::new(ApiState {
        store: store.clone(),
        runtime: runtime.clone(),
        resync: resync_tx,
        started: jiff::Timestamp::now(),
    });
    let socket = config.socket_path();
    let api = {
        let socket = socket.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { api::serve(&socket, state, stop).await })
    };

    let (snap_tx, snap_rx) = mpsc::channel(4);
    let src = DirSource::new(&config.pod_manifest_path, &config.node_name);
    let watcher = tokio::spawn(source::watch(src, config.file_check_frequency, snap_tx));
    let pods = tokio::spawn(manager::run(
        Manager::new(ctx),
        snap_rx,
        resync_rx,
        stopped(stop_rx.clone()),
    ));
    info!(
        node = %config.node_name,
        manifests = %config.pod_manifest_path.display(),
        root = %config.root_dir.display(),
        socket = %socket.display(),
        "skiffd running"
    );

    let api_failed = tokio::select! {
        _ = shutdown => None,
        res = api => Some(res),
    };
    let _ = stop_tx.send(true);
    watcher.abort();
    let _ = pods.await;
    let _ = services.await;
    if let Some(res) = api_failed {
        let err = match res {
            Ok(Ok(())) => std::io::Error::other("API server stopped"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e.to_string()),
        };
        return Err(DaemonError::Api { path: socket, source: err });
    }
    let _ = std::fs::remove_file(&socket);
    info!("skiffd stopped; containers keep running");
    Ok(())
}

/// One skiffd per root dir: a second one would fight the first over the same pods.
fn lock_root(root: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    use std::os::fd::AsRawFd;
    let path = root.join("skiffd.lock");
    let err = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(root).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on an fd we own; it is released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DaemonError::AlreadyRunning {
                root: root.to_path_buf(),
                lock: path,
            });
        }
        return Err(err(e));
    }
    Ok(file)
}
