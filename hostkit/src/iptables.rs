//! Applying and reading IPv4 iptables rules: `iptables-restore --noflush --wait` to apply,
//! `iptables-save -t TABLE` to read, `iptables -C`/`-A` for a single rule, behind a trait so that
//! rule-making code (the service proxy) is unit-tested with a recording fake. The one iptables
//! interface of skiff: the proxy, the overlay's masquerade rules and the CNI plugins use it.

use std::path::PathBuf;
use std::sync::OnceLock;

use tracing::info;

use crate::cmd::{CmdError, Runner};

/// A failed iptables operation.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The command could not be run or failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
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
    runner: Runner,
    restore_cmd: String,
    save_cmd: String,
    /// Found out the first time it matters (one exec less for a CNI plugin's ADD).
    variant: OnceLock<String>,
    chains_per_restore: Option<Option<usize>>,
}

impl RealIptables {
    /// Uses the host's (the current) network namespace.
    pub fn new() -> RealIptables {
        RealIptables::build(Runner::host())
    }

    /// Runs every command inside the network namespace at `path`
    /// (`/run/netns/NAME`).
    pub fn in_netns(path: impl Into<PathBuf>) -> RealIptables {
        RealIptables::build(Runner::in_netns(path))
    }

    /// Uses other binaries than `iptables-restore`/`iptables-save`, e.g.
    /// `iptables-legacy-restore` and `iptables-legacy-save`.
    pub fn with_commands(mut self, restore: &str, save: &str) -> RealIptables {
        self.restore_cmd = restore.into();
        self.save_cmd = save.into();
        self.variant = OnceLock::new();
        self
    }

    fn build(runner: Runner) -> RealIptables {
        RealIptables {
            runner,
            restore_cmd: "iptables-restore".into(),
            save_cmd: "iptables-save".into(),
            variant: OnceLock::new(),
            chains_per_restore: None,
        }
    }

    /// Overrides how many chains one restore declares at most (default:
    /// [`NFT_CHAINS_PER_RESTORE`] for nf_tables, no limit for legacy).
    pub fn with_chains_per_restore(mut self, limit: Option<usize>) -> RealIptables {
        self.chains_per_restore = Some(limit);
        self
    }

    /// `nf_tables`, `legacy` or `unknown`.
    pub fn variant(&self) -> &str {
        self.variant.get_or_init(|| {
            // "iptables-restore v1.8.9 (nf_tables)" or "... (legacy)".
            let version = self
                .runner
                .output(&self.restore_cmd, &["--version"], None)
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let variant = if version.contains("nf_tables") {
                "nf_tables"
            } else if version.is_empty() {
                "unknown"
            } else {
                "legacy"
            };
            info!(%version, variant, "using iptables-restore from PATH");
            variant.to_string()
        })
    }

    /// The single-rule binary of the same variant: `iptables-restore` -> `iptables`,
    /// `iptables-legacy-restore` -> `iptables-legacy`.
    fn iptables_cmd(&self) -> String {
        self.restore_cmd.replace("-restore", "")
    }

    /// `iptables -w -t table args...`; its stdout.
    pub fn run(&self, table: &str, args: &[&str]) -> Result<String, IptablesError> {
        let all = [&["-w", "-t", table], args].concat();
        Ok(self.runner.run(&self.iptables_cmd(), &all)?)
    }

    /// Whether `rule` is in `chain` (`iptables -C`: exit 1 is "no", another failure an error).
    pub fn exists(&self, table: &str, chain: &str, rule: &[&str]) -> Result<bool, IptablesError> {
        let program = self.iptables_cmd();
        let args = [&["-w", "-t", table, "-C", chain], rule].concat();
        let out = self.runner.output(&program, &args, None)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(crate::cmd::failed(&program, &args, &out).into()),
        }
    }

    /// Appends `rule` to `chain` unless it is there; whether it was added.
    pub fn ensure_rule(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<bool, IptablesError> {
        if self.exists(table, chain, rule)? {
            return Ok(false);
        }
        self.run(table, &[&["-A", chain], rule].concat())?;
        Ok(true)
    }
}

impl Default for RealIptables {
    fn default() -> RealIptables {
        RealIptables::new()
    }
}

impl Iptables for RealIptables {
    fn restore(&mut self, text: &str) -> Result<(), IptablesError> {
        let args = ["--noflush", "--wait"];
        self.runner
            .run_input(&self.restore_cmd, &args, Some(text.as_bytes()))?;
        Ok(())
    }

    fn save(&mut self, table: &str) -> Result<String, IptablesError> {
        Ok(self.runner.run(&self.save_cmd, &["-t", table])?)
    }

    fn has_chain(&mut self, table: &str, chain: &str) -> bool {
        self.run(table, &["-n", "-L", chain]).is_ok()
    }

    fn chains_per_restore(&self) -> Option<usize> {
        match self.chains_per_restore {
            Some(limit) => limit,
            None if self.variant() == "nf_tables" => Some(NFT_CHAINS_PER_RESTORE),
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
