//! `skiff-host-local`: IPAM from address ranges, with allocations on disk in
//! the reference plugin's layout so either plugin can take over the other's state:
//! `<dataDir>/<network>/<ip>` holding `<containerid>\r\n<ifname>`,
//! `<dataDir>/<network>/last_reserved_ip.<rangeset index>` and a `lock` file
//! that every operation holds with `flock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::ipnet::{IpNet, from_u128, to_u128};
use crate::skel::{CmdArgs, Plugin, decode_config};
use crate::types::{
    CniResult, Code, Dns, ErrorResult, GcAttachment, IpConfig, Route, VALID_ATTACHMENTS_KEY,
};

/// Default allocation directory (the reference plugin's).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// The parts of the network config host-local reads.
#[derive(Debug, Deserialize)]
struct NetConf {
    name: String,
    ipam: Option<IpamConf>,
    #[serde(rename = "cniVersion", default)]
    _version: String,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<GcAttachment>>,
}

/// The `ipam` section.
#[derive(Debug, Deserialize)]
pub struct IpamConf {
    /// Plugin type (this plugin's name).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Range sets: one address is allocated from each.
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Legacy single range: subnet.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Legacy single range: first address.
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    /// Legacy single range: last address.
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    /// Legacy single range: gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Routes returned in the result.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where allocations live (default `/var/lib/cni/networks`).
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
    /// DNS settings returned in the result.
    #[serde(default)]
    pub dns: Option<Dns>,
}

/// One range of a range set.
#[derive(Debug, Clone, Deserialize)]
pub struct RangeConf {
    /// The subnet; must leave at least two host addresses.
    pub subnet: IpNet,
    /// First allocatable address (default: network + 1).
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (default: broadcast − 1 for IPv4, last for IPv6).
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    /// Gateway (default: network + 1); never allocated.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// A validated range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Subnet with host bits cleared.
    pub subnet: IpNet,
    /// First candidate.
    pub start: IpAddr,
    /// Last candidate.
    pub end: IpAddr,
    /// Gateway, skipped by the allocator.
    pub gateway: IpAddr,
}

impl Range {
    /// Validates and fills defaults as the reference plugin does.
    pub fn from_conf(c: &RangeConf) -> Result<Range, String> {
        let subnet = c.subnet;
        let max = crate::ipnet::max_prefix(subnet.addr);
        if subnet.prefix > max - 2 {
            return Err(format!("network {subnet} too small to allocate from"));
        }
        if subnet.network() != subnet.addr {
            return Err(format!(
                "network {subnet} has host bits set; the network address is {}",
                subnet.network()
            ));
        }
        let first = from_u128(subnet.addr, to_u128(subnet.addr) + 1);
        let last = if subnet.addr.is_ipv4() {
            from_u128(subnet.addr, to_u128(subnet.last()) - 1)
        } else {
            subnet.last()
        };
        let inside = |what: &str, ip: IpAddr| {
            if subnet.contains(ip) {
                Ok(ip)
            } else {
                Err(format!("{what} {ip} not in network {subnet}"))
            }
        };
        let start = c
            .range_start
            .map(|ip| inside("rangeStart", ip))
            .transpose()?
            .unwrap_or(first);
        let end = c
            .range_end
            .map(|ip| inside("rangeEnd", ip))
            .transpose()?
            .unwrap_or(last);
        if to_u128(start) > to_u128(end) {
            return Err(format!("rangeStart {start} is after rangeEnd {end}"));
        }
        let gateway = c.gateway.unwrap_or(first);
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }
}

