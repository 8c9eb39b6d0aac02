//! The library's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong inside the origin service. Each message names what failed
/// and, where there is one, keeps the underlying error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// A file named by the configuration could not be read.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] redb::Error),
    /// Store content this build cannot make sense of (an invariant the store keeps is broken).
    #[error("store: {0}")]
    Corrupt(String),
    /// A stored row that does not decode.
    #[error("store: {what}: {source}")]
    Row {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("event log: {0}")]
    Log(String),
    /// A record the log acknowledged does not read back: nothing is cut, the service stops.
    #[error(
        "event log {}: damaged record at offset {offset} ({detail}). Nothing was cut. Stop the \
         service and run `attune-origin salvage` to copy every valid record into a new log",
        path.display()
    )]
    LogDamaged {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// Writing or syncing a group of appends failed (each request of the group shares it).
    #[error("event log append: {0}")]
    Append(#[source] std::sync::Arc<io::Error>),
    #[error("config: {0}")]
    Config(String),
    #[error("config {}: {source}", path.display())]
    ConfigToml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("rules {}: {source}", path.display())]
    RulesJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("MessagePack encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A model delta that does not decode (damaged, or of another encoding version).
    #[error("model delta: {0}")]
    Delta(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// A running origin answered a `--url` request with an error status.
    #[error("the server answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    /// KV kept failing until the publish deadline.
    #[error("KV {op}: {message} (deadline passed)")]
    PublishDeadline { op: &'static str, message: String },
    /// Shutdown reached the publisher while it waited (for the budget or a retry).
    #[error("KV {op}: stopped while waiting")]
    PublishStopped { op: &'static str },
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the pipeline thread panicked")]
    PipelinePanicked,
    #[error("the pipeline stopped after a failed batch; reopen it to resume from the checkpoint")]
    PipelineStopped,
    /// A librdkafka call failed (Kafka mode).
    #[cfg(feature = "kafka")]
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Kafka mode: a record or a setting the origin refuses (named with its position).
    #[error("kafka: {0}")]
    KafkaRefused(String),
    /// The operation needs the embedded log (the service runs on Kafka).
    #[error("{0} works on the embedded log only (this node's source is Kafka)")]
    NeedsEmbeddedLog(&'static str),
    #[error("no profile for user {0:?}")]
    NoSuchUser(String),
    /// The store file is not one this build reads (the node rebuilds it from the log when it
    /// can).
    #[error("the store {} is not usable: {why}", path.display())]
    StoreUnusable { path: PathBuf, why: Unusable },
    /// The store must be rebuilt from the event log, and the log cannot do it.
    #[error(
        "the store {} is not usable ({why}) and the event log {} cannot rebuild it: {log_problem}. \
         Restore the event log, or move the store away to start with an empty one",
        store.display(), log.display()
    )]
    CannotRebuild {
        store: PathBuf,
        log: PathBuf,
        why: Unusable,
        log_problem: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// redb reports each operation's failure with its own type; all of them are [`redb::Error`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why an existing file is not a store this build reads.
#[derive(Debug)]
pub enum Unusable {
    /// A redb database of another format version (`None`: none recorded). `committed` is the
    /// log offset its checkpoint had reached, when it can be read.
    Format {
        found: Option<u64>,
        committed: Option<u64>,
    },
    /// redb refuses the file: another redb file format, not a redb file, or damaged.
    Unreadable(redb::DatabaseError),
    /// The file is damaged: redb's integrity check failed or redb panicked reading it.
    Damaged(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Format { found: Some(v), .. } => {
                write!(f, "store format {v}, not the one this build reads")
            }
            Unusable::Format { found: None, .. } => write!(
                f,
                "no store format recorded (a store of an unreleased build or another program's \
                 database)"
            ),
            Unusable::Unreadable(e) => write!(f, "redb cannot open it: {e}"),
            Unusable::Damaged(why) => write!(f, "the file is damaged: {why}"),
        }
    }
}

impl std::error::Error for Unusable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Unusable::Unreadable(e) => Some(e),
            Unusable::Format { .. } | Unusable::Damaged(_) => None,
        }
    }
}
