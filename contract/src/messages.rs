//! The messages between the workflows and the activities that are not part of the public
//! request/status contract: the tracker's input and signal, and the internal activities'
//! inputs and outputs. Each one that arrives as a raw payload is validated by its `from_raw`
//! (anyone who can start a workflow or send a signal in the namespace can send one).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_common::{data_converters::RawValue, search_attributes::SearchAttributeKey};

use crate::{
    error::ComputeError,
    input, names,
    types::{CallbackTarget, ComputeCallback, Operation, Progress},
    validate,
};

/// The `TenantId` keyword search attribute.
pub const TENANT_ID_KEY: SearchAttributeKey<String> =
    SearchAttributeKey::keyword(names::TENANT_ID_SEARCH_ATTRIBUTE);

/// Input of the tracker workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackerInput {
    /// The execution tracked.
    pub execution_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its operation.
    pub operation: Operation,
    /// When it times out, counted from the tracker's start.
    pub timeout_ms: u64,
    /// How many history events a run may grow to before it continues as new (0: the
    /// tracker's default).
    #[serde(default)]
    pub max_history_events: u32,
    /// What an earlier run of the same tracker handed over when it continued as new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<Value>,
    /// The worker's observer watches the execution and wakes the tracker (set by every
    /// worker since the observer; a tracker started without it, by an older worker, watches
    /// with its own activity, as it always did).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observed: bool,
}

impl TrackerInput {
    /// Validates a tracker's raw input (anyone who can start a workflow can start one).
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: TrackerInput = input::decode_as(raw, "input")?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        validate::check_tenant_id("tenantId", &input.tenant_id)?;
        Ok(input)
    }
}

/// The `attach-callback` signal: one more caller to tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachCallback {
    /// The caller's target; absent for a caller that only polls.
    #[serde(default)]
    pub target: Option<CallbackTarget>,
}

impl AttachCallback {
    /// Validates the signal's raw payload: `{"target": <callback target> | null}`. Anyone who
    /// can signal a workflow in the namespace can send one, so it is checked like a request.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let v = input::decode(raw, "signal attach-callback")?;
        let Value::Object(map) = &v else {
            return Err(ComputeError::invalid(
                "signal attach-callback: must be an object {\"target\": ...}",
            ));
        };
        // `target` must be there (null for a caller that only polls): an object without it
        // is not an attach-callback at all.
        let target = match map.get("target") {
            None => {
                return Err(ComputeError::invalid(
                    "signal attach-callback: target is required (null for none)",
                ));
            }
            Some(Value::Null) => None,
            Some(t) => Some(validate::callback_target(t)?),
        };
        Ok(AttachCallback { target })
    }
}

/// Input of the watch activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchInput {
    /// The execution.
    pub execution_id: String,
    /// The progress the tracker already knows, so the watch returns only on news.
    #[serde(default)]
    pub known_progress: Option<Progress>,
}

/// Input of the delivery activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverInput {
    /// Where to.
    pub target: CallbackTarget,
    /// What.
    pub callback: ComputeCallback,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryOutcome {
    /// The target accepted it.
    pub delivered: bool,
    /// Why not, when the target will never accept it (for example: the workflow is closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undeliverable_reason: Option<String>,
    /// The attempts it took (this one included).
    #[serde(default)]
    pub attempts: u32,
}

/// Input of the heartbeat activity: the targets that asked for heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatInput {
    /// The execution reported as running.
    pub execution_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its operation.
    pub operation: Operation,
    /// Where to.
    pub targets: Vec<CallbackTarget>,
}

/// What the heartbeat activity did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatOutcome {
    /// Targets that took the heartbeat.
    pub sent: u32,
    /// Targets that never will (the token is used or expired): stop heartbeating them.
    #[serde(default)]
    pub finished: Vec<CallbackTarget>,
}

/// Input of the intervention activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterventionInput {
    /// The tenant.
    pub tenant_id: String,
    /// The execution whose failure led here.
    pub execution_id: String,
    /// Why.
    pub reason: String,
    /// The failure's code (the mark's `code`; `INTERNAL` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::ErrorCode>,
}

/// The most callers one execution tells (the tracker drops `attach-callback` signals past
/// it), and so the most targets one heartbeat names.
pub const MAX_CALLBACK_TARGETS: usize = 100;
/// The longest reason recorded with a manual-intervention mark.
const MAX_REASON_CHARS: usize = 2000;

/// A target decoded by serde is re-validated as a request's `callback` would be: serde
/// checks only the shape, not the bounds.
fn check_target_shape(target: &CallbackTarget) -> Result<(), ComputeError> {
    let v = serde_json::to_value(target)
        .map_err(|_| ComputeError::invalid("target: is not a callback target"))?;
    validate::callback_target(&v).map(|_| ())
}

impl WatchInput {
    /// Validates the watch activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: WatchInput = input::decode_as(raw, "input")?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        Ok(input)
    }
}

impl DeliverInput {
    /// Validates the delivery activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: DeliverInput = input::decode_as(raw, "input")?;
        check_target_shape(&input.target)?;
        let cb = &input.callback;
        validate::check_execution_id("callback.executionId", &cb.execution_id)?;
        validate::check_tenant_id("callback.tenantId", &cb.tenant_id)?;
        Ok(input)
    }
}

impl HeartbeatInput {
    /// Validates the heartbeat activity's raw input (the execution id is empty before
    /// `TenantComputeWorkflow` has one).
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: HeartbeatInput = input::decode_as(raw, "input")?;
        if !input.execution_id.is_empty() {
            validate::check_execution_id("executionId", &input.execution_id)?;
        }
        if !input.tenant_id.is_empty() {
            validate::check_tenant_id("tenantId", &input.tenant_id)?;
        }
        if input.targets.len() > MAX_CALLBACK_TARGETS {
            return Err(ComputeError::invalid(format!(
                "targets: at most {MAX_CALLBACK_TARGETS} targets"
            )));
        }
        input.targets.iter().try_for_each(check_target_shape)?;
        Ok(input)
    }
}

impl InterventionInput {
    /// Validates the intervention activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: InterventionInput = input::decode_as(raw, "input")?;
        validate::check_tenant_id("tenantId", &input.tenant_id)?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        if input.reason.chars().count() > MAX_REASON_CHARS {
            return Err(ComputeError::invalid(format!(
                "reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(input)
    }
}
