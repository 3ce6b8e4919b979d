//! The iptables backend: `iptables-restore --noflush --wait` to apply and
//! `iptables-save -t TABLE` to read, behind a trait so that the proxier is
//! unit-tested with a recording fake.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tracing::info;

/// A failed iptables command.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The binary could not be started.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The binary exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr (iptables-restore names the line).
        stderr: String,
    },
    /// A fake was told to fail.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Applies and reads IPv4 iptables rules.
pub trait Iptables {
    /// Applies restore-format text with `--noflush --wait`, atomically per
    /// table.
    fn restore(&mut self, text: &str) -> Result<(), IptablesError>;
    /// Returns `iptables-save -t table`.
    fn save(&mut self, table: &str) -> Result<String, IptablesError>;
}

impl<T: Iptables + ?Sized> Iptables for &mut T {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        (**self).restore(text)
    }
    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        (**self).save(table)
    }
}

/// Runs `iptables-restore`/`iptables-save` from `PATH`, whichever variant
/// (nf_tables or legacy) they are; optionally inside a network namespace
/// through `nsenter --net=PATH` (tests and the benchmark).
#[derive(Debug, Clone)]
pub struct RealIptables {
    netns: Option<PathBuf>,
    restore_cmd: String,
    save_cmd: String,
    variant: String,
}

impl RealIptables {
    /// Uses the host's (the current) network namespace.
    pub fn new() -> RealIptables {
        RealIptables::build(None)
    }

    /// Runs every command inside the network namespace at `path`
    /// (`/run/netns/NAME`).
    pub fn in_netns(path: impl Into<PathBuf>) -> RealIptables {
        RealIptables::build(Some(path.into()))
    }

    /// Uses other binaries than `iptables-restore`/`iptables-save`, e.g.
    /// `iptables-legacy-restore` and `iptables-legacy-save`.
    pub fn with_commands(mut self, restore: &str, save: &str) -> RealIptables {
        self.restore_cmd = restore.into();
        self.save_cmd = save.into();
        self.detect_variant();
        self
    }

    fn build(netns: Option<PathBuf>) -> RealIptables {
        let mut ipt = RealIptables {
            netns,
            restore_cmd: "iptables-restore".into(),
            save_cmd: "iptables-save".into(),
            variant: String::new(),
        };
        ipt.detect_variant();
        ipt
    }

    fn detect_variant(&mut self) {
        // "iptables-restore v1.8.9 (nf_tables)" or "... (legacy)".
        let version = self
            .command(&self.restore_cmd)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        self.variant = if version.contains("nf_tables") {
            "nf_tables".into()
        } else if version.is_empty() {
            "unknown".into()
        } else {
            "legacy".into()
        };
        info!(%version, variant = %self.variant, "proxy: using iptables-restore from PATH");
    }

    /// `nf_tables`, `legacy` or `unknown`.
    pub fn variant(&self) -> &str {
        &self.variant
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg(program);
                c
            }
        }
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, IptablesError> {
        let command = format!("{program} {}", args.join(" "));
        let spawn = |source| IptablesError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = self
            .command(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as the command's failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Default for RealIptables {
    fn default() -> RealIptables {
        RealIptables::new()
    }
}

impl Iptables for RealIptables {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        self.run(&self.restore_cmd, &["--noflush", "--wait"], Some(text))
            .map(drop)
    }

    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        self.run(&self.save_cmd, &["-t", table], None)
    }
}

/// A fake that records every restore and answers saves from canned text.
#[derive(Debug, Default, Clone)]
pub struct FakeIptables {
    /// Every text passed to `restore`, in order (also the failed ones).
    pub restores: Vec<String>,
    /// Tables passed to `save`, in order.
    pub saves: Vec<String>,
    /// What `save` returns per table (empty when absent).
    pub saved: std::collections::BTreeMap<String, String>,
    /// Fail the next this many restores.
    pub fail_restores: usize,
}

impl Iptables for FakeIptables {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        self.restores.push(text.to_string());
        if self.fail_restores > 0 {
            self.fail_restores -= 1;
            return Err(IptablesError::Injected("restore".into()));
        }
        Ok(())
    }

    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        self.saves.push(table.to_string());
        Ok(self.saved.get(table).cloned().unwrap_or_default())
    }
}

/// What skiff finds of its own in an `iptables-save` dump.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `SKIFF-*` chains that exist.
    pub chains: Vec<String>,
    /// Rules in other chains that jump into `SKIFF-*` chains, as `-A` lines.
    pub jumps: Vec<String>,
}

/// Scans `iptables-save` output for skiff's chains and the jumps into them.
pub fn scan_saved(save: &str, prefix: &str) -> Installed {
    let mut found = Installed::default();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with(prefix) {
                found.chains.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("");
            let jumps_to_ours = rest
                .split(" -j ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .is_some_and(|t| t.starts_with(prefix));
            if !chain.starts_with(prefix) && jumps_to_ours {
                found.jumps.push(line.to_string());
            }
        }
    }
    found
}
