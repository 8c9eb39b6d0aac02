//! The consumer: the pipeline's loop on a Kafka topic.
//!
//! Partitions are assigned by the group (subscribe), but each one starts where the store
//! says ([`Assigner`]): the next offset the pipeline applied in memory if it already read
//! that partition, else the one in the last checkpoint, else the partition's beginning. The
//! group's committed offsets are written after each checkpoint, for lag monitoring only.
//! A record the loop already holds (read again after a rebalance) is skipped by its offset.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};

use super::{
    CATALOG_COUNTER, Consumed, client_config, kafka_err, partition_count, source_name, to_record,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::{Health, KAFKA};
use crate::log::{Record, RecordKind};
use crate::metrics::{Metrics, labels};
use crate::store::{Store, keys};
use crate::stream::source::{partition_key, source_counter_key};
use crate::stream::{BatchOutcome, Pipeline};

/// Where the loop reports: the consumer lag gauge, and readiness while no broker is up.
#[derive(Clone, Debug)]
pub struct Reporting {
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

/// How the loop reads.
#[derive(Clone, Copy, Debug)]
pub struct ConsumeOptions {
    /// Most records in one micro-batch (the pipeline sizes them below this).
    pub batch_max: usize,
    /// How long a read waits for the first record; an idle wait checkpoints.
    pub idle_wait: Duration,
}

/// Next offset per partition the loop expects: what it applied or holds in a batch.
type Expected = Arc<Mutex<BTreeMap<u32, u64>>>;

/// Starts assigned partitions at the store's offsets (see the module doc).
struct Assigner {
    topic: String,
    source: String,
    store: Store,
    expected: Expected,
    /// A failed assignment: the loop stops the pipeline with it.
    failed: Mutex<Option<Error>>,
    metrics: Arc<Metrics>,
    health: Health,
}

impl Assigner {
    fn start_offsets(&self, tpl: &mut TopicPartitionList) -> Result<()> {
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        for p in parts {
            let partition = u32::try_from(p).unwrap_or(0);
            let next = match expected.get(&partition) {
                Some(n) => *n,
                None => self
                    .store
                    .meta(&keys::offset(&partition_key(&self.source, partition)))?,
            };
            // The loop reads only the partitions listed here, from their start on.
            expected.insert(partition, next);
            let offset = if next == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(i64::try_from(next).unwrap_or(i64::MAX))
            };
            tpl.set_partition_offset(&self.topic, p, offset)
                .map_err(kafka_err(format!("starting partition {p} at {offset:?}")))?;
            tracing::info!(topic = %self.topic, partition = p, ?offset, "partition assigned");
        }
        Ok(())
    }
}

impl Assigner {
    /// One origin per group: the item model and the trending list need every partition's
    /// events, and two origins would publish partial ones over each other. An assignment of
    /// part of the topic means another consumer in the group holds the rest: refuse it.
    fn check_whole_topic(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Result<()> {
        let partitions = partition_count(consumer.client(), &self.topic, Duration::from_secs(10))?;
        let assigned = tpl.elements_for_topic(&self.topic).len();
        if assigned < partitions {
            return Err(Error::KafkaRefused(format!(
                "the group assigned {assigned} of the {partitions} partitions of {}: another \
                 consumer is in the group, and an origin needs the whole topic (one origin per \
                 consumer group)",
                self.topic
            )));
        }
        Ok(())
    }
}

/// How often librdkafka reports its statistics (the consumer lag gauge's refresh).
pub(super) const STATISTICS_INTERVAL_MS: &str = "2000";

/// Ready only while a broker is up: without one, ingest cannot have events acknowledged and
/// the pipeline reads nothing, so a load balancer should send traffic elsewhere. Not a
/// failure: librdkafka reconnects by itself, and a restart would not bring a broker back.
pub(super) fn broker_readiness(health: &Health, statistics: &Statistics) {
    let up = statistics.brokers.values().any(|b| b.state == "UP");
    if up {
        if health.restore_readiness(KAFKA) {
            tracing::info!("a Kafka broker is reachable again: ready");
        }
        return;
    }
    let mut states: Vec<String> = statistics
        .brokers
        .values()
        .map(|b| format!("{} {}", b.name, b.state))
        .collect();
    states.sort();
    let reason = format!("no Kafka broker is up ({})", states.join(", "));
    if health.withhold_readiness(KAFKA, reason.clone()) {
        tracing::warn!(%reason, "not ready until a Kafka broker is reachable");
    }
}

impl ClientContext for Assigner {
    fn stats(&self, statistics: Statistics) {
        broker_readiness(&self.health, &statistics);
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        // Partition -1 is librdkafka's internal one; a lag of -1 means not known yet.
        for (partition, p) in &topic.partitions {
            if *partition >= 0 && p.consumer_lag >= 0 {
                let label = partition.to_string();
                self.metrics
                    .kafka_consumer_lag
                    .get_or_create(&labels(&[("partition", &label)]))
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Assigner {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let r = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self
                .check_whole_topic(consumer, tpl)
                .and_then(|()| self.start_offsets(tpl))
                .and_then(|()| {
                    consumer
                        .assign(tpl)
                        .map_err(kafka_err("assigning partitions"))
                }),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                consumer
                    .unassign()
                    .map_err(kafka_err("revoking partitions"))
            }
            other => {
                let code = RDKafkaErrorCode::from(other);
                tracing::warn!(%code, "rebalance error; dropping the assignment");
                consumer
                    .unassign()
                    .map_err(kafka_err("dropping the assignment"))
            }
        };
        if let Err(e) = r {
            // Nothing is consumed after a failed assignment, and librdkafka gets its answer
            // (a consumer closing after an error would wait for it forever).
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                let _ = consumer.unassign();
            }
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        // The group's offsets are for lag monitoring; the store's are the ones that count.
        if let Err(e) = result {
            tracing::debug!(error = %e, "committing offsets to the group failed");
        }
    }
}

/// Errors that mean records were lost or will never be readable: the pipeline stops (fail
/// closed). Anything else (a broker away, a topic not yet propagated) librdkafka retries.
pub(super) fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

/// The consumer's `group.instance.id`: configured, else derived from the data directory, so a
/// restarted origin takes its partitions back at once (static membership) instead of waiting
/// for the group to time its previous process out.
pub(super) fn instance_id(cfg: &Config) -> String {
    if let Some(id) = &cfg.kafka.instance_id {
        return id.clone();
    }
    let dir = cfg
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| cfg.data_dir.clone());
    let hash = xxhash_rust::xxh3::xxh3_64(dir.to_string_lossy().as_bytes());
    format!("attune-origin-{hash:016x}")
}

/// Refuses to join a group another consumer is in. Joining would start a rebalance that hands
/// each member part of the topic, which every origin refuses ([`Assigner::check_whole_topic`]):
/// a second origin started by mistake would stop the one already running. Checked before
/// `subscribe`, so only the newcomer stops. This origin's own membership from before a restart
/// (static membership: the broker names the member `<group.instance.id>-<uuid>`) is not
/// another consumer.
fn refuse_a_busy_group(
    consumer: &BaseConsumer<Assigner>,
    group: &str,
    instance: &str,
) -> Result<()> {
    let groups = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .map_err(kafka_err(format!("describing consumer group {group}")))?;
    let own = format!("{instance}-");
    let others: Vec<String> = groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .filter(|m| !m.id().starts_with(&own))
        .map(|m| format!("{} ({})", m.client_id(), m.client_host()))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::KafkaRefused(format!(
        "consumer group {group} already has a member: {}; one origin per consumer group (the \
         other origin keeps the topic; a member that is gone leaves the group after its \
         session.timeout.ms)",
        others.join(", ")
    )))
}

/// Consumes `cfg.kafka.topic` into `pipeline` until `stop` answers true, then checkpoints and
/// commits. Records stay in Kafka until applied: a stop does not wait for the topic's end.
pub fn consume(
    cfg: &Config,
    pipeline: &mut Pipeline,
    store: &Store,
    reporting: Reporting,
    opts: ConsumeOptions,
    stop: &dyn Fn() -> bool,
    on_batch: &dyn Fn(&BatchOutcome),
) -> Result<()> {
    let k = &cfg.kafka;
    let source = source_name(&k.topic);
    let expected: Expected = Arc::default();
    let assigner = Assigner {
        topic: k.topic.clone(),
        source: source.clone(),
        store: store.clone(),
        expected: expected.clone(),
        failed: Mutex::new(None),
        metrics: reporting.metrics,
        health: reporting.health,
    };
    let instance = instance_id(cfg);
    let consumer: BaseConsumer<Assigner> = client_config(k)?
        .set("group.id", &k.group_id)
        .set("group.instance.id", &instance)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A start offset the topic no longer holds (retention deleted records the store never
        // applied) is an error, never a silent jump.
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(assigner)
        .map_err(kafka_err("creating the consumer"))?;
    refuse_a_busy_group(&consumer, &k.group_id, &instance)?;
    consumer
        .subscribe(&[&k.topic])
        .map_err(kafka_err(format!("subscribing to {}", k.topic)))?;
    let mut catalog_applied =
        store.meta(&keys::offset(&source_counter_key(&source, CATALOG_COUNTER)))?;
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut buf: Vec<Record> = Vec::new();
    loop {
        if let Some(e) = consumer
            .context()
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e);
        }
        if stop() {
            pipeline.checkpoint()?;
            commit(
                &consumer,
                pipeline,
                &k.topic,
                &mut committed,
                CommitMode::Sync,
            );
            return Ok(());
        }
        buf.clear();
        let limit = pipeline.batch_limit(opts.batch_max);
        for (id, _) in read_batch(
            &consumer,
            &k.topic,
            &expected,
            &mut catalog_applied,
            limit,
            opts.idle_wait,
            &mut buf,
        )? {
            pipeline.set_source_counter(CATALOG_COUNTER, id);
        }
        if buf.is_empty() {
            if pipeline.checkpoint()? > 0 {
                commit(
                    &consumer,
                    pipeline,
                    &k.topic,
                    &mut committed,
                    CommitMode::Async,
                );
            }
            continue;
        }
        let outcome = pipeline.process(&buf)?;
        on_batch(&outcome);
        if outcome.checkpoints > 0 {
            commit(
                &consumer,
                pipeline,
                &k.topic,
                &mut committed,
                CommitMode::Async,
            );
        }
    }
}

