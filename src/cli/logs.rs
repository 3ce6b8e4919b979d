//! `skiff logs POD`: streams a container's log to stdout as it arrives.

use std::io::{self, Write};

use hyper::Method;

use super::client::{Client, ClientError, encode_component, with_query};
use super::{Error, GlobalArgs};

/// Arguments of `skiff logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Name of the pod.
    pub pod: String,

    /// Container to read; required when the pod has several.
    #[arg(short = 'c', long)]
    pub container: Option<String>,

    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Print the log of the previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,

    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,

    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

/// The request path for `args`.
pub fn log_path(namespace: &str, args: &LogsArgs) -> String {
    let tail = args.tail.map(|n| n.to_string());
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = &args.container {
        query.push(("container", c));
    }
    if args.follow {
        query.push(("follow", "true"));
    }
    if args.previous {
        query.push(("previous", "true"));
    }
    if let Some(n) = &tail {
        query.push(("tailLines", n));
    }
    if args.timestamps {
        query.push(("timestamps", "true"));
    }
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/log",
        encode_component(namespace),
        encode_component(&args.pod)
    );
    with_query(&path, &query)
}

/// Runs `skiff logs`.
pub async fn run(client: &Client, g: &GlobalArgs, args: LogsArgs) -> Result<u8, Error> {
    let path = log_path(&g.namespace, &args);
    let mut stream = match client.stream(Method::GET, &path).await {
        Ok(s) => s,
        // "a container name must be specified ...": a usage hint, printed as kubectl does.
        Err(ClientError::Server(err)) if err.code == 400 => {
            eprintln!("error: {}", err.message);
            return Ok(1);
        }
        Err(err) => return Err(err.into()),
    };
    let mut stdout = io::stdout().lock();
    loop {
        let chunk = stream
            .next_chunk()
            .await
            .map_err(|source| ClientError::Http {
                socket: client.socket().to_owned(),
                method: Method::GET,
                path: path.clone(),
                source,
            })?;
        let Some(chunk) = chunk else { break };
        stdout
            .write_all(&chunk)
            .and_then(|()| stdout.flush())
            .map_err(Error::Output)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(argv: &[&str]) -> LogsArgs {
        let cli = Cli::try_parse_from(argv).expect("parse");
        match cli.command {
            Command::Logs(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            log_path("default", &args(&["skiff", "logs", "web"])),
            "/api/v1/namespaces/default/pods/web/log"
        );
        assert_eq!(
            log_path(
                "kube-system",
                &args(&[
                    "skiff",
                    "logs",
                    "web",
                    "-c",
                    "app",
                    "-f",
                    "--previous",
                    "--tail",
                    "20",
                    "--timestamps"
                ])
            ),
            "/api/v1/namespaces/kube-system/pods/web/log?container=app&follow=true&previous=true&tailLines=20&timestamps=true"
        );
    }
}
