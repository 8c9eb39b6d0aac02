//! The publisher's loop under `serve`: one flush per `flush_interval_ms` at most, soon after
//! the pipeline applied something (or on the interval, for what the per-key limit held back),
//! until shutdown reaches [`Phase::StopPublishing`]; then a last flush within the shutdown
//! deadline, shared keys and manifest included. What the deadline cuts off stays in the
//! persistent outbox and the pending row for the next start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::Publisher;
use crate::error::Error;
use crate::lifecycle::Phase;

/// Runs `publisher` until the phase reaches [`Phase::StopPublishing`].
pub async fn run(
    mut publisher: Publisher,
    interval: Duration,
    publish_now: Arc<Notify>,
    mut phase: watch::Receiver<Phase>,
    deadline: Duration,
) {
    // A stop ends the flush's waits (for the budget, between retries) but never a request in
    // flight: a request cancelled after KV applied it would be sent again by the final flush.
    publisher.stop_on(Some(phase.clone()));
    let mut last_flush: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = publish_now.notified() => {}
            _ = stopping(&mut phase) => break,
        }
        // Everything that arrives until the interval is up shares the next flush's requests.
        if let Some(due) = last_flush.map(|t| t + interval)
            && due > Instant::now()
        {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stopping(&mut phase) => break,
            }
        }
        let started = Instant::now();
        last_flush = Some(started);
        match publisher.flush(None).await {
            Ok(o) => tracing::debug!(
                written = o.written,
                deleted = o.deleted,
                deferred = o.deferred,
                ms = started.elapsed().as_millis() as u64,
                "flushed"
            ),
            Err(Error::PublishStopped { .. }) => break,
            Err(e) => tracing::warn!(error = %e, "publish flush failed"),
        }
    }
    // Final flush within the deadline (per-key interval still applies).
    publisher.stop_on(None);
    let deadline = Instant::now() + deadline;
    loop {
        publisher.publish_shared_now();
        match publisher.flush(Some(deadline)).await {
            Ok(o) if o.deferred == 0 => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final publish incomplete; the outbox keeps it");
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = publisher.save_pending() {
        tracing::warn!(error = %e, "could not record the publishes still waiting");
    }
}

/// Resolves once the phase reaches [`Phase::StopPublishing`] (or the sender is gone).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    // The guard `wait_for` returns is not `Send`: dropped here, before any other await.
    let _ = phase.wait_for(|p| *p >= Phase::StopPublishing).await;
}
