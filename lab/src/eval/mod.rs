//! `eval`: offline ranking quality on the Online Retail sample.
//!
//! Two protocols:
//!
//! - **time-split** (the default): invoices are ordered by time; the model (neighbours,
//!   trending) and the profiles learn from the invoices before the split only (the first 80%),
//!   with the same code the pipeline runs. Every later invoice with at least two distinct items
//!   is a test basket: each of its items is hidden in turn, and the others are the visitor's
//!   session, recorded in line order into a [`Session`](attune_core::Session) exactly as the edge keeps it (so at most
//!   [`attune_core::session::MAX_RECENT`] items, the most recent first). A known customer also
//!   brings the stored profile as of the split. Every method picks 10 items with the session's
//!   items excluded, and is scored on the same cases.
//! - **leave-last-out**: per user, the last purchased item (one not bought before) is hidden and
//!   everything else (including later events of other users) is training; no session.
//!
//! `--validation` runs the time-split protocol inside the training period (the first 80% of
//! it trains, the rest tests), which is where parameters are chosen: the test period is never
//! looked at for that.
//!
//! Methods: Attune's `for-you` and `trending` slots through `attune_core::rank`, and three
//! baselines implemented here ([`crate::eval_baselines`]): popularity, item-kNN and
//! session-kNN. Metrics: HR@10, NDCG@10, MRR@10, catalog coverage, and the same by context
//! length (1, 2–4, 5+ session items). Everything iterates in a fixed order: the output is
//! deterministic.

use std::path::Path;

use attune_core::rank::RankParams;
use serde::Serialize;

use crate::error::Result;
use attune_origin::config::ModelConfig;

mod protocol;
mod report;
mod training;

pub use report::{BUCKETS, MethodReport, Report, Scores};
pub use training::{Basket, Trained, baskets, split_by_time, train};

use protocol::{leave_last_out, time_split};

/// Items each method picks.
pub const TOP: usize = 10;
/// Share of the invoices (by time) that trains.
pub const TRAIN_SHARE: f64 = 0.8;

/// Which protocol [`run`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    TimeSplit,
    LeaveLastOut,
}

/// What [`run`] is asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub protocol: Protocol,
    /// Time-split inside the training period (parameter choice).
    pub validation: bool,
    pub model: ModelConfig,
    pub rank: RankParams,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protocol: Protocol::TimeSplit,
            validation: false,
            model: eval_model_config(ModelConfig::default()),
            rank: RankParams::default(),
        }
    }
}

/// The model as the origin configures it, in one shard (the eval reads one index).
pub fn eval_model_config(cfg: ModelConfig) -> ModelConfig {
    ModelConfig { shards: 1, ..cfg }
}

pub fn run(csv: &Path, opts: &Options) -> Result<Report> {
    let ds = crate::import::load_retail(csv)?;
    let imp = crate::import::from_retail(&ds, 0, false, false, true);
    match opts.protocol {
        Protocol::TimeSplit => time_split(imp.events, imp.catalog, opts),
        Protocol::LeaveLastOut => leave_last_out(imp.events, imp.catalog, opts),
    }
}
