//! One Apache Kafka process in KRaft combined mode (broker + controller, node 1) on 127.0.0.1.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use attune_harness::Service;

use crate::provision::{self, Provisioned};
use crate::{Error, Result, io, log_tail};

/// The local cluster's id. Every storage directory this harness formats is its own one-node
/// cluster, so one fixed id is enough; it only has to be the same when a directory is reused.
const CLUSTER_ID: &str = "YXR0dW5lLWxvY2FsLWthZg";

/// The line Kafka logs once the broker serves clients.
const STARTED: &str = "Kafka Server started";

/// How a broker is started.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The client port; a free one when `None` (or the one a reused `dir` had).
    pub port: Option<u16>,
    /// The storage directory (config, data, log). `None`: a fresh temporary directory, removed
    /// when the broker is dropped. A given directory is kept, and reused (not formatted again)
    /// by the next start.
    pub dir: Option<PathBuf>,
    /// `num.partitions`: the partition count of topics created on first use.
    pub partitions: u32,
    /// Group timeouts of seconds instead of the defaults' 45 s, so that a test's rebalance
    /// after a killed consumer takes seconds.
    pub short_group_timeouts: bool,
    /// The JVM's maximum heap, e.g. `"1g"`.
    pub max_heap: String,
    /// How long to wait for the broker to serve clients.
    pub start_timeout: Duration,
    /// Resolve the jars first if they are not there yet (the first run takes ~30 s).
    pub provision: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            port: None,
            dir: None,
            partitions: 4,
            short_group_timeouts: false,
            max_heap: "1g".to_owned(),
            start_timeout: Duration::from_secs(120),
            provision: true,
        }
    }
}

impl BrokerOptions {
    /// A temporary broker with short group timeouts.
    pub fn for_tests() -> Self {
        BrokerOptions {
            short_group_timeouts: true,
            ..BrokerOptions::default()
        }
    }
}

/// A running broker. Dropping it kills the process (SIGKILL) and removes a temporary directory.
#[derive(Debug)]
pub struct Broker {
    /// The JVM, while it runs: its own process group, killed on drop or when the process that
    /// started it dies.
    service: Option<Service>,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    temporary: bool,
    options: BrokerOptions,
    jars: PathBuf,
    startup: Duration,
}

static TEMP_DIRS: AtomicU32 = AtomicU32::new(0);

