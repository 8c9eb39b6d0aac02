//! Sending: one budget token per request, retries with backoff and jitter (honouring
//! `Retry-After`), and what a bulk write or the manifest leaves behind (the keys KV listed in
//! `unsuccessful_keys` keep waiting; the others are acknowledged).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use attune_core::Manifest;
use attune_core::model::keys as kv;
use attune_core::wire::{self, Envelope};
use rand::Rng;

use super::ack::{Ack, SHARED_HASHES};
use super::flush::Item;
use super::stats::{self, KeyClass};
use super::target::{SendError, Sent};
use super::{Pair, Publisher};
use crate::error::{Error, Result};
use crate::lifecycle::PUBLISHER_AUTH;
use crate::lifecycle::Phase;
use crate::metrics::labels;

impl Publisher {
    /// Takes a token from the budget (HTTP targets only), waiting as long as it says.
    async fn take_token(&self, op: &'static str, deadline: Option<Instant>) -> Result<()> {
        if !self.target.is_http() {
            return Ok(());
        }
        loop {
            match self.budget.try_take(Instant::now()) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    self.metrics.publish_budget_waits.inc();
                    self.pause(op, wait, deadline, "waiting for the request budget")
                        .await?
                }
            }
        }
    }

    /// Sleeps `wait`, unless that passes `deadline` or shutdown reaches the publisher.
    async fn pause(
        &self,
        op: &'static str,
        wait: Duration,
        deadline: Option<Instant>,
        why: &str,
    ) -> Result<()> {
        if let Some(d) = deadline
            && Instant::now() + wait > d
        {
            return Err(Error::PublishDeadline {
                op,
                message: why.to_string(),
            });
        }
        match &self.stop {
            Some(stop) => {
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => Ok(()),
                    _ = stop.wait_for(|p| *p >= Phase::StopPublishing) => {
                        Err(Error::PublishStopped { op })
                    }
                }
            }
            None => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }

    /// Sends with retries until success or `deadline`, one budget token per attempt.
    pub(super) async fn send<F, Fut>(
        &mut self,
        op: &'static str,
        deadline: Option<Instant>,
        f: F,
    ) -> Result<Sent>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Sent, SendError>>,
    {
        let mut attempt = 0u32;
        loop {
            self.take_token(op, deadline).await?;
            let result = f().await;
            let now = Instant::now();
            match result {
                Ok(sent) => {
                    if let Some(info) = sent.rate {
                        self.budget.observe(info, now);
                    }
                    self.metrics
                        .publish_requests
                        .get_or_create(&labels(&[("op", op), ("outcome", "ok")]))
                        .inc();
                    self.metrics
                        .last_publish_success_seconds
                        .set((crate::now_ms() / 1000) as i64);
                    if self.health.restore_readiness(PUBLISHER_AUTH) || self.failing_since > 0 {
                        tracing::info!(
                            op,
                            failed_attempts = self.failing_since,
                            "KV requests succeed again"
                        );
                    }
                    self.failing_since = 0;
                    return Ok(sent);
                }
                Err(e) => {
                    self.metrics
                        .publish_requests
                        .get_or_create(&labels(&[("op", op), ("outcome", "error")]))
                        .inc();
                    self.metrics
                        .publish_failures
                        .get_or_create(&labels(&[("reason", e.reason)]))
                        .inc();
                    if let Some(info) = e.rate {
                        self.budget.observe(info, now);
                    }
                    let exp = self
                        .cfg
                        .backoff_base_ms
                        .saturating_mul(1u64 << attempt.min(20))
                        .min(self.cfg.backoff_max_ms);
                    let jittered = rand::rng().random_range(exp / 2..=exp.max(1));
                    let mut wait = Duration::from_millis(jittered);
                    if let Some(ra) = e.retry_after {
                        wait = wait.max(ra);
                    }
                    if e.reason == "rate-limited" {
                        // The block is the account's, not this request's: every request waits.
                        self.budget.block_until(now + wait);
                    }
                    if !e.retryable {
                        // A 4xx other than 429: keep the keys, try again much later.
                        wait = wait.max(Duration::from_millis(self.cfg.backoff_max_ms));
                    }
                    self.failing_since += 1;
                    // A flush can retry for as long as KV fails: the gauges must still move.
                    self.update_gauges();
                    if e.is_auth() {
                        let reason = format!(
                            "the KV API refuses the publish token ({}); nothing is published",
                            e.message
                        );
                        if self.health.withhold_readiness(PUBLISHER_AUTH, reason) {
                            tracing::error!(op, error = %e.message, ?wait,
                                "KV API refuses the token (401/403): check publish.token / \
                                 CLOUDFLARE_API_TOKEN and its KV write permission");
                        } else {
                            tracing::debug!(op, attempt, error = %e.message, "KV API still refuses the token");
                        }
                    } else if self.failing_since == 1 || self.failing_since.is_power_of_two() {
                        tracing::warn!(op, attempt, failures = self.failing_since,
                            reason = e.reason, error = %e.message, ?wait, "KV request failed");
                    } else {
                        tracing::debug!(op, attempt, reason = e.reason, error = %e.message, "KV request failed");
                    }
                    self.metrics.publish_retries.inc();
                    attempt += 1;
                    self.pause(op, wait, deadline, &e.message).await?;
                }
            }
        }
    }

    pub(super) fn count_rejected(&self, n: usize) {
        if n > 0 {
            self.metrics
                .publish_failures
                .get_or_create(&labels(&[("reason", "rejected-keys")]))
                .inc_by(n as u64);
            tracing::warn!(
                keys = n,
                "KV listed keys as unsuccessful; they are sent again"
            );
        }
    }

    pub(super) fn count_writes(&self, class: KeyClass, n: u64) {
        if n > 0 {
            self.metrics
                .published_keys
                .get_or_create(&labels(&[("kind", class.label())]))
                .inc_by(n);
        }
    }

    /// Writes one bulk request; returns how many keys KV took and how many it listed as
    /// unsuccessful (they keep waiting).
    pub(super) async fn write_chunk(
        &mut self,
        chunk: Vec<Item>,
        deadline: Option<Instant>,
    ) -> Result<(usize, usize)> {
        let pairs: Vec<Pair> = chunk.iter().map(|c| c.pair.clone()).collect();
        let target = self.target.clone();
        let sent = self.send("put", deadline, || target.put(&pairs)).await?;
        let rejected: HashSet<String> = sent.rejected.into_iter().collect();
        self.count_rejected(rejected.len());
        let wall = crate::now_ms();
        let sent_at = Instant::now();
        let mut acks = Vec::with_capacity(chunk.len());
        let mut hashes: Vec<(String, u64)> = Vec::new();
        for item in chunk {
            if rejected.contains(&item.pair.key) {
                continue;
            }
            let key = item.pair.key;
            self.last_write.insert(key.clone(), sent_at);
            if let Some(user) = &item.user {
                self.last_write_user.insert(user.clone(), sent_at);
                self.metrics
                    .freshness_seconds
                    .observe(wall.saturating_sub(item.accepted) as f64 / 1000.0);
            } else {
                // Every shared key written moves the manifest; kept on the publisher, so a
                // flush cut short after this request still writes the manifest later.
                self.manifest_pending = true;
            }
            if let Some(hash) = item.hash {
                self.shared_hash.insert(key.clone(), hash);
                hashes.push((key.clone(), hash));
            }
            self.count_writes(KeyClass::of(&key), 1);
            acks.push(Ack {
                key,
                version: item.pair.version,
                user: item.user,
                written: true,
            });
        }
        self.ack(&acks, false)?;
        if !hashes.is_empty() {
            let tx = self.store.db.begin_write()?;
            {
                let mut t = tx.open_table(SHARED_HASHES)?;
                for (key, hash) in &hashes {
                    t.insert(key.as_str(), *hash)?;
                }
            }
            tx.commit()?;
        }
        Ok((acks.len(), rejected.len()))
    }

    pub(super) async fn write_manifest(&mut self, deadline: Option<Instant>) -> Result<()> {
        let shards = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shards();
        let versions: Vec<(String, u64)> = self
            .store
            .published()?
            .into_iter()
            .filter(|(k, _)| !k.starts_with("p:") && k != kv::MANIFEST)
            .collect();
        let version = versions.iter().map(|v| v.1).max().unwrap_or(0);
        let manifest = Manifest { shards, versions };
        let pair = Pair {
            key: kv::MANIFEST.into(),
            value: wire::encode(&Envelope::new(version, crate::now_ms(), manifest)),
            version,
        };
        let target = self.target.clone();
        let pairs = vec![pair];
        let sent = self.send("put", deadline, || target.put(&pairs)).await?;
        if !sent.rejected.is_empty() {
            // Still pending: the next flush writes it.
            self.count_rejected(sent.rejected.len());
            return Ok(());
        }
        self.last_write.insert(kv::MANIFEST.into(), Instant::now());
        // The manifest's own version is informational; it is rewritten whenever shared keys
        // move, so it is not tracked in `published` (it would shadow the shared versions).
        let tx = self.store.db.begin_write()?;
        let wall = crate::now_ms();
        self.record_writes(&tx, wall, &[kv::MANIFEST])?;
        let mut classes = [0u64; KeyClass::ALL.len()];
        classes[KeyClass::Manifest as usize] = 1;
        stats::record(&tx, wall, &classes)?;
        tx.commit()?;
        self.count_writes(KeyClass::Manifest, 1);
        self.manifest_pending = false;
        Ok(())
    }
}
