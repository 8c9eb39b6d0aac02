//! `serve`: ingest + pipeline + publisher + metrics, with graceful shutdown.
//!
//! Shutdown (SIGTERM/Ctrl-C or [`Running::shutdown`]): stop intake (readiness off, the
//! listener closes, in-flight appends finish), let the pipeline drain the log and commit,
//! then flush the publisher within `shutdown_deadline_ms`. What the deadline cuts off stays in
//! the persistent outbox for the next start.
//!
//! Supervision: a pipeline that stops on an error (or a publisher task that ends before
//! shutdown) is reported to the node's
//! [`Health`](crate::lifecycle::Health) (`/healthz` and `/readyz` answer 503 with the reason,
//! ingest answers 503 + `Retry-After`), and after `failure_exit_delay_ms` the service shuts
//! down and [`Running::wait`] returns the pipeline's error, so `serve` exits non-zero and the
//! supervisor (systemd `Restart=on-failure`, Kubernetes, …) starts it again with its own
//! backoff. The process restart, not an in-process retry, because the pipeline's effects beyond
//! the last checkpoint live in memory (profiles handed to the publisher, model counts): only
//! reopening the data directory discards them and replays the log from the checkpoint, the
//! same path every crash takes, which the crash tests cover.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{AppState, router};
use crate::lifecycle::{PIPELINE, PUBLISHER, Phase};
use crate::log::{Record, Source};
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
        trigger(&self.phase);
    }

    /// Runs until SIGTERM/Ctrl-C (then shuts down gracefully) or until the service stops on
    /// its own (a stopped pipeline: its error is returned).
    pub async fn serve_until_signal(self) -> Result<()> {
        let Running {
            phase, mut done, ..
        } = self;
        tokio::select! {
            r = &mut done => return r?,
            _ = shutdown_signal() => {}
        }
        trigger(&phase);
        done.await?
    }
}

fn trigger(phase: &watch::Sender<Phase>) {
    phase.send_if_modified(|p| {
        let serving = *p == Phase::Serving;
        if serving {
            *p = Phase::StopIntake;
        }
        serving
    });
}

/// Faults a test can inject into a running service.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Set: the pipeline's next read fails with the store I/O error a full disk gives.
    pub fail_pipeline: Arc<AtomicBool>,
    /// Set: the pipeline's next read panics (as redb does on a page damaged while running).
    pub panic_pipeline: Arc<AtomicBool>,
}

/// The pipeline's source with [`Faults`] applied.
struct Faulty<S> {
    inner: S,
    faults: Faults,
}

impl<S: Source> Source for Faulty<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read(&mut self, from: u64, max: usize, wait: Duration, out: &mut Vec<Record>) -> Result<()> {
        if self.faults.panic_pipeline.load(Ordering::Acquire) {
            panic!("injected pipeline panic");
        }
        if self.faults.fail_pipeline.load(Ordering::Acquire) {
            let full = std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            );
            return Err(Error::Store(redb::StorageError::Io(full).into()));
        }
        self.inner.read(from, max, wait, out)
    }
    fn end(&self) -> u64 {
        self.inner.end()
    }
    fn start(&self) -> u64 {
        self.inner.start()
    }
}

/// Opens the data directory, binds `cfg.listen` and starts everything.
pub async fn start(cfg: Config) -> Result<Running> {
    start_with_faults(cfg, Faults::default()).await
}

