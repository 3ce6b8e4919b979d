//! Pull an image into a store and report timings; used by `scripts/bench-pull.sh`.
//!
//! ```text
//! cargo run --release -p images --example pull -- [--plain-http] [--progress] ROOT REFERENCE
//! ```
//!
//! Prints `cold_ms` (first pull into ROOT: download, verify, unpack), `warm_ms` (the same pull
//! again: one manifest request, everything cached) and `resolve_us` (what an IfNotPresent
//! container start costs: a store lookup plus the layer directories).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use images::{ImageStore, Progress, PullOptions, Puller, PullerConfig, RegistriesConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain_http = take_flag(&mut args, "--plain-http");
    let progress = take_flag(&mut args, "--progress");
    let [root, reference] = args.as_slice() else {
        eprintln!("usage: pull [--plain-http] [--progress] ROOT REFERENCE");
        return ExitCode::from(2);
    };
    let registries = if plain_http {
        let host = images::reference::Reference::parse_normalized(reference)
            .map(|r| r.domain)
            .unwrap_or_default();
        match RegistriesConfig::parse(
            &format!("[registry.\"{host}\"]\nplain_http = true\n"),
            "cli",
        ) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        RegistriesConfig::default()
    };
    let store = match ImageStore::open(root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let puller = Puller::new(
        store.clone(),
        PullerConfig {
            registries,
            ..PullerConfig::default()
        },
    );
    let mut options = PullOptions::default();
    if progress {
        options.progress = Some(Arc::new(|p: &Progress| {
            eprintln!(
                "layer {}/{} {} {:?} {}/{}",
                p.index + 1,
                p.layers,
                &p.layer[7..19],
                p.phase,
                p.done,
                p.total
            )
        }));
    }
    let started = Instant::now();
    let image = match puller.pull(reference, &options).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pull {reference}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cold = started.elapsed();
    let started = Instant::now();
    if let Err(e) = puller.pull(reference, &PullOptions::default()).await {
        eprintln!("warm pull {reference}: {e}");
        return ExitCode::FAILURE;
    }
    let warm = started.elapsed();
    let started = Instant::now();
    let found = store
        .resolve(reference)
        .ok()
        .flatten()
        .and_then(|i| store.layer_dirs(&i).ok());
    let resolve = started.elapsed();
    if found.is_none() {
        eprintln!("{reference}: not found in the store after pulling");
        return ExitCode::FAILURE;
    }
    println!("image {} layers {}", image.id, image.diff_ids.len());
    println!("cold_ms {:.1}", cold.as_secs_f64() * 1e3);
    println!("warm_ms {:.1}", warm.as_secs_f64() * 1e3);
    println!("resolve_us {}", resolve.as_micros());
    ExitCode::SUCCESS
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}
