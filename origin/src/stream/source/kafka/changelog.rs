//! The state changelog and the model deltas in Kafka: written in one transaction per
//! checkpoint with the consumed offsets ([`TransactionalChangelog`]), and a changelog
//! partition read back to its end when the group hands it over ([`read_changelog`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::consume::{instance_id, is_fatal};
use super::{CATALOG_ID_HEADER, KIND_HEADER, client_config, kafka_err};
use crate::config::{Config, KafkaConfig};
use crate::error::{Error, Result};
use crate::stream::source::changelog::{ChangelogBatch, ChangelogSink};
use rdkafka::message::{Header, OwnedHeaders};

/// The consumer group's metadata, refreshed by the consumer's loop before each checkpoint: the
/// transaction commits the offsets as that group member (a replaced member is fenced).
pub(super) type GroupMetadata = Arc<Mutex<Option<ConsumerGroupMetadata>>>;

/// The changelog in Kafka: one transaction per checkpoint (state records, model delta,
/// consumed offsets), `transactional.id` fixed per instance so a restarted instance fences
/// its predecessor.
pub struct TransactionalChangelog {
    /// Threaded: delivery reports are polled in the background, which an abort waits for.
    producer: ThreadedProducer<DefaultProducerContext>,
    events_topic: String,
    state_topic: String,
    model_topic: String,
    group: GroupMetadata,
    timeout: Duration,
}

impl TransactionalChangelog {
    pub(super) fn new(cfg: &Config, group: GroupMetadata) -> Result<Self> {
        let k = &cfg.kafka;
        let producer: ThreadedProducer<DefaultProducerContext> = client_config(k)?
            .set(
                "transactional.id",
                format!("{}-changelog", instance_id(cfg)),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "transaction.timeout.ms",
                k.transaction_timeout_ms.to_string(),
            )
            .create()
            .map_err(kafka_err("creating the changelog producer"))?;
        let timeout = Duration::from_millis(k.transaction_timeout_ms.max(1000));
        producer
            .init_transactions(timeout)
            .map_err(kafka_err("initializing the changelog's transactions"))?;
        Ok(TransactionalChangelog {
            producer,
            events_topic: k.topic.clone(),
            state_topic: k.state_topic.clone(),
            model_topic: k.model_topic.clone(),
            group,
            timeout,
        })
    }

    fn send(&self, mut record: BaseRecord<'_, str, [u8]>) -> Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(Error::Kafka {
                        what: "writing the changelog".into(),
                        source: e,
                    });
                }
            }
        }
    }

    fn write_records(&self, batch: &ChangelogBatch) -> Result<()> {
        for (p, changes) in &batch.partitions {
            let partition = i32::try_from(*p).unwrap_or(i32::MAX);
            for (key, value) in &changes.records {
                let mut r = BaseRecord::to(&self.state_topic)
                    .partition(partition)
                    .key(key.as_str());
                if let Some(v) = value {
                    r = r.payload(v.as_slice());
                }
                self.send(r)?;
            }
        }
        for change in &batch.broadcasts {
            let kind = match change.kind {
                crate::log::RecordKind::Catalog => "catalog",
                _ => "rules",
            };
            let id = change.id.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: KIND_HEADER,
                    value: Some(kind),
                })
                .insert(Header {
                    key: CATALOG_ID_HEADER,
                    value: Some(&id),
                });
            self.send(
                BaseRecord::to(&self.model_topic)
                    .partition(0)
                    .payload(change.payload.as_slice())
                    .headers(headers),
            )?;
        }
        for part in &batch.model_deltas {
            self.send(
                BaseRecord::to(&self.model_topic)
                    .partition(0)
                    .payload(part.as_slice()),
            )?;
        }
        Ok(())
    }

    /// The consumed offsets the transaction commits for the group.
    fn offsets(&self, batch: &ChangelogBatch) -> Result<Option<TopicPartitionList>> {
        if batch.offsets.is_empty() {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &batch.offsets {
            let (Ok(p), Ok(n)) = (i32::try_from(*p), i64::try_from(*next)) else {
                continue;
            };
            tpl.add_partition_offset(&self.events_topic, p, Offset::Offset(n))
                .map_err(kafka_err("listing the offsets to commit"))?;
        }
        Ok(Some(tpl))
    }
}

/// How long a checkpoint keeps retrying a transaction the broker did not take (a broker
/// restart, a leader moving) before the pipeline stops: well under librdkafka's
/// `max.poll.interval.ms` (5 min), past which the group would drop this member.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// What a transactional call left to do.
enum Step {
    Done,
    /// The transaction must be aborted and sent again whole.
    Restart,
}

