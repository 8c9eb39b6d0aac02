//! A rules record applied at its position in the log.

use attune_core::model::keys as kv;

use super::Pipeline;
use crate::error::Result;
use crate::log::Record;
use crate::stream::live::{self, Unpublished};

impl Pipeline {
    /// Events after `rec` are applied under its rules (profile weights, exposure labels), and
    /// `cfg` is queued at the next version with them. The publisher reads the rules from
    /// [`live::Live::rules`], so KV gets the rules the pipeline applied, whatever the process
    /// was started with.
    pub(super) fn apply_rules(&mut self, rec: &Record) -> Result<()> {
        let Some(version) = self.rules.apply(&rec.payload, rec.offset)? else {
            return Ok(());
        };
        let mut live = live::lock(&self.live);
        live.rules = self.rules.rules().clone();
        live.shared
            .entry(kv::CONFIG.to_string())
            .and_modify(|u| u.merge(version, rec.accepted_ms))
            .or_insert(Unpublished {
                version,
                accepted_ms: rec.accepted_ms,
            });
        self.since.shared = true;
        Ok(())
    }
}
