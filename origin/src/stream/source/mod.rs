//! Sources beyond the embedded log, and what the pipeline keeps for a partitioned one.
//!
//! A partitioned source (Kafka) has one offset per partition. Its [`Record`]s carry both in
//! their `u64` offsets ([`PartitionOffset`]), so the pipeline, which applies records in the
//! order it is given them, can note each partition's next offset and commit all of them in the
//! checkpoint, in the same transaction as the state they produced ([`Partitioned`]).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::store::{CheckpointWriter, DlqRecord};

pub mod changelog;
#[cfg(feature = "kafka")]
pub mod kafka;

/// Ingest's and admin's producer in Kafka mode.
#[cfg(feature = "kafka")]
pub use kafka::EventProducer;

/// Stands in for the producer in a build without Kafka: no value exists.
#[cfg(not(feature = "kafka"))]
#[derive(Debug)]
pub enum EventProducer {}

#[cfg(not(feature = "kafka"))]
impl EventProducer {
    pub fn send_forget(&self, _: &str) -> Result<()> {
        match *self {}
    }
    pub fn send_catalog(&self, _: &[u8]) -> Result<()> {
        match *self {}
    }
    pub fn send_rules(&self, _: &[u8]) -> Result<()> {
        match *self {}
    }
}

/// Bits of a packed record offset that hold the partition's own offset: 2^40 records per
/// partition (a trillion), 2^24 partitions.
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// A position in a partitioned source, packed into a [`Record`]'s `offset`/`next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    pub partition: u32,
    pub offset: u64,
}

impl PartitionOffset {
    /// `None` when either part does not fit.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub fn pack(self) -> Option<u64> {
        (self.offset <= OFFSET_MASK && self.partition < (1 << (64 - OFFSET_BITS)))
            .then_some(u64::from(self.partition) << OFFSET_BITS | self.offset)
    }

    pub fn unpack(packed: u64) -> Self {
        PartitionOffset {
            partition: (packed >> OFFSET_BITS) as u32,
            offset: packed & OFFSET_MASK,
        }
    }
}

/// The store key of a partition's checkpointed next offset (under [`crate::store::keys::offset`]).
pub fn partition_key(source: &str, partition: u32) -> String {
    format!("{source}/{partition}")
}

/// The store key of counters a partitioned source keeps in the checkpoint (under
/// [`crate::store::keys::offset`]), e.g. the last catalog change applied.
pub fn source_counter_key(source: &str, name: &str) -> String {
    format!("{source}#{name}")
}

/// What the pipeline tracks for a partitioned source: each partition's next offset applied in
/// memory and checkpointed, and the source's own counters, written with the checkpoint.
#[derive(Debug, Default)]
pub struct Partitioned {
    applied: BTreeMap<u32, u64>,
    checkpointed: BTreeMap<u32, u64>,
    counters: BTreeMap<String, u64>,
}

impl Partitioned {
    /// A record was applied: its partition continues at `next` (packed).
    pub(crate) fn advance(&mut self, next: u64) {
        let p = PartitionOffset::unpack(next);
        self.applied.insert(p.partition, p.offset);
    }

    /// Sets a counter the source keeps in the checkpoint (applied with the records given to
    /// the pipeline next).
    pub(crate) fn set_counter(&mut self, name: &str, value: u64) {
        self.counters.insert(name.to_string(), value);
    }

    pub(crate) fn write(&self, tx: &CheckpointWriter, source: &str) -> Result<()> {
        for (p, next) in &self.applied {
            if self.checkpointed.get(p) != Some(next) {
                tx.put_offset(&partition_key(source, *p), *next)?;
            }
        }
        for (name, value) in &self.counters {
            tx.put_offset(&source_counter_key(source, name), *value)?;
        }
        Ok(())
    }

    pub(crate) fn committed(&mut self) {
        self.checkpointed.clone_from(&self.applied);
    }

    /// Each partition's next offset applied in memory.
    pub fn applied(&self) -> &BTreeMap<u32, u64> {
        &self.applied
    }

    /// A partition taken over from its changelog continues at `next`.
    pub(crate) fn restore(&mut self, partition: u32, next: u64) {
        self.applied.insert(partition, next);
        self.checkpointed.remove(&partition);
    }

