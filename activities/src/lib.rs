//! compute-activities: the providers, the execution store, the callback sinks and the
//! activities of compute-worker.
//!
//! The contract (types, names, error table, validation) lives in `compute-contract` and is
//! re-exported here under its old paths; workflow code depends on the contract only.

// ComputeError is the one error type crossing into Temporal; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod activities;
#[cfg(feature = "aws")]
pub(crate) mod aws;
pub mod callback;
pub mod faults;
pub mod metrics;
pub mod provider;
pub mod store;
pub mod sweep;

pub use compute_contract::{error, input, messages, names, types as contract, validate};

pub use activities::ComputeActivities;

pub use error::{ComputeError, ErrorCode};
