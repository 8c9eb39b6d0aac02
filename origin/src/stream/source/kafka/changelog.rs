//! The state changelog and the model deltas in Kafka: written in one transaction per
//! checkpoint with the consumed offsets ([`TransactionalChangelog`]), and a changelog
//! partition read back to its end when the group hands it over ([`read_changelog`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::consume::{instance_id, is_fatal};
use super::{client_config, kafka_err};
use crate::config::{Config, KafkaConfig};
use crate::error::{Error, Result};
use crate::stream::source::changelog::{ChangelogBatch, ChangelogSink};

/// The consumer group's metadata, refreshed by the consumer's loop before each checkpoint: the
/// transaction commits the offsets as that group member (a replaced member is fenced).
pub(super) type GroupMetadata = Arc<Mutex<Option<ConsumerGroupMetadata>>>;

/// The changelog in Kafka: one transaction per checkpoint (state records, model delta,
/// consumed offsets), `transactional.id` fixed per instance so a restarted instance fences
/// its predecessor.
pub struct TransactionalChangelog {
    producer: BaseProducer,
    events_topic: String,
    state_topic: String,
    model_topic: String,
    group: GroupMetadata,
    timeout: Duration,
}

impl TransactionalChangelog {
    pub(super) fn new(cfg: &Config, group: GroupMetadata) -> Result<Self> {
        let k = &cfg.kafka;
        let producer: BaseProducer = client_config(k)?
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
                    self.producer.poll(Duration::from_millis(50));
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

    fn write(&self, batch: &ChangelogBatch) -> Result<()> {
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
        if !batch.model_delta.is_empty() {
            self.send(
                BaseRecord::to(&self.model_topic)
                    .partition(0)
                    .payload(batch.model_delta.as_slice()),
            )?;
        }
        if !batch.offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, next) in &batch.offsets {
                let (Ok(p), Ok(n)) = (i32::try_from(*p), i64::try_from(*next)) else {
                    continue;
                };
                tpl.add_partition_offset(&self.events_topic, p, Offset::Offset(n))
                    .map_err(kafka_err("listing the offsets to commit"))?;
            }
            let group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            let Some(meta) = group.as_ref() else {
                return Err(Error::KafkaRefused(
                    "a checkpoint before the consumer joined its group".into(),
                ));
            };
            self.producer
                .send_offsets_to_transaction(&tpl, meta, self.timeout)
                .map_err(kafka_err("adding the offsets to the transaction"))?;
        }
        self.producer
            .commit_transaction(self.timeout)
            .map_err(kafka_err("committing the changelog transaction"))
    }
}

impl ChangelogSink for TransactionalChangelog {
    fn commit(&mut self, batch: &ChangelogBatch) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(kafka_err("starting a changelog transaction"))?;
        let r = self.write(batch);
        if r.is_err() {
            // A fenced producer cannot abort; the error that matters is the first.
            let _ = self.producer.abort_transaction(self.timeout);
        }
        r
    }
}

/// The changelog reader's context: the end of the partition is what it reads to, not an error
/// to log.
struct ToTheEnd;

impl ClientContext for ToTheEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
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
