//! The `skiff` command line: a kubectl-like reader of skiffd's API on its unix socket.
//!
//! `src/bin/skiff.rs` only parses flags and calls [`run`]. Each subcommand lives in its own
//! file; the pure formatting (tables, pod status, ages, describe text) is in [`print`] so it
//! can be tested with hand-built objects.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod client;
pub mod describe;
pub mod exec;
pub mod exec_stream;
pub mod get;
pub mod humanize;
pub mod image;
pub mod images;
pub mod kubeconfig;
pub mod logs;
pub mod print;
pub mod pull;
pub mod rmi;
pub mod table;
pub mod tabwriter;
pub mod version;

use client::{Client, ClientError};

/// Default location of skiffd's API socket.
pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";

/// skiff: read and drive the static pods run by skiffd on this node.
#[derive(Debug, Parser)]
#[command(name = "skiff", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Path of skiffd's API socket.
    #[arg(long, global = true, env = "SKIFF_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Namespace to act in.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    pub namespace: String,

    /// List objects across all namespaces.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Display one or many pods, events or nodes.
    Get(get::GetArgs),
    /// Show details of a pod or node, with its events.
    Describe(describe::DescribeArgs),
    /// Print the logs of a container in a pod.
    Logs(logs::LogsArgs),
    /// Run a command in a container.
    Exec(exec::ExecArgs),
    /// List images in skiffd's image store.
    Images(images::ImagesArgs),
    /// Manage images: import, ls, rm, pull, inspect, export, prune.
    Image(image::ImageArgs),
    /// Pull an image from a registry into skiffd's store.
    Pull(pull::PullArgs),
    /// Remove one or more images.
    Rmi(rmi::RmiArgs),
    /// Print the client version.
    Version(version::VersionArgs),
    /// Print a kubeconfig for skiffd's TLS API (kubectl --kubeconfig <(skiff kubeconfig) ...); needs root.
    Kubeconfig(kubeconfig::KubeconfigArgs),
}

/// Everything that can make a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to skiffd failed, or skiffd answered with an error status.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing our own output failed.
    #[error("error: cannot write output: {0}")]
    Output(#[source] io::Error),
    /// A local file given on the command line is unusable.
    #[error("error: {}: {source}", path.display())]
    LocalFile { path: PathBuf, source: io::Error },
    /// Rendering `-o json|yaml` failed.
    #[error("error: cannot render {format}: {message}")]
    Render {
        format: &'static str,
        message: String,
    },
    /// The flags make no sense together.
    #[error("error: {0}")]
    Usage(String),
    /// The exec stream was malformed or ended early.
    #[error("error: exec: {0}")]
    Exec(String),
}

impl Error {
    /// True when our stdout or stderr was closed by the reader (`skiff logs | head`):
    /// that is a normal way to stop, not a failure worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs the parsed command line and returns the process exit status.
pub async fn run(cli: Cli) -> Result<u8, Error> {
    let client = Client::new(cli.global.socket.clone());
    let g = &cli.global;
    match cli.command {
        Command::Get(args) => get::run(&client, g, args).await,
        Command::Describe(args) => describe::run(&client, g, args).await,
        Command::Logs(args) => logs::run(&client, g, args).await,
        Command::Exec(args) => exec::run(&client, g, args).await,
        Command::Images(args) => images::run(&client, args).await,
        Command::Image(args) => image::run(&client, args).await,
        Command::Pull(args) => pull::run(&client, args).await,
        Command::Rmi(args) => rmi::run(&client, args).await,
        Command::Version(args) => version::run(args),
        Command::Kubeconfig(args) => kubeconfig::run(args),
    }
}

/// Writes `text` to stdout as is.
pub(crate) fn out(text: &str) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::Output)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "skiff",
            "get",
            "po",
            "web",
            "-n",
            "kube-system",
            "-o",
            "wide",
        ])
        .expect("parse");
        assert_eq!(cli.global.namespace, "kube-system");
        assert!(!cli.global.all_namespaces);
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.resource, get::Resource::Pods);
        assert_eq!(args.name.as_deref(), Some("web"));
        assert_eq!(args.output, Some(get::OutputFormat::Wide));
    }

    #[test]
    fn exec_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from(["skiff", "exec", "web", "-c", "app", "--", "ls", "-l", "/"])
            .expect("parse");
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.pod, "web");
        assert_eq!(args.container.as_deref(), Some("app"));
        assert_eq!(args.command, ["ls", "-l", "/"]);
    }

    #[test]
    fn logs_flags() {
        let cli = Cli::try_parse_from(["skiff", "logs", "web", "-p", "-f", "--tail", "10", "-A"])
            .expect("parse");
        assert!(cli.global.all_namespaces);
        let Command::Logs(args) = cli.command else {
            panic!("not logs")
        };
        assert!(args.previous && args.follow);
        assert_eq!(args.tail, Some(10));
    }
}
