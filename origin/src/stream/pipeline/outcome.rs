//! What the pipeline reports: per micro-batch outcomes and shared progress.

use std::sync::atomic::AtomicU64;

/// What one micro-batch (or a run of them) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub dlq: u64,
    pub late: u64,
    /// Micro-batches applied.
    pub batches: u64,
    /// Checkpoints committed, and the time they took.
    pub checkpoints: u64,
    pub checkpoint_us: u64,
}

impl BatchOutcome {
    /// Sums another outcome into this one.
    pub fn add(&mut self, o: &BatchOutcome) {
        self.received += o.received;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.dlq += o.dlq;
        self.late += o.late;
        self.batches += o.batches;
        self.checkpoints += o.checkpoints;
        self.checkpoint_us += o.checkpoint_us;
    }
}

/// Shared progress, read by ingest (backpressure) and the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    /// Log offset applied in memory.
    pub offset: AtomicU64,
    /// Log offset of the last checkpoint.
    pub checkpointed: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
}
