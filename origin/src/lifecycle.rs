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
