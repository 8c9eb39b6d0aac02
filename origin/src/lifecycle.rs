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
/// The [`Health`] readiness name of a publisher whose token the KV API refuses.
pub const PUBLISHER_AUTH: &str = "publisher-auth";
/// The [`Health`] readiness name of the Kafka connection (no broker up).
pub const KAFKA: &str = "kafka";

/// What stops the service from doing its work: each long-running part (the pipeline, the
/// publisher) reports here when it stops or fails, under its own name with a reason, and
/// clears its entry when it works again. `/healthz` and `/readyz` answer 503 with these reasons
/// while any is set, and ingest refuses events with 503 + `Retry-After` (they would be
/// acknowledged but never applied).
///
/// A part can also only withhold readiness ([`Health::withhold_readiness`]): a publisher whose
/// token KV refuses keeps the node out of a load balancer's rotation, but events are still taken
/// and kept, and a restart would not mend a token, so health and ingest are unaffected.
#[derive(Clone, Debug, Default)]
pub struct Health {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
    not_ready: Arc<Mutex<BTreeMap<&'static str, String>>>,
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

    /// `component` keeps the node from being ready, for `reason`, without failing it; true
    /// when it did not before (log once per change, not per attempt).
    pub fn withhold_readiness(&self, component: &'static str, reason: impl Into<String>) -> bool {
        lock(&self.not_ready)
            .insert(component, reason.into())
            .is_none()
    }

    /// `component` no longer withholds readiness; true when it did.
    pub fn restore_readiness(&self, component: &'static str) -> bool {
        lock(&self.not_ready).remove(component).is_some()
    }

    /// Every reason the node is not ready: the failing parts and those withholding readiness.
    pub fn not_ready(&self) -> BTreeMap<&'static str, String> {
        let mut reasons = lock(&self.not_ready).clone();
        reasons.extend(self.failing());
        reasons
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        lock(&self.failing)
    }
}

type Reasons = BTreeMap<&'static str, String>;

fn lock(map: &Mutex<Reasons>) -> std::sync::MutexGuard<'_, Reasons> {
    // A reporter that panicked mid-insert leaves a map that is still valid.
    map.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn withheld_readiness_leaves_health_alone() {
        let h = Health::default();
        assert!(h.withhold_readiness(PUBLISHER_AUTH, "403"));
        assert!(!h.withhold_readiness(PUBLISHER_AUTH, "403 again"));
        assert!(h.is_healthy());
        assert_eq!(h.not_ready()[PUBLISHER_AUTH], "403 again");
        h.fail(PIPELINE, "disk full");
        assert_eq!(h.not_ready().len(), 2);
        assert!(h.restore_readiness(PUBLISHER_AUTH));
        assert!(!h.restore_readiness(PUBLISHER_AUTH));
        assert_eq!(h.not_ready().keys().collect::<Vec<_>>(), [&PIPELINE]);
    }
}
