//! Cluster IP and node port allocation, persisted so a Service keeps its
//! addresses across restarts of skiffd.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proxy::Ipv4Cidr;

/// What one Service holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub cluster_ip: Option<Ipv4Addr>,
    /// `port/PROTO` → node port.
    #[serde(default)]
    pub node_ports: BTreeMap<String, u16>,
}

/// The allocator: every Service's addresses, saved in a JSON file.
pub struct Allocator {
    path: PathBuf,
    pub range: Ipv4Cidr,
    pub node_ports: (u16, u16),
    pub by_service: BTreeMap<String, Allocation>,
}

impl Allocator {
    pub fn load(path: &Path, range: Ipv4Cidr, node_ports: (u16, u16)) -> Allocator {
        let by_service = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Allocator {
            path: path.to_path_buf(),
            range,
            node_ports,
            by_service,
        }
    }

    pub fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            crate::util::private::create_dir_all(dir)?;
        }
        let data = serde_json::to_vec_pretty(&self.by_service).unwrap_or_default();
        // Durable: a cluster IP handed out must not be handed out again after a power loss.
        let sync = hostkit::atomic::Sync::Durable;
        hostkit::atomic::write(&self.path, &data, 0o600, sync)
    }

    fn range_size(&self) -> u32 {
        1u32.checked_shl(32 - self.range.prefix as u32).unwrap_or(0)
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.range.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.range.prefix as u32)
        };
        u32::from(ip) & mask == u32::from(self.range.addr) & mask
    }

    fn owner_of_ip(&self, ip: Ipv4Addr, except: &str) -> Option<&str> {
        self.by_service
            .iter()
            .find(|(k, a)| k.as_str() != except && a.cluster_ip == Some(ip))
            .map(|(k, _)| k.as_str())
    }

    fn owner_of_port(&self, port: u16, except: &str) -> Option<&str> {
        self.by_service
            .iter()
            .find(|(k, a)| k.as_str() != except && a.node_ports.values().any(|p| *p == port))
            .map(|(k, _)| k.as_str())
    }

    /// The cluster IP of `key`: the one asked for (checked), the one it had,
    /// or a free one. The first address of the range is kept back (it is the
    /// `kubernetes` Service's on a real cluster), as is the network address.
    pub fn cluster_ip(&mut self, key: &str, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, String> {
        if let Some(ip) = wanted {
            if !self.in_range(ip) {
                return Err(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: provided IP is not in the valid range. The range of valid IPs is {}/{}",
                    self.range.addr, self.range.prefix
                ));
            }
            if let Some(other) = self.owner_of_ip(ip, key) {
                return Err(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: provided IP is already allocated (to Service {other})"
                ));
            }
            self.by_service
                .entry(key.to_string())
                .or_default()
                .cluster_ip = Some(ip);
            return Ok(ip);
        }
        if let Some(ip) = self.by_service.get(key).and_then(|a| a.cluster_ip)
            && self.in_range(ip)
        {
            return Ok(ip);
        }
        let size = self.range_size();
        if size < 4 {
            return Err("the service cluster IP range is too small".into());
        }
        let used: HashSet<Ipv4Addr> = self
            .by_service
            .values()
            .filter_map(|a| a.cluster_ip)
            .collect();
        // Start from a hash of the name so allocations do not all crowd at the start.
        let start = key
            .bytes()
            .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
            % (size - 3);
        for i in 0..size - 3 {
            let offset = 2 + (start + i) % (size - 3);
            let ip = Ipv4Addr::from(u32::from(self.range.addr) + offset);
            if !used.contains(&ip) {
                self.by_service
                    .entry(key.to_string())
                    .or_default()
                    .cluster_ip = Some(ip);
                return Ok(ip);
            }
        }
        Err(format!(
            "failed to allocate a serviceIP: range {}/{} is full",
            self.range.addr, self.range.prefix
        ))
    }

    /// The node port of one Service port (`port/PROTO`).
    pub fn node_port(
        &mut self,
        key: &str,
        port_key: &str,
        wanted: Option<u16>,
    ) -> Result<u16, String> {
        let (lo, hi) = self.node_ports;
        if let Some(p) = wanted {
            if !(lo..=hi).contains(&p) {
                return Err(format!(
                    "spec.ports[].nodePort: Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                ));
            }
            if let Some(other) = self.owner_of_port(p, key) {
                return Err(format!(
                    "spec.ports[].nodePort: Invalid value: {p}: provided port is already allocated (to Service {other})"
                ));
            }
            self.by_service
                .entry(key.to_string())
                .or_default()
                .node_ports
                .insert(port_key.to_string(), p);
            return Ok(p);
        }
        if let Some(p) = self
            .by_service
            .get(key)
            .and_then(|a| a.node_ports.get(port_key))
            .copied()
            && (lo..=hi).contains(&p)
            && self.owner_of_port(p, key).is_none()
        {
            return Ok(p);
        }
        let used: HashSet<u16> = self
            .by_service
            .values()
            .flat_map(|a| a.node_ports.values().copied())
            .collect();
        let span = (hi - lo) as u32 + 1;
        let start = (key.len() as u32 * 7919 + port_key.len() as u32 * 104729) % span;
        for i in 0..span {
            let p = lo + ((start + i) % span) as u16;
            if !used.contains(&p) {
                self.by_service
                    .entry(key.to_string())
                    .or_default()
                    .node_ports
                    .insert(port_key.to_string(), p);
                return Ok(p);
            }
        }
        Err(format!(
            "failed to allocate a nodePort: range {lo}-{hi} is full"
        ))
    }

    /// Takes `ip` and `node_ports` away from every Service but `key`: they were claimed
    /// cluster-wide for `key` (on another node), so a local Service that picked them on its own
    /// must pick again.
    pub fn evict(&mut self, key: &str, ip: Option<Ipv4Addr>, node_ports: &[u16]) -> Vec<String> {
        let mut evicted = Vec::new();
        for (k, a) in self
            .by_service
            .iter_mut()
            .filter(|(k, _)| k.as_str() != key)
        {
            let mut hit = false;
            if ip.is_some() && a.cluster_ip == ip {
                a.cluster_ip = None;
                hit = true;
            }
            let before = a.node_ports.len();
            a.node_ports.retain(|_, p| !node_ports.contains(p));
            if hit || a.node_ports.len() != before {
                evicted.push(k.clone());
            }
        }
        evicted
    }

    /// Drops node ports a Service no longer has.
    pub fn retain_ports(&mut self, key: &str, keep: &HashSet<String>) {
        if let Some(a) = self.by_service.get_mut(key) {
            a.node_ports.retain(|k, _| keep.contains(k));
        }
    }

    /// Frees everything of Services not in `live`.
    pub fn retain(&mut self, live: &HashSet<String>) {
        self.by_service.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(dir: &Path) -> Allocator {
        Allocator::load(
            &dir.join("a.json"),
            "10.96.0.0/29".parse().unwrap(),
            (30000, 30002),
        )
    }

    #[test]
    fn allocations_are_unique_stable_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = alloc(dir.path());
        let ips: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.cluster_ip(&format!("ns/s{i}"), None).unwrap())
            .collect();
        let set: HashSet<_> = ips.iter().collect();
        assert_eq!(set.len(), 5);
        assert!(
            !ips.contains(&"10.96.0.0".parse().unwrap())
                && !ips.contains(&"10.96.0.1".parse().unwrap())
        );
        assert!(a.cluster_ip("ns/s5", None).unwrap_err().contains("full"));
        a.save().unwrap();
        let mut b = alloc(dir.path());
        assert_eq!(b.cluster_ip("ns/s3", None).unwrap(), ips[3]);
        let err = b.cluster_ip("ns/other", Some(ips[0])).unwrap_err();
        assert!(
            err.contains("already allocated (to Service ns/s0)"),
            "{err}"
        );
        let err = b
            .cluster_ip("ns/other", Some("10.97.0.5".parse().unwrap()))
            .unwrap_err();
        assert!(err.contains("not in the valid range"), "{err}");
    }

    #[test]
    fn node_ports_clash_and_exhaust() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = alloc(dir.path());
        assert_eq!(a.node_port("ns/a", "80/TCP", Some(30001)).unwrap(), 30001);
        assert!(
            a.node_port("ns/b", "80/TCP", Some(30001))
                .unwrap_err()
                .contains("already allocated (to Service ns/a)")
        );
        assert!(
            a.node_port("ns/b", "80/TCP", Some(40000))
                .unwrap_err()
                .contains("valid range")
        );
        let p1 = a.node_port("ns/b", "80/TCP", None).unwrap();
        let p2 = a.node_port("ns/c", "80/TCP", None).unwrap();
        assert_ne!(p1, p2);
        assert!(a.node_port("ns/d", "80/TCP", None).is_err());
        a.retain(&HashSet::from(["ns/b".to_string()]));
        assert!(a.node_port("ns/d", "80/TCP", None).is_ok());
    }
}
