//! How Attune's tests, crash tests and `cargo xtask demo` run the origin and the Worker as
//! child processes.
//!
//! A [`Service`] is a child that leads its own process group (through `process-wrap`), so one
//! signal reaches everything it started: `wrangler dev` runs `workerd` as its own child, which
//! a signal to wrangler alone would leave running. Its output is kept (in memory or in a log
//! file) for the message of whatever fails. Dropping it ends the whole group: at once for
//! tests ([`OnDrop::Kill`]), or with a grace period for the demo's clean stop
//! ([`OnDrop::Terminate`]).
//!
//! Everything listens on 127.0.0.1: [`free_port`] picks ports, [`Service::wait_http`] and
//! [`Service::wait_for_port`] wait for readiness while watching for an early exit, and
//! [`WranglerDev`] is the one way the Worker is started under `wrangler dev`.

mod http;
mod service;
mod wrangler;

pub use http::{HttpHead, free_port, http_get, port_is_free};
pub use nix::sys::signal::Signal;
pub use service::{Error, Group, OnDrop, Service, Stopped};
pub use wrangler::{WRANGLER_ENV, WranglerDev};
