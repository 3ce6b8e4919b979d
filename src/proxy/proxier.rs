//! The proxier: keeps the desired service ports, what was last written to
//! the kernel, and turns the difference into one `iptables-restore
//! --noflush` per sync (a large full sync on iptables-nft: several, see
//! [`Iptables::chains_per_restore`]).
//!
//! Under `--noflush`, declaring `:CHAIN - [0:0]` creates or flushes that
//! chain and leaves every other chain alone, so a partial sync declares and
//! rewrites only the chains whose text changed and deletes (`-X`) the ones
//! that are gone, as kube-proxy does. A full sync rewrites every skiff
//! chain and also removes `SKIFF-` chains it does not know (left by an
//! earlier run) and inserts missing jumps from the built-in chains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::chains::{self, EXTERNAL_SERVICES, NODEPORTS, SERVICES};
use super::conntrack::{Conntrack, ConntrackFilter};
use super::iptables::{Iptables, IptablesError, scan_saved};
use super::rules::{self, Fragment, JUMPS, RuleConfig};
use super::types::{Endpoint, Protocol, ServicePort, ServicePortKey};

/// Why a sync or cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `iptables-save` of a table failed.
    #[error("reading the {table} table: {source}")]
    Save {
        /// The table.
        table: &'static str,
        /// The cause.
        source: IptablesError,
    },
    /// `iptables-restore` rejected a full sync (the next sync is full again).
    #[error("full sync of {chains} chains: {source}")]
    Restore {
        /// How many chains the text declared.
        chains: usize,
        /// The cause.
        source: IptablesError,
    },
    /// Removing skiff's rules failed.
    #[error("cleanup: {source}")]
    Cleanup {
        /// The cause.
        source: IptablesError,
    },
}

/// What one sync did, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Whether every chain was rewritten.
    pub full: bool,
    /// Chains declared and rewritten.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Size of the restore text (0: nothing to do, no restore run).
    pub bytes: usize,
}

/// A service port with its ready endpoints and the rules made from them.
///
/// Between syncs the text of the service port's own chains is not kept
/// (`fragment.chains` is empty, see [`Entry::compact`]), only each chain's
/// name and a digest of its text, which is all a partial sync needs to see
/// what changed; a full sync generates the text again. At 10k Services x 4
/// endpoints that text is most of the proxier's memory.
#[derive(Debug, Clone)]
struct Entry {
    sp: ServicePort,
    ready: Vec<Endpoint>,
    /// The dispatch lines always; the own chains' text only until compacted.
    fragment: Fragment,
    /// (name, digest of the text) of each own chain, in writing order.
    own: Vec<(String, u64)>,
}

fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Entry {
    fn new(sp: ServicePort, ready: Vec<Endpoint>, fragment: Fragment) -> Entry {
        let own = fragment
            .chains
            .iter()
            .map(|(n, t)| (n.clone(), digest(t)))
            .collect();
        Entry {
            sp,
            ready,
            fragment,
            own,
        }
    }

    /// The service chain's name (none without endpoints).
    fn order_key(&self) -> &str {
        self.own.first().map_or("", |(n, _)| n.as_str())
    }

    /// A copy without the own chains' text.
    fn without_text(&self) -> Entry {
        Entry {
            sp: self.sp.clone(),
            ready: self.ready.clone(),
            fragment: self.fragment.dispatch_only(),
            own: self.own.clone(),
        }
    }

    /// Drops the own chains' text (kept: names and digests).
    fn compact(&mut self) {
        if !self.fragment.chains.is_empty() {
            self.fragment.chains = Vec::new();
        }
    }

    /// Generates the own chains' text again if it was compacted away.
    fn expand(&mut self, cfg: &RuleConfig, large_cluster: bool) {
        if self.fragment.chains.is_empty() && !self.own.is_empty() {
            self.fragment = rules::service_port_rules(cfg, &self.sp, &self.ready, large_cluster);
        }
    }
}

/// The text of the four chains every service port adds lines to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Shared {
    filter_services: String,
    filter_external: String,
    nat_services: String,
    nat_nodeports: String,
}

