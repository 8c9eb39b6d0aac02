//! A real Apache Kafka broker for Attune's tests, benchmarks and `cargo xtask kafka`.
//!
//! The broker is Apache Kafka itself, run from its Maven Central artifacts (no download of a
//! distribution tarball): `lab/kafka/broker/pom.xml` names them, [`provision::broker_jars`]
//! resolves them once into `~/.cache/attune/kafka-<version>/broker/`, and [`Broker::start`]
//! formats a KRaft storage directory and starts one combined broker + controller on free
//! 127.0.0.1 ports. The broker is an [`attune_harness::Service`]: dropping the [`Broker`] kills
//! it, and so does the harness's watchdog if the process that started it dies without dropping
//! it (a test binary killed by a timeout).
//!
//! ```no_run
//! use attune_kafka_harness::{Broker, BrokerOptions};
//! let broker = Broker::start(&BrokerOptions::for_tests()).unwrap();
//! let bootstrap = broker.bootstrap_servers(); // "127.0.0.1:<port>"
//! ```
//!
//! Only `std`, `thiserror` and `attune-harness`: `xtask` links this crate and must compile in
//! seconds.

pub mod broker;
pub mod provision;

pub use broker::{Broker, BrokerOptions};

use std::path::PathBuf;

/// The Apache Kafka release the broker runs (`lab/kafka/broker/pom.xml` names the same one).
pub const KAFKA_VERSION: &str = "4.4.0";

/// What can go wrong while provisioning or running a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{tool} was not found on PATH: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("the broker did not start within {secs} s{log}")]
    StartTimeout { secs: u64, log: String },
    #[error("the broker exited while starting ({status}){log}")]
    Exited { status: String, log: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Process(#[from] attune_harness::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The repository's root (this crate lives at `lab/kafka/harness/`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(3).map(PathBuf::from).unwrap_or(here)
}

/// `lab/kafka/` in the repository.
pub fn lab_dir() -> PathBuf {
    repo_root().join("lab").join("kafka")
}

/// Where downloaded Kafka artifacts are kept across clones and `cargo clean`:
/// `$ATTUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/attune`, else `~/.cache/attune`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATTUNE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("attune");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("attune")
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last lines of {}:\n{tail}", path.display())
    }
}
