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
    /// At most how many chains one restore should declare, for a backend
    /// whose cost per restore grows with the square of that number
    /// (`iptables-nft-restore`); `None`: no limit, one restore per sync.
    fn chains_per_restore(&self) -> Option<usize> {
        None
    }
    /// Whether `chain` exists in `table`; the real backend lists only that chain, so this stays
    /// cheap however many rules the other tables hold.
    fn has_chain(&mut self, table: &str, chain: &str) -> bool {
        self.save(table).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix(':')
                    .and_then(|d| d.split_whitespace().next())
                    == Some(chain)
            })
        })
    }
}

impl<T: Iptables + ?Sized> Iptables for &mut T {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        (**self).restore(text)
    }
    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        (**self).save(table)
    }
    fn has_chain(&mut self, table: &str, chain: &str) -> bool {
        (**self).has_chain(table, chain)
    }
    fn chains_per_restore(&self) -> Option<usize> {
        (**self).chains_per_restore()
    }
}

/// Chains per restore for `iptables-nft-restore`. Before sending anything
/// it files the name of every chain a command names (the chain, the jump
/// target) in a sorted linked list, one linear walk per command, so a
/// restore of n chains costs O(n²): 1k Services x 4 endpoints (5k chains)
/// take about a second, 2k four, 10k minutes. Each commit, on the other
/// hand, has the kernel validate every rule reachable from the built-in
/// chains (about 40 ms at 10k Services x 4 endpoints in large-cluster
/// mode, twice that with comments, once skiff's jumps are in), so chunks
/// are not made small either: 1000
/// chains (200 such Services) cost about the same as 500 on an empty table
/// and half as much on a live one.
pub const NFT_CHAINS_PER_RESTORE: usize = 1000;

/// Runs `iptables-restore`/`iptables-save` from `PATH`, whichever variant
/// (nf_tables or legacy) they are; optionally inside a network namespace
/// through `nsenter --net=PATH` (tests and the benchmark).
#[derive(Debug, Clone)]
pub struct RealIptables {
    netns: Option<PathBuf>,
    restore_cmd: String,
    save_cmd: String,
    variant: String,
    chains_per_restore: Option<Option<usize>>,
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
            chains_per_restore: None,
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

    /// Overrides how many chains one restore declares at most (default:
    /// [`NFT_CHAINS_PER_RESTORE`] for nf_tables, no limit for legacy).
    pub fn with_chains_per_restore(mut self, limit: Option<usize>) -> RealIptables {
        self.chains_per_restore = Some(limit);
        self
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

    fn has_chain(&mut self, table: &str, chain: &str) -> bool {
        // `iptables-restore` -> `iptables`, `iptables-legacy-restore` -> `iptables-legacy`.
        let list = self.restore_cmd.replace("-restore", "");
        self.run(&list, &["-w", "-t", table, "-n", "-L", chain], None)
            .is_ok()
    }

    fn chains_per_restore(&self) -> Option<usize> {
        match self.chains_per_restore {
            Some(limit) => limit,
            None if self.variant == "nf_tables" => Some(NFT_CHAINS_PER_RESTORE),
            None => None,
        }
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
    /// What `chains_per_restore` answers (default: no limit).
    pub chains_per_restore: Option<usize>,
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

    fn chains_per_restore(&self) -> Option<usize> {
        self.chains_per_restore
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
