//! Kafka mode: ingest produces to a topic, the pipeline consumes it.
//!
//! # The topic
//!
//! `kafka.topic` (`attune.events`) holds every record the embedded log would hold, in the
//! same order per user:
//!
//! - **events**: key = the event's `user` (UTF-8), value = one schema-v1 event as JSON, no
//!   `attune-kind` header. Third-party producers write these directly (the README has the
//!   schema). Optional headers: `attune-source` (the producer's name, for its watermark;
//!   default `kafka`) and `attune-accepted-ms` (decimal epoch ms; default the message
//!   timestamp).
//! - **forgets**: key = the user, `attune-kind: forget`, value = the user id. Keyed like the
//!   user's events, so it lands in their partition, after the events produced before it and
//!   before those produced after it: the same order as in the embedded log.
//! - **catalog changes**: `attune-kind: catalog`, value = a MessagePack array of
//!   `CatalogItem`, a copy **in every partition**, each with the same `attune-catalog-id`
//!   (increasing). The pipeline applies the first copy it reads and skips the others (the id
//!   applied is in the checkpoint), so every event produced after the change, in any
//!   partition, is applied after it; an event produced before it may see it early when its
//!   partition is read later than another's.
//!
//! - **rules changes**: `attune-kind: rules`, value = the rules as JSON
//!   (`attune_core::rules::Config`), broadcast like a catalog change, with an id from the same
//!   sequence in `attune-catalog-id`: one counter orders both kinds of change.
//!
//! An unknown `attune-kind` stops the pipeline (a record of a newer version is not guessed
//! at); records without a value are events that fail validation (dead letters).
//!
//! # Exactly once
//!
//! Each record's position is packed into the [`Record`]'s offset
//! ([`PartitionOffset`](super::PartitionOffset)); the pipeline commits every partition's next
//! offset in the checkpoint that holds the state the records produced. On assignment the
//! consumer starts each partition at the offset in the store ([`consume`]), never at the
//! group's committed offset, which it writes after each checkpoint for lag monitoring only.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::log::{Record, RecordKind};

use super::PartitionOffset;

mod changelog;
mod consume;
mod produce;
mod scaled;

pub use consume::{ConsumeOptions, Reporting, consume};
pub use produce::{DlqProducer, EventProducer, ProduceRefused};
pub use scaled::consume_scaled;

/// Header naming what a record is (absent: an event).
pub const KIND_HEADER: &str = "attune-kind";
/// Header with the producer's name (the event's watermark source).
pub const SOURCE_HEADER: &str = "attune-source";
/// Header with the epoch ms ingest accepted the event at.
pub const ACCEPTED_HEADER: &str = "attune-accepted-ms";
/// Header with the id of a change copied to every partition, a catalog or a rules change (its
/// copies share it).
pub const CATALOG_ID_HEADER: &str = "attune-catalog-id";
/// Dead letters: why the record was refused (the DLQ reason code).
pub const REASON_HEADER: &str = "attune-reason";
/// The watermark source of events without an `attune-source` header.
pub const DEFAULT_SOURCE: &str = "kafka";
/// The pipeline counter holding the last catalog change applied.
pub const CATALOG_COUNTER: &str = "catalog";

/// The pipeline's source name for `topic` (the prefix of its offset keys in the store).
pub fn source_name(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// Settings the origin relies on; `kafka.settings` cannot change these.
const PINNED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.idempotence",
    "acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
];

/// librdkafka settings from the config: the user's pass-through settings (security, tuning)
/// first, then the ones the origin relies on.
pub(crate) fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    for (name, value) in &cfg.settings {
        if PINNED.contains(&name.as_str()) {
            return Err(Error::KafkaRefused(format!(
                "kafka.settings.{name} is set by the origin (use kafka.brokers / kafka.group_id \
                 for those)"
            )));
        }
        c.set(name, value);
    }
    c.set("bootstrap.servers", &cfg.brokers);
    Ok(c)
}

