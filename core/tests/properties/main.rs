//! Property tests: order independence of `Profile::apply`, wire round trips, decoders that
//! never panic, and ranking invariants, one module per subject over shared generators.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../common/mod.rs"]
mod common;

mod decoders;
mod generators;
mod profile;
mod ranking;
mod wire;
