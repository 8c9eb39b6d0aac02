//! `serve`: ingest + pipeline + publisher + metrics, with graceful shutdown.
//!
//! Shutdown (SIGTERM/Ctrl-C or [`Running::shutdown`]): stop intake (readiness off, the
//! listener closes, in-flight appends finish), let the pipeline drain the log and commit,
//! then flush the publisher within `shutdown_deadline_ms`. What the deadline cuts off stays in
//! the persistent outbox for the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{AppState, router};
use crate::node::Node;
use crate::publish::{Publisher, Target};

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub node: Node,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Graceful shutdown; returns once drained and flushed (or the deadline passed).
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.done
            .await
            .map_err(|e| Error::Http(format!("server task: {e}")))?
    }

    /// Resolves when the service stopped on its own (e.g. a fatal store error).
    pub async fn wait(self) -> Result<()> {
        self.done
            .await
            .map_err(|e| Error::Http(format!("server task: {e}")))?
    }

    pub fn trigger(&self) {
        let _ = self.stop.send(true);
    }
}

/// Opens the data directory, binds `cfg.listen` and starts everything.
pub async fn start(cfg: Config) -> Result<Running> {
    let node = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Node::open(&cfg))
            .await
            .map_err(|e| Error::Store(e.to_string()))??
    };
    let listener = TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let target = Target::from_config(&cfg)?;
    tracing::info!(%addr, target = %target.describe(), data_dir = %cfg.data_dir.display(), "starting");

    let pipeline = node.pipeline()?;
    if node.log.end() > pipeline.offset().max(crate::log::FIRST_OFFSET) {
        tracing::info!(
            checkpoint = pipeline.offset(),
            log_end = node.log.end(),
            "replaying the log from the last checkpoint"
        );
    }
    let progress = pipeline.progress();
    let publish_now = Arc::new(Notify::new());
    let ready = Arc::new(AtomicBool::new(true));
    let state = AppState {
        node: node.clone(),
        progress: progress.clone(),
        publish_now: publish_now.clone(),
        ready: ready.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    // Pipeline on its own thread: it is CPU and fsync bound.
    let drain = Arc::new(AtomicBool::new(false));
    let pipe_thread = {
        let node = node.clone();
        let drain = drain.clone();
        let notify = publish_now.clone();
        let mut pipeline = pipeline;
        std::thread::Builder::new()
            .name("attune-pipeline".into())
            .spawn(move || -> Result<()> {
                let mut reader = node.log.reader()?;
                let r = pipeline.run(&mut reader, node.cfg.pipeline.batch_max, &drain, &|o| {
                    if o.applied > 0 {
                        notify.notify_one();
                    }
                });
                if let Err(e) = &r {
                    tracing::error!(error = %e, "pipeline stopped");
                }
                r
            })?
    };

    // Publisher task.
    let (pub_stop_tx, mut pub_stop_rx) = watch::channel(false);
    let publisher = {
        let mut p = Publisher::new(&node, target);
        let interval = Duration::from_millis(cfg.publish.flush_interval_ms.max(10));
        let notify = publish_now.clone();
        let deadline_ms = cfg.shutdown_deadline_ms;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = notify.notified() => {
                        // Let a burst of batches coalesce.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ = pub_stop_rx.changed() => break,
                }
                // A flush retries until KV answers; a stop must not wait for that, so it
                // cancels the flush (the outbox keeps whatever was not acknowledged).
                let started = Instant::now();
                tokio::select! {
                    r = p.flush(None) => match r {
                        Ok(o) => tracing::debug!(
                            written = o.written,
                            deferred = o.deferred,
                            ms = started.elapsed().as_millis() as u64,
                            "flushed"
                        ),
                        Err(e) => tracing::warn!(error = %e, "publish flush failed"),
                    },
                    _ = pub_stop_rx.changed() => break,
                }
            }
            // Final flush within the deadline (per-key interval still applies).
            let deadline = Instant::now() + Duration::from_millis(deadline_ms);
            loop {
                match p.flush(Some(deadline)).await {
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
        })
    };

    let app = router(state);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let done = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        let _ = stop_rx.wait_for(|s| *s).await;
        tracing::info!("shutting down: stopping intake");
        ready.store(false, Ordering::Release);
        let _ = http.await;
        tracing::info!("draining the pipeline");
        drain.store(true, Ordering::Release);
        let piped = tokio::task::spawn_blocking(move || pipe_thread.join())
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .map_err(|_| Error::Store("pipeline thread panicked".into()))?;
        publish_now.notify_one();
        tracing::info!("flushing the publisher");
        let _ = pub_stop_tx.send(true);
        let _ = publisher.await;
        tracing::info!("stopped");
        piped
    });

    Ok(Running {
        addr,
        node,
        stop: stop_tx,
        done,
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
