//! The stream stage: the pipeline that applies the log's events (validate, dedup, watermark,
//! profiles and the model) in micro-batches and commits them at checkpoints, and the live
//! state it shares with the publisher between checkpoints.

mod dedup;
pub mod live;
mod pipeline;
pub mod rules;
pub mod source;
mod users;
mod warm;
mod watermark;

pub use pipeline::{BatchOutcome, Pipeline, Progress, Restored};
