//! The lab's error type: the origin's errors, plus reading the sample.

use std::path::PathBuf;

use crate::retail::RetailError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Origin(#[from] attune_origin::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{}: {source}", path.display())]
    SampleFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Sample {
        path: PathBuf,
        #[source]
        source: RetailError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