impl TransactionalChangelog {
    /// One call of the transactional API, as librdkafka asks: a retriable error (a timeout)
    /// calls it again, one that requires an abort restarts the transaction, anything else (a
    /// fenced or fatal producer) is the checkpoint's error.
    fn call(
        &self,
        what: &str,
        deadline: Instant,
        f: impl Fn() -> rdkafka::error::KafkaResult<()>,
    ) -> Result<Step> {
        let mut wait = Duration::from_millis(100);
        loop {
            match f() {
                Ok(()) => return Ok(Step::Done),
                Err(KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                    tracing::warn!(error = %t, what, "changelog transaction aborted; sending it again");
                    return Ok(Step::Restart);
                }
                Err(KafkaError::Transaction(t))
                    if t.is_retriable() && Instant::now() < deadline =>
                {
                    tracing::warn!(error = %t, what, retry_in_ms = wait.as_millis() as u64, "changelog transaction call failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(source) => {
                    return Err(Error::Kafka {
                        what: format!("{what} (the changelog transaction)"),
                        source,
                    });
                }
            }
        }
    }

    fn abort(&self, deadline: Instant) -> Result<()> {
        match self.call("aborting", deadline, || {
            self.producer.abort_transaction(self.timeout)
        })? {
            Step::Done => Ok(()),
            Step::Restart => Err(Error::KafkaRefused(
                "aborting the changelog transaction asked for another abort".into(),
            )),
        }
    }

    /// Sends the batch's records and offsets into the open transaction and commits it.
    fn send_and_commit(&self, batch: &ChangelogBatch, deadline: Instant) -> Result<Step> {
        self.write_records(batch)?;
        if let Some(tpl) = self.offsets(batch)? {
            let group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            let Some(meta) = group.as_ref() else {
                return Err(Error::KafkaRefused(
                    "a checkpoint before the consumer joined its group".into(),
                ));
            };
            if let Step::Restart = self.call("adding the offsets", deadline, || {
                self.producer
                    .send_offsets_to_transaction(&tpl, meta, self.timeout)
            })? {
                return Ok(Step::Restart);
            }
        }
        self.call("committing", deadline, || {
            self.producer.commit_transaction(self.timeout)
        })
    }
}

impl ChangelogSink for TransactionalChangelog {
    /// One transaction, sent again whole when the broker asks for an abort (nothing of an
    /// aborted one is visible to a `read_committed` reader).
    fn commit(&mut self, batch: &ChangelogBatch) -> Result<()> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            self.check()?;
            if let Step::Restart =
                self.call("starting", deadline, || self.producer.begin_transaction())?
            {
                self.abort(deadline)?;
                continue;
            }
            match self.send_and_commit(batch, deadline) {
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Restart) => self.abort(deadline)?,
                Err(e) => {
                    // A fenced producer cannot abort; the error that matters is the first.
                    if self.check().is_ok() {
                        let _ = self.producer.abort_transaction(self.timeout);
                    }
                    return Err(e);
                }
            }
            if Instant::now() > deadline {
                return Err(Error::KafkaRefused(format!(
                    "the changelog transaction did not commit in {RETRY_FOR:?}"
                )));
            }
        }
    }

    /// A producer librdkafka marked failed for good (its transactional state is lost, e.g. the
    /// broker refused to end a transaction after a restart) never commits again: the pipeline
    /// stops, and the origin's supervisor starts it again, whose new producer takes over the
    /// transactional id (aborting what this one left open) and resumes from the store.
    fn check(&self) -> Result<()> {
        match self.producer.client().fatal_error() {
            None => Ok(()),
            Some((code, reason)) => Err(Error::KafkaRefused(format!(
                "the changelog producer failed for good ({code}: {reason}); restart the origin"
            ))),
        }
    }
}

/// The changelog reader's context: the end of the partition is what it reads to, not an error
/// to log.
pub(super) struct ToTheEnd;

impl ClientContext for ToTheEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(%error, reason, "changelog reader");
        }
    }
}

impl ConsumerContext for ToTheEnd {}

/// Each key's newest committed value in a partition of the state topic (`None`: a tombstone).
pub fn read_changelog(
    cfg: &KafkaConfig,
    partition: u32,
    timeout: Duration,
) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
    let consumer: BaseConsumer<ToTheEnd> = client_config(cfg)?
        .set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(ToTheEnd)
        .map_err(kafka_err("creating the changelog reader"))?;
    let p = i32::try_from(partition).unwrap_or(i32::MAX);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.state_topic, p, Offset::Beginning)
        .map_err(kafka_err("listing the changelog partition"))?;
    consumer.assign(&tpl).map_err(kafka_err(format!(
        "reading {}/{partition}",
        cfg.state_topic
    )))?;
    let mut latest = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() > deadline {
            return Err(Error::KafkaRefused(format!(
                "restoring {}/{partition}: its end not reached in {timeout:?}",
                cfg.state_topic
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(latest),
            Some(Err(e)) if is_fatal(&e) => {
                return Err(Error::Kafka {
                    what: format!("restoring {}/{partition}", cfg.state_topic),
                    source: e,
                });
            }
            Some(Err(e)) => tracing::debug!(error = %e, "changelog reader (librdkafka retries)"),
            Some(Ok(msg)) => {
                let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    return Err(Error::Corrupt(format!(
                        "{}/{partition}@{} has no UTF-8 key",
                        cfg.state_topic,
                        msg.offset()
                    )));
                };
                latest.insert(key.to_string(), msg.payload().map(<[u8]>::to_vec));
            }
        }
    }
}
