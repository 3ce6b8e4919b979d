//! skiffd: the node agent. Parses flags and runs `skiff::daemon::run`.

use clap::Parser;
use skiff::config::{Config, Flags};

fn main() -> std::process::ExitCode {
    let config = match Config::load(Flags::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiffd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiffd: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if config.cleanup_iptables {
        for what in skiff::overlay::agent::remove_leftovers() {
            tracing::info!(removed = %what, "removed the overlay's state");
        }
        let mut ipt = skiff::proxy::RealIptables::new();
        let _ = skiff::proxy::remove_canary(&mut ipt);
        return match skiff::proxy::cleanup(&mut ipt) {
            Ok(()) => {
                tracing::info!("removed every iptables rule skiff installed");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cleaning up iptables");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result = rt.block_on(skiff::daemon::run(config, shutdown_signal()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "skiffd failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
