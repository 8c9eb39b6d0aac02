//! Admin records (forgets, catalog and rules changes), applied at their position in the log.

use std::sync::atomic::Ordering;

use attune_core::model::keys as kv;

use super::Pipeline;
use crate::error::{Error, Result};
use crate::log::{Record, RecordKind};
use crate::stream::live::{self, Unpublished};

impl Pipeline {
    /// One admin record, applied at its position in the log.
    pub(super) fn apply_admin(&mut self, rec: &Record) -> Result<()> {
        self.apply_change(rec)?;
        self.advance(rec);
        self.progress.offset.store(self.offset, Ordering::Release);
        Ok(())
    }

    /// What an admin record changes, without moving the source's offset (a catalog or rules
    /// change may also come from the model topic, see [`Pipeline::merge_broadcast`]).
    pub(super) fn apply_change(&mut self, rec: &Record) -> Result<()> {
        match rec.kind {
            RecordKind::Event | RecordKind::Gap => {}
            RecordKind::Rules => self.apply_rules(rec)?,
            RecordKind::Forget => {
                let user = std::str::from_utf8(&rec.payload).map_err(|_| {
                    Error::Corrupt(format!("forget record at {} names no user", rec.offset))
                })?;
                self.scale_forgot(rec.offset, user);
                self.forget(user, rec.offset);
            }
            RecordKind::Catalog => {
                let items: Vec<attune_core::CatalogItem> = rmp_serde::from_slice(&rec.payload)?;
                let model_arc = self.model.clone();
                let mut model = model_arc.lock().unwrap_or_else(|e| e.into_inner());
                let shards = model.put_catalog(items);
                let seq = model.next_seq();
                drop(model);
                let mut shared: Vec<String> = shards.iter().map(|s| kv::catalog(*s)).collect();
                // Categories feed `Trending.by_category`.
                shared.push(kv::TRENDING.into());
                let mut live = live::lock(&self.live);
                for key in shared {
                    live.shared
                        .entry(key)
                        .and_modify(|u| u.merge(seq, rec.accepted_ms))
                        .or_insert(Unpublished {
                            version: seq,
                            accepted_ms: rec.accepted_ms,
                        });
                }
                self.since.shared = true;
            }
        }
        Ok(())
    }

    /// Privacy delete at this point of the log: the user's state leaves memory now, the store
    /// and KV at the next checkpoint; events after it start a new profile at version 1 (the
    /// publisher puts it once KV's delete of the old one is done, see [`Live::forgetting`]).
    /// The user's earlier events stay counted in the model's aggregates, which hold no user
    /// ids; every run of the same log counts the same ones.
    fn forget(&mut self, user: &str, at: u64) {
        self.users.forget(user, at);
    }

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
