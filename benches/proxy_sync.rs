//! Proxy sync benchmark (not a timed test; run by `scripts/bench-proxy.sh`).
//!
//! For 1k, 5k and 10k ClusterIP Services with 4 endpoints each, in
//! throwaway network namespaces, prints side by side: skiff's full sync
//! (generation + iptables-save + one iptables-restore), a raw
//! `iptables-restore --noflush` of the very same text in a fresh namespace
//! (the floor), and at the largest size the time from changing one endpoint
//! to `sync()` returning with the rule in the kernel (partial sync). Also the
//! generator's heap for the largest size, measured by a counting allocator.
//!
//! Sizes can be overridden: `SKIFF_BENCH_SIZES=1000,2000`; the binaries
//! with `SKIFF_BENCH_IPTABLES=legacy` or `=nft` (default: whatever
//! `iptables-restore` is on PATH).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skiff::proxy::{
    Endpoint, FakeConntrack, FakeIptables, Iptables, IptablesError, Protocol, Proxier,
    RealIptables, RuleConfig, ServicePort, ServicePortKey,
};

/// Counts live heap bytes and the high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every allocation to the system allocator unchanged and
// only updates counters on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A throwaway network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let mut buf = [0u8; 4];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .expect("urandom");
        let name = format!(
            "skiff-px-bench-{}",
            buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Passes through to a real backend and keeps the last restore text.
struct Recording<I> {
    inner: I,
    last: String,
}

impl<I: Iptables> Iptables for Recording<I> {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        self.last = text.to_string();
        self.inner.restore(text)
    }
    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        self.inner.save(table)
    }
}

fn service(i: usize) -> ServicePort {
    ServicePort {
        key: ServicePortKey::new("bench", &format!("svc-{i}"), "http"),
        protocol: Protocol::Tcp,
        cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32),
        port: 80,
        node_port: None,
        external_ips: vec![],
        session_affinity_timeout: None,
    }
}

fn endpoints(i: usize, generation: u32) -> Vec<Endpoint> {
    (0..4u32)
        .map(|j| {
            let n =
                u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i as u32) * 4 + j + generation * 65536;
            Endpoint::ready(Ipv4Addr::from(n), 8080)
        })
        .collect()
}

fn config() -> RuleConfig {
    RuleConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RuleConfig::default()
    }
}

/// (restore, save) binaries chosen by `SKIFF_BENCH_IPTABLES`.
fn binaries() -> (&'static str, &'static str) {
    match std::env::var("SKIFF_BENCH_IPTABLES").as_deref() {
        Ok("legacy") => ("iptables-legacy-restore", "iptables-legacy-save"),
        Ok("nft") => ("iptables-nft-restore", "iptables-nft-save"),
        _ => ("iptables-restore", "iptables-save"),
    }
}

fn real(netns: &str) -> RealIptables {
    let (restore, save) = binaries();
    RealIptables::in_netns(netns).with_commands(restore, save)
}

fn raw_restore(netns: &str, text: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("nsenter")
        .args([
            &format!("--net={netns}"),
            binaries().0,
            "--noflush",
            "--wait",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let st = child.wait().unwrap();
    let elapsed = start.elapsed();
    assert!(st.success(), "raw iptables-restore failed");
    elapsed
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the proxy benchmark needs root (it uses throwaway network namespaces)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("SKIFF_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000, 10000]);
    let largest = *sizes.iter().max().unwrap_or(&0);
    let variant = RealIptables::new()
        .with_commands(binaries().0, binaries().1)
        .variant()
        .to_string();
    println!("iptables-restore variant: {variant}; 4 endpoints per Service; times are wall clock");
    println!();
    println!(
        "{:>8} {:>9} {:>9} {:>14} {:>14} {:>7}",
        "services", "rules", "MiB text", "skiff full", "raw restore", "ratio"
    );

    let mut partial_report = None;
    for &n in &sizes {
        let skiff_ns = Netns::new();
        let mut p = Proxier::new(
            Recording {
                inner: real(&skiff_ns.path()),
                last: String::new(),
            },
            FakeConntrack::default(),
            config(),
        );
        let start = Instant::now();
        for i in 0..n {
            p.update(service(i), endpoints(i, 0));
        }
        p.sync().expect("full sync");
        let full = start.elapsed();
        let text = std::mem::take(&mut p.iptables().last);
        let rules = text
            .lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
            .count();

        let raw_ns = Netns::new();
        let raw = raw_restore(&raw_ns.path(), &text);
        drop(raw_ns);
        println!(
            "{:>8} {:>9} {:>9.1} {:>14} {:>14} {:>6.2}x",
            n,
            rules,
            text.len() as f64 / 1048576.0,
            ms(full),
            ms(raw),
            full.as_secs_f64() / raw.as_secs_f64()
        );
        drop(text);

        if n == largest {
            // One endpoint of one Service changes; time until the kernel has it.
            let mut times = Vec::new();
            for round in 1..=7u32 {
                let i = (round as usize * 997) % n;
                let mut eps = endpoints(i, 0);
                eps[3] = endpoints(i, round)[3];
                let start = Instant::now();
                p.update(service(i), eps.clone());
                let stats = p.sync().expect("partial sync");
                times.push(start.elapsed());
                assert!(!stats.full);
                let saved = p.iptables().inner.save("nat").unwrap();
                assert!(
                    saved.contains(&format!("--to-destination {}:8080", eps[3].ip)),
                    "changed endpoint is in the kernel"
                );
                // Back to the original so every round changes exactly one endpoint.
                p.update(service(i), endpoints(i, 0));
                p.sync().expect("partial sync back");
            }
            times.sort();
            partial_report = Some((n, times));
        }
    }

    if let Some((n, times)) = partial_report {
        println!();
        println!(
            "one-endpoint change at {n} services -> rule in kernel: median {}, min {}, max {} ({} runs)",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            times.len()
        );
    }

    // Generator memory: the proxier's live heap after a full sync of the
    // largest size with a fake backend, and the peak while syncing.
    if largest > 0 {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let mut p = Proxier::new(FakeIptables::default(), FakeConntrack::default(), config());
        let gen_start = Instant::now();
        for i in 0..largest {
            p.update(service(i), endpoints(i, 0));
        }
        p.sync().unwrap();
        let gen_time = gen_start.elapsed();
        // The fake keeps a copy of the text; drop it to see the proxier alone.
        p.iptables().restores.clear();
        p.iptables().restores.shrink_to_fit();
        let live = LIVE.load(Ordering::Relaxed) - base;
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "generator at {largest} services: {:.1} MiB held after sync, {:.1} MiB peak during a full sync; generation alone {}",
            live as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            ms(gen_time)
        );
    }
    println!();
    println!("targets: full sync <= 1.3x raw restore; one-endpoint change at 10k < 100 ms");
}
