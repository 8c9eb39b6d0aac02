//! attune-origin (work in progress)
pub mod retail;
