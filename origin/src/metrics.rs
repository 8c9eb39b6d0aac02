//! Prometheus metrics (`prometheus-client`, one registry per service instance so several
//! instances can live in one test process).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_valid: Counter,
    pub events_invalid: Family<Labels, Counter>,
    pub events_duplicate: Counter,
    pub events_late: Counter,
    pub events_applied: Counter,
    pub batches_rejected: Family<Labels, Counter>,
    pub ingest_throttled: Counter,
    pub batch_apply_seconds: Histogram,
    pub batch_size: Histogram,
    pub checkpoint_seconds: Histogram,
    pub freshness_seconds: Histogram,
    pub log_end_bytes: Gauge,
    pub log_segments: Gauge,
    pub log_bytes: Gauge,
    pub log_segments_retired: Counter,
    pub applied_offset_bytes: Gauge,
    pub log_lag_bytes: Gauge,
    /// Kafka mode: per assigned partition, records not yet committed (labels: the partitions).
    pub kafka_consumer_lag: Family<Labels, Gauge>,
    /// Kafka scale-out: partitions taken over from their changelog.
    pub kafka_partitions_restored: Counter,
    pub store_bytes: Gauge,
    pub outbox_keys: Gauge,
    pub waiting_user_publishes: Gauge,
    pub last_publish_success_seconds: Gauge,
    pub publish_budget_waits: Counter,
    pub publish_requests: Family<Labels, Counter>,
    pub publish_failures: Family<Labels, Counter>,
    pub publish_retries: Counter,
    pub published_keys: Family<Labels, Counter>,
    pub exposures: Family<Labels, Counter>,
}

/// The (experiment, arm) pairs a set of rules defines: the only exposure labels while those
/// rules are in force (the pipeline keeps the ones of the rules at its log position).
#[derive(Clone, Debug, Default)]
pub struct ExposureArms(std::collections::HashSet<(String, String)>);