/// Builds the range sets of an `ipam` section (`ranges`, or the legacy single range).
pub fn range_sets(ipam: &IpamConf) -> Result<Vec<Vec<Range>>, String> {
    let confs: Vec<Vec<RangeConf>> = if !ipam.ranges.is_empty() {
        ipam.ranges.clone()
    } else if let Some(subnet) = ipam.subnet {
        vec![vec![RangeConf {
            subnet,
            range_start: ipam.range_start,
            range_end: ipam.range_end,
            gateway: ipam.gateway,
        }]]
    } else {
        return Err("no IP ranges specified".into());
    };
    let mut sets = Vec::new();
    for set in &confs {
        if set.is_empty() {
            return Err("empty range set".into());
        }
        let ranges = set
            .iter()
            .map(Range::from_conf)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in ranges.iter().enumerate() {
            if a.start.is_ipv4() != ranges[0].start.is_ipv4() {
                return Err("mixed address families in one range set".into());
            }
            for b in &ranges[i + 1..] {
                if a.contains(b.start) || a.contains(b.end) || b.contains(a.start) {
                    return Err(format!(
                        "ranges {}-{} and {}-{} overlap",
                        a.start, a.end, b.start, b.end
                    ));
                }
            }
        }
        sets.push(ranges);
    }
    Ok(sets)
}

/// The reference plugin's `start-end` form, plus the subnet, so an
/// exhaustion error names the pod CIDR an operator configured.
fn set_string(set: &[Range]) -> String {
    set.iter()
        .map(|r| format!("{}-{} (subnet {})", r.start, r.end, r.subnet))
        .collect::<Vec<_>>()
        .join(",")
}

/// An allocation: which container interface holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Owner container id.
    pub container_id: String,
    /// Owner interface (empty for files written by very old plugins).
    pub ifname: String,
}

/// Where allocations are kept. The disk store is the real one; tests use it
/// with a temp dir or the in-memory fake.
pub trait Store {
    /// Takes the network's exclusive lock until the guard drops.
    fn lock(&self) -> io::Result<LockGuard>;
    /// Claims `ip`; false when it is taken. Also records it as the range set's last.
    fn reserve(&self, a: &Allocation, range_id: usize) -> io::Result<bool>;
    /// The last address reserved in range set `range_id`.
    fn last_reserved(&self, range_id: usize) -> Option<IpAddr>;
    /// All allocations.
    fn list(&self) -> io::Result<Vec<Allocation>>;
    /// Frees one address; a missing one is success.
    fn release(&self, ip: IpAddr) -> io::Result<()>;
}

/// The reference layout on disk.
pub struct DiskStore {
    dir: PathBuf,
}

/// Holds a store's lock until dropped (`None` for stores without a lock file).
pub struct LockGuard(#[allow(dead_code)] Option<nix::fcntl::Flock<File>>);

impl DiskStore {
    /// Opens (creating) `<data_dir>/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> io::Result<DiskStore> {
        if network.is_empty() || network.contains('/') || network == "." || network == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid network name {network:?}"),
            ));
        }
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)?;
        Ok(DiskStore { dir })
    }
}

impl Store for DiskStore {
    fn lock(&self) -> io::Result<LockGuard> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("lock"))?;
        let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok(LockGuard(Some(locked)))
    }

    fn reserve(&self, a: &Allocation, range_id: usize) -> io::Result<bool> {
        let path = self.dir.join(a.ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Err(e) =
            f.write_all(format!("{}{LINE_BREAK}{}", a.container_id.trim(), a.ifname).as_bytes())
        {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        fs::write(
            self.dir.join(format!("{LAST_IP_PREFIX}{range_id}")),
            a.ip.to_string(),
        )?;
        Ok(true)
    }

    fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_IP_PREFIX}{range_id}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn list(&self) -> io::Result<Vec<Allocation>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<IpAddr>() else {
                continue;
            };
            let Ok(data) = fs::read_to_string(e.path()) else {
                continue;
            };
            let data = data.trim();
            let (id, ifname) = data.split_once(LINE_BREAK).unwrap_or((data, ""));
            out.push(Allocation {
                ip,
                container_id: id.trim().to_string(),
                ifname: ifname.trim().to_string(),
            });
        }
        Ok(out)
    }

    fn release(&self, ip: IpAddr) -> io::Result<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// Every address of the range set is taken.
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    /// The attachment already has an address in this range set (the spec forbids duplicates).
    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    Duplicate { ip: IpAddr, container_id: String },
    /// The store failed.
    #[error("IPAM store: {0}")]
    Store(#[from] io::Error),
}