/// [`start`] with faults a test injects.
#[doc(hidden)]
pub async fn start_with_faults(cfg: Config, faults: Faults) -> Result<Running> {
    cfg.check_serve_auth()?;
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

    #[cfg(feature = "kafka")]
    if node.kafka.is_some() {
        crate::stream::source::kafka::ensure_topics(&cfg.kafka).await?;
    }
    let pipeline = node.pipeline()?;
    if node.kafka.is_none() && node.log.end() > pipeline.offset().max(crate::log::FIRST_OFFSET) {
        tracing::info!(
            checkpoint = pipeline.offset(),
            log_end = node.log.end(),
            "replaying the log from the last checkpoint"
        );
    }
    // The configured rules reach the pipeline only as a record in the log (when they differ
    // from the log's last ones), so every replay applies each event under the same rules.
    {
        let node = node.clone();
        if tokio::task::spawn_blocking(move || node.append_rules_if_changed()).await?? {
            tracing::info!("the configured rules differ from the log's: appended a rules record");
        }
    }
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let phase_tx = Arc::new(phase_tx);
    let publish_now = Arc::new(Notify::new());
    let publisher = Publisher::new(&node, target);
    let state = AppState {
        node: node.clone(),
        progress: pipeline.progress(),
        publish_now: publish_now.clone(),
        phase: phase.clone(),
    };

    // Pipeline on its own thread: it is CPU and fsync bound. When it stops on an error it
    // reports to health and tells the supervisor below.
    let (stopped, mut stopped_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let pipe_failed = stopped.clone();
    let pipe_thread = {
        let node = node.clone();
        let notify = publish_now.clone();
        let phase = phase.clone();
        let mut pipeline = pipeline;
        std::thread::Builder::new()
            .name("attune-pipeline".into())
            .spawn(move || -> Result<()> {
                let draining = || *phase.borrow() >= Phase::Drain;
                // A panic (redb meeting a page damaged while running) is a stop like an error:
                // health says so, and the restart's integrity check finds the damage.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let on_batch = |o: &crate::stream::BatchOutcome| {
                        if o.applied > 0 {
                            notify.notify_one();
                        }
                    };
                    #[cfg(feature = "kafka")]
                    if node.kafka.is_some() {
                        // Records stay in Kafka until applied: a stop does not drain the topic.
                        let opts = crate::stream::source::kafka::ConsumeOptions {
                            batch_max: node.cfg.pipeline.batch_max,
                            idle_wait: Duration::from_millis(50),
                        };
                        let reporting = crate::stream::source::kafka::Reporting {
                            metrics: node.metrics.clone(),
                            health: node.health.clone(),
                        };
                        if node.cfg.kafka.scale_out {
                            return crate::stream::source::kafka::consume_scaled(
                                &node.cfg,
                                pipeline,
                                &node.store,
                                reporting,
                                opts,
                                &draining,
                                &on_batch,
                            );
                        }
                        return crate::stream::source::kafka::consume(
                            &node.cfg,
                            &mut pipeline,
                            &node.store,
                            reporting,
                            opts,
                            &draining,
                            &on_batch,
                        );
                    }
                    let mut source = Faulty {
                        inner: node.log.reader()?,
                        faults,
                    };
                    pipeline.run(
                        &mut source,
                        node.cfg.pipeline.batch_max,
                        &draining,
                        &on_batch,
                    )
                }))
                .unwrap_or(Err(Error::PipelinePanicked));
                if let Err(e) = &r {
                    tracing::error!(
                        error = %e,
                        exit_in_ms = node.cfg.failure_exit_delay_ms,
                        "pipeline stopped: refusing events, then exiting so the supervisor \
                         restarts the service (the log replays from the last checkpoint)"
                    );
                    node.health.fail(PIPELINE, e.to_string());
                    let _ = pipe_failed.send(PIPELINE);
                }
                r
            })?
    };
    // Supervisor: a stopped pipeline or publisher ends the service after the grace period
    // (health answers 503 with the reason meanwhile, so probes and operators see why).
    {
        let phase_tx = phase_tx.clone();
        let delay = Duration::from_millis(cfg.failure_exit_delay_ms);
        tokio::spawn(async move {
            if let Some(component) = stopped_rx.recv().await {
                tokio::time::sleep(delay).await;
                tracing::error!(component, "stopping the service: a part of it stopped");
                trigger(&phase_tx);
            }
        });
    }

    let publisher = tokio::spawn(crate::publish::run(
        publisher,
        Duration::from_millis(cfg.publish.flush_interval_ms.max(10)),
        publish_now.clone(),
        phase.clone(),
        Duration::from_millis(cfg.shutdown_deadline_ms),
    ));
    // The publisher's loop ends only at `StopPublishing`; ending before (a panic) is a stop the
    // supervisor acts on like the pipeline's.
    let publisher = {
        let node = node.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            let ended = publisher.await;
            if *phase.borrow() < Phase::StopPublishing {
                let why = match ended {
                    Err(e) => format!("the publisher task failed: {e}"),
                    Ok(()) => "the publisher stopped".into(),
                };
                tracing::error!(reason = %why, "publisher stopped");
                node.health.fail(PUBLISHER, why);
                let _ = stopped.send(PUBLISHER);
            }
        })
    };

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
