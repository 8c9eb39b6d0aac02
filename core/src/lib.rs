//! # attune-core
//!
//! All of Attune's decisions, as plain functions over plain data: event validation, profile
//! updates, sessions, ranking, segment and experiment rules, and the snapshot wire format.
//!
//! The crate is sans-IO in the quinn-proto style: it never reads a clock, never draws a random
//! number and never touches a socket or a file. Callers pass `now` (epoch milliseconds) and
//! every input explicitly, so the same input gives the same output, bit for bit, natively and
//! on `wasm32-unknown-unknown` (transcendental math goes through `libm`; every output that is
//! collected from a map is collected from an ordered one).
//!
//! Features:
//! - `json`: parse schema-v1 events from JSON (`serde_json`), shared by the edge and the origin.
//! - `wire`: the versioned MessagePack snapshot envelope and the session cookie, on one
//!   MessagePack layer (`rmp` underneath; `rmp-serde` writes envelopes).
//! - `std`: nothing but `std::error::Error` plumbing for native consumers.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod decay;
pub mod event;
pub mod hash;
pub mod model;
pub mod profile;
pub mod rank;
pub mod rules;
pub mod secret;
pub mod session;
mod table;
#[cfg(feature = "wire")]
pub mod wire;

/// Milliseconds since the Unix epoch. Every timestamp in Attune is one of these.
pub type Millis = u64;

pub const SECOND_MS: Millis = 1_000;
pub const MINUTE_MS: Millis = 60 * SECOND_MS;
pub const HOUR_MS: Millis = 60 * MINUTE_MS;
pub const DAY_MS: Millis = 24 * HOUR_MS;

pub use event::{Event, EventError, EventKind};
pub use model::{
    CatalogIndex, CatalogItem, CatalogShard, IdHash, IdKey, Manifest, Neighbour, NeighbourIndex,
    NeighbourList, NeighbourShard, Trending,
};
pub use profile::{Profile, ProfileConfig};
pub use rank::{Pick, RankInput, RankParams, Reason, Strategy, rank};
pub use rules::{Config, RequestContext};
pub use session::Session;
/// The inline string type of item keys in [`Profile`] (and of [`Event`]'s ids): keys of up to
/// 23 bytes live in the struct, so looking one up or encoding it touches no other heap line.
pub use smol_str::SmolStr;