impl Shared {
    /// The service ports' lines in descending order of their service
    /// chain's name. The order means nothing to the kernel (every line
    /// matches its own address and port; the NodePort jump stays last) but
    /// a lot to iptables-nft-restore, which files each jump target in a
    /// sorted list walked from the smallest name: a target smaller than all
    /// before it is filed at once. At 10k Services that makes rewriting
    /// SKIFF-SERVICES about three times faster.
    fn build(entries: &BTreeMap<ServicePortKey, Entry>) -> Shared {
        let mut s = Shared::default();
        let mut ordered: Vec<&Entry> = entries.values().collect();
        ordered.sort_by(|a, b| b.order_key().cmp(a.order_key()));
        for e in ordered {
            s.filter_services.push_str(&e.fragment.filter_services);
            s.filter_external.push_str(&e.fragment.filter_external);
            s.nat_services.push_str(&e.fragment.nat_services);
            s.nat_nodeports.push_str(&e.fragment.nat_nodeports);
        }
        s.nat_services.push_str(&rules::nodeports_jump());
        s
    }
}

/// Up to this many changed service ports, a full sync keeps the text it
/// generated for them instead of generating it again per chunk.
const KEEP_TEXT_UP_TO: usize = 5000;

/// kube-proxy's iptables proxier, reduced to skiff's needs. Feed it service
/// ports with [`Proxier::update`]/[`Proxier::remove`] (or
/// [`Proxier::replace_all`]) and call [`Proxier::sync`].
pub struct Proxier<I: Iptables, C: Conntrack> {
    ipt: I,
    conntrack: C,
    cfg: RuleConfig,
    /// Desired and generated, as of the last sync.
    entries: BTreeMap<ServicePortKey, Entry>,
    /// Changes since the last sync (`None`: removed).
    pending: BTreeMap<ServicePortKey, Option<(ServicePort, Vec<Endpoint>)>>,
    /// The shared chains as last written; `None` until a full sync
    /// succeeded (and again after a failed sync).
    applied: Option<Shared>,
    /// Force the next sync to be full.
    force_full: bool,
    /// More than [`rules::LARGE_CLUSTER_ENDPOINTS`] ready endpoints: the
    /// service ports' own chains are written without comments.
    large_cluster: bool,
}

impl<I: Iptables, C: Conntrack> Proxier<I, C> {
    /// A proxier with nothing applied yet; the first sync is full.
    pub fn new(ipt: I, conntrack: C, cfg: RuleConfig) -> Proxier<I, C> {
        Proxier {
            ipt,
            conntrack,
            cfg,
            entries: BTreeMap::new(),
            pending: BTreeMap::new(),
            applied: None,
            force_full: true,
            large_cluster: false,
        }
    }

    /// Sets a service port and its endpoints (not-ready ones are kept out
    /// of rotation). Takes effect at the next sync.
    pub fn update(&mut self, sp: ServicePort, endpoints: Vec<Endpoint>) {
        self.pending.insert(sp.key.clone(), Some((sp, endpoints)));
    }

    /// Removes a service port. Takes effect at the next sync.
    pub fn remove(&mut self, key: &ServicePortKey) {
        self.pending.insert(key.clone(), None);
    }

    /// Replaces the whole desired state (service ports not listed are
    /// removed). Takes effect at the next sync.
    pub fn replace_all(&mut self, all: impl IntoIterator<Item = (ServicePort, Vec<Endpoint>)>) {
        let mut gone: BTreeSet<ServicePortKey> = self.entries.keys().cloned().collect();
        self.pending.clear();
        for (sp, eps) in all {
            gone.remove(&sp.key);
            self.update(sp, eps);
        }
        for key in gone {
            self.pending.insert(key, None);
        }
    }

    /// Makes the next sync a full one (call it periodically, as kube-proxy's
    /// `--iptables-sync-period`, to repair rules changed behind skiff's back).
    pub fn request_full_sync(&mut self) {
        self.force_full = true;
    }

    /// Whether skiff's entry chain is in the kernel already (rules of a
    /// previous run, or unreadable: assumed present).
    pub fn rules_installed(&mut self) -> bool {
        match self.ipt.save("nat") {
            Ok(saved) => scan_saved(&saved, chains::PREFIX)
                .chains
                .iter()
                .any(|c| c == SERVICES),
            Err(_) => true,
        }
    }

