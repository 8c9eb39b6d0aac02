//! The producers: ingest's events, admin records (forget, catalog), and dead letters.
//!
//! All of them are idempotent with `acks=all`: a send counts once every in-sync replica has
//! it, and librdkafka's retries never write a record twice or out of order.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::{
    ACCEPTED_HEADER, CATALOG_ID_HEADER, KIND_HEADER, REASON_HEADER, SOURCE_HEADER, client_config,
    kafka_err, partition_count,
};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::store::DlqRecord;
use crate::stream::source::DeadLetterSink;

/// Why a send was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceRefused {
    /// librdkafka's local queue is full (the broker is slow or away): try again later.
    #[error("the producer's queue is full")]
    QueueFull,
    /// The broker did not acknowledge within the timeout, or refused the record.
    #[error("the broker did not acknowledge the record: {0}")]
    NotAcknowledged(KafkaError),
    /// The producer went away before the delivery report.
    #[error("the producer closed before the broker answered")]
    Closed,
}

fn producer(cfg: &KafkaConfig) -> Result<FutureProducer> {
    client_config(cfg)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // A delivery report always comes within this (success or failure).
        .set("message.timeout.ms", cfg.produce_timeout_ms.to_string())
        .create()
        .map_err(kafka_err("creating the producer"))
}

/// Waits for the delivery reports of records already queued.
async fn acknowledged(pending: Vec<DeliveryFuture>) -> Result<(), ProduceRefused> {
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(ProduceRefused::NotAcknowledged(e)),
            Err(_) => return Err(ProduceRefused::Closed),
        }
    }
    Ok(())
}

fn queue_error(e: KafkaError) -> ProduceRefused {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ProduceRefused::QueueFull,
        _ => ProduceRefused::NotAcknowledged(e),
    }
}

/// The user an event is keyed by, when the bytes are an object with a string `user`; an event
/// without one is still sent (unkeyed) and becomes a dead letter in the pipeline.
fn user_of(event: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Keyed<'a> {
        #[serde(borrow)]
        user: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Keyed<'_>>(event).ok()?.user
}

/// Ingest's and admin's producer to the events topic.
pub struct EventProducer {
    producer: FutureProducer,
    topic: String,
    metadata_timeout: Duration,
    /// The last catalog change id sent (ids increase even if the clock steps back).
    catalog_id: AtomicU64,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        Ok(EventProducer {
            producer: producer(cfg)?,
            topic: cfg.topic.clone(),
            metadata_timeout: Duration::from_millis(cfg.produce_timeout_ms),
            catalog_id: AtomicU64::new(0),
        })
    }

    /// Sends `events` (keyed by their user) and returns once the broker acknowledged every one.
    /// When it fails part of them may have been written: a client's retry is then
    /// deduplicated by `event_id` in the pipeline.
    pub async fn send_events(
        &self,
        source: &str,
        accepted_ms: u64,
        events: &[Vec<u8>],
    ) -> Result<(), ProduceRefused> {
        let accepted = accepted_ms.to_string();
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: SOURCE_HEADER,
                    value: Some(source),
                })
                .insert(Header {
                    key: ACCEPTED_HEADER,
                    value: Some(accepted.as_str()),
                });
            let user = user_of(event);
            let mut record = FutureRecord::to(&self.topic)
                .payload(event.as_slice())
                .headers(headers);
            if let Some(user) = user.as_deref() {
                record = record.key(user);
            }
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => return Err(queue_error(e)),
            }
        }
        acknowledged(pending).await
    }

    /// A forget, keyed by the user: in their partition, after the events sent before it.
    /// Returns once the broker acknowledged it.
    pub fn send_forget(&self, user: &str) -> Result<()> {
        let headers = OwnedHeaders::new().insert(Header {
            key: KIND_HEADER,
            value: Some("forget"),
        });
        let record = FutureRecord::to(&self.topic)
            .key(user)
            .payload(user)
            .headers(headers);
        let f = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| refused("sending a forget", queue_error(e)))?;
        futures_executor::block_on(acknowledged(vec![f]))
            .map_err(|e| refused("sending a forget", e))
    }

    /// A catalog change (MessagePack `CatalogItem`s): one copy in every partition, with one id
    /// (see the module doc of `kafka`). Returns once the broker acknowledged every copy.
    pub fn send_catalog(&self, payload: &[u8]) -> Result<()> {
        self.broadcast("catalog", payload)
    }

    /// A rules change (JSON), sent like a catalog change and numbered in the same sequence.
    pub fn send_rules(&self, payload: &[u8]) -> Result<()> {
        self.broadcast("rules", payload)
    }

    fn broadcast(&self, kind: &'static str, payload: &[u8]) -> Result<()> {
        let partitions =
            partition_count(self.producer.client(), &self.topic, self.metadata_timeout)?;
        if partitions == 0 {
            return Err(Error::KafkaRefused(format!(
                "topic {} has no partitions (does it exist?)",
                self.topic
            )));
        }
        let now = crate::now_ms() * 1000;
        let id = self
            .catalog_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .map_or(now, |last| now.max(last + 1));
        let id_text = id.to_string();
        let mut pending = Vec::with_capacity(partitions);
        for p in 0..partitions {
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: KIND_HEADER,
                    value: Some(kind),
                })
                .insert(Header {
                    key: CATALOG_ID_HEADER,
                    value: Some(id_text.as_str()),
                });
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.topic)
                .partition(i32::try_from(p).unwrap_or(i32::MAX))
                .payload(payload)
                .headers(headers);
            let f = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| refused(&format!("sending a {kind} change"), queue_error(e)))?;
            pending.push(f);
        }
        futures_executor::block_on(acknowledged(pending))
            .map_err(|e| refused(&format!("sending a {kind} change"), e))
    }
}

fn refused(what: &str, e: ProduceRefused) -> Error {
    Error::KafkaRefused(format!("{what}: {e}"))
}

/// Dead letters to `kafka.dlq_topic`: the raw record as value, keyed by its source, the
/// reason code in `attune-reason` and the detail in `attune-detail`.
pub struct DlqProducer {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DlqProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DlqProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        Ok(DlqProducer {
            producer: producer(cfg)?,
            topic: cfg.dlq_topic.clone(),
        })
    }
}

impl DeadLetterSink for DlqProducer {
    fn send(&mut self, dead: &[DlqRecord]) -> Result<()> {
        let mut pending = Vec::with_capacity(dead.len());
        for d in dead {
            let offset = d.offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: REASON_HEADER,
                    value: Some(d.reason.as_str()),
                })
                .insert(Header {
                    key: "attune-detail",
                    value: Some(d.detail.as_str()),
                })
                .insert(Header {
                    key: SOURCE_HEADER,
                    value: Some(d.source.as_str()),
                })
                .insert(Header {
                    key: "attune-offset",
                    value: Some(offset.as_str()),
                });
            let record = FutureRecord::to(&self.topic)
                .key(d.source.as_str())
                .payload(d.raw.as_str())
                .headers(headers);
            let f = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| refused("sending a dead letter", queue_error(e)))?;
            pending.push(f);
        }
        futures_executor::block_on(acknowledged(pending))
            .map_err(|e| refused("sending dead letters", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_keyed_by_their_user() {
        assert_eq!(
            user_of(br#"{"v":1,"user":"u\"7","kind":"view"}"#).as_deref(),
            Some("u\"7")
        );
        assert_eq!(user_of(br#"{"v":1,"kind":"view"}"#), None);
        assert_eq!(user_of(b"not json"), None);
        assert_eq!(user_of(br#"{"user":42}"#), None);
    }
}
