//! # attune-lab
//!
//! Sample tooling around the origin, kept out of the service binary: the reader of the shipped
//! UCI Online Retail sample ([`retail`]), the demo shop generated from it ([`retail::shop`]),
//! turning the sample into events and a catalog ([`import`]), the offline evaluation
//! ([`eval`], baselines in [`eval_baselines`]) and the pipeline benchmark ([`bench`]). It drives the origin through
//! `attune-origin`'s library, so what it measures is the service's own code.

pub mod bench;
pub mod cli;
pub mod error;
pub mod eval;
pub mod eval_baselines;
pub mod import;
pub mod retail;
