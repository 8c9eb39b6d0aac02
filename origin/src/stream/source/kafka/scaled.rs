//! Scale-out: several origins in one consumer group, each owning the partitions the group
//! assigns it, in the spirit of Kafka Streams' exactly-once tasks.
//!
//! - **State.** Each checkpoint writes the owned partitions' changed state (users, dedup keys,
//!   a marker with the next offset and the watermarks) to the compacted state topic, the
//!   model's delta to the model topic, and the consumed offsets to the group, in **one Kafka
//!   transaction** ([`TransactionalChangelog`]), then commits the store. The group's committed
//!   offsets and the changelog therefore always agree, and a zombie (an instance the group
//!   already replaced) is fenced: its transaction fails.
//! - **Hand-over.** On revocation the pipeline checkpoints first (the next owner sees
//!   everything applied). On assignment, a partition whose committed offset differs from the
//!   store's is restored from its changelog partition ([`read_changelog`], committed records
//!   only) before anything is consumed from it.
//! - **Model.** Every instance reads every delta from the model topic (its own too) and merges
//!   it, so each holds the whole model; the integer co-occurrence weights and counts add up to
//!   what one instance would count, whatever the split.
//! - **Publishing.** Each instance publishes its own users' profiles; the shared keys come
//!   from the owner of partition 0 only ([`crate::stream::live::Live::publish_shared`]).
//!
//! The pipeline lives in the consumer's context, so the rebalance callback (run inside
//! `poll`, on this thread) can checkpoint and restore it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use super::changelog::{GroupMetadata, ToTheEnd, TransactionalChangelog, read_changelog};
use super::consume::{
    ConsumeOptions, Reporting, STATISTICS_INTERVAL_MS, instance_id, is_fatal, read_batch,
};
use super::{
    CATALOG_COUNTER, CATALOG_ID_HEADER, KIND_HEADER, client_config, header, kafka_err, source_name,
};
use crate::config::{Config, KafkaConfig};
use crate::error::{Error, Result};
use crate::lifecycle::Health;
use crate::log::{Record, RecordKind};
use crate::metrics::{Metrics, labels};
use crate::store::{Store, keys};
use crate::stream::live::SharedLive;
use crate::stream::source::changelog::Broadcast;
use crate::stream::source::{partition_key, source_counter_key};
use crate::stream::{BatchOutcome, Pipeline};

/// The pipeline counter holding the model topic's next offset.
const MODEL_COUNTER: &str = "model";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The consumer's context: the pipeline (for the rebalance callback) and what the loop and
/// the callback share.
struct Owner {
    kafka: KafkaConfig,
    source: String,
    store: Store,
    pipeline: Mutex<Pipeline>,
    live: SharedLive,
    /// Next offset per owned partition the loop expects.
    expected: Mutex<BTreeMap<u32, u64>>,
    /// Next offset per owned partition as of the last checkpoint (the offsets the group has,
    /// through the changelog's transactions, which librdkafka's own lag does not see).
    committed: Mutex<BTreeMap<u32, u64>>,
    group: GroupMetadata,
    failed: Mutex<Option<Error>>,
    metrics: Arc<Metrics>,
    health: Health,
}

impl Owner {
    fn refresh_group(&self, consumer: &BaseConsumer<Self>) {
        *lock(&self.group) = consumer.group_metadata();
    }

    /// Checkpoints what the revoked partitions had, then lets them go.
    fn revoke(&self, consumer: &BaseConsumer<Self>, parts: &[u32]) -> Result<()> {
        self.refresh_group(consumer);
        let mut pipeline = lock(&self.pipeline);
        pipeline.checkpoint()?;
        pipeline.revoke_partitions(parts);
        let mut expected = lock(&self.expected);
        let mut committed = lock(&self.committed);
        for p in parts {
            expected.remove(p);
            committed.remove(p);
            // Another instance reports it now.
            self.metrics
                .kafka_consumer_lag
                .remove(&labels(&[("partition", &p.to_string())]));
        }
        tracing::info!(
            ?parts,
            "partitions revoked (state checkpointed to the changelog)"
        );
        Ok(())
    }

