//! skiffd's own Prometheus metrics, served at `/metrics` (OpenMetrics text): what the kubelet
//! and kube-proxy export that a skiff node does, under their names where the meaning is the
//! same (`kubeproxy_sync_proxy_rules_duration_seconds`, `kubelet_running_pods`), so existing
//! dashboards and alerts read a skiff node. Counters are process-wide and cheap (atomics); the
//! gauges that describe the store's state are set when a scrape asks.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// Every metric skiffd exports.
pub struct Metrics {
    registry: Registry,
    /// kube-proxy's: one iptables-restore round (partial or full), successful or not.
    pub proxy_sync_duration: Histogram,
    pub proxy_syncs: Family<ResultLabel, Counter>,
    /// One pass of a pod worker over its pod.
    pub pod_sync_duration: Histogram,
    /// Image pulls by result, and the time of the successful ones.
    pub image_pulls: Family<ResultLabel, Counter>,
    pub image_pull_duration: Histogram,
    /// Set at scrape time from the store.
    pub pods: Family<PhaseLabel, Gauge>,
    pub running_pods: Gauge,
    pub running_containers: Gauge,
    pub resident_memory: Gauge,
    pub start_time: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        // kube-proxy's buckets: 1 ms doubling to about 16 s.
        let proxy_sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            proxy_sync_duration.clone(),
        );
        let proxy_syncs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "skiff_proxy_syncs",
            "Proxy rule syncs by result",
            proxy_syncs.clone(),
        );
        let pod_sync_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "skiff_pod_sync_duration_seconds",
            "Duration in seconds of one pod worker sync",
            pod_sync_duration.clone(),
        );
        let image_pulls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "skiff_image_pulls",
            "Image pulls by result",
            image_pulls.clone(),
        );
        let image_pull_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "kubelet_image_pull_duration_seconds",
            "Duration in seconds to pull an image",
            image_pull_duration.clone(),
        );
        let pods = Family::<PhaseLabel, Gauge>::default();
        registry.register("skiff_pods", "Pods on this node by phase", pods.clone());
        let running_pods = Gauge::default();
        registry.register(
            "kubelet_running_pods",
            "Number of pods that have a running container",
            running_pods.clone(),
        );
        let running_containers = Gauge::default();
        registry.register(
            "kubelet_running_containers",
            "Number of running containers",
            running_containers.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            resident_memory.clone(),
        );
        let start_time = Gauge::default();
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            start_time.clone(),
        );
        start_time.set(jiff::Timestamp::now().as_second());
        Metrics {
            registry,
            proxy_sync_duration,
            proxy_syncs,
            pod_sync_duration,
            image_pulls,
            image_pull_duration,
            pods,
            running_pods,
            running_containers,
            resident_memory,
            start_time,
        }
    }

    /// A proxy sync that took `took`.
    pub fn proxy_synced(&self, took: Duration, ok: bool) {
        self.proxy_sync_duration.observe(took.as_secs_f64());
        let result = if ok { "success" } else { "error" };
        self.proxy_syncs
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A pull that ended: its time counts when it succeeded.
    pub fn image_pulled(&self, took: Duration, ok: bool) {
        if ok {
            self.image_pull_duration.observe(took.as_secs_f64());
        }
        let result = if ok { "success" } else { "error" };
        self.image_pulls
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_bytes() {
            self.resident_memory.set(rss as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// This process's resident set, from `/proc/self/statm` (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_kube_proxys_histogram_and_counts_by_result() {
        let m = Metrics::new();
        m.proxy_synced(Duration::from_millis(3), true);
        m.proxy_synced(Duration::from_millis(40), false);
        m.image_pulled(Duration::from_secs(1), true);
        m.pods
            .get_or_create(&PhaseLabel {
                phase: "Running".into(),
            })
            .set(2);
        let text = m.encode();
        assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 2"));
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(text.contains("skiff_proxy_syncs_total{result=\"success\"} 1"));
        assert!(text.contains("skiff_proxy_syncs_total{result=\"error\"} 1"));
        assert!(text.contains("skiff_image_pulls_total{result=\"success\"} 1"));
        assert!(text.contains("skiff_pods{phase=\"Running\"} 2"));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
