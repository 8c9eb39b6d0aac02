//! Sources beyond the embedded log, and what the pipeline keeps for a partitioned one.
//!
//! A partitioned source (Kafka) has one offset per partition. Its [`Record`]s carry both in
//! their `u64` offsets ([`PartitionOffset`]), so the pipeline, which applies records in the
//! order it is given them, can note each partition's next offset and commit all of them in the
//! checkpoint, in the same transaction as the state they produced ([`Partitioned`]).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::store::{CheckpointWriter, DlqRecord};

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
