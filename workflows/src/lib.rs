//! compute-workflows: deterministic workflow code only.
//!
//! - [`tracker::ComputeExecutionTracker`]: one per execution (`compute-execution-<id>`),
//!   watches it to the end and delivers the callbacks.
//! - [`tenant::TenantComputeWorkflow`]: the ready-made caller with a declared policy.
//!
//! Nothing here does I/O or reads a clock but the workflow's own.

// ComputeError is the one error type crossing into Temporal; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod callbacks;
pub mod policy;
pub mod tenant;
mod timer;
pub mod tracker;

use compute_contract::{ComputeError, ErrorCode};
use temporalio_common::error::IncomingError;
use temporalio_sdk::{ActivityExecutionError, WorkflowTermination};

/// The `ComputeError` inside an activity failure, or an `INTERNAL` one describing it.
pub fn compute_error_of(err: &ActivityExecutionError) -> ComputeError {
    if let Some(IncomingError::Application(app)) = err.cause() {
        if let Ok(Some(e)) = app.details::<ComputeError>() {
            return e;
        }
        if let Some(code) = app.type_name().and_then(ErrorCode::parse) {
            return ComputeError::new(code, app.to_string());
        }
    }
    ComputeError::internal(format!("activity failed: {err}"))
}

/// Fails the workflow with a classified error (type = code, details = the error).
pub fn terminate(e: ComputeError) -> WorkflowTermination {
    WorkflowTermination::failed_application(e.into_application_failure())
}
