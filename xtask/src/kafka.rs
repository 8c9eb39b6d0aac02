//! `cargo xtask kafka [--port N] [--dir D] [--partitions N] [--short-group-timeouts]`: a local
//! Apache Kafka broker (KRaft, one combined broker + controller on 127.0.0.1) from its Maven
//! Central jars, until Ctrl-C. The broker itself is `attune-kafka-harness`, which the tests use
//! too.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use attune_kafka_harness::{Broker, BrokerOptions, provision};

use crate::bootstrap;

/// Kafka's own shutdown (leaving the quorum, flushing the logs) gets this long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub fn cmd(args: &[String]) -> Result<()> {
    let mut options = BrokerOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("kafka: {name} needs a value"))
        };
        match arg.as_str() {
            "--port" => {
                options.port = Some(value("--port")?.parse().context("kafka: --port")?);
            }
            "--dir" => options.dir = Some(PathBuf::from(value("--dir")?)),
            "--partitions" => {
                options.partitions = value("--partitions")?
                    .parse()
                    .context("kafka: --partitions")?;
            }
            "--short-group-timeouts" => options.short_group_timeouts = true,
            other => bail!(
                "kafka: unknown option `{other}` \
                 (options: --port N, --dir D, --partitions N, --short-group-timeouts)"
            ),
        }
    }

    // The jars (and the rest of the Kafka step) are only needed here, so the default bootstrap
    // does not fetch them.
    bootstrap::ensure_kafka(true)?;
    options.provision = false;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    println!(
        "kafka: starting Apache Kafka {} from {}",
        attune_kafka_harness::KAFKA_VERSION,
        provision::broker_jars_dir().display()
    );
    let mut broker = Broker::start(&options).context("kafka: starting the broker")?;
    println!(
        "kafka: broker ready in {:.1} s\n\
         kafka: bootstrap.servers={}\n\
         kafka: storage {} (log: {})\n\
         kafka: Ctrl-C stops it",
        broker.startup_time().as_secs_f64(),
        broker.bootstrap_servers(),
        broker.dir().display(),
        broker.log_path().display(),
    );

    loop {
        if stop.load(Ordering::SeqCst) {
            println!("kafka: stopping");
            broker.stop(STOP_GRACE)?;
            println!("kafka: stopped");
            return Ok(());
        }
        if let Some(status) = broker.try_wait()? {
            bail!(
                "kafka: the broker exited on its own ({status}); see {}",
                broker.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
