//! # attune-origin
//!
//! The origin service: consumes the behavioural event stream, keeps profiles and the item
//! model current, and batch-publishes snapshots to edge KV. Shaped like tokio's mini-redis:
//! a library of small modules with a thin binary (`src/main.rs`).
//!
//! ```text
//! ingest (axum) ─► log (embedded, fsync'd; `Source` trait) ─► pipeline
//!   validate (core) ─► dedup ─► watermark ─► Profile::apply (core) + model
//!   ─► live (applied in memory; the publisher reads it at once)
//!   ─► store (redb, one transaction per checkpoint: profiles, dedup, offsets, model, outbox,
//!      DLQ; a crash replays the log from the last checkpoint)
//!   ─► publisher (outbox → KV bulk API / dev route / directory)
//! ```
//!
//! All decisions about a profile go through `attune-core`; this crate adds I/O, durability
//! and batching.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
mod http;
mod lifecycle;
pub mod log;
pub mod metrics;
pub mod model;
pub mod node;
pub mod publish;
pub mod server;
pub mod store;
pub mod stream;

pub use config::Config;
pub use error::{Error, Result};

/// Wall clock in epoch milliseconds (the core never reads one; the origin passes it in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
