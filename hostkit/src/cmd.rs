//! Running host programs (`iptables-restore`, `conntrack`, `ethtool`, ...) with one error
//! shape, in the agent's own network namespace or inside another one through
//! `nsenter --net=PATH` (a fresh process enters it: no thread of ours ever calls setns).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// A program that could not be run, or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (missing binary, no permission), or its pipes broke.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed (iptables-restore names the failing line there).
        stderr: String,
    },
}

impl CmdError {
    /// The exit code of a program that ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { status, .. } => status.code(),
            CmdError::Spawn { .. } => None,
        }
    }
}

/// Where programs run: the current network namespace, or the one pinned at a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runner {
    netns: Option<PathBuf>,
}

impl Runner {
    /// Runs in the current network namespace.
    pub fn host() -> Runner {
        Runner { netns: None }
    }

    /// Runs inside the network namespace pinned at `path` (`/run/netns/NAME`).
    pub fn in_netns(path: impl Into<PathBuf>) -> Runner {
        Runner {
            netns: Some(path.into()),
        }
    }

    /// The namespace's path, if not the current one.
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The command for `program args...`, not yet run.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        c.args(args);
        c
    }

    /// Runs `program args...`; its stdout, or [`CmdError::Failed`] on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, CmdError> {
        self.run_input(program, args, None)
    }

    /// [`Runner::run`] with `input` on the program's stdin.
    pub fn run_input(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, CmdError> {
        let out = self.output(program, args, input)?;
        if !out.status.success() {
            return Err(failed(program, args, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `program args...` and returns what it did whatever its exit status, for callers
    /// that judge the status themselves (`iptables -C` exits 1 for "no such rule"); only a
    /// program that could not be run is an error.
    pub fn output(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Output, CmdError> {
        let spawn = |source| CmdError::Spawn {
            command: line(program, args),
            source,
        };
        let mut child = self
            .command(program, args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let (Some(data), Some(mut pipe)) = (input, child.stdin.take()) {
            // A program that stops reading early fails below with its own message.
            let _ = pipe.write_all(data);
        }
        child.wait_with_output().map_err(spawn)
    }

    /// Whether `program` is installed (optional tools such as ethtool or conntrack).
    pub fn has(&self, program: &str) -> bool {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(program).is_file())
    }
}

/// The error for a program that ran and exited unsuccessfully with `out`.
pub fn failed(program: &str, args: &[&str], out: &Output) -> CmdError {
    CmdError::Failed {
        command: line(program, args),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

fn line(program: &str, args: &[&str]) -> String {
    if args.is_empty() {
        program.to_string()
    } else {
        format!("{program} {}", args.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_of_a_success_and_the_stderr_of_a_failure() {
        let r = Runner::host();
        assert_eq!(r.run("echo", &["hi"]).unwrap(), "hi\n");
        assert_eq!(
            r.run_input("cat", &[], Some(b"piped")).unwrap(),
            "piped",
            "stdin reaches the program"
        );
        let e = r.run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert_eq!(e.code(), Some(3));
        assert_eq!(
            e.to_string(),
            "sh -c echo oops >&2; exit 3 failed (exit status: 3): oops"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let e = Runner::host()
            .run("skiff-no-such-program", &["x"])
            .unwrap_err();
        assert!(matches!(e, CmdError::Spawn { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("running skiff-no-such-program x: ")
        );
        assert_eq!(e.code(), None);
    }

    #[test]
    fn output_leaves_the_status_to_the_caller() {
        let out = Runner::host().output("false", &[], None).unwrap();
        assert_eq!(out.status.code(), Some(1));
    }

    #[test]
    fn a_namespace_runs_the_program_through_nsenter() {
        let c = Runner::in_netns("/run/netns/x").command("iptables", &["-L"]);
        assert_eq!(c.get_program(), "nsenter");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["--net=/run/netns/x", "--", "iptables", "-L"]);
    }
}
