//! What happens to a store this build does not read: the event log is the source of truth, so
//! the store is rebuilt from it, or the node refuses to start when the log cannot do that.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Unusable};
use crate::store::Store;

/// Opens the store at `path`. A store this build does not read (another format version,
/// a file redb refuses) is moved aside and rebuilt: the event log is the source of truth, so a
/// fresh store replays it from its first record (catalog changes and forgets included: they are
/// records in the log). The shared keys' version lines are carried over when the old file can
/// be read. Refuses, naming both
/// files, when the log cannot rebuild what the store held.
pub fn open_or_rebuild(path: &Path, log: &Path) -> Result<Store> {
    let path = path.to_path_buf();
    let why = match Store::open(&path) {
        Err(Error::StoreUnusable { why, .. }) => why,
        opened => return opened,
    };
    let log = log.to_path_buf();
    if let Some(log_problem) = log_cannot_rebuild(&log, &why) {
        return Err(Error::CannotRebuild {
            store: path,
            log,
            why,
            log_problem,
        });
    }
    let mut aside = path.clone().into_os_string();
    aside.push(format!(".replaced-{}", crate::now_ms()));
    let aside = PathBuf::from(aside);
    std::fs::rename(&path, &aside)?;
    tracing::warn!(
        store = %path.display(),
        reason = %why,
        moved_to = %aside.display(),
        log = %log.display(),
        "the store is not one this build reads: rebuilding it from the event log, replayed from its start"
    );
    let store = Store::open(&path)?;
    if matches!(why, Unusable::Format { .. }) {
        match store.carry_over(&aside) {
            Ok(c) => tracing::info!(versions = c.versions, "carried over from the old store"),
            Err(e) => tracing::warn!(
                error = %e,
                "nothing carried over from the old store: run `publish --full` once the rebuild \
                 has caught up"
            ),
        }
    } else {
        tracing::warn!(
            "the old store cannot be read: run `publish --full` once the rebuild has caught up"
        );
    }
    Ok(store)
}

/// Why the log at `log` cannot rebuild a store that is unusable for `why` (`None`: it can).
fn log_cannot_rebuild(log: &Path, why: &Unusable) -> Option<String> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("it does not exist".into());
        }
        Err(e) => return Some(format!("it cannot be read ({e})")),
    };
    match why {
        Unusable::Format {
            committed: Some(committed),
            ..
        } if len < *committed => Some(format!(
            "it ends at byte {len}, before the store's checkpoint at byte {committed}"
        )),
        Unusable::Format {
            committed: Some(_), ..
        } => None,
        // What the store held is unknown: only a log with events can stand in for it.
        _ if len <= crate::log::FIRST_OFFSET => Some("it holds no events".into()),
        _ => None,
    }
}
