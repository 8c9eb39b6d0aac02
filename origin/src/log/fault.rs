//! Fault points for crash tests: an armed point makes the operation stop there with an I/O
//! error, leaving the files as a crash at that moment would (the test then reopens the log).
//! Points are armed per log directory, so tests running side by side do not see each other's.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where an operation can be stopped.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A closed segment's replacement is written and synced, not yet renamed over it (erase).
    BeforeRewriteRename,
    /// The appender created the next segment, before it records the roll (the old segment is
    /// still the last the open log knows).
    AfterRollCreate,
}

struct Armed {
    dir: PathBuf,
    point: Point,
    /// Hits of the point to let pass before it fails.
    skip: u32,
}

static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

/// Makes the `skip + 1`-th hit of `point` in the log at `dir` fail (once).
#[doc(hidden)]
pub fn arm(dir: &Path, point: Point, skip: u32) {
    ARMED.lock().unwrap_or_else(|e| e.into_inner()).push(Armed {
        dir: dir.to_path_buf(),
        point,
        skip,
    });
}

/// Fails when `point` is armed for a log directory that `path` is in (or is).
pub(super) fn hit_in(path: &Path, point: Point) -> std::io::Result<()> {
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = armed
        .iter()
        .position(|a| a.point == point && path.starts_with(&a.dir))
    else {
        return Ok(());
    };
    if armed[i].skip > 0 {
        armed[i].skip -= 1;
        return Ok(());
    }
    armed.swap_remove(i);
    Err(std::io::Error::other(format!(
        "injected fault at {point:?}"
    )))
}