pub(crate) fn kafka_err(
    what: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    let what = what.into();
    move |source| Error::Kafka { what, source }
}

/// How many partitions `topic` has, per the cluster's metadata (0: the topic is not known).
pub(crate) fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_err(format!("reading the partitions of {topic}")))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()))
}

/// A header's value as UTF-8, if present and valid.
fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// What a consumed message becomes.
pub(crate) enum Consumed {
    Record(Record),
    /// A copy of a change sent to every partition (catalog or rules) with this id, applied
    /// once, at its first copy.
    Broadcast(u64, Record),
}

/// Converts a message into the record the pipeline applies.
pub(crate) fn to_record(msg: &BorrowedMessage<'_>) -> Result<Consumed> {
    let partition = u32::try_from(msg.partition()).unwrap_or(0);
    let offset = u64::try_from(msg.offset()).unwrap_or(0);
    let at = |offset| {
        PartitionOffset { partition, offset }.pack().ok_or_else(|| {
            Error::KafkaRefused(format!(
                "partition {partition} offset {offset} does not fit the pipeline's offsets"
            ))
        })
    };
    let kind = match header(msg, KIND_HEADER) {
        None | Some("event") => RecordKind::Event,
        Some("forget") => RecordKind::Forget,
        Some("catalog") => RecordKind::Catalog,
        Some("rules") => RecordKind::Rules,
        Some(other) => {
            return Err(Error::KafkaRefused(format!(
                "record at {}/{partition}@{offset} has {KIND_HEADER} {other:?}, which this build \
                 does not know",
                msg.topic()
            )));
        }
    };
    let accepted_ms = header(msg, ACCEPTED_HEADER)
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            msg.timestamp()
                .to_millis()
                .and_then(|t| u64::try_from(t).ok())
        })
        .unwrap_or_else(crate::now_ms);
    // Watermarks per partition as well as per producer: a partition is ordered, the topic
    // is not (one partition may be read far ahead of another).
    let source = format!(
        "{}.p{partition}",
        header(msg, SOURCE_HEADER).unwrap_or(DEFAULT_SOURCE)
    );
    let record = Record {
        offset: at(offset)?,
        next: at(offset + 1)?,
        kind,
        accepted_ms,
        source,
        payload: msg.payload().unwrap_or_default().to_vec(),
    };
    if matches!(kind, RecordKind::Catalog | RecordKind::Rules) {
        let id = header(msg, CATALOG_ID_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::KafkaRefused(format!(
                    "{kind:?} record at {}/{partition}@{offset} has no {CATALOG_ID_HEADER}",
                    msg.topic()
                ))
            })?;
        return Ok(Consumed::Broadcast(id, record));
    }
    Ok(Consumed::Record(record))
}

/// Creates the events and dead-letter topics when they do not exist (an existing topic is
/// kept as it is). Any other refusal stops the start, naming the topic.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = client_config(cfg)?
        .create()
        .map_err(kafka_err("creating the admin client"))?;
    let partitions = i32::try_from(cfg.partitions).unwrap_or(i32::MAX);
    let replication = || TopicReplication::Fixed(i32::from(cfg.replication));
    let mut topics = vec![
        NewTopic::new(&cfg.topic, partitions, replication()),
        NewTopic::new(&cfg.dlq_topic, partitions, replication()),
    ];
    if cfg.scale_out {
        // A partition of state per events partition, compacted to each key's last value; the
        // deltas in one partition, kept: an instance that joins merges them from the start.
        topics.push(
            NewTopic::new(&cfg.state_topic, partitions, replication())
                .set("cleanup.policy", "compact"),
        );
        topics.push(NewTopic::new(&cfg.model_topic, 1, replication()).set("retention.ms", "-1"));
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(kafka_err("creating the topics"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::KafkaRefused(format!(
                    "creating topic {topic}: {code} (create it yourself with the partitions you \
                     want)"
                )));
            }
        }
    }
    Ok(())
}
