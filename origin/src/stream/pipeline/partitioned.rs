//! The pipeline's side of a partitioned source (Kafka): per-partition offsets and counters
//! committed with the checkpoint, and dead letters sent on before it.

use super::Pipeline;
use crate::log::Record;
use crate::stream::source::{DeadLetterSink, Partitioned};

impl Pipeline {
    /// For a partitioned source: record offsets are [`PartitionOffset`](crate::stream::source::PartitionOffset)s,
    /// each partition's next offset is committed with the checkpoint, and `offset` counts
    /// the records applied.
    pub fn partitioned(mut self) -> Self {
        self.partitioned = Some(Partitioned::default());
        self
    }

    /// Dead letters also go to `sink`, before the checkpoint that holds them commits.
    pub fn with_dead_letter_sink(mut self, sink: Box<dyn DeadLetterSink>) -> Self {
        self.dead_letter_sink = Some(sink);
        self
    }

    /// A partitioned source's offsets and counters (`None` for the embedded log).
    pub fn partitions(&self) -> Option<&Partitioned> {
        self.partitioned.as_ref()
    }

    /// Sets a counter a partitioned source keeps in the checkpoint, with the records it hands
    /// over next.
    pub fn set_source_counter(&mut self, name: &str, value: u64) {
        if let Some(p) = &mut self.partitioned {
            p.set_counter(name, value);
        }
    }

    /// Moves past an applied record.
    pub(super) fn advance(&mut self, rec: &Record) {
        match &mut self.partitioned {
            None => self.offset = rec.next,
            Some(p) => {
                p.advance(rec.next);
                self.offset += 1;
            }
        }
    }
}