/// Reads up to `limit` records into `buf`, waiting at most `idle_wait` for the first. Only
/// partitions listed in `expected` are read, each from its listed next offset on (a record
/// read again after a rebalance is skipped by its offset). A copy of a catalog or rules change
/// already applied becomes a gap (it keeps its partition's offset moving); the changes applied
/// first here are returned with their ids, in order.
pub(super) fn read_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    expected: &Mutex<BTreeMap<u32, u64>>,
    catalog_applied: &mut u64,
    limit: usize,
    idle_wait: Duration,
    buf: &mut Vec<Record>,
) -> Result<Vec<(u64, Record)>> {
    let mut applied_first = Vec::new();
    let started = Instant::now();
    while buf.len() < limit {
        let wait = if buf.is_empty() {
            idle_wait.saturating_sub(started.elapsed())
        } else {
            Duration::ZERO
        };
        let msg = match consumer.poll(wait) {
            None => break,
            Some(Ok(msg)) => msg,
            Some(Err(e)) if is_fatal(&e) => {
                return Err(Error::Kafka {
                    what: format!("consuming {topic}"),
                    source: e,
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                if buf.is_empty() && started.elapsed() >= idle_wait {
                    break;
                }
                continue;
            }
        };
        let partition = u32::try_from(msg.partition()).unwrap_or(0);
        let offset = u64::try_from(msg.offset()).unwrap_or(0);
        {
            let mut exp = expected.lock().unwrap_or_else(|e| e.into_inner());
            // Not assigned (revoked meanwhile) or already held: skipped.
            match exp.get(&partition) {
                Some(next) if offset >= *next => {}
                _ => continue,
            }
            exp.insert(partition, offset + 1);
        }
        match to_record(&msg)? {
            Consumed::Record(r) => buf.push(r),
            Consumed::Broadcast(id, mut r) => {
                if id <= *catalog_applied {
                    r.kind = RecordKind::Gap;
                } else {
                    *catalog_applied = id;
                    applied_first.push((id, r.clone()));
                }
                buf.push(r);
            }
        }
    }
    Ok(applied_first)
}

/// Writes the checkpointed offsets to the group (lag monitoring); a failure is only logged.
fn commit(
    consumer: &BaseConsumer<Assigner>,
    pipeline: &Pipeline,
    topic: &str,
    committed: &mut BTreeMap<u32, u64>,
    mode: CommitMode,
) {
    let Some(parts) = pipeline.partitions() else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for (p, next) in parts.checkpointed() {
        if committed.get(p) == Some(next) {
            continue;
        }
        let (Ok(p32), Ok(n)) = (i32::try_from(*p), i64::try_from(*next)) else {
            continue;
        };
        if tpl
            .add_partition_offset(topic, p32, Offset::Offset(n))
            .is_err()
        {
            continue;
        }
        committed.insert(*p, *next);
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::debug!(error = %e, "committing offsets to the group failed");
    }
}