    /// The service ports currently known (as of the last sync).
    pub fn service_ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.entries.values().map(|e| &e.sp)
    }

    /// The backend, e.g. to inspect a fake in tests.
    pub fn iptables(&mut self) -> &mut I {
        &mut self.ipt
    }

    /// The conntrack backend.
    pub fn conntrack(&mut self) -> &mut C {
        &mut self.conntrack
    }

    /// Applies pending changes with one `iptables-restore`: only changed
    /// chains, or everything when a full sync is due (in several restores
    /// when the backend limits the chains per restore). A failed partial sync
    /// is retried at once as a full sync; a failed full sync makes the next
    /// one full too.
    pub fn sync(&mut self) -> Result<SyncStats, ProxyError> {
        let start = Instant::now();
        let changes = self.apply_pending();
        let partial = match &self.applied {
            Some(applied) if !self.force_full => Some(self.partial_text(applied, &changes)),
            _ => None,
        };
        let result = match partial {
            None => self.full_sync(),
            Some((text, stats, _)) if text.is_empty() => Ok(stats),
            Some((text, mut stats, shared)) => match self.ipt.restore(&text) {
                Ok(()) => {
                    stats.bytes = text.len();
                    self.applied = Some(shared);
                    Ok(stats)
                }
                Err(err) => {
                    warn!(%err, "proxy: partial sync failed, resyncing everything");
                    self.full_sync()
                }
            },
        };
        match &result {
            Ok(stats) => {
                self.force_full = false;
                self.clear_conntrack(&changes);
                if stats.bytes > 0 {
                    info!(
                        full = stats.full,
                        services = self.entries.len(),
                        written = stats.chains_written,
                        deleted = stats.chains_deleted,
                        bytes = stats.bytes,
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "proxy: rules synced"
                    );
                }
            }
            Err(err) => {
                warn!(%err, "proxy: sync failed; the next sync is a full one");
                self.applied = None;
                self.force_full = true;
            }
        }
        for e in self.entries.values_mut() {
            e.compact();
        }
        crate::metrics::get().proxy_synced(start.elapsed(), result.is_ok());
        result
    }

    /// Moves pending changes into `entries`, generating rules for those
    /// whose input changed. Returns (key, old, new) for each real change.
    fn apply_pending(&mut self) -> Vec<(ServicePortKey, Option<Entry>, Option<Entry>)> {
        self.switch_cluster_mode();
        // A full sync on iptables-nft generates each chain's text again
        // chunk by chunk; for a large one the text made here is not kept
        // until then (at 10k Services it would raise skiffd's peak by a
        // fifth). Smaller ones keep it and generate it once.
        let drop_text = (self.force_full || self.applied.is_none())
            && self.ipt.chains_per_restore().is_some()
            && self.pending.len() > KEEP_TEXT_UP_TO;
        let mut changes = Vec::new();
        for (key, want) in std::mem::take(&mut self.pending) {
            let new = want.map(|(sp, eps)| {
                let mut ready: Vec<Endpoint> = eps.into_iter().filter(|e| e.ready).collect();
                ready.sort();
                ready.dedup_by_key(|e| (e.ip, e.port));
                (sp, ready)
            });
            let unchanged = match (self.entries.get(&key), &new) {
                (Some(old), Some((sp, ready))) => old.sp == *sp && old.ready == *ready,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let new = new.map(|(sp, ready)| {
                let fragment =
                    rules::service_port_rules(&self.cfg, &sp, &ready, self.large_cluster);
                let mut e = Entry::new(sp, ready, fragment);
                if drop_text {
                    e.compact();
                }
                e
            });
            // The change keeps no copy of the text: a partial sync reads it
            // from `entries` (compacted only after the sync).
            let (old, new) = match new {
                Some(e) => {
                    let summary = e.without_text();
                    (self.entries.insert(key.clone(), e), Some(summary))
                }
                None => (self.entries.remove(&key), None),
            };
            changes.push((key, old, new));
        }
        changes
    }

    /// Enters or leaves large-cluster mode when the pending changes take the
    /// number of ready endpoints across the threshold (kube-proxy's rule):
    /// every service port's chains are then regenerated and the sync is a
    /// full one, so no chain keeps the other mode's text.
    fn switch_cluster_mode(&mut self) {
        let ready = |eps: &[Endpoint]| eps.iter().filter(|e| e.ready).count();
        let kept: usize = self
            .entries
            .iter()
            .filter(|(key, _)| !self.pending.contains_key(*key))
            .map(|(_, e)| e.ready.len())
            .sum();
        let pending: usize = self
            .pending
            .values()
            .flatten()
            .map(|(_, eps)| ready(eps))
            .sum();
        let large = kept + pending > rules::LARGE_CLUSTER_ENDPOINTS;
        if large == self.large_cluster {
            return;
        }
        info!(
            endpoints = kept + pending,
            large, "proxy: large-cluster mode changed (comments in service chains), full sync"
        );
        self.large_cluster = large;
        for e in self.entries.values_mut() {
            let fragment = rules::service_port_rules(&self.cfg, &e.sp, &e.ready, large);
            *e = Entry::new(e.sp.clone(), std::mem::take(&mut e.ready), fragment);
        }
        self.force_full = true;
    }

    /// Restore text for the changed chains only; empty when nothing changed.
    fn partial_text(
        &self,
        applied: &Shared,
        changes: &[(ServicePortKey, Option<Entry>, Option<Entry>)],
    ) -> (String, SyncStats, Shared) {
        let mut stats = SyncStats::default();
        let mut write: Vec<(&str, &str)> = Vec::new();
        let mut delete: Vec<&str> = Vec::new();
        let mut shared_touched = false;
        let empty = Fragment::default();
        let none: Vec<(String, u64)> = Vec::new();
        for (key, old, new) in changes {
            let of = old.as_ref().map_or(&empty, |e| &e.fragment);
            // The new text lives in `entries` until the end of the sync.
            let nf = match new {
                Some(_) => self.entries.get(key).map_or(&empty, |e| &e.fragment),
                None => &empty,
            };
            let old_own = old.as_ref().map_or(&none, |e| &e.own);
            shared_touched |= of.nat_services != nf.nat_services
                || of.nat_nodeports != nf.nat_nodeports
                || of.filter_services != nf.filter_services
                || of.filter_external != nf.filter_external;
            // The new entry still has its text (compacted after the sync);
            // the old one has digests.
            for (name, text) in &nf.chains {
                let d = digest(text);
                if !old_own.iter().any(|(n, od)| n == name && *od == d) {
                    write.push((name, text));
                }
            }
            for (name, _) in old_own {
                if !nf.chains.iter().any(|(n, _)| n == name) {
                    delete.push(name);
                }
            }
        }
        let shared = if shared_touched {
            Shared::build(&self.entries)
        } else {
            applied.clone()
        };

        let mut filter = String::new();
        let mut nat = String::new();
        let mut nat_rules = String::new();
        let mut filter_rules = String::new();
        write_changed(
            SERVICES,
            &shared.filter_services,
            &applied.filter_services,
            &mut filter,
            &mut filter_rules,
            &mut stats,
        );
        write_changed(
            EXTERNAL_SERVICES,
            &shared.filter_external,
            &applied.filter_external,
            &mut filter,
            &mut filter_rules,
            &mut stats,
        );
        write_changed(
            SERVICES,
            &shared.nat_services,
            &applied.nat_services,
            &mut nat,
            &mut nat_rules,
            &mut stats,
        );
        write_changed(
            NODEPORTS,
            &shared.nat_nodeports,
            &applied.nat_nodeports,
            &mut nat,
            &mut nat_rules,
            &mut stats,
        );
        for (name, text) in &write {
            let _ = writeln!(nat, ":{name} - [0:0]");
            nat_rules.push_str(text);
            stats.chains_written += 1;
        }
        for name in &delete {
            let _ = writeln!(nat, ":{name} - [0:0]");
            let _ = writeln!(nat_rules, "-X {name}");
            stats.chains_deleted += 1;
        }
        let mut text = String::new();
        if !filter.is_empty() {
            let _ = write!(text, "*filter\n{filter}{filter_rules}COMMIT\n");
        }
        if !nat.is_empty() {
            let _ = write!(text, "*nat\n{nat}{nat_rules}COMMIT\n");
        }
        (text, stats, shared)
    }

    /// Rewrites every skiff chain, removes unknown `SKIFF-` chains and adds
    /// missing jumps from the built-in chains: one restore, or, when the
    /// backend limits the chains per restore ([`Iptables::chains_per_restore`],
    /// iptables-nft) and skiff has more, first the service ports' own chains
    /// in restores of at most that many chains each (every service port's
    /// chains whole in one of them, so each is consistent on its own at any
    /// moment), then one restore of the dispatch chains, the jumps and the
    /// deletions, so that nothing points at a chain before it exists and no
    /// chain is deleted while something still jumps to it.
    fn full_sync(&mut self) -> Result<SyncStats, ProxyError> {
        let mut stats = SyncStats {
            full: true,
            ..SyncStats::default()
        };
        let shared = Shared::build(&self.entries);
        let fixed = rules::fixed_nat_chains(&self.cfg);
        let mut installed = Vec::with_capacity(2);
        for table in ["filter", "nat"] {
            let saved = self
                .ipt
                .save(table)
                .map_err(|source| ProxyError::Save { table, source })?;
            installed.push((table, scan_saved(&saved, chains::PREFIX)));
        }

        let own_chains: usize = self.entries.values().map(|e| e.own.len()).sum();
        let chunked = match self.ipt.chains_per_restore() {
            Some(limit) if own_chains + fixed.len() > limit => Some(limit.max(1)),
            _ => None,
        };
        if chunked.is_none() {
            // One restore with every chain: all the text at once.
            for e in self.entries.values_mut() {
                e.expand(&self.cfg, self.large_cluster);
            }
        }
        if let Some(limit) = chunked {
            // The fixed chains come first: every service chain jumps to
            // SKIFF-MARK-MASQ, which must exist by then.
            // The service ports' text is generated chunk by chunk and
            // dropped once restored (the entries keep digests only).
            let mut batch: Vec<Vec<(String, String)>> = vec![fixed.clone()];
            let mut in_batch = fixed.len();
            for e in self.entries.values_mut() {
                if in_batch > 0 && in_batch + e.own.len() > limit {
                    restore_batch(&mut self.ipt, &batch, &mut stats)?;
                    batch.clear();
                    in_batch = 0;
                }
                // The text generated for this sync moves into the batch (and
                // is freed with it); compacted entries are generated again.
                let chains = if e.fragment.chains.is_empty() {
                    rules::service_port_rules(&self.cfg, &e.sp, &e.ready, self.large_cluster).chains
                } else {
                    std::mem::take(&mut e.fragment.chains)
                };
                in_batch += chains.len();
                batch.push(chains);
            }
            if in_batch > 0 {
                restore_batch(&mut self.ipt, &batch, &mut stats)?;
            }
        }

        let mut text = String::with_capacity(if chunked.is_some() {
            shared.nat_services.len() + shared.filter_services.len() + 4096
        } else {
            self.estimated_size()
        });
        for (table, installed) in &installed {
            let table = *table;
            // (name, rules) of every chain skiff wants in this table, and
            // whether this restore writes it.
            let mut ours: Vec<(&str, &str, bool)> = Vec::new();
            if table == "filter" {
                ours.push((SERVICES, &shared.filter_services, true));
                ours.push((EXTERNAL_SERVICES, &shared.filter_external, true));
            } else {
                let write_own = chunked.is_none();
                ours.extend(
                    fixed
                        .iter()
                        .map(|(n, r)| (n.as_str(), r.as_str(), write_own)),
                );
                ours.push((SERVICES, &shared.nat_services, true));
                ours.push((NODEPORTS, &shared.nat_nodeports, true));
                for e in self.entries.values() {
                    if write_own {
                        // Expanded above.
                        ours.extend(
                            e.fragment
                                .chains
                                .iter()
                                .map(|(n, r)| (n.as_str(), r.as_str(), true)),
                        );
                    } else {
                        // Written by the chunks: only their names count here.
                        ours.extend(e.own.iter().map(|(n, _)| (n.as_str(), "", false)));
                    }
                }
            }
            let wanted: BTreeSet<&str> = ours.iter().map(|(n, _, _)| *n).collect();
            let stale: Vec<&String> = installed
                .chains
                .iter()
                .filter(|c| !wanted.contains(c.as_str()))
                .collect();

            let _ = writeln!(text, "*{table}");
            for (name, _, write) in &ours {
                if *write {
                    let _ = writeln!(text, ":{name} - [0:0]");
                }
            }
            for name in &stale {
                let _ = writeln!(text, ":{name} - [0:0]");
            }
            // Jumps into chains about to be deleted would block the `-X`.
            for line in &installed.jumps {
                let target = line.rsplit(" -j ").next().unwrap_or("");
                if stale.iter().any(|s| s.as_str() == target) {
                    let _ = writeln!(text, "-D {}", &line[3..]);
                }
            }
            for jump in JUMPS.iter().filter(|j| j.table == table) {
                let present = installed.jumps.iter().any(|line| {
                    line.starts_with(&format!("-A {} ", jump.from))
                        && line.ends_with(&format!("-j {}", jump.to))
                        && line.contains(jump.comment)
                });
                if !present {
                    let _ = writeln!(text, "-I {} 1 {}", jump.from, jump.spec());
                }
            }
            for (_, rules, write) in &ours {
                if *write {
                    text.push_str(rules);
                    stats.chains_written += 1;
                }
            }
            for name in &stale {
                let _ = writeln!(text, "-X {name}");
            }
            text.push_str("COMMIT\n");
            stats.chains_deleted += stale.len();
        }
        stats.bytes += text.len();
        debug!(bytes = text.len(), "proxy: full restore");
        match self.ipt.restore(&text) {
            Ok(()) => {
                self.applied = Some(shared);
                Ok(stats)
            }
            Err(source) => Err(ProxyError::Restore {
                chains: stats.chains_written + stats.chains_deleted,
                source,
            }),
        }
    }

    fn estimated_size(&self) -> usize {
        self.entries
            .values()
            .map(|e| {
                e.fragment
                    .chains
                    .iter()
                    .map(|(n, r)| n.len() + r.len() + 12)
                    .sum::<usize>()
                    + 512
            })
            .sum::<usize>()
            + 4096
    }

    /// Deletes UDP flows that point at endpoints that went away, and flows
    /// of service ports that just got their first endpoint (they were
    /// created while nothing DNATed them).
    fn clear_conntrack(&mut self, changes: &[(ServicePortKey, Option<Entry>, Option<Entry>)]) {
        let mut filters = BTreeSet::new();
        for (_, old, new) in changes {
            fn udp(e: &Option<Entry>) -> Option<&Entry> {
                e.as_ref().filter(|e| e.sp.protocol == Protocol::Udp)
            }
            if let Some(old) = udp(old) {
                let still: &[Endpoint] = new.as_ref().map_or(&[], |n| &n.ready);
                for ep in old
                    .ready
                    .iter()
                    .filter(|ep| !still.iter().any(|n| n.ip == ep.ip))
                {
                    for dst in std::iter::once(old.sp.cluster_ip)
                        .chain(old.sp.external_ips.iter().copied())
                    {
                        filters.insert(ConntrackFilter {
                            protocol: Protocol::Udp,
                            orig_dst: Some(dst),
                            orig_port_dst: None,
                            dst_nat: Some(ep.ip),
                        });
                    }
                    if let Some(np) = old.sp.node_port {
                        filters.insert(ConntrackFilter {
                            protocol: Protocol::Udp,
                            orig_dst: None,
                            orig_port_dst: Some(np),
                            dst_nat: Some(ep.ip),
                        });
                    }
                }
            }
            if let Some(new) = udp(new) {
                let had = old.as_ref().is_some_and(|o| !o.ready.is_empty());
                if !had && !new.ready.is_empty() {
                    for dst in std::iter::once(new.sp.cluster_ip)
                        .chain(new.sp.external_ips.iter().copied())
                    {
                        filters.insert(ConntrackFilter {
                            protocol: Protocol::Udp,
                            orig_dst: Some(dst),
                            orig_port_dst: None,
                            dst_nat: None,
                        });
                    }
                    if let Some(np) = new.sp.node_port {
                        filters.insert(ConntrackFilter {
                            protocol: Protocol::Udp,
                            orig_dst: None,
                            orig_port_dst: Some(np),
                            dst_nat: None,
                        });
                    }
                }
            }
        }
        for f in &filters {
            if let Err(err) = self.conntrack.delete(f) {
                warn!(%err, "proxy: clearing stale UDP conntrack entries failed");
            }
        }
    }

    /// Removes everything skiff installed (see [`cleanup`]) and forgets the
    /// applied state, so a later sync starts with a full one.
    pub fn cleanup(&mut self) -> Result<(), ProxyError> {
        self.applied = None;
        self.force_full = true;
        cleanup(&mut self.ipt)
    }
}

