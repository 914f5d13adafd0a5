//! Every name other languages call us by, in one place.
//!
//! These strings are the cross-language contract (see `shared/design.md`): renaming one breaks
//! every caller written in Python, Go, TypeScript or Java, so they never change.

/// Default task queue of the worker.
pub const DEFAULT_TASK_QUEUE: &str = "compute";

/// Activity: provision a tenant's compute (`ComputeRequest` -> `ExecutionHandle`).
pub const PROVISION_ACTIVITY: &str = "ProvisionTenantCompute";
/// Activity: update a tenant's compute (`ComputeRequest` -> `ExecutionHandle`).
pub const UPDATE_ACTIVITY: &str = "UpdateTenantCompute";
/// Activity: delete a tenant's compute (`DeleteRequest` -> `ExecutionHandle`).
pub const DELETE_ACTIVITY: &str = "DeleteTenantCompute";
/// Activity: one execution's status from the store (`{executionId}` -> `ExecutionStatus`).
pub const GET_EXECUTION_ACTIVITY: &str = "GetComputeExecution";
/// Activity: a tenant's executions, oldest first (`{tenantId}` -> `[ExecutionStatus]`).
pub const LIST_EXECUTIONS_ACTIVITY: &str = "ListTenantComputeExecutions";
/// Activity: a tenant's state, last good spec, live resources and manual-intervention mark
/// (`{tenantId}` -> `TenantCompute`; an unknown tenant is `state: "absent"`).
pub const GET_TENANT_ACTIVITY: &str = "GetTenantCompute";
/// Activity: tenants by id, a page at a time (`{state?, pageSize?, pageToken?}` ->
/// `{tenants, nextPageToken}`).
pub const LIST_TENANTS_ACTIVITY: &str = "ListTenantCompute";
/// Activity: stop an execution: undo a provision, revert an update (`{executionId, reason?}`
/// -> `ExecutionStatus`).
pub const CANCEL_EXECUTION_ACTIVITY: &str = "CancelComputeExecution";

/// Internal activity of the tracker: watch the provider until the execution changes.
pub const WATCH_EXECUTION_ACTIVITY: &str = "WatchComputeExecution";
/// Internal activity of the tracker: record that an execution passed its timeout.
pub const MARK_TIMED_OUT_ACTIVITY: &str = "MarkComputeExecutionTimedOut";
/// Internal activity of the tracker: deliver one callback to one target.
pub const DELIVER_CALLBACK_ACTIVITY: &str = "DeliverComputeCallback";
/// Internal activity of the tracker and `TenantComputeWorkflow`: heartbeat the callback
/// targets that asked for it (Step Functions `SendTaskHeartbeat`).
pub const HEARTBEAT_CALLBACKS_ACTIVITY: &str = "HeartbeatComputeCallbacks";
/// Internal activity of `TenantComputeWorkflow`: validate the request's callback target.
pub const CHECK_CALLBACK_ACTIVITY: &str = "CheckComputeCallback";
/// Internal activity of `TenantComputeWorkflow`: mark a tenant for manual intervention.
pub const MARK_TENANT_INTERVENTION_ACTIVITY: &str = "MarkTenantRequiresIntervention";

/// Workflow: the ready-made caller that runs one operation under a declared policy.
pub const TENANT_COMPUTE_WORKFLOW: &str = "TenantComputeWorkflow";
/// Workflow: the durable tracker of one execution, id `compute-execution-<executionId>`.
pub const TRACKER_WORKFLOW: &str = "ComputeExecutionTracker";
/// Prefix of every tracker's workflow id.
pub const TRACKER_WORKFLOW_ID_PREFIX: &str = "compute-execution-";

/// Signal to the caller: a provision succeeded.
pub const SIGNAL_PROVISIONED: &str = "compute-provisioned";
/// Signal to the caller: an update succeeded.
pub const SIGNAL_UPDATED: &str = "compute-updated";
/// Signal to the caller: a delete succeeded.
pub const SIGNAL_DELETED: &str = "compute-deleted";
/// Signal to the caller: an operation failed, timed out or was cancelled.
pub const SIGNAL_FAILED: &str = "compute-failed";
/// Every callback signal a caller may receive.
pub const CALLBACK_SIGNALS: [&str; 4] = [
    SIGNAL_PROVISIONED,
    SIGNAL_UPDATED,
    SIGNAL_DELETED,
    SIGNAL_FAILED,
];
/// Signal to a tracker: add a callback target (sent with signal-with-start by the activities).
pub const SIGNAL_ATTACH_CALLBACK: &str = "attach-callback";
/// Signal to a tracker (internal): the worker's observer saw its execution reach a final
/// state in the store. It carries nothing the tracker trusts: the tracker reads the store.
pub const SIGNAL_EXECUTION_CHANGED: &str = "execution-changed";

/// Query answered by every workflow of ours.
pub const STATUS_QUERY: &str = "status";

/// Keyword search attribute set on every workflow of ours.
pub const TENANT_ID_SEARCH_ATTRIBUTE: &str = "TenantId";

/// The tracker workflow id of an execution.
pub fn tracker_workflow_id(execution_id: &str) -> String {
    format!("{TRACKER_WORKFLOW_ID_PREFIX}{execution_id}")
}
