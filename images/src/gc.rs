//! Image garbage collection, the kubelet's way: when disk use of the store's filesystem
//! reaches the high threshold, remove least recently used images that no container uses until
//! it is back under the low threshold.

use std::collections::HashSet;

use tracing::info;

use crate::store::IndexFile;
use crate::{Error, ImageStore};

/// Disk-use thresholds, in percent of the filesystem (the kubelet's
/// `--image-gc-high-threshold` and `--image-gc-low-threshold`, 85 and 80 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Collect when disk use is at or above this.
    pub high_threshold_percent: u8,
    /// Collect until disk use is below this.
    pub low_threshold_percent: u8,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
        }
    }
}

/// Size and free space of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Total size.
    pub capacity: u64,
    /// Free for unprivileged use.
    pub available: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Ids of the removed images, in removal order.
    pub removed: Vec<String>,
    /// Sum of their sizes (compressed, as [`crate::Image::size`]): an estimate of the space
    /// freed, since layers shared with remaining images stay.
    pub freed: u64,
}

/// One image as the planner sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) last_used: u64,
    pub(crate) size: u64,
}

/// Which images to remove: none below the high threshold; else least recently used first
/// (ties: larger first), skipping `keep`, until the estimate reaches the low threshold.
pub(crate) fn plan(
    images: &[Candidate],
    keep: &HashSet<String>,
    policy: &GcPolicy,
    usage: DiskUsage,
) -> Vec<String> {
    if usage.capacity == 0 {
        return Vec::new();
    }
    let used = usage.capacity.saturating_sub(usage.available);
    let used_percent = used.saturating_mul(100) / usage.capacity;
    if used_percent < u64::from(policy.high_threshold_percent) {
        return Vec::new();
    }
    let target_used = usage.capacity / 100 * u64::from(policy.low_threshold_percent);
    let mut to_free = used.saturating_sub(target_used);
    let mut order: Vec<&Candidate> = images.iter().filter(|c| !keep.contains(&c.id)).collect();
    order.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(b.size.cmp(&a.size)));
    let mut out = Vec::new();
    for c in order {
        if to_free == 0 {
            break;
        }
        out.push(c.id.clone());
        to_free = to_free.saturating_sub(c.size);
    }
    out
}

impl ImageStore {
    /// Size and free space of the filesystem holding the store.
    pub fn disk_usage(&self) -> Result<DiskUsage, Error> {
        let st = nix::sys::statvfs::statvfs(self.root()).map_err(|e| Error::Io {
            op: "statvfs",
            path: self.root().to_owned(),
            source: e.into(),
        })?;
        let frag = st.fragment_size().max(1) as u64;
        Ok(DiskUsage {
            capacity: st.blocks() as u64 * frag,
            available: st.blocks_available() as u64 * frag,
        })
    }

    /// Garbage-collects images by disk use (see [`GcPolicy`]), never removing an image whose
    /// id (`sha256:...`) is in `keep`: pass the images of all existing containers.
    pub fn prune(&self, keep: &HashSet<String>, policy: &GcPolicy) -> Result<PruneReport, Error> {
        let usage = self.disk_usage()?;
        self.prune_with_usage(keep, policy, usage)
    }

    /// [`ImageStore::prune`] with a given disk use (for tests and dry runs).
    pub fn prune_with_usage(
        &self,
        keep: &HashSet<String>,
        policy: &GcPolicy,
        usage: DiskUsage,
    ) -> Result<PruneReport, Error> {
        let candidates = self.candidates()?;
        let ids = plan(&candidates, keep, policy, usage);
        self.remove_ids(&ids)
    }

    /// Removes every image not in `keep` (`skiff image prune --all`).
    pub fn prune_unused(&self, keep: &HashSet<String>) -> Result<PruneReport, Error> {
        let mut candidates = self.candidates()?;
        candidates.sort_by_key(|c| c.last_used);
        let ids: Vec<String> = candidates
            .into_iter()
            .filter(|c| !keep.contains(&c.id))
            .map(|c| c.id)
            .collect();
        self.remove_ids(&ids)
    }

    fn candidates(&self) -> Result<Vec<Candidate>, Error> {
        Ok(self
            .load()?
            .images
            .into_iter()
            .map(|r| Candidate {
                id: r.image.id,
                last_used: r.last_used,
                size: r.image.size,
            })
            .collect())
    }

    fn remove_ids(&self, ids: &[String]) -> Result<PruneReport, Error> {
        let mut report = PruneReport::default();
        if ids.is_empty() {
            return Ok(report);
        }
        let _lock = self.lock()?;
        let mut index: IndexFile = self.load()?;
        for id in ids {
            if let Some(i) = index.images.iter().position(|r| &r.image.id == id) {
                let r = index.images.remove(i);
                info!(id = %r.image.id, names = ?r.image.names, "image garbage-collected");
                report.freed += r.image.size;
                report.removed.push(r.image.id);
            }
        }
        self.save(&index)?;
        self.gc(&index)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, last_used: u64, size: u64) -> Candidate {
        Candidate {
            id: id.into(),
            last_used,
            size,
        }
    }

    #[test]
    fn plans_like_the_kubelet() {
        let images = [
            c("a", 30, 10),
            c("b", 10, 10),
            c("c", 20, 10),
            c("d", 5, 50),
        ];
        let policy = GcPolicy::default();
        let usage = |used: u64| DiskUsage {
            capacity: 1000,
            available: 1000 - used,
        };
        // Under the high threshold: nothing.
        assert!(plan(&images, &HashSet::new(), &policy, usage(840)).is_empty());
        // 850 used, target 800: free 50, oldest first; d is kept (in use).
        let keep: HashSet<String> = ["d".to_owned()].into();
        assert_eq!(plan(&images, &keep, &policy, usage(850)), ["b", "c", "a"]);
        assert_eq!(plan(&images, &HashSet::new(), &policy, usage(850)), ["d"]);
        assert_eq!(
            plan(&images, &HashSet::new(), &policy, usage(870)),
            ["d", "b", "c"]
        );
    }
}