/// One restore that declares (creates or flushes) and fills the given nat
/// chains: a piece of a chunked full sync.
/// [`restore_nat_chains`] of several service ports' chains.
fn restore_batch(
    ipt: &mut impl Iptables,
    batch: &[Vec<(String, String)>],
    stats: &mut SyncStats,
) -> Result<(), ProxyError> {
    let chains: Vec<(&str, &str)> = batch
        .iter()
        .flatten()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    restore_nat_chains(ipt, &chains, stats)
}

fn restore_nat_chains(
    ipt: &mut impl Iptables,
    chains: &[(&str, &str)],
    stats: &mut SyncStats,
) -> Result<(), ProxyError> {
    let size = chains
        .iter()
        .map(|(n, r)| n.len() + r.len() + 8)
        .sum::<usize>()
        + 16;
    let mut text = String::with_capacity(size);
    text.push_str("*nat\n");
    for (name, _) in chains {
        let _ = writeln!(text, ":{name} - [0:0]");
    }
    for (_, rules) in chains {
        text.push_str(rules);
    }
    text.push_str("COMMIT\n");
    debug!(
        chains = chains.len(),
        bytes = text.len(),
        "proxy: full restore, service chains"
    );
    ipt.restore(&text).map_err(|source| ProxyError::Restore {
        chains: chains.len(),
        source,
    })?;
    stats.chains_written += chains.len();
    stats.bytes += text.len();
    Ok(())
}

