//! compute-contract: what callers in any language and the workflows see of compute-worker,
//! with no I/O: the request, handle, status and callback types, the names, the error table and
//! its classification, the bounded decoding of raw payloads, the validation that needs no
//! provider, the internal workflow/activity messages, and the activities' signatures.
//!
//! The workflows depend on this crate only, so the deterministic workflow code never compiles
//! a provider, a store or an HTTP client.

// ComputeError is the one error type crossing into Temporal; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod activity;
pub mod digest;
pub mod error;
pub mod input;
pub mod messages;
pub mod names;
pub mod proto;
pub mod schema;
pub mod types;
pub mod validate;

pub use error::{ComputeError, ErrorCode};