impl Broker {
    /// Formats the storage directory if it is new, starts the broker and waits until it logs
    /// that it serves clients.
    pub fn start(options: &BrokerOptions) -> Result<Broker> {
        let jars = if options.provision {
            provision::broker_jars()?.path
        } else {
            provision::broker_jars_dir()
        };
        let Provisioned { path: dir, fresh } = match &options.dir {
            Some(dir) => Provisioned {
                path: dir.clone(),
                fresh: false,
            },
            None => Provisioned {
                path: std::env::temp_dir().join(format!(
                    "attune-kafka-{}-{}",
                    std::process::id(),
                    TEMP_DIRS.fetch_add(1, Ordering::Relaxed)
                )),
                fresh: true,
            },
        };
        if fresh && dir.exists() {
            fs::remove_dir_all(&dir).map_err(io(format!("clearing {}", dir.display())))?;
        }
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;

        // A reused directory keeps its ports: the controller's address is part of the metadata
        // log written at format time.
        let previous = read_ports(&dir.join("server.properties"));
        let port = match (options.port, previous) {
            (Some(port), _) => port,
            (None, Some((port, _))) => port,
            (None, None) => free_port()?,
        };
        let controller_port = match previous {
            Some((_, controller)) => controller,
            None => free_port_except(port)?,
        };
        let mut broker = Broker {
            service: None,
            port,
            controller_port,
            dir,
            temporary: options.dir.is_none(),
            options: options.clone(),
            jars,
            startup: Duration::ZERO,
        };
        broker.write_config()?;
        if !broker.dir.join("data").join("meta.properties").is_file() {
            broker.format()?;
        }
        broker.launch()?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage directory (`server.properties`, `data/`, `broker.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's own log (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The broker process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.service.as_ref().map(Service::id)
    }

    /// From spawning the JVM to the broker serving clients, for the last start.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.service {
            Some(service) => Ok(service.try_wait()?),
            None => Ok(None),
        }
    }

    /// A clean shutdown: SIGTERM, then up to `grace` for Kafka's shutdown hook (which flushes
    /// the logs and leaves the controller quorum), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut service) = self.service.take() {
            service.stop(grace)?;
        }
        Ok(())
    }

    /// A crash: SIGKILL, no shutdown hook.
    pub fn kill(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
        }
    }

    /// Starts the broker again on the same directory and ports (after [`Broker::stop`] or
    /// [`Broker::kill`]; a running broker is killed first).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    fn write_config(&self) -> Result<()> {
        let (port, controller) = (self.port, self.controller_port);
        let data = self.dir.join("data");
        let mut props = format!(
            "# Written by attune-kafka-harness: one combined broker + controller on 127.0.0.1.\n\
             process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions={partitions}\n\
             auto.create.topics.enable=true\n\
             # One node: every internal topic has one replica.\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=4\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             # A group's first member does not wait 3 s for others.\n\
             group.initial.rebalance.delay.ms=0\n\
             # Clients may ask for short session timeouts (the classic protocol's are the\n\
             # client's choice, within these bounds).\n\
             group.min.session.timeout.ms=500\n\
             group.consumer.min.session.timeout.ms=1000\n\
             group.consumer.min.heartbeat.interval.ms=100\n\
             group.streams.min.session.timeout.ms=1000\n\
             group.streams.min.heartbeat.interval.ms=100\n",
            data = data.display(),
            partitions = self.options.partitions.max(1),
        );
        if self.options.short_group_timeouts {
            // The consumer and streams protocols (KIP-848, KIP-1071) take the session timeout
            // from the broker: a dead member is noticed in seconds.
            props.push_str(
                "group.consumer.session.timeout.ms=6000\n\
                 group.consumer.heartbeat.interval.ms=500\n\
                 group.streams.session.timeout.ms=6000\n\
                 group.streams.heartbeat.interval.ms=500\n",
            );
        }
        let path = self.dir.join("server.properties");
        fs::write(&path, props).map_err(io(format!("writing {}", path.display())))?;
        // log4j2's properties format needs no extra jar (the YAML one needs Jackson's).
        let log4j = "rootLogger.level = INFO\n\
                     rootLogger.appenderRef.stdout.ref = STDOUT\n\
                     appender.stdout.type = Console\n\
                     appender.stdout.name = STDOUT\n\
                     appender.stdout.layout.type = PatternLayout\n\
                     appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n\
                     logger.state.name = state.change.logger\n\
                     logger.state.level = WARN\n";
        let path = self.dir.join("log4j2.properties");
        fs::write(&path, log4j).map_err(io(format!("writing {}", path.display())))
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.current_dir(&self.dir)
            .arg(format!("-Xmx{}", self.options.max_heap))
            .arg("-Xms256m")
            .args(["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"])
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.jars.display()));
        java
    }

    /// `kafka-storage.sh format --standalone`: node 1 is the quorum's only voter.
    fn format(&self) -> Result<()> {
        provision::require("java", "install Java 17+ (Debian: openjdk-17-jdk-headless)")?;
        let log = self.dir.join("format.log");
        let out = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("duplicating a file handle"))?;
        let status = self
            .java()
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                CLUSTER_ID,
                "-c",
            ])
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(io("starting java for kafka.tools.StorageTool"))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                command: "kafka.tools.StorageTool format --standalone".to_owned(),
                status: status.to_string(),
                output: log_tail(&log, 20),
            })
        }
    }

    fn launch(&mut self) -> Result<()> {
        let log = self.log_path();
        let mut java = self.java();
        java.arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"));
        let spawned = Instant::now();
        // Appended, so the log of a restarted broker shows every run; the wait for the start
        // line reads only this run's part.
        let mut service = Service::spawn_appending("the Kafka broker", java, &log)?;
        let port = self.port;
        let started = service
            .wait_for_line(STARTED, self.options.start_timeout)
            .and_then(|_| {
                let remaining = self.options.start_timeout.saturating_sub(spawned.elapsed());
                service.wait_until("accept connections", remaining, || {
                    accepts_connections(port).then_some(())
                })
            });
        match started {
            Ok(()) => {
                self.startup = spawned.elapsed();
                self.service = Some(service);
                Ok(())
            }
            // Dropping the service kills what is left of the broker.
            Err(attune_harness::Error::Exited { status, .. }) => Err(Error::Exited {
                status: status.to_string(),
                log: log_tail(&log, 30),
            }),
            Err(attune_harness::Error::Timeout { .. }) => Err(Error::StartTimeout {
                secs: self.options.start_timeout.as_secs(),
                log: log_tail(&log, 30),
            }),
            Err(other) => Err(other.into()),
        }
    }
}

fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if self.temporary {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The client and controller ports of a `server.properties` this harness wrote.
fn read_ports(path: &Path) -> Option<(u16, u16)> {
    let text = fs::read_to_string(path).ok()?;
    let listeners = text.lines().find_map(|l| l.strip_prefix("listeners="))?;
    let port_of = |name: &str| {
        listeners.split(',').find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix("://")?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((port_of("PLAINTEXT")?, port_of("CONTROLLER")?))
}

/// A port that was free a moment ago (the OS's pick for port 0).
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

fn free_port_except(taken: u16) -> Result<u16> {
    for _ in 0..16 {
        let port = free_port()?;
        if port != taken {
            return Ok(port);
        }
    }
    Err(Error::Invalid(
        "no second free port on 127.0.0.1".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_ports_it_writes() {
        let text = "x=1\nlisteners=PLAINTEXT://127.0.0.1:40001,CONTROLLER://127.0.0.1:40002\n";
        let path = std::env::temp_dir().join(format!("attune-ports-{}", std::process::id()));
        fs::write(&path, text).unwrap();
        assert_eq!(read_ports(&path), Some((40001, 40002)));
        fs::write(&path, "listeners=PLAINTEXT://127.0.0.1:1\n").unwrap();
        assert_eq!(read_ports(&path), None);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn cluster_id_is_sixteen_bytes_of_base64url() {
        // Kafka's Uuid.fromString: 22 unpadded base64url characters, the last one's low four
        // bits zero (16 bytes exactly).
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert_eq!(CLUSTER_ID.len(), 22);
        let last = ALPHABET.find(CLUSTER_ID.chars().last().unwrap()).unwrap();
        assert!(CLUSTER_ID.chars().all(|c| ALPHABET.contains(c)));
        assert_eq!(last & 0xF, 0);
    }
}