/// Declares (flushes) and rewrites `name` when its rules changed.
fn write_changed(
    name: &str,
    now: &str,
    before: &str,
    decl: &mut String,
    rules: &mut String,
    stats: &mut SyncStats,
) {
    if now != before {
        let _ = writeln!(decl, ":{name} - [0:0]");
        rules.push_str(now);
        stats.chains_written += 1;
    }
}

/// Removes every jump into a `SKIFF-` chain from other chains and every
/// `SKIFF-` chain, in both tables, with one restore. Works without a
/// proxier (`skiffd --cleanup-iptables`, after a crash); nothing to remove
/// is success.
pub fn cleanup(ipt: &mut impl Iptables) -> Result<(), ProxyError> {
    let mut text = String::new();
    for table in ["filter", "nat"] {
        let saved = ipt
            .save(table)
            .map_err(|source| ProxyError::Save { table, source })?;
        let installed = scan_saved(&saved, chains::PREFIX);
        if installed.chains.is_empty() && installed.jumps.is_empty() {
            continue;
        }
        let _ = writeln!(text, "*{table}");
        for name in &installed.chains {
            let _ = writeln!(text, ":{name} - [0:0]");
        }
        for line in &installed.jumps {
            let _ = writeln!(text, "-D {}", &line[3..]);
        }
        for name in &installed.chains {
            let _ = writeln!(text, "-X {name}");
        }
        text.push_str("COMMIT\n");
    }
    if text.is_empty() {
        return Ok(());
    }
    ipt.restore(&text)
        .map_err(|source| ProxyError::Cleanup { source })?;
    info!("proxy: removed skiff's iptables rules");
    Ok(())
}