    /// Restores the partitions whose group offset is not the store's, and sets where each
    /// starts.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) -> Result<()> {
        self.refresh_group(consumer);
        let topic = self.kafka.topic.clone();
        let parts: Vec<u32> = tpl
            .elements_for_topic(&topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        let timeout = Duration::from_millis(self.kafka.transaction_timeout_ms.max(1000) * 3);
        let committed = consumer
            .committed_offsets(tpl.clone(), timeout)
            .map_err(kafka_err("reading the group's committed offsets"))?;
        let mut pipeline = lock(&self.pipeline);
        pipeline.checkpoint()?;
        let mut starts = BTreeMap::new();
        for p in &parts {
            let group_next = committed
                .find_partition(&topic, i32::try_from(*p).unwrap_or(i32::MAX))
                .and_then(|e| match e.offset() {
                    Offset::Offset(n) => u64::try_from(n).ok(),
                    _ => None,
                })
                .unwrap_or(0);
            let local = self
                .store
                .meta(&keys::offset(&partition_key(&self.source, *p)))?;
            let start = if group_next == local {
                local
            } else {
                let started = Instant::now();
                let latest = read_changelog(&self.kafka, *p, timeout)?;
                let restored = pipeline.restore_partition(*p, latest)?;
                if restored.next != group_next {
                    return Err(Error::Corrupt(format!(
                        "partition {p}: the group committed offset {group_next} but its \
                         changelog's marker says {}",
                        restored.next
                    )));
                }
                tracing::info!(
                    partition = p,
                    from = local,
                    to = group_next,
                    users = restored.users,
                    deleted = restored.deleted,
                    dedup_keys = restored.dedup_keys,
                    ms = started.elapsed().as_millis() as u64,
                    "partition restored from the changelog"
                );
                self.metrics.kafka_partitions_restored.inc();
                group_next
            };
            starts.insert(*p, start);
        }
        pipeline.checkpoint()?;
        drop(pipeline);
        let mut expected = lock(&self.expected);
        let mut committed = lock(&self.committed);
        for (p, start) in &starts {
            expected.insert(*p, *start);
            committed.insert(*p, *start);
            let offset = if *start == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(i64::try_from(*start).unwrap_or(i64::MAX))
            };
            tpl.set_partition_offset(&topic, i32::try_from(*p).unwrap_or(i32::MAX), offset)
                .map_err(kafka_err(format!("starting partition {p}")))?;
        }
        let owns_first = expected.contains_key(&0);
        crate::stream::live::lock(&self.live).shared_keys_elsewhere = !owns_first;
        tracing::info!(partitions = ?starts, publishes_shared_keys = owns_first, "partitions assigned");
        Ok(())
    }
}

impl ClientContext for Owner {
    fn stats(&self, statistics: Statistics) {
        super::consume::broker_readiness(&self.health, &statistics);
        let Some(topic) = statistics.topics.get(&self.kafka.topic) else {
            return;
        };
        let committed = lock(&self.committed);
        for (partition, p) in &topic.partitions {
            let Some(next) = u32::try_from(*partition)
                .ok()
                .and_then(|n| committed.get(&n))
            else {
                continue;
            };
            if p.ls_offset >= 0 {
                let lag = p.ls_offset - i64::try_from(*next).unwrap_or(i64::MAX);
                self.metrics
                    .kafka_consumer_lag
                    .get_or_create(&labels(&[("partition", &partition.to_string())]))
                    .set(lag.max(0));
            }
        }
    }
}

