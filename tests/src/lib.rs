//! Harness for Attune's cross-component tests: starts the real worker under `wrangler dev`
//! (real `workerd`, its own local KV state directory) and the real origin binary, each on a
//! free 127.0.0.1 port, and talks to them over HTTP as a browser or a beacon would.
//!
//! Every child is an [`attune_harness::Service`]: it runs in its own process group and is killed
//! with it on drop, so a failing test leaves nothing behind.

mod http;
mod pages;
mod scenario;
mod stack;

use std::path::{Path, PathBuf};

pub use attune_harness::Service;
pub use http::{Reply, Visitor, http, reply};
pub use pages::{SAMPLE, debug, picks, skip_without_worker, slot, slot_hrefs, stack_with_sample};
pub use scenario::{eventually, step};
pub use stack::{Stack, StackOptions, lab_binary, origin_binary, standalone_wrangler_config};

/// Secrets the tests give both the worker and the origin.
pub const SESSION_KEY: &str = "e2e-session-key";
pub const PROFILE_KEY: &str = "e2e-profile-key";
pub const DEBUG_TOKEN: &str = "e2e-debug-token";
pub const DEV_KV_TOKEN: &str = "e2e-dev-kv-token";
pub const INGEST_TOKEN: &str = "e2e-ingest-token";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether the worker has been built (`cargo xtask build-edge`); the e2e tests need it.
pub fn worker_built() -> bool {
    repo_root().join("edge/build").is_dir()
        && repo_root().join("node_modules/.bin/wrangler").exists()
}
