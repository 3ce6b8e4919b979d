//! Proxy sync benchmark (not a timed test; run by `scripts/bench-proxy.sh`).
//!
//! For 1k, 5k and 10k ClusterIP Services with 4 endpoints each, in
//! throwaway network namespaces, prints side by side: skiff's full sync
//! (generation + iptables-save + the restores: one on legacy, several on
//! iptables-nft), raw `iptables-restore --noflush` runs of the very same
//! texts in a fresh namespace (the floor), and the time from changing one
//! endpoint to `sync()` returning with the rule in the kernel (partial
//! sync; median of 7, spread printed for the largest size). Also the
//! generator's heap for the largest size, measured by a counting allocator.
//!
//! Sizes can be overridden: `SKIFF_BENCH_SIZES=1000,2000`; the binaries
//! with `SKIFF_BENCH_IPTABLES=legacy` or `=nft` (default: whatever
//! `iptables-restore` is on PATH); the full sync's chunking with
//! `SKIFF_BENCH_CHAINS_PER_RESTORE=N` (0: one restore).

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

/// Passes through to a real backend and keeps the restore texts (a full
/// sync on iptables-nft is several restores).
struct Recording<I> {
    inner: I,
    texts: Vec<String>,
}

impl<I: Iptables> Iptables for Recording<I> {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        self.texts.push(text.to_string());
        self.inner.restore(text)
    }
    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        self.inner.save(table)
    }
    fn chains_per_restore(&self) -> Option<usize> {
        self.inner.chains_per_restore()
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

/// (restore, save, iptables) binaries chosen by `SKIFF_BENCH_IPTABLES`.
fn binaries() -> (&'static str, &'static str, &'static str) {
    match std::env::var("SKIFF_BENCH_IPTABLES").as_deref() {
        Ok("legacy") => (
            "iptables-legacy-restore",
            "iptables-legacy-save",
            "iptables-legacy",
        ),
        Ok("nft") => ("iptables-nft-restore", "iptables-nft-save", "iptables-nft"),
        _ => ("iptables-restore", "iptables-save", "iptables"),
    }
}

/// `SKIFF_BENCH_CHAINS_PER_RESTORE=N` (0: no limit) overrides the backend's
/// default chunking of full syncs.
fn real(netns: &str) -> RealIptables {
    let (restore, save, _) = binaries();
    let ipt = RealIptables::in_netns(netns).with_commands(restore, save);
    match std::env::var("SKIFF_BENCH_CHAINS_PER_RESTORE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(0) => ipt.with_chains_per_restore(None),
        Some(n) => ipt.with_chains_per_restore(Some(n)),
        None => ipt,
    }
}

/// Runs the texts one after the other, each with its own
/// `iptables-restore --noflush`, as skiff did; the total wall time.
fn raw_restore(netns: &str, texts: &[String]) -> Duration {
    let start = Instant::now();
    for text in texts {
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
        assert!(st.success(), "raw iptables-restore failed");
    }
    start.elapsed()
}

/// `iptables -t nat -S chain` in the namespace (one chain: cheap at any size).
fn list_chain(netns: &str, chain: &str) -> String {
    let out = Command::new("nsenter")
        .args([
            &format!("--net={netns}"),
            binaries().2,
            "-w",
            "-t",
            "nat",
            "-S",
            chain,
        ])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One row of `scripts/bench.sh`'s summary table, appended (tab-separated) to the file named by
/// `BENCH_RESULTS` when that is set.
fn bench_result(cells: [&str; 6]) {
    let Some(path) = std::env::var_os("BENCH_RESULTS") else {
        return;
    };
    use std::io::Write;
    let line = format!("{}\n", cells.join("\t"));
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(err) = written {
        eprintln!("cannot append to BENCH_RESULTS {path:?}: {err}");
    }
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
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
    let mut partial_report = None;
    let variant = RealIptables::new()
        .with_commands(binaries().0, binaries().1)
        .variant()
        .to_string();
    println!("iptables-restore variant: {variant}; 4 endpoints per Service; times are wall clock");
    println!();
    println!(
        "{:>8} {:>9} {:>9} {:>8} {:>12} {:>12} {:>7} {:>11} {:>11} {:>11}",
        "services",
        "rules",
        "MiB text",
        "restores",
        "skiff full",
        "raw restore",
        "ratio",
        "1-endpoint",
        "raw same",
        "resync"
    );

    for &n in &sizes {
        let skiff_ns = Netns::new();
        let mut p = Proxier::new(
            Recording {
                inner: real(&skiff_ns.path()),
                texts: Vec::new(),
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
        let texts = std::mem::take(&mut p.iptables().texts);
        let rules: usize = texts
            .iter()
            .map(|t| {
                t.lines()
                    .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
                    .count()
            })
            .sum();
        let bytes: usize = texts.iter().map(|t| t.len()).sum();

        let raw_ns = Netns::new();
        let raw = raw_restore(&raw_ns.path(), &texts);
        drop(raw_ns);
        let restores = texts.len();
        drop(texts);

        // One endpoint of one Service changes; time until sync() returns
        // with the rule in the kernel.
        let mut times = Vec::new();
        let mut raw_partial = Vec::new();
        for round in 1..=7u32 {
            let i = (round as usize * 997) % n;
            let mut eps = endpoints(i, 0);
            eps[3] = endpoints(i, round)[3];
            let start = Instant::now();
            p.update(service(i), eps.clone());
            let stats = p.sync().expect("partial sync");
            times.push(start.elapsed());
            assert!(!stats.full);
            let sp = service(i);
            let sep = skiff::proxy::chains::endpoint_chain(&sp.key, sp.protocol, &eps[3]);
            let in_kernel = || {
                list_chain(&skiff_ns.path(), &sep)
                    .contains(&format!("--to-destination {}:8080", eps[3].ip))
            };
            assert!(in_kernel(), "changed endpoint is in the kernel");
            // The floor: the same text restored raw in the same namespace
            // (after skiff undid it), i.e. the kernel's and iptables-restore's
            // cost of that commit at this size.
            let forward = p.iptables().texts.pop().expect("a partial restore");
            p.update(service(i), endpoints(i, 0));
            p.sync().expect("partial sync back");
            let back = p.iptables().texts.pop().expect("a partial restore back");
            raw_partial.push(raw_restore(
                &skiff_ns.path(),
                std::slice::from_ref(&forward),
            ));
            assert!(in_kernel(), "the raw restore applied it too");
            // Back to the original so every round changes exactly one
            // endpoint and the kernel matches what skiff applied.
            raw_restore(&skiff_ns.path(), std::slice::from_ref(&back));
        }
        p.iptables().texts.clear();
        times.sort();
        // A periodic full resync over the live rules (jumps installed).
        p.request_full_sync();
        let start = Instant::now();
        assert!(p.sync().expect("resync").full);
        let resync = start.elapsed();
        p.iptables().texts.clear();
        raw_partial.sort();
        println!(
            "{:>8} {:>9} {:>9.1} {:>8} {:>12} {:>12} {:>6.2}x {:>11} {:>11} {:>11}",
            n,
            rules,
            bytes as f64 / 1048576.0,
            restores,
            ms(full),
            ms(raw),
            full.as_secs_f64() / raw.as_secs_f64(),
            ms(times[times.len() / 2]),
            ms(raw_partial[raw_partial.len() / 2]),
            ms(resync),
        );
        let ratio = full.as_secs_f64() / raw.as_secs_f64();
        bench_result([
            &format!("proxy full sync, {n} Services x 4 endpoints (ms)"),
            &format!("{:.0}", full.as_secs_f64() * 1000.0),
            &format!("{:.0} (raw iptables-restore)", raw.as_secs_f64() * 1000.0),
            &format!("{ratio:.2}x"),
            "skiff/raw <= 1.3x",
            yes_no(ratio <= 1.3),
        ]);
        if n == largest {
            let median = times[times.len() / 2].as_secs_f64() * 1000.0;
            let raw_median = raw_partial[raw_partial.len() / 2].as_secs_f64() * 1000.0;
            bench_result([
                &format!("one-endpoint change at {n} Services, rule in kernel (median ms)"),
                &format!("{median:.1}"),
                &format!("{raw_median:.1} (raw restore of the same text)"),
                &format!("{:.2}x", median / raw_median),
                "< 100 ms",
                yes_no(median < 100.0),
            ]);
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
    println!(
        "1-endpoint: median of 7 one-endpoint changes, sync() until the rule is in the kernel; \
         raw same: the same restore text run raw in the same namespace; \
         resync: a periodic full sync over the live rules"
    );
    println!("targets: full sync <= 1.3x raw restore; one-endpoint change at 10k < 100 ms");
}