impl ConsumerContext for Owner {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts = |tpl: &TopicPartitionList| -> Vec<u32> {
            tpl.elements_for_topic(&self.kafka.topic)
                .iter()
                .filter_map(|e| u32::try_from(e.partition()).ok())
                .collect()
        };
        let r = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl).and_then(|()| {
                    consumer
                        .assign(tpl)
                        .map_err(kafka_err("assigning partitions"))
                })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let r = self.revoke(consumer, &parts(tpl));
                // Whatever the checkpoint did, the partitions go: librdkafka waits for this
                // (a consumer closing after an error would wait forever).
                let unassigned = consumer
                    .unassign()
                    .map_err(kafka_err("revoking partitions"));
                r.and(unassigned)
            }
            other => {
                let code = RDKafkaErrorCode::from(other);
                tracing::warn!(%code, "rebalance error; dropping the assignment");
                lock(&self.expected).clear();
                consumer
                    .unassign()
                    .map_err(kafka_err("dropping the assignment"))
            }
        };
        if let Err(e) = r {
            // Nothing is consumed after a failed rebalance: the loop stops with the error.
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                let _ = consumer.unassign();
            }
            lock(&self.failed).get_or_insert(e);
        }
    }
}

/// Reads the model topic: every instance's deltas, merged in the order the topic holds them.
struct ModelFeed {
    consumer: BaseConsumer<ToTheEnd>,
}

/// How long a start waits to have read the model topic to its end.
const CATCH_UP: Duration = Duration::from_secs(120);