/// Allocates one address per range set for (`container_id`, `ifname`),
/// round-robin from the last reserved address.
pub fn allocate(
    store: &dyn Store,
    sets: &[Vec<Range>],
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>, AllocError> {
    let _guard = store.lock()?;
    let existing = store.list()?;
    let mut got: Vec<(IpAddr, IpConfig)> = Vec::new();
    for (range_id, set) in sets.iter().enumerate() {
        let mine = existing.iter().find(|a| {
            a.container_id == container_id
                && a.ifname == ifname
                && set.iter().any(|r| r.contains(a.ip))
        });
        if let Some(a) = mine {
            // Roll back what this call already took, then refuse.
            for (ip, _) in &got {
                let _ = store.release(*ip);
            }
            return Err(AllocError::Duplicate {
                ip: a.ip,
                container_id: container_id.to_string(),
            });
        }
        match allocate_in_set(store, set, range_id, container_id, ifname) {
            Ok(cfg) => got.push((cfg.address.addr, cfg)),
            Err(e) => {
                for (ip, _) in &got {
                    let _ = store.release(*ip);
                }
                return Err(e);
            }
        }
    }
    Ok(got.into_iter().map(|(_, c)| c).collect())
}

fn allocate_in_set(
    store: &dyn Store,
    set: &[Range],
    range_id: usize,
    container_id: &str,
    ifname: &str,
) -> Result<IpConfig, AllocError> {
    // Start just after the last reserved address when it is still in the set.
    let (mut ri, mut cur) = (0usize, to_u128(set[0].start));
    if let Some(last) = store.last_reserved(range_id)
        && let Some(i) = set.iter().position(|r| r.contains(last))
    {
        ri = i;
        cur = to_u128(last) + 1;
        if cur > to_u128(set[i].end) {
            ri = (i + 1) % set.len();
            cur = to_u128(set[ri].start);
        }
    }
    let total: u128 = set
        .iter()
        .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
        .sum();
    // Caps the scan for huge IPv6 ranges; the reference plugin walks them just as linearly.
    let limit = total.min(1 << 20);
    for _ in 0..limit {
        let r = &set[ri];
        let ip = from_u128(r.start, cur);
        if ip != r.gateway {
            let a = Allocation {
                ip,
                container_id: container_id.trim().to_string(),
                ifname: ifname.to_string(),
            };
            if store.reserve(&a, range_id)? {
                return Ok(IpConfig {
                    interface: None,
                    address: IpNet {
                        addr: ip,
                        prefix: r.subnet.prefix,
                    },
                    gateway: Some(r.gateway),
                });
            }
        }
        cur += 1;
        if cur > to_u128(r.end) {
            ri = (ri + 1) % set.len();
            cur = to_u128(set[ri].start);
        }
    }
    Err(AllocError::Exhausted(set_string(set)))
}

/// Frees every address of (`container_id`, `ifname`); also files written
/// with the id alone (old layout), as the reference plugin does.
pub fn release(store: &dyn Store, container_id: &str, ifname: &str) -> io::Result<usize> {
    let _guard = store.lock()?;
    let mut n = 0;
    let all = store.list()?;
    let exact: Vec<&Allocation> = all
        .iter()
        .filter(|a| a.container_id == container_id.trim() && a.ifname == ifname)
        .collect();
    let victims: Vec<&Allocation> = if exact.is_empty() {
        all.iter()
            .filter(|a| a.container_id == container_id.trim() && a.ifname.is_empty())
            .collect()
    } else {
        exact
    };
    for a in victims {
        store.release(a.ip)?;
        n += 1;
    }
    Ok(n)
}

/// Frees every allocation whose (container id, ifname) is not in `valid`.
pub fn gc(store: &dyn Store, valid: &[GcAttachment]) -> io::Result<Vec<Allocation>> {
    let _guard = store.lock()?;
    let mut freed = Vec::new();
    for a in store.list()? {
        let keep = valid.iter().any(|v| {
            v.container_id == a.container_id && (v.ifname == a.ifname || a.ifname.is_empty())
        });
        if !keep {
            store.release(a.ip)?;
            freed.push(a);
        }
    }
    Ok(freed)
}

/// The plugin.
#[derive(Debug, Default)]
pub struct HostLocal;

struct Parsed {
    name: String,
    ipam: IpamConf,
    sets: Vec<Vec<Range>>,
    valid: Option<Vec<GcAttachment>>,
}

fn parse(stdin: &[u8]) -> Result<Parsed, ErrorResult> {
    let conf: NetConf = decode_config(stdin)?;
    let ipam = conf
        .ipam
        .ok_or_else(|| ErrorResult::new(Code::InvalidNetworkConfig, "missing \"ipam\" section"))?;
    let sets = range_sets(&ipam).map_err(|e| {
        ErrorResult::new(
            Code::InvalidNetworkConfig,
            format!("invalid IPAM ranges: {e}"),
        )
    })?;
    if conf.name.is_empty() || conf.name.contains('/') {
        return Err(ErrorResult::new(
            Code::InvalidNetworkConfig,
            "invalid or missing network name",
        ));
    }
    Ok(Parsed {
        name: conf.name,
        ipam,
        sets,
        valid: conf.valid_attachments,
    })
}

fn open_store(p: &Parsed) -> Result<DiskStore, ErrorResult> {
    let data_dir = p
        .ipam
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    DiskStore::open(&data_dir, &p.name).map_err(|e| {
        ErrorResult::new(
            Code::IoFailure,
            format!("opening IPAM store {}/{}", data_dir.display(), p.name),
        )
        .with_details(e.to_string())
    })
}

fn io_err(what: &str, e: io::Error) -> ErrorResult {
    ErrorResult::new(Code::IoFailure, what).with_details(e.to_string())
}

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, ErrorResult> {
        let p = parse(&args.stdin)?;
        let store = open_store(&p)?;
        let ips =
            allocate(&store, &p.sets, &args.container_id, &args.ifname).map_err(|e| match e {
                AllocError::Exhausted(_) => ErrorResult::new(Code::RangeExhausted, e.to_string()),
                AllocError::Duplicate { .. } => ErrorResult::new(Code::Internal, e.to_string()),
                AllocError::Store(io) => io_err("IPAM store", io),
            })?;
        let mut result = CniResult::new(&args.version);
        result.ips = ips;
        result.routes = p.ipam.routes.clone();
        result.dns = p.ipam.dns.clone().unwrap_or_default();
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let p = parse(&args.stdin)?;
        let store = open_store(&p)?;
        release(&store, &args.container_id, &args.ifname)
            .map_err(|e| io_err("releasing addresses", e))?;
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let p = parse(&args.stdin)?;
        let store = open_store(&p)?;
        let all = store.list().map_err(|e| io_err("listing allocations", e))?;
        if all
            .iter()
            .any(|a| a.container_id == args.container_id && a.ifname == args.ifname)
        {
            Ok(())
        } else {
            Err(ErrorResult::new(
                Code::Internal,
                format!(
                    "host-local: failed to find address added by container {}",
                    args.container_id
                ),
            ))
        }
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let p = parse(&args.stdin)?;
        let valid = p.valid.clone().ok_or_else(|| {
            ErrorResult::new(
                Code::InvalidNetworkConfig,
                format!("GC needs \"{VALID_ATTACHMENTS_KEY}\""),
            )
        })?;
        let store = open_store(&p)?;
        gc(&store, &valid).map_err(|e| io_err("garbage-collecting allocations", e))?;
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let p = parse(&args.stdin)?;
        let store = open_store(&p).map_err(|e| ErrorResult {
            code: Code::PluginNotAvailable as u32,
            ..e
        })?;
        store.lock().map(drop).map_err(|e| {
            ErrorResult::new(Code::PluginNotAvailable, "IPAM store not usable")
                .with_details(e.to_string())
        })
    }
}