    /// Partitions the group took away leave the offsets this instance commits.
    pub(crate) fn forget_partitions(&mut self, partitions: &[u32]) {
        for p in partitions {
            self.applied.remove(p);
            self.checkpointed.remove(p);
        }
    }

    /// Each partition's next offset as of the last checkpoint (what a restart resumes from).
    pub fn checkpointed(&self) -> &BTreeMap<u32, u64> {
        &self.checkpointed
    }
}

/// Where dead letters go besides the store (Kafka mode: the DLQ topic). Called before the
/// checkpoint that holds them commits, so each one reaches it at least once.
pub trait DeadLetterSink: Send {
    fn send(&mut self, dead: &[DlqRecord]) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, TargetKind};
    use crate::log::{Record, RecordKind};
    use crate::node::Node;
    use crate::store::keys;
    use std::sync::{Arc, Mutex};

    fn record(partition: u32, offset: u64, payload: &str) -> Record {
        let at = |offset| PartitionOffset { partition, offset }.pack().unwrap();
        Record {
            offset: at(offset),
            next: at(offset + 1),
            kind: RecordKind::Event,
            accepted_ms: crate::now_ms(),
            source: format!("kafka.p{partition}"),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn event(n: u64, user: &str) -> String {
        format!(
            r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"view","item":"i{n}"}}"#,
            crate::now_ms() - 1000 + n
        )
    }

    struct Collect(Arc<Mutex<Vec<String>>>);
    impl DeadLetterSink for Collect {
        fn send(&mut self, dead: &[DlqRecord]) -> Result<()> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(dead.iter().map(|d| d.reason.clone()));
            Ok(())
        }
    }

    /// Each partition's next offset, the source's counters and the dead letters go out with
    /// the checkpoint; `offset` counts the records applied.
    #[test]
    fn a_partitioned_source_checkpoints_every_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        let node = Node::open(&cfg).unwrap();
        let dead = Arc::new(Mutex::new(Vec::new()));
        let mut p = crate::stream::Pipeline::new(
            &cfg,
            node.store.clone(),
            node.model.clone(),
            node.live.clone(),
            node.metrics.clone(),
            "kafka:t",
        )
        .unwrap()
        .partitioned()
        .with_dead_letter_sink(Box::new(Collect(dead.clone())));
        let records = vec![
            record(0, 10, &event(1, "a")),
            record(3, 7, &event(2, "b")),
            record(0, 11, "not an event"),
            record(3, 9, &event(3, "b")),
        ];
        p.set_source_counter("catalog", 42);
        let o = p.process(&records).unwrap();
        assert_eq!((o.applied, o.dlq), (3, 1));
        assert_eq!(p.offset(), 4, "records applied");
        assert!(dead.lock().unwrap().is_empty(), "sent with the checkpoint");
        p.checkpoint().unwrap();
        let meta = |k: &str| node.store.meta(&keys::offset(k)).unwrap();
        assert_eq!(meta(&partition_key("kafka:t", 0)), 12);
        assert_eq!(meta(&partition_key("kafka:t", 3)), 10);
        assert_eq!(meta(&source_counter_key("kafka:t", "catalog")), 42);
        assert_eq!(meta("kafka:t"), 4);
        assert_eq!(*dead.lock().unwrap(), vec!["bad_json".to_string()]);
        let checkpointed: Vec<_> = p
            .partitions()
            .unwrap()
            .checkpointed()
            .clone()
            .into_iter()
            .collect();
        assert_eq!(checkpointed, vec![(0, 12), (3, 10)]);
    }

    #[test]
    fn packs_and_unpacks() {
        let p = PartitionOffset {
            partition: 7,
            offset: 123_456_789,
        };
        assert_eq!(PartitionOffset::unpack(p.pack().unwrap()), p);
        let max = PartitionOffset {
            partition: (1 << 24) - 1,
            offset: OFFSET_MASK,
        };
        assert_eq!(PartitionOffset::unpack(max.pack().unwrap()), max);
        let too_far = PartitionOffset {
            partition: 0,
            offset: OFFSET_MASK + 1,
        };
        assert_eq!(too_far.pack(), None);
        let too_many = PartitionOffset {
            partition: 1 << 24,
            offset: 0,
        };
        assert_eq!(too_many.pack(), None);
    }
}
