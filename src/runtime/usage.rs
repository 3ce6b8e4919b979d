//! Resource usage as the kubelet's summary API reports it (cAdvisor's numbers): cumulative
//! CPU time and the memory working set (usage minus inactive file pages), of a container's
//! cgroup on v1 (`cpuacct`, `memory`) or v2 (`cpu.stat`, `memory.current`), and of the node
//! (`/proc/stat`, `/proc/meminfo`).

use std::fs;
use std::path::Path;

use super::cgkill;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the cgroup (or the node) started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory working set in bytes.
    pub memory_working_set: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `memory.stat`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The usage of the cgroup `rel` (e.g. `skiff/pod<uid>/<id>`), or `None` when it is gone.
pub fn cgroup(rel: &str) -> Option<Usage> {
    let mut cpu = None;
    let mut mem = None;
    for dir in cgkill::dirs(rel) {
        // v1 controllers first: on a hybrid host the unified tree has no controllers.
        if cpu.is_none()
            && let Some(ns) = read_u64(&dir.join("cpuacct.usage"))
        {
            cpu = Some(ns);
        }
        if mem.is_none()
            && let Some(usage) = read_u64(&dir.join("memory.usage_in_bytes"))
        {
            let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
            mem = Some(usage.saturating_sub(inactive));
        }
    }
    for dir in cgkill::dirs(rel) {
        if cpu.is_none()
            && let Ok(stat) = fs::read_to_string(dir.join("cpu.stat"))
            && let Some(us) = stat_value(&stat, "usage_usec")
        {
            cpu = Some(us * 1000);
        }
        if mem.is_none()
            && let Some(current) = read_u64(&dir.join("memory.current"))
        {
            let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
            mem = Some(current.saturating_sub(inactive));
        }
    }
    if cpu.is_none() && mem.is_none() {
        return None;
    }
    Some(Usage {
        cpu_ns: cpu.unwrap_or(0),
        memory_working_set: mem.unwrap_or(0),
    })
}

/// The node's usage: busy CPU time of all CPUs and memory in use (total minus available).
pub fn node() -> Option<Usage> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    Some(Usage {
        cpu_ns: node_cpu_ns(&stat)?,
        memory_working_set: node_memory(&meminfo)?,
    })
}

/// Busy time of the `cpu` line of `/proc/stat` (everything but idle and iowait), in ns.
fn node_cpu_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user/nice).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(busy * (1_000_000_000 / hz))
}

fn node_memory(meminfo: &str) -> Option<u64> {
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((kb("MemTotal")?.saturating_sub(kb("MemAvailable")?)) * 1024)
}

/// The node's capacity: (CPUs in millicores, memory in bytes).
pub fn node_capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                rest.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0)
        * 1024;
    (cpus * 1000, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_figures_come_from_proc() {
        let stat = "cpu  100 20 30 5000 7 1 2 3 0 0\ncpu0 50 10 15 2500 3 0 1 1 0 0\n";
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(node_cpu_ns(stat), Some(156 * (1_000_000_000 / hz)));
        let mem = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:   12000 kB\n";
        assert_eq!(node_memory(mem), Some(4000 * 1024));
        assert!(node().is_some());
    }

    #[test]
    fn stat_files_are_read_by_key() {
        let s = "usage_usec 1234\nuser_usec 1000\n";
        assert_eq!(stat_value(s, "usage_usec"), Some(1234));
        assert_eq!(stat_value(s, "user_usec"), Some(1000));
        assert_eq!(stat_value(s, "nope"), None);
        assert_eq!(cgroup("skiff/podnothing/none"), None);
    }
}
