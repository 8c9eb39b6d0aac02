//! The library's error type.

use std::io;

/// Everything that can go wrong inside the origin service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("event log: {0}")]
    Log(String),
    #[error("config: {0}")]
    Config(String),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("http: {0}")]
    Http(String),
    #[error("retail sample: {0}")]
    Retail(String),
    /// The store file is not one this build reads (the node rebuilds it from the log when it
    /// can).
    #[error("the store {} is not usable: {why}", path.display())]
    StoreUnusable {
        path: std::path::PathBuf,
        why: Unusable,
    },
    /// The store must be rebuilt from the event log, and the log cannot do it.
    #[error(
        "the store {} is not usable ({why}) and the event log {} cannot rebuild it: {log_problem}. \
         Restore the event log, or move the store away to start with an empty one",
        store.display(), log.display()
    )]
    CannotRebuild {
        store: std::path::PathBuf,
        log: std::path::PathBuf,
        why: Unusable,
        log_problem: String,
    },
    #[error("shutting down")]
    Shutdown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<rmp_serde::encode::Error> for Error {
    fn from(e: rmp_serde::encode::Error) -> Self {
        Error::Encode(e.to_string())
    }
}

impl From<rmp_serde::decode::Error> for Error {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Error::Encode(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Encode(e.to_string())
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Http(e.to_string())
    }
}

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
        }
    }
}

impl std::error::Error for Unusable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Unusable::Unreadable(e) => Some(e),
            Unusable::Format { .. } => None,
        }
    }
}
