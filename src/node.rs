//! This node's capacity and allocatable resources.

use std::sync::OnceLock;

/// Memory kept back from pods, like the kubelet's default hard eviction threshold.
pub const RESERVED_MEMORY: i64 = 100 << 20;

/// (cpu millicores, memory bytes) of the machine.
pub fn capacity() -> (i64, i64) {
    static CAP: OnceLock<(i64, i64)> = OnceLock::new();
    *CAP.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
        let kib: i64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (cpus * 1000, kib * 1024)
    })
}

/// What pods may request in total.
pub fn allocatable() -> (i64, i64) {
    let (cpu, mem) = capacity();
    (cpu, (mem - RESERVED_MEMORY).max(0))
}
