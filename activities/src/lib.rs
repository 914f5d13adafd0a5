//! compute-activities: the contract, the error table, the providers, the execution store and
//! the activities of compute-worker.
//!
//! Workflow code (in `compute-workflows`) depends on this crate for the contract types and
//! the activity definitions; nothing here depends on workflow code.

// ComputeError is the one error type crossing into Temporal; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod activities;
pub mod callback;
pub mod contract;
pub mod error;
pub mod faults;
pub mod input;
pub mod names;
pub mod provider;
pub mod store;
pub mod sweep;
pub mod validate;

pub use activities::ComputeActivities;

pub use error::{ComputeError, ErrorCode};
