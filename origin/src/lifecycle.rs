//! Where a running service is in its life. One watch channel carries the phase from
//! `serve`'s shutdown sequence to every part: intake, the pipeline, the publisher.

/// The phases in order; each part stops at its own and keeps working before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting events (`/readyz` is ready).
    Serving,
    /// Refusing new events; the listener closes once in-flight requests finish.
    StopIntake,
    /// The pipeline applies what the log holds, checkpoints and stops.
    Drain,
    /// The publisher makes its last flush (within the shutdown deadline) and stops.
    StopPublishing,
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The [`Health`] name of the pipeline.
pub const PIPELINE: &str = "pipeline";
/// The [`Health`] name of the publisher.
pub const PUBLISHER: &str = "publisher";

/// What stops the service from doing its work: each long-running part (the pipeline, the
/// publisher) reports here when it stops or fails, under its own name with a reason, and
/// clears its entry when it works again. `/healthz` and `/readyz` answer 503 with these reasons
/// while any is set, and ingest refuses events with 503 + `Retry-After` (they would be
/// acknowledged but never applied).
#[derive(Clone, Debug, Default)]
pub struct Health {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    /// `component` stopped working, for `reason` (replaces its earlier reason).
    pub fn fail(&self, component: &'static str, reason: impl Into<String>) {
        self.lock().insert(component, reason.into());
    }

    /// `component` works again.
    pub fn recover(&self, component: &'static str) {
        self.lock().remove(component);
    }

    /// The failing components and why, by name.
    pub fn failing(&self) -> BTreeMap<&'static str, String> {
        self.lock().clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // A reporter that panicked mid-insert leaves a map that is still valid.
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_report_and_recover_independently() {
        let h = Health::default();
        assert!(h.is_healthy());
        h.fail("pipeline", "store: disk full");
        h.fail("publisher", "KV 500");
        assert_eq!(h.failing().len(), 2);
        h.recover("publisher");
        assert!(!h.is_healthy());
        assert_eq!(h.failing()["pipeline"], "store: disk full");
        h.recover("pipeline");
        assert!(h.is_healthy());
    }
}
