//! # attune-edge
//!
//! The Cloudflare Worker that personalizes HTML pages in flight. Everything that can be tested
//! natively lives in plain modules free of `worker` types; the Worker shell (`worker_shell`) is
//! compiled for `wasm32` only.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cache;
pub mod cookies;
pub mod data;
pub mod devkv;
pub mod escape;
pub mod events;
pub mod headers;
pub mod identity;
pub mod page;
pub mod policy;
pub mod rewrite;
pub mod urls;

#[cfg(target_arch = "wasm32")]
mod worker_shell;

#[cfg(test)]
mod tests;
