//! The built Worker in the real `workerd`, through `wrangler dev` on a free port with a
//! temporary `--persist-to` directory. Builds nothing: run `cargo xtask build-edge` first (the
//! test prints why it skips when `edge/build/` is missing). Local KV is seeded through the
//! Worker's own dev bulk route, with snapshots encoded by `attune-core`.

#![cfg(unix)]

mod seed;
mod shop;
mod site;
mod streaming;
mod support;
mod upstream;
