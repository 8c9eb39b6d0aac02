//! # attune-origin
//!
//! The origin service: consumes the behavioural event stream, keeps profiles and the item
//! model current, and batch-publishes snapshots to edge KV. A library of folders by stage,
//! private to the crate, behind a small surface (the types re-exported here, the node, the
//! server, the CLI), with a thin binary (`src/main.rs`).
//!
//! ```text
//! http (axum) ─► log (embedded, fsync'd; `Source` trait) ─► stream (pipeline)
//!   validate (core) ─► dedup ─► watermark ─► Profile::apply (core) + model
//!   ─► live (applied in memory; the publisher reads it at once)
//!   ─► store (redb, one transaction per checkpoint: profiles, dedup, offsets, model, outbox,
//!      DLQ; a crash replays the log from the last checkpoint)
//!   ─► publish (outbox → KV bulk API / dev route / directory)
//! ```
//!
//! All decisions about a profile go through `attune-core`; this crate adds I/O, durability
//! and batching.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
mod http;
pub mod lifecycle;
mod log;
mod metrics;
mod model;
pub mod node;
mod publish;
pub mod server;
mod store;
mod stream;

pub use config::Config;
pub use error::{Error, Result};
/// Fault points of the event log for crash tests.
#[doc(hidden)]
pub use log::fault as log_fault;
pub use log::{
    FIRST_OFFSET, Log, LogUsage, Record, RecordKind, Retired, SalvageReport, Source, salvage,
    segment_path,
};
pub use metrics::Metrics;
pub use model::{Model, ModelDelta};
pub use node::Node;
pub use publish::{FlushOutcome, Publisher, Target};
pub use store::{Store, UserState};
pub use stream::{BatchOutcome, Pipeline, Progress, Restored};

/// Wall clock in epoch milliseconds (the core never reads one; the origin passes it in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Installs the log subscriber both binaries use: stderr, filtered by `ATTUNE_LOG` (default
/// `info`), JSON lines when `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATTUNE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
