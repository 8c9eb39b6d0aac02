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
    if let Some(log_problem) = log_cannot_rebuild(&log, &why, false) {
        return Err(Error::CannotRebuild {
            store: path,
            log,
            why,
            log_problem,
        });
    }
    tracing::warn!(
        store = %path.display(),
        reason = %why,
        log = %log.display(),
        "the store is not usable: rebuilding it from the event log, replayed from its start"
    );
    let carry = matches!(why, Unusable::Format { .. });
    replace(&path, carry).map(|(store, _)| store)
}

/// `attune-origin rebuild`: moves the store at `path` aside (when there is one) and creates an
/// empty one that the pipeline fills by replaying the log in `log` from its first record.
/// The catalog and the forgets come back from the log; the shared-key versions are carried
/// over when the old file can be read. Refuses, changing nothing, when the log holds no
/// events, or when retention retired its first segments and `accept_retired` is not set (the
/// rebuilt store would lack every profile, model count and catalog change they held). Returns
/// the new store and where the old file went.
pub fn rebuild(path: &Path, log: &Path, accept_retired: bool) -> Result<(Store, Option<PathBuf>)> {
    let why = Unusable::Damaged("a rebuild was asked for".into());
    if let Some(log_problem) = log_cannot_rebuild(log, &why, accept_retired) {
        return Err(Error::CannotRebuild {
            store: path.to_path_buf(),
            log: log.to_path_buf(),
            why,
            log_problem,
        });
    }
    if let Ok(Some(span)) = crate::log::extent(log)
        && span.start > crate::log::FIRST_OFFSET
    {
        tracing::warn!(
            from_offset = span.start,
            "rebuilding from the segments retention left: profiles, model counts and catalog \
             changes from the records before this offset are not restored"
        );
    }
    tracing::info!(store = %path.display(), log = %log.display(), "rebuilding the store from the event log");
    replace(path, path.exists())
}

/// Moves the store at `path` aside (if it exists) and opens a fresh one, carrying over from
/// the old file what the log does not hold when `carry` and the old file reads.
fn replace(path: &Path, carry: bool) -> Result<(Store, Option<PathBuf>)> {
    let aside = if path.exists() {
        let mut aside = path.to_path_buf().into_os_string();
        aside.push(format!(".replaced-{}", crate::now_ms()));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside)?;
        tracing::warn!(moved_to = %aside.display(), "the old store is kept aside");
        Some(aside)
    } else {
        None
    };
    let store = Store::open(path)?;
    // A damaged old file may make redb panic on any read: the copy runs under `catch_unwind`.
    let carried = match &aside {
        Some(old) if carry => {
            Some(super::caught(|| store.carry_over(old)).unwrap_or_else(|p| Err(Error::Corrupt(p))))
        }
        _ => None,
    };
    match carried {
        Some(Ok(c)) => tracing::info!(versions = c.versions, "carried over from the old store"),
        Some(Err(e)) => tracing::warn!(
            error = %e,
            "nothing carried over from the old store: run `publish --full` once the rebuild \
             has caught up"
        ),
        None if aside.is_some() => tracing::warn!(
            "the old store cannot be read: run `publish --full` once the rebuild has caught up"
        ),
        None => {}
    }
    Ok((store, aside))
}

/// Why the log in `log` cannot rebuild a store that is unusable for `why` (`None`: it can).
/// A log whose first segments were retired can only when `accept_retired`.
fn log_cannot_rebuild(log: &Path, why: &Unusable, accept_retired: bool) -> Option<String> {
    let span = match crate::log::extent(log) {
        Ok(Some(span)) => span,
        Ok(None) => return Some("it holds no segments".into()),
        Err(e) => return Some(format!("it cannot be read ({e})")),
    };
    if span.start > crate::log::FIRST_OFFSET && !accept_retired {
        return Some(format!(
            "retention retired its segments before offset {}, so the profiles, model counts and              catalog changes of the records in them cannot be restored; `attune-origin rebuild              --accept-retired` rebuilds from the segments that are left, accepting that loss",
            span.start
        ));
    }
    match why {
        Unusable::Format {
            committed: Some(committed),
            ..
        } if span.end < *committed => Some(format!(
            "it ends at offset {}, before the store's checkpoint at offset {committed}",
            span.end
        )),
        Unusable::Format {
            committed: Some(_), ..
        } => None,
        // What the store held is unknown: only a log with events can stand in for it.
        _ if span.end <= span.start => Some("it holds no events".into()),
        _ => None,
    }
}
