//! CNI for skiff: the spec's types, an executor that runs plugin lists the
//! way libcni does, and skiff's own plugins (`skiff-bridge`,
//! `skiff-host-local`, `skiff-portmap`), drop-in compatible with the
//! reference `bridge`, `host-local` and `portmap`.
//!
//! # Runtime API (what skiffd calls)
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use cni::{Attachment, Capabilities, Network, PortMapping};
//!
//! # fn main() -> Result<(), cni::Error> {
//! // First .conflist/.conf/.json by file name wins, as with the kubelet and containerd.
//! let net = Network::load(Path::new("/etc/cni/net.d"))?
//!     .with_bin_dirs(vec![PathBuf::from("/opt/cni/bin")])
//!     .with_cache_dir("/var/lib/cni");
//! let att = Attachment {
//!     container_id: "pod-uid-1".into(),
//!     netns: PathBuf::from("/run/netns/pod-uid-1"),
//!     ifname: "eth0".into(),
//!     args: vec![("K8S_POD_NAME".into(), "web".into())],
//!     capabilities: Capabilities {
//!         port_mappings: vec![PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() }],
//!         ..Default::default()
//!     },
//! };
//! let result = net.add(&att)?;          // ADD in order, result cached on disk
//! let _pod_ip = result.ips[0].address.addr;
//! net.check(&att)?;                    // CHECK with the cached result
//! net.del(&att)?;                      // DEL in reverse with the cached config/result; idempotent
//! net.gc(&[/* attachments still alive */])?; // DEL stale cache entries, then GC (1.1.0)
//! net.status()?;                       // STATUS (1.1.0)
//! # Ok(()) }
//! ```
//!
//! Every plugin runs with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH` (the bin dirs) and its config on stdin,
//! under [`Network::timeout`] (default 60 s). The cache lives in
//! `<cache_dir>/results/<network>-<container id>-<ifname>` (libcni's layout
//! and `cniCacheV1` format).
//!
//! # Plugins
//!
//! Build with `cargo build -p cni --release` and install `skiff-bridge`,
//! `skiff-host-local` and `skiff-portmap` from `target/release/` into a plugin
//! directory (`/opt/cni/bin`). Config names the reference options:
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"skiff","plugins":[
//!   {"type":"skiff-bridge","bridge":"cni0","isGateway":true,"isDefaultGateway":true,
//!    "ipMasq":true,"hairpinMode":true,
//!    "ipam":{"type":"skiff-host-local","ranges":[[{"subnet":"10.244.0.0/24"}]]}},
//!   {"type":"skiff-portmap","capabilities":{"portMappings":true}}]}
//! ```
//!
//! The binaries in `src/bin/` are one line each around [`skel::main`]; the
//! logic lives in [`plugins`]. Host-side work (bridge, veth host end, iptables)
//! happens in the netns the plugin process runs in; container-side work runs on
//! a dedicated thread that has joined `CNI_NETNS` ([`netns::run_in`]).

pub mod exec;
pub mod invoke;
pub mod ipnet;
pub mod iptables;
pub mod netlink;
pub mod plugins;
pub mod skel;
pub mod sysctl;
pub mod types;

pub use exec::{Attachment, Capabilities, Error, Network};
pub use ipnet::IpNet;
pub use types::{CniResult, Code, ErrorResult, PortMapping};
