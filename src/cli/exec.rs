//! `skiff exec POD -- CMD [ARGS...]`: runs a command in a container, relays its output and
//! exits with its exit code.

use std::io::{self, Write};

use hyper::Method;

use super::client::{Client, ClientError, encode_component, with_query};
use super::exec_stream::{EXIT, FrameDecoder, STDERR, STDOUT};
use super::{Error, GlobalArgs};

/// Arguments of `skiff exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Name of the pod.
    pub pod: String,

    /// Container to run in; the server picks the only one when omitted.
    #[arg(short = 'c', long)]
    pub container: Option<String>,

    /// The command and its arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// The request path for `args`: each argv element is one `command` parameter.
pub fn exec_path(namespace: &str, args: &ExecArgs) -> String {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = &args.container {
        query.push(("container", c));
    }
    query.extend(args.command.iter().map(|a| ("command", a.as_str())));
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/exec",
        encode_component(namespace),
        encode_component(&args.pod)
    );
    with_query(&path, &query)
}

/// Runs `skiff exec`; the exit status is the remote command's.
pub async fn run(client: &Client, g: &GlobalArgs, args: ExecArgs) -> Result<u8, Error> {
    let path = exec_path(&g.namespace, &args);
    let mut stream = client.stream(Method::POST, &path).await?;
    let mut decoder = FrameDecoder::new();
    loop {
        let chunk = stream
            .next_chunk()
            .await
            .map_err(|source| ClientError::Http {
                socket: client.socket().to_owned(),
                method: Method::POST,
                path: path.clone(),
                source,
            })?;
        let Some(chunk) = chunk else {
            decoder.finish().map_err(|e| Error::Exec(e.to_string()))?;
            return Err(Error::Exec(
                "the stream ended without an exit status".into(),
            ));
        };
        decoder.push(&chunk);
        while let Some(frame) = decoder
            .next_frame()
            .map_err(|e| Error::Exec(e.to_string()))?
        {
            match frame.stream {
                STDOUT => write_flush(&mut io::stdout().lock(), &frame.payload)?,
                STDERR => write_flush(&mut io::stderr().lock(), &frame.payload)?,
                EXIT => {
                    let status = frame
                        .exit_status()
                        .map_err(|e| Error::Exec(e.to_string()))?;
                    if let Some(msg) = status.error.as_deref().filter(|m| !m.is_empty()) {
                        eprintln!("error: {msg}");
                    }
                    return Ok(exit_code(status.exit_code));
                }
                // The decoder only yields the three known streams.
                _ => {}
            }
        }
    }
}

fn write_flush(w: &mut impl Write, data: &[u8]) -> Result<(), Error> {
    w.write_all(data)
        .and_then(|()| w.flush())
        .map_err(Error::Output)
}

/// The process exit status for a remote exit code, truncated to 8 bits as a shell would.
fn exit_code(code: i32) -> u8 {
    (code & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn each_argument_is_a_command_parameter() {
        let cli = Cli::try_parse_from([
            "skiff",
            "exec",
            "web",
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "echo a&b /x",
        ])
        .expect("parse");
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(
            exec_path("default", &args),
            "/api/v1/namespaces/default/pods/web/exec?container=app&command=sh&command=-c&command=echo%20a%26b%20%2Fx"
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(127), 127);
        assert_eq!(exit_code(256 + 3), 3);
        assert_eq!(exit_code(-1), 255);
    }
}