impl ExposureArms {
    pub fn of(rules: &attune_core::rules::Config) -> Self {
        ExposureArms(
            rules
                .experiments
                .iter()
                .flat_map(|e| e.arms.iter().map(|a| (e.id.clone(), a.name.clone())))
                .collect(),
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            events_received: Counter::default(),
            events_valid: Counter::default(),
            events_invalid: Family::default(),
            events_duplicate: Counter::default(),
            events_late: Counter::default(),
            events_applied: Counter::default(),
            batches_rejected: Family::default(),
            ingest_throttled: Counter::default(),
            batch_apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            freshness_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            log_end_bytes: Gauge::default(),
            log_segments: Gauge::default(),
            log_bytes: Gauge::default(),
            log_segments_retired: Counter::default(),
            applied_offset_bytes: Gauge::default(),
            log_lag_bytes: Gauge::default(),
            kafka_consumer_lag: Family::default(),
            kafka_partitions_restored: Counter::default(),
            store_bytes: Gauge::default(),
            outbox_keys: Gauge::default(),
            waiting_user_publishes: Gauge::default(),
            last_publish_success_seconds: Gauge::default(),
            publish_budget_waits: Counter::default(),
            publish_requests: Family::default(),
            publish_failures: Family::default(),
            publish_retries: Counter::default(),
            published_keys: Family::default(),
            exposures: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "attune_events_received",
            "Events read from the log by the pipeline",
            m.events_received.clone(),
        );
        r.register(
            "attune_events_valid",
            "Events that passed validation",
            m.events_valid.clone(),
        );
        r.register(
            "attune_events_invalid",
            "Events refused by validation, by reason",
            m.events_invalid.clone(),
        );
        r.register(
            "attune_events_duplicate",
            "Events whose event_id was already applied",
            m.events_duplicate.clone(),
        );
        r.register(
            "attune_events_late",
            "Events older than the watermark minus the allowed lateness",
            m.events_late.clone(),
        );
        r.register(
            "attune_events_applied",
            "Events applied to profiles",
            m.events_applied.clone(),
        );
        r.register(
            "attune_ingest_batches_rejected",
            "Request bodies refused as a whole",
            m.batches_rejected.clone(),
        );
        r.register(
            "attune_ingest_throttled",
            "Requests answered 429 (backpressure)",
            m.ingest_throttled.clone(),
        );
        r.register(
            "attune_batch_apply_seconds",
            "Time to apply one micro-batch in memory",
            m.batch_apply_seconds.clone(),
        );
        r.register(
            "attune_checkpoint_seconds",
            "Time to write and commit one checkpoint (fsync included)",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "attune_batch_events",
            "Records per pipeline batch",
            m.batch_size.clone(),
        );
        r.register(
            "attune_freshness_seconds",
            "Event accepted to KV written",
            m.freshness_seconds.clone(),
        );
        r.register(
            "attune_log_end_bytes",
            "Durable end of the event log",
            m.log_end_bytes.clone(),
        );
        r.register(
            "attune_log_segments",
            "Segment files of the event log",
            m.log_segments.clone(),
        );
        r.register(
            "attune_log_bytes",
            "Bytes of the event log's segment files",
            m.log_bytes.clone(),
        );
        r.register(
            "attune_log_segments_retired",
            "Log segments deleted by retention",
            m.log_segments_retired.clone(),
        );
        r.register(
            "attune_applied_offset_bytes",
            "Committed pipeline offset",
            m.applied_offset_bytes.clone(),
        );
        r.register(
            "attune_log_lag_bytes",
            "Log bytes not yet applied",
            m.log_lag_bytes.clone(),
        );
        r.register(
            "attune_kafka_consumer_lag",
            "Kafka mode: records in each assigned partition after the offset the origin last \
             committed (librdkafka's consumer_lag; the commit follows each checkpoint)",
            m.kafka_consumer_lag.clone(),
        );
        r.register(
            "attune_kafka_partitions_restored",
            "Kafka scale-out: partitions this origin took over by restoring their state changelog",
            m.kafka_partitions_restored.clone(),
        );
        r.register(
            "attune_store_bytes",
            "Size of the store file",
            m.store_bytes.clone(),
        );
        r.register(
            "attune_outbox_keys",
            "Keys waiting to be published",
            m.outbox_keys.clone(),
        );
        r.register(
            "attune_waiting_user_publishes",
            "User profiles changed and not yet in KV",
            m.waiting_user_publishes.clone(),
        );
        r.register(
            "attune_last_publish_success_seconds",
            "Unix time of the last request KV accepted (publisher lag: now minus this)",
            m.last_publish_success_seconds.clone(),
        );
        r.register(
            "attune_publish_budget_waits",
            "Times a KV request waited for the request budget",
            m.publish_budget_waits.clone(),
        );
        r.register(
            "attune_publish_requests",
            "KV bulk requests by op and outcome",
            m.publish_requests.clone(),
        );
        r.register(
            "attune_publish_failures",
            "Failed KV bulk requests by reason",
            m.publish_failures.clone(),
        );
        r.register(
            "attune_publish_retries",
            "KV bulk request retries",
            m.publish_retries.clone(),
        );
        r.register(
            "attune_published_keys",
            "Keys written or deleted in KV, by kind",
            m.published_keys.clone(),
        );
        r.register(
            "attune_exposures",
            "Experiment exposures by experiment and arm",
            m.exposures.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts one exposure. The labels come from event data the edge forwards from browsers,
    /// so only pairs the rules in force define (`known`) get their own series; anything else
    /// counts under `experiment="unknown", arm="unknown"` (the series count stays bounded by
    /// the rules).
    pub fn count_exposure(&self, known: &ExposureArms, experiment: &str, arm: &str) {
        let key = (experiment.to_string(), arm.to_string());
        let (experiment, arm) = if known.0.contains(&key) {
            (key.0.as_str(), key.1.as_str())
        } else {
            ("unknown", "unknown")
        };
        self.exposures
            .get_or_create(&labels(&[("experiment", experiment), ("arm", arm)]))
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_core::rules::{Arm, Config, Experiment};

    #[test]
    fn exposure_labels_come_from_the_rules_only() {
        let arm = |name: &str| Arm {
            name: name.into(),
            weight: 1,
            variant: None,
            strategy: None,
        };
        let rules = Config {
            experiments: vec![Experiment {
                id: "hero".into(),
                slot: "hero".into(),
                traffic_bp: 10_000,
                control: "a".into(),
                arms: vec![arm("a"), arm("b")],
                active: true,
            }],
            ..Config::default()
        };
        let m = Metrics::new();
        let known = ExposureArms::of(&rules);
        m.count_exposure(&known, "hero", "a");
        m.count_exposure(&known, "hero", "b");
        for i in 0..500 {
            m.count_exposure(&known, &format!("x{i}"), "a");
            m.count_exposure(&known, "hero", &format!("z{i}"));
        }
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("attune_exposures_total{"))
            .collect();
        assert_eq!(series.len(), 3, "{series:?}");
        assert!(
            text.contains(r#"attune_exposures_total{experiment="unknown",arm="unknown"} 1000"#)
        );
        assert!(text.contains(r#"attune_exposures_total{experiment="hero",arm="b"} 1"#));
    }
}
