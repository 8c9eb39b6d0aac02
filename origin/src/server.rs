//! `serve`: ingest + pipeline + publisher + metrics, with graceful shutdown.
//!
//! Shutdown (SIGTERM/Ctrl-C or [`Running::shutdown`]): stop intake (readiness off, the
//! listener closes, in-flight appends finish), let the pipeline drain the log and commit,
//! then flush the publisher within `shutdown_deadline_ms`. What the deadline cuts off stays in
//! the persistent outbox for the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{AppState, router};
use crate::lifecycle::Phase;
use crate::node::Node;
use crate::publish::{Publisher, Target};

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub node: Node,
    phase: Arc<watch::Sender<Phase>>,
    done: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Graceful shutdown; returns once drained and flushed (or the deadline passed).
    pub async fn shutdown(self) -> Result<()> {
        self.trigger();
        self.wait().await
    }

    /// Resolves when the service stopped on its own (e.g. a fatal store error).
    pub async fn wait(self) -> Result<()> {
        self.done.await?
    }

    /// Starts the shutdown sequence (once; later calls change nothing).
    pub fn trigger(&self) {
        self.phase.send_if_modified(|p| {
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::StopIntake;
            }
            serving
        });
    }
}

/// Opens the data directory, binds `cfg.listen` and starts everything.
pub async fn start(cfg: Config) -> Result<Running> {
    let node = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Node::open(&cfg)).await??
    };
    let listener = TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    crate::publish::check_start(&cfg)?;
    let target = Target::from_config(&cfg)?;
    let overridden = crate::publish::overridden(&cfg);
    tracing::info!(
        %addr,
        target = %target.describe(),
        overridden = %overridden.join(", "),
        data_dir = %cfg.data_dir.display(),
        "starting"
    );

    let pipeline = node.pipeline()?;
    if node.log.end() > pipeline.offset().max(crate::log::FIRST_OFFSET) {
        tracing::info!(
            checkpoint = pipeline.offset(),
            log_end = node.log.end(),
            "replaying the log from the last checkpoint"
        );
    }
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let phase_tx = Arc::new(phase_tx);
    let publish_now = Arc::new(Notify::new());
    let publisher = Publisher::new(&node, target);
    let state = AppState {
        publish_health: publisher.health(),
        node: node.clone(),
        progress: pipeline.progress(),
        publish_now: publish_now.clone(),
        phase: phase.clone(),
    };

    // Pipeline on its own thread: it is CPU and fsync bound.
    let pipe_thread = {
        let node = node.clone();
        let notify = publish_now.clone();
        let phase = phase.clone();
        let mut pipeline = pipeline;
        std::thread::Builder::new()
            .name("attune-pipeline".into())
            .spawn(move || -> Result<()> {
                let mut reader = node.log.reader()?;
                let draining = || *phase.borrow() >= Phase::Drain;
                let r = pipeline.run(&mut reader, node.cfg.pipeline.batch_max, &draining, &|o| {
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

    let publisher = tokio::spawn(crate::publish::run(
        publisher,
        Duration::from_millis(cfg.publish.flush_interval_ms.max(10)),
        publish_now.clone(),
        phase.clone(),
        Duration::from_millis(cfg.shutdown_deadline_ms),
    ));

    let app = router(state);
    let mut intake = phase.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = intake.wait_for(|p| *p >= Phase::StopIntake).await;
            })
            .await
    });

    let done = {
        let phase_tx = phase_tx.clone();
        let mut phase = phase;
        tokio::spawn(async move {
            let _ = phase.wait_for(|p| *p >= Phase::StopIntake).await;
            tracing::info!("shutting down: stopping intake");
            let _ = http.await;
            tracing::info!("draining the pipeline");
            phase_tx.send_replace(Phase::Drain);
            let piped = tokio::task::spawn_blocking(move || pipe_thread.join())
                .await?
                .map_err(|_| Error::PipelinePanicked)?;
            publish_now.notify_one();
            tracing::info!("flushing the publisher");
            phase_tx.send_replace(Phase::StopPublishing);
            let _ = publisher.await;
            tracing::info!("stopped");
            piped
        })
    };

    Ok(Running {
        addr,
        node,
        phase: phase_tx,
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
