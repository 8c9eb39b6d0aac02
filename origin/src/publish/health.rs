//! What the publisher tells readiness: the reason it cannot publish at all, if any.
//!
//! Only failures an operator has to fix count (the KV API refuses the token: 401/403);
//! rate limits, 5xx and network errors are retried and show in the failure metrics instead.

use std::sync::{Arc, Mutex};

/// Shared between the publisher (which sets it) and `/readyz` (which reads it).
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Why the node is not ready because of the publisher, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets or clears the reason; true when that changed it (log once per change, not per
    /// attempt).
    pub(super) fn set(&self, reason: Option<String>) -> bool {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = r.is_some() != reason.is_some();
        *r = reason;
        changed
    }
}