impl ModelFeed {
    fn new(k: &KafkaConfig, from: u64) -> Result<Self> {
        let consumer: BaseConsumer<ToTheEnd> = client_config(k)?
            .set("group.id", format!("{}-model", k.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true")
            .create_with_context(ToTheEnd)
            .map_err(kafka_err("creating the model reader"))?;
        let mut tpl = TopicPartitionList::new();
        let offset = if from == 0 {
            Offset::Beginning
        } else {
            Offset::Offset(i64::try_from(from).unwrap_or(i64::MAX))
        };
        tpl.add_partition_offset(&k.model_topic, 0, offset)
            .map_err(kafka_err("listing the model partition"))?;
        consumer
            .assign(&tpl)
            .map_err(kafka_err(format!("reading {}", k.model_topic)))?;
        Ok(ModelFeed { consumer })
    }

    /// Merges the model topic up to its end before any event is applied: an instance that
    /// joins has the whole model and every catalog and rules change first.
    fn catch_up(&self, pipeline: &mut Pipeline, catalog_applied: &mut u64) -> Result<u64> {
        let deadline = Instant::now() + CATCH_UP;
        let mut n = 0;
        loop {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Err(e)) if is_end(&e) => return Ok(n),
                Some(Err(e)) if is_fatal(&e) => {
                    return Err(Error::Kafka {
                        what: "reading the model topic".into(),
                        source: e,
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "model reader (librdkafka retries)"),
                Some(Ok(msg)) => {
                    merge_one(&msg, pipeline, catalog_applied)?;
                    n += 1;
                }
                None => {}
            }
            if Instant::now() > deadline {
                return Err(Error::KafkaRefused(format!(
                    "the model topic's end not reached in {CATCH_UP:?}"
                )));
            }
        }
    }

    /// Merges what arrived (at most `max` records) into the pipeline.
    fn merge(
        &self,
        pipeline: &mut Pipeline,
        max: usize,
        catalog_applied: &mut u64,
    ) -> Result<usize> {
        let mut n = 0;
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) if is_end(&e) => break,
                Some(Err(e)) if is_fatal(&e) => {
                    return Err(Error::Kafka {
                        what: "reading the model topic".into(),
                        source: e,
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "model reader (librdkafka retries)");
                    break;
                }
                Some(Ok(msg)) => {
                    merge_one(&msg, pipeline, catalog_applied)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn is_end(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_))
        || e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// One model-topic record: a delta, or a catalog or rules change not applied yet
/// (`catalog_applied`: the last change's id).
fn merge_one(
    msg: &BorrowedMessage<'_>,
    pipeline: &mut Pipeline,
    catalog_applied: &mut u64,
) -> Result<()> {
    let at = msg
        .timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or_else(crate::now_ms);
    let offset = u64::try_from(msg.offset()).unwrap_or(0);
    let payload = msg.payload().unwrap_or_default();
    match header(msg, KIND_HEADER) {
        None => pipeline.merge_model_delta(payload, offset, at)?,
        Some(kind) => {
            let kind = match kind {
                "catalog" => RecordKind::Catalog,
                "rules" => RecordKind::Rules,
                other => {
                    return Err(Error::KafkaRefused(format!(
                        "model topic record at {offset} has {KIND_HEADER} {other:?}, which \
                         this build does not know"
                    )));
                }
            };
            let id: u64 = header(msg, CATALOG_ID_HEADER)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if id > *catalog_applied {
                *catalog_applied = id;
                pipeline.set_source_counter(CATALOG_COUNTER, id);
                let payload = payload.to_vec();
                pipeline.merge_broadcast(Broadcast { id, kind, payload }, at)?;
            }
        }
    }
    pipeline.set_source_counter(MODEL_COUNTER, offset + 1);
    Ok(())
}

/// [`super::consume`] for an instance of a scaled-out group (see the module doc).
pub fn consume_scaled(
    cfg: &Config,
    pipeline: Pipeline,
    store: &Store,
    reporting: Reporting,
    opts: ConsumeOptions,
    stop: &dyn Fn() -> bool,
    on_batch: &dyn Fn(&BatchOutcome),
) -> Result<()> {
    let k = &cfg.kafka;
    let source = source_name(&k.topic);
    let group: GroupMetadata = Arc::default();
    let changelog = TransactionalChangelog::new(cfg, group.clone())?;
    let pipeline = pipeline.scale_out(Box::new(changelog));
    let live = pipeline.live();
    let model_from = store.meta(&keys::offset(&source_counter_key(&source, MODEL_COUNTER)))?;
    let feed = ModelFeed::new(k, model_from)?;
    let mut catalog_applied =
        store.meta(&keys::offset(&source_counter_key(&source, CATALOG_COUNTER)))?;
    let mut pipeline = pipeline;
    let merged = feed.catch_up(&mut pipeline, &mut catalog_applied)?;
    tracing::info!(records = merged, "model topic read to its end");
    let owner = Owner {
        kafka: k.clone(),
        source: source.clone(),
        store: store.clone(),
        pipeline: Mutex::new(pipeline),
        live,
        expected: Mutex::default(),
        committed: Mutex::default(),
        group,
        failed: Mutex::new(None),
        metrics: reporting.metrics,
        health: reporting.health,
    };
    let consumer: BaseConsumer<Owner> = client_config(k)?
        .set("group.id", &k.group_id)
        .set("group.instance.id", instance_id(cfg))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(owner)
        .map_err(kafka_err("creating the consumer"))?;
    consumer
        .subscribe(&[&k.topic])
        .map_err(kafka_err(format!("subscribing to {}", k.topic)))?;
    let ctx = consumer.context();
    let mut buf: Vec<Record> = Vec::new();
    loop {
        if let Some(e) = lock(&ctx.failed).take() {
            return Err(e);
        }
        if stop() {
            ctx.refresh_group(&consumer);
            lock(&ctx.pipeline).checkpoint()?;
            return Ok(());
        }
        buf.clear();
        let limit = lock(&ctx.pipeline).batch_limit(opts.batch_max);
        let applied_first = read_batch(
            &consumer,
            &k.topic,
            &ctx.expected,
            &mut catalog_applied,
            limit,
            opts.idle_wait,
            &mut buf,
        )?;
        if let Some(e) = lock(&ctx.failed).take() {
            return Err(e);
        }
        ctx.refresh_group(&consumer);
        let mut pipeline = lock(&ctx.pipeline);
        pipeline.check_changelog()?;
        for (id, rec) in &applied_first {
            pipeline.set_source_counter(CATALOG_COUNTER, *id);
            pipeline.note_broadcast(*id, rec);
        }
        feed.merge(&mut pipeline, opts.batch_max, &mut catalog_applied)?;
        let outcome = if buf.is_empty() {
            pipeline.checkpoint()?;
            None
        } else {
            Some(pipeline.process(&buf)?)
        };
        if let Some(parts) = pipeline.partitions() {
            let mut committed = lock(&ctx.committed);
            for (p, next) in parts.checkpointed() {
                if let Some(c) = committed.get_mut(p) {
                    *c = *next;
                }
            }
        }
        drop(pipeline);
        if let Some(outcome) = outcome {
            on_batch(&outcome);
        }
    }
}
