//! Chain names. Everything skiff installs starts with `SKIFF-`, so it never
//! collides with kube-proxy's `KUBE-` or flannel's `FLANNEL-` chains and can
//! be found and removed after a crash.

use sha2::{Digest, Sha256};

use super::types::{Endpoint, Protocol, ServicePortKey};

/// The prefix of every chain skiff owns.
pub const PREFIX: &str = "SKIFF-";
/// Entry chain (nat: ClusterIP/externalIP dispatch; filter: REJECTs).
pub const SERVICES: &str = "SKIFF-SERVICES";
/// Filter chain for REJECTs of externally reachable addresses.
pub const EXTERNAL_SERVICES: &str = "SKIFF-EXTERNAL-SERVICES";
/// nat chain of NodePort dispatch, entered for local destinations.
pub const NODEPORTS: &str = "SKIFF-NODEPORTS";
/// nat chain that masquerades marked packets.
pub const POSTROUTING: &str = "SKIFF-POSTROUTING";
/// nat chain that sets the masquerade mark.
pub const MARK_MASQ: &str = "SKIFF-MARK-MASQ";

/// The first 16 characters of the base32 (RFC 4648, no padding) encoding
/// of SHA-256 over the parts, as kube-proxy names its per-service chains:
/// stable across restarts and short enough for the 28-character limit.
fn hash16(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    // 10 bytes are exactly 80 bits, 16 base32 characters.
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// `SKIFF-SVC-<hash>`: the load-balancing chain of a service port.
pub fn service_chain(key: &ServicePortKey, proto: Protocol) -> String {
    format!("SKIFF-SVC-{}", hash16(&[&key.to_string(), proto.as_str()]))
}

/// `SKIFF-EXT-<hash>`: entry for NodePort and external-IP traffic (adds the
/// masquerade mark, then jumps to the service chain).
pub fn external_chain(key: &ServicePortKey, proto: Protocol) -> String {
    format!("SKIFF-EXT-{}", hash16(&[&key.to_string(), proto.as_str()]))
}

/// `SKIFF-SEP-<hash>`: the DNAT chain of one endpoint of a service port.
pub fn endpoint_chain(key: &ServicePortKey, proto: Protocol, ep: &Endpoint) -> String {
    let addr = format!("{}:{}", ep.ip, ep.port);
    format!(
        "SKIFF-SEP-{}",
        hash16(&[&key.to_string(), proto.as_str(), &addr])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_of_sha256() {
        // sha256("") = e3b0c442 98fc1c14 9afb...; base32 of its first 10 bytes.
        assert_eq!(hash16(&[""]), "4OYMIQUY7QOBJGX3");
        let name = service_chain(&ServicePortKey::new("ns", "svc", "http"), Protocol::Tcp);
        assert_eq!(name.len(), 26);
        assert!(
            name.len() <= 28,
            "iptables chain names are limited to 28 characters"
        );
    }
}