/// Extracts the `ipam.type` of a config, for plugins that delegate.
pub fn ipam_type(conf: &Value) -> Option<&str> {
    conf.get("ipam")?
        .get("type")?
        .as_str()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::skel::tests::call;

    /// In-memory store with the same semantics as the disk one.
    #[derive(Default)]
    pub(crate) struct FakeStore {
        pub(crate) allocs: RefCell<BTreeMap<String, Allocation>>,
        pub(crate) last: RefCell<BTreeMap<usize, IpAddr>>,
    }
    impl Store for FakeStore {
        fn lock(&self) -> io::Result<LockGuard> {
            Ok(LockGuard(None))
        }
        fn reserve(&self, a: &Allocation, range_id: usize) -> io::Result<bool> {
            let mut m = self.allocs.borrow_mut();
            if m.contains_key(&a.ip.to_string()) {
                return Ok(false);
            }
            m.insert(a.ip.to_string(), a.clone());
            self.last.borrow_mut().insert(range_id, a.ip);
            Ok(true)
        }
        fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
            self.last.borrow().get(&range_id).copied()
        }
        fn list(&self) -> io::Result<Vec<Allocation>> {
            Ok(self.allocs.borrow().values().cloned().collect())
        }
        fn release(&self, ip: IpAddr) -> io::Result<()> {
            self.allocs.borrow_mut().remove(&ip.to_string());
            Ok(())
        }
    }

    fn set(subnet: &str, start: Option<&str>, end: Option<&str>) -> Vec<Vec<Range>> {
        vec![vec![
            Range::from_conf(&RangeConf {
                subnet: subnet.parse().unwrap(),
                range_start: start.map(|s| s.parse().unwrap()),
                range_end: end.map(|s| s.parse().unwrap()),
                gateway: None,
            })
            .unwrap(),
        ]]
    }

    #[test]
    fn range_defaults_and_validation() {
        let r = &set("10.1.0.0/24", None, None)[0][0];
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.to_string(), "10.1.0.1");
        let bad = |s: &str| {
            Range::from_conf(&RangeConf {
                subnet: s.parse().unwrap(),
                range_start: None,
                range_end: None,
                gateway: None,
            })
        };
        assert!(bad("10.1.0.0/31").is_err());
        assert!(bad("10.1.0.5/24").is_err());
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps() {
        let s = FakeStore::default();
        let sets = set("10.1.0.0/29", None, None); // .1 gw, .2-.6 usable
        let a = allocate(&s, &sets, "a", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.1.0.2/29");
        assert_eq!(a[0].gateway.unwrap().to_string(), "10.1.0.1");
        let b = allocate(&s, &sets, "b", "eth0").unwrap();
        assert_eq!(b[0].address.addr.to_string(), "10.1.0.3");
        release(&s, "a", "eth0").unwrap();
        // Round-robin: .2 was freed but the next one is .4.
        let c = allocate(&s, &sets, "c", "eth0").unwrap();
        assert_eq!(c[0].address.addr.to_string(), "10.1.0.4");
        for id in ["d", "e"] {
            allocate(&s, &sets, id, "eth0").unwrap();
        }
        // Wraps around to the freed .2.
        let f = allocate(&s, &sets, "f", "eth0").unwrap();
        assert_eq!(f[0].address.addr.to_string(), "10.1.0.2");
        let err = allocate(&s, &sets, "g", "eth0").unwrap_err();
        assert!(matches!(err, AllocError::Exhausted(_)), "{err}");
        assert!(err.to_string().contains("10.1.0.1-10.1.0.6"));
        // Duplicates are refused.
        assert!(matches!(
            allocate(&s, &sets, "b", "eth0"),
            Err(AllocError::Duplicate { .. })
        ));
    }

    #[test]
    fn gc_frees_everything_not_valid() {
        let s = FakeStore::default();
        let sets = set("10.1.0.0/24", None, None);
        for id in ["a", "b", "c"] {
            allocate(&s, &sets, id, "eth0").unwrap();
        }
        let valid = vec![GcAttachment {
            container_id: "b".into(),
            ifname: "eth0".into(),
        }];
        let freed = gc(&s, &valid).unwrap();
        assert_eq!(freed.len(), 2);
        let left = s.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "b");
    }

    #[test]
    fn disk_store_uses_reference_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), "net1").unwrap();
        let sets = set("10.2.0.0/24", Some("10.2.0.10"), Some("10.2.0.20"));
        let got = allocate(&store, &sets, "cid1", "eth0").unwrap();
        assert_eq!(got[0].address.addr.to_string(), "10.2.0.10");
        let net = dir.path().join("net1");
        assert_eq!(
            fs::read_to_string(net.join("10.2.0.10")).unwrap(),
            "cid1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(net.join("last_reserved_ip.0")).unwrap(),
            "10.2.0.10"
        );
        assert!(net.join("lock").exists());
        // A file in the old layout (id only) is released by id.
        fs::write(net.join("10.2.0.15"), "old").unwrap();
        assert_eq!(release(&store, "old", "eth0").unwrap(), 1);
        assert_eq!(release(&store, "cid1", "eth0").unwrap(), 1);
        assert_eq!(release(&store, "cid1", "eth0").unwrap(), 0);
        assert!(!net.join("10.2.0.10").exists());
    }

    fn env<'a>(cmd: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ]
    }

    #[test]
    fn plugin_protocol_add_del_gc_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let conf = |extra: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n1","type":"bridge","ipam":{{"type":"skiff-host-local",
                "dataDir":"{}","ranges":[[{{"subnet":"10.3.0.0/30"}}]],
                "routes":[{{"dst":"0.0.0.0/0"}}]{extra}}}}}"#,
                dir.path().display()
            )
        };
        let (rc, v) = call(&HostLocal, &env("ADD", "c1"), &conf(""));
        assert_eq!(rc, 0, "{v}");
        assert_eq!(v["ips"][0]["address"], "10.3.0.2/30");
        assert_eq!(v["ips"][0]["gateway"], "10.3.0.1");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        // A /30 has one usable address besides the gateway.
        let (rc, v) = call(&HostLocal, &env("ADD", "c2"), &conf(""));
        assert_eq!((rc, v["code"].as_u64()), (1, Some(100)));
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .contains("no IP addresses available"),
            "{v}"
        );
        assert_eq!(call(&HostLocal, &env("CHECK", "c1"), &conf("")).0, 0);
        assert_eq!(call(&HostLocal, &env("DEL", "c1"), &conf("")).0, 0);
        assert_eq!(call(&HostLocal, &env("DEL", "c1"), &conf("")).0, 0);
        assert_eq!(
            call(&HostLocal, &env("CHECK", "c1"), &conf("")).1["code"],
            999
        );
        // GC: c3 is stale, c4 is valid.
        call(&HostLocal, &env("ADD", "c3"), &conf(""));
        let net = dir.path().join("n1");
        assert_eq!(fs::read_dir(&net).unwrap().count(), 3); // ip, last_reserved, lock
        let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        let gc = conf("").replacen(
            "\"type\":\"bridge\"",
            "\"type\":\"bridge\",\"cni.dev/valid-attachments\":[{\"containerID\":\"c4\",\"ifname\":\"eth0\"}]",
            1,
        );
        let (rc, v) = call(&HostLocal, &gc_env, &gc);
        assert_eq!(rc, 0, "{v}");
        assert_eq!(fs::read_dir(&net).unwrap().count(), 2);
        assert_eq!(
            call(
                &HostLocal,
                &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
                &conf("")
            )
            .0,
            0
        );
    }

    #[test]
    fn malformed_configs_get_spec_codes() {
        let e = env("ADD", "c1");
        let cases = [
            ("{", 6),
            ("[1,2]", 6),
            (r#"{"cniVersion":"0.0.1","name":"n","ipam":{}}"#, 1),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"x"}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"nope"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/32"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.9.0.1"}]]}}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":5,"ipam":{"subnet":"10.0.0.0/24"}}"#,
                7,
            ),
            (r#"{"cniVersion":1,"name":"n"}"#, 6),
        ];
        for (stdin, code) in cases {
            let (rc, v) = call(&HostLocal, &e, stdin);
            assert_eq!(rc, 1, "{stdin}");
            assert_eq!(v["code"].as_u64(), Some(code), "{stdin}: {v}");
            assert!(!v["msg"].as_str().unwrap().is_empty());
        }
    }
}
