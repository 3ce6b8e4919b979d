//! skiffd's core: wires the manifest source, the pod manager, the runtime
//! and the API together and runs them until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::manifest::source::{self, DirSource};
use crate::overlay::{self, agent::Agent, lease::Ipv4Net};
use crate::pod::manager::{self, Manager};
use crate::pod::worker::Ctx;
use crate::runtime::network::{NetConfig, PodNetwork};
use crate::runtime::{Runtime, pull};
use crate::store::{EventType, Involved, Store};

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
    #[error("registries config {path}: {source}")]
    Registries {
        path: std::path::PathBuf,
        source: images::PullError,
    },
    /// HTTPS_PROXY/HTTP_PROXY name a proxy pulls cannot use.
    #[error("registry proxy: {0}")]
    Proxy(images::PullError),
    #[error("joining the overlay: {0}")]
    Overlay(String),
    #[error("preparing the TLS API's keys under {root}/pki: {source}")]
    Pki {
        root: std::path::PathBuf,
        source: crate::pki::PkiError,
    },
    #[error("preparing the service account signing key under {root}/pki: {source}")]
    ServiceAccounts {
        root: std::path::PathBuf,
        source: crate::serviceaccount::SaError,
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
    crate::runtime::etc_files::set_dns(crate::runtime::etc_files::DnsSettings {
        cluster_dns: config.cluster_dns.map(|ip| ip.to_string()),
        domain: config.cluster_domain.clone(),
        resolv_conf: config.resolv_conf.clone(),
    });
    let store = Arc::new(Store::new(config.node_name.clone()));
    store.set_clustered(config.etcd.is_some());
    store.set_node_labels(config.node_labels.clone());
    // Objects made through the API (issue 10), before the pod manager's first snapshot.
    let loaded = store.load_objects(&config.root_dir);
    info!(objects = loaded, "loaded the objects made through the API");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // Multi-host: the overlay decides the pod subnet, the MTU and the cluster network.
    let mut cluster_cidr = config.cluster_cidr;
    let (mut pod_cidr, mut mtu, mut ip_masq) = (config.pod_cidr.clone(), 1500, true);
    let mut overlay_task = None;
    if let Some(etcd) = &config.etcd {
        let (agent, joined) = Agent::join(
            overlay::agent::Settings {
                client: etcd
                    .client()
                    .map_err(|e| DaemonError::Overlay(e.to_string()))?,
                prefix: etcd.prefix.clone(),
                lease_ttl: etcd.subnet_lease_ttl,
                public_ip: etcd.public_ip,
                iface: etcd.iface.clone(),
                network: Ipv4Net::new(config.cluster_cidr.addr, config.cluster_cidr.prefix)
                    .map_err(|e| DaemonError::Overlay(e.to_string()))?,
                tx_checksum_off: etcd.vxlan_tx_checksum_off,
                subnet_file: config.run_dir.join("subnet.env"),
            },
            store.clone(),
        )
        .await
        .map_err(|e| DaemonError::Overlay(e.to_string()))?;
        store.set_node_network(
            Some(joined.subnet.to_string()),
            Some(agent.public_ip().to_string()),
        );
        pod_cidr = joined.subnet.to_string();
        mtu = joined.mtu;
        ip_masq = false;
        cluster_cidr = crate::proxy::Ipv4Cidr {
            addr: joined.network.addr(),
            prefix: joined.network.prefix_len(),
        };
        overlay_task = Some(tokio::spawn(agent.run(stopped(stop_rx.clone()))));
    }
    if config.etcd.is_none() {
        // A node that was in a cluster before and runs alone now.
        for what in overlay::agent::remove_leftovers() {
            info!(removed = %what, "removed a leftover of the overlay (no --etcd-endpoints now)");
        }
    }
    // Service account tokens (issue 16): the signing key and CA under <root-dir>/pki.
    let service_accounts = Arc::new(
        crate::serviceaccount::ServiceAccounts::load_or_create(
            &config.root_dir,
            &config.node_name,
            config.service_account.clone(),
        )
        .map_err(|source| DaemonError::ServiceAccounts {
            root: config.root_dir.clone(),
            source,
        })?,
    );
    // The kubernetes Service (issue 16): where pods reach the TLS API.
    let master = config.api_listen.and_then(|listen| {
        let found =
            crate::service::master::advertise(listen, config.api_advertise_address, &pod_cidr);
        if found.is_none() {
            tracing::warn!(%listen, "no IPv4 address to advertise the API on (--api-advertise-address): no kubernetes Service");
        }
        found.map(|(endpoint, extra)| {
            let m = crate::service::master::Master {
                cluster_ip: crate::service::master::first_address(
                    config.service_cluster_ip_range,
                ),
                endpoint,
                port: listen.port(),
            };
            (m, extra)
        })
    });
    let pod_cidr_for_dns = pod_cidr.clone();
    let network = PodNetwork::new(NetConfig {
        conf_dir: config.cni_conf_dir.clone(),
        bin_dirs: config.cni_bin_dirs.clone(),
        cache_dir: config.cni_cache_dir.clone(),
        data_dir: config.root_dir.join("cni/networks"),
        pod_cidr,
        mtu,
        ip_masq,
    });
    if let Err(e) = network.setup_node() {
        tracing::warn!(conf_dir = %config.cni_conf_dir.display(), error = %e, "preparing the pod network");
    }
    let (resync_tx, resync_rx) = mpsc::unbounded_channel();
    let runtime = Runtime::new(&config.root_dir, &config.run_dir, &config.shim_path)?
        .with_pids_limit(config.pod_pids_limit)
        .with_seccomp_default(config.seccomp_default)
        .with_service_accounts(service_accounts.clone())
        .with_log_limits(config.container_log)
        .with_network(network);
    let (gc_tx, gc_rx) = mpsc::unbounded_channel();
    let image_service = Arc::new(image_service(&config, &runtime, &store, &resync_tx, gc_tx)?);
    let runtime = Arc::new(runtime.with_image_service(image_service.clone()));
    let ctx = Arc::new(Ctx {
        runtime: runtime.clone() as Arc<dyn crate::runtime::PodRuntime>,
        store: store.clone(),
    });

    let alloc = crate::service::alloc::Allocator::load(
        &config.root_dir.join("services.json"),
        config.service_cluster_ip_range,
        config.service_node_port_range,
    );
    let proxier = crate::proxy::Proxier::new(
        crate::proxy::RealIptables::new(),
        crate::proxy::RealConntrack::new(),
        crate::proxy::RuleConfig {
            cluster_cidr: Some(cluster_cidr),
            ..Default::default()
        },
    );
    let mut controller = crate::service::Controller::new(store.clone(), alloc, proxier);
    if let Some((m, _)) = master {
        controller = controller.with_master(m);
    }
    // Cluster DNS (issue 12): skiffd's resolver on the pod network's gateway, behind the
    // kube-system/kube-dns Service when --cluster-dns is in the service range.
    let dns_gateway = config
        .cluster_dns
        .and_then(|_| crate::dns::gateway_of(&pod_cidr_for_dns));
    if let (Some(ip), Some(gateway)) = (config.cluster_dns, dns_gateway) {
        if crate::dns::in_range(ip, config.service_cluster_ip_range) {
            controller = controller.with_kube_dns(crate::service::kube_dns::KubeDns {
                cluster_ip: ip,
                endpoint: gateway,
            });
        } else {
            tracing::warn!(cluster_dns = %ip, "--cluster-dns is outside --service-cluster-ip-range: no kube-dns Service; pods get it as their nameserver as given");
        }
    }
    let dns_task = dns_gateway.map(|gateway| {
        let own: Vec<std::net::IpAddr> = config
            .cluster_dns
            .into_iter()
            .chain([gateway])
            .map(std::net::IpAddr::V4)
            .collect();
        tokio::spawn(crate::dns::run(
            crate::dns::Settings {
                listen: std::net::SocketAddr::new(gateway.into(), crate::service::kube_dns::PORT),
                domain: config.cluster_domain.clone(),
                resolv_conf: config.resolv_conf.clone(),
                own,
                rate_per_client: config.cluster_dns_rate_limit,
            },
            store.clone(),
            controller.published(),
            stop_rx.clone(),
        ))
    });
    let token_refresher = tokio::spawn(crate::serviceaccount::refresh_tokens(
        service_accounts.clone(),
        store.clone(),
        resync_tx.clone(),
        stopped(stop_rx.clone()),
    ));
    let services = tokio::spawn(crate::service::run(
        controller,
        config.iptables_sync_period,
        config.cleanup_iptables_on_exit,
        stopped(stop_rx.clone()),
    ));

    let image_gc = {
        let rt = runtime.clone();
        tokio::spawn(pull::gc_loop(
            image_service,
            move || rt.container_images(),
            gc_rx,
            stopped(stop_rx.clone()),
        ))
    };
    let metrics = crate::api::metrics::Sampler::new(config.metric_resolution);
    let metrics_task = tokio::spawn(metrics.clone().run(store.clone()));
    // Multi-host: the elected leader runs the controllers (issue 11).
    let (leader_tx, leader_rx) = watch::channel(false);
    let (acting_tx, acting_rx) = watch::channel(false);
    let controllers = tokio::spawn(crate::controller::run::run(
        store.clone(),
        resync_tx.clone(),
        metrics.clone(),
        config.etcd.is_some().then_some(acting_rx),
    ));
    let state = Arc::new(ApiState {
        store: store.clone(),
        runtime: runtime.clone(),
        resync: resync_tx,
        started: jiff::Timestamp::now(),
        metrics: metrics.clone(),
    });
    let cluster_task = config.etcd.as_ref().map(|etcd| {
        let client = etcd.client().expect("endpoints checked by the config");
        let st = state.clone();
        let cluster = overlay::state::ClusterState::new(
            client,
            &etcd.prefix,
            etcd.subnet_lease_ttl,
            store.clone(),
            Arc::new(move || api::nodes::node(&st)),
        );
        tokio::spawn(cluster.run(stopped(stop_rx.clone())))
    });
    let control_plane = config.etcd.as_ref().map(|etcd| {
        let client = etcd.client().expect("endpoints checked by the config");
        let elector = crate::cluster::leader::Elector::new(
            client.clone(),
            &etcd.prefix,
            &config.node_name,
            crate::cluster::leader::TTL,
        );
        let st = state.clone();
        let mirror = crate::cluster::objects::Mirror::new(crate::cluster::objects::Settings {
            client,
            prefix: etcd.prefix.clone(),
            store: store.clone(),
            resync: state.resync.clone(),
            local_node: Arc::new(move || api::nodes::node(&st)),
            eviction_timeout: etcd.pod_eviction_timeout,
        });
        (
            tokio::spawn(elector.run(leader_tx, stopped(stop_rx.clone()))),
            tokio::spawn(mirror.run(leader_rx, acting_tx, stopped(stop_rx.clone()))),
        )
    });
    let socket = config.socket_path();
    // The TLS API for kubectl (issue 10): keys and tokens under <root-dir>/pki.
    let tls = match config.api_listen {
        Some(addr) => {
            let internal_ip = store.node_network().1;
            let mut sans = crate::pki::sans(&config.node_name, addr, internal_ip.as_deref());
            sans.extend(master.iter().flat_map(|(m, _)| m.sans()));
            let server = crate::pki::server_url(addr);
            let pki = crate::pki::ensure(&config.root_dir, &config.node_name, &sans, &server)
                .map_err(|source| DaemonError::Pki {
                    root: config.root_dir.clone(),
                    source,
                })?;
            Some(api::TlsListen {
                addr,
                pki,
                advertised: master.and_then(|(_, extra)| extra),
                service_accounts: Some(service_accounts.clone()),
            })
        }
        None => None,
    };
    let api = {
        let socket = socket.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { api::serve(&socket, tls, state, stop).await })
    };

    let (manifest_tx, manifest_rx) = mpsc::channel(4);
    let (snap_tx, snap_rx) = mpsc::channel(4);
    let src = DirSource::new(&config.pod_manifest_path, &config.node_name);
    let watcher = tokio::spawn(source::watch(src, config.file_check_frequency, manifest_tx));
    let merger = tokio::spawn(api::write::merge_snapshots(
        manifest_rx,
        store.clone(),
        snap_tx,
    ));
    let api_store = store.clone();
    let pods = tokio::spawn(manager::run(
        Manager::new(ctx),
        snap_rx,
        move |s| api::write::with_api_objects(s, &api_store),
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
    metrics_task.abort();
    controllers.abort();
    merger.abort();
    let _ = pods.await;
    let _ = services.await;
    let _ = token_refresher.await;
    let _ = image_gc.await;
    for t in [overlay_task, cluster_task, dns_task].into_iter().flatten() {
        let _ = t.await;
    }
    if let Some((elector, mirror)) = control_plane {
        let _ = elector.await;
        let _ = mirror.await;
    }
    if let Some(res) = api_failed {
        let err = match res {
            Ok(Ok(())) => std::io::Error::other("API server stopped"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e.to_string()),
        };
        return Err(DaemonError::Api {
            path: socket,
            source: err,
        });
    }
    let _ = std::fs::remove_file(&socket);
    info!("skiffd stopped; containers keep running");
    Ok(())
}

/// The registry puller over the runtime's image store, with the node's registry settings.
fn image_service(
    config: &Config,
    runtime: &Runtime,
    store: &Arc<Store>,
    resync: &mpsc::UnboundedSender<()>,
    gc: mpsc::UnboundedSender<()>,
) -> Result<pull::ImageService, DaemonError> {
    let registries =
        images::RegistriesConfig::load(&config.registries_config).map_err(|source| {
            DaemonError::Registries {
                path: config.registries_config.clone(),
                source,
            }
        })?;
    // The proxy variables are read here, for pulls only: nothing else skiffd connects to
    // (probes, etcd, the API's clients) goes through them.
    let proxy = images::ProxyConfig::from_env();
    proxy.check().map_err(DaemonError::Proxy)?;
    if !proxy.is_empty() {
        info!(?proxy, "registry pulls go through a proxy");
    }
    let puller = images::Puller::new(
        runtime.images.clone(),
        images::PullerConfig {
            registries,
            docker_config: Some(config.image_credential_config.clone()),
            proxy,
            ..images::PullerConfig::default()
        },
    );
    let policy = images::GcPolicy {
        high_threshold_percent: config.image_gc_high_threshold,
        low_threshold_percent: config.image_gc_low_threshold,
    };
    Ok(pull::ImageService::new(
        puller,
        store.clone(),
        policy,
        resync.clone(),
        gc,
    ))
}

/// One skiffd per root dir: a second one would fight the first over the same pods.
fn lock_root(root: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    use std::os::fd::AsRawFd;
    let path = root.join("skiffd.lock");
    let err = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    crate::util::private::create_dir_all(root).map_err(err)?;
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

/// Image pulls report to the store and read pull secrets and pods from it.
impl pull::PullHost for Store {
    fn event(&self, obj: &Involved, kind: EventType, reason: &str, message: &str) {
        Store::event(self, obj, kind, reason, message);
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<k8s_openapi::api::core::v1::Secret> {
        Store::secret(self, namespace, name)
    }
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
        self.list_pods(None)
    }
}
