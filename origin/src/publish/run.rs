//! The publisher's loop under `serve`: a flush every `flush_interval_ms`, or soon after the
//! pipeline applied something, until shutdown reaches [`Phase::StopPublishing`]; then a last
//! flush within the shutdown deadline. What the deadline cuts off stays in the persistent
//! outbox for the next start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::Publisher;
use crate::lifecycle::Phase;

/// Runs `publisher` until the phase reaches [`Phase::StopPublishing`].
pub async fn run(
    mut publisher: Publisher,
    interval: Duration,
    publish_now: Arc<Notify>,
    mut phase: watch::Receiver<Phase>,
    deadline: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = publish_now.notified() => {
                // Let a burst of batches coalesce.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = stopping(&mut phase) => break,
        }
        // A flush retries until KV answers; a stop must not wait for that, so it cancels the
        // flush (the outbox keeps whatever was not acknowledged).
        let started = Instant::now();
        tokio::select! {
            r = publisher.flush(None) => match r {
                Ok(o) => tracing::debug!(
                    written = o.written,
                    deferred = o.deferred,
                    ms = started.elapsed().as_millis() as u64,
                    "flushed"
                ),
                Err(e) => tracing::warn!(error = %e, "publish flush failed"),
            },
            _ = stopping(&mut phase) => break,
        }
    }
    // Final flush within the deadline (per-key interval still applies).
    let deadline = Instant::now() + deadline;
    loop {
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
}

/// Resolves once the phase reaches [`Phase::StopPublishing`] (or the sender is gone).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    // The guard `wait_for` returns is not `Send`: dropped here, before any other await.
    let _ = phase.wait_for(|p| *p >= Phase::StopPublishing).await;
}
