//! The JSON contract other languages depend on: requests, handles, statuses and callbacks.
//!
//! Field names are camelCase and enums are strings, as `shared/design.md` fixes them. Unknown
//! fields are ignored on input. Requests are never deserialized straight from a payload: see
//! [`crate::validate`], which turns raw JSON into these types with field-named errors.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ComputeError, ErrorCode};

/// The three operations on a tenant's compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Create the tenant's compute (idempotent).
    Provision,
    /// Replace the tenant's compute with a new spec.
    Update,
    /// Remove the tenant's compute (idempotent).
    Delete,
}

impl Operation {
    /// The wire name (`provision`, `update`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Provision => "provision",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provision" => Some(Operation::Provision),
            "update" => Some(Operation::Update),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }

    /// The callback signal sent when this operation succeeds.
    pub fn success_signal(self) -> &'static str {
        match self {
            Operation::Provision => crate::names::SIGNAL_PROVISIONED,
            Operation::Update => crate::names::SIGNAL_UPDATED,
            Operation::Delete => crate::names::SIGNAL_DELETED,
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// Recorded, provider not (yet successfully) called.
    Pending,
    /// The provider accepted the operation; the tracker watches it.
    Running,
    /// The provider reached the desired state.
    Succeeded,
    /// The operation failed; `error` says why.
    Failed,
    /// The operation was cancelled.
    Cancelled,
    /// The timeout passed; the tracker keeps watching and records the eventual outcome.
    TimedOut,
}

impl ExecutionState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Pending => "pending",
            ExecutionState::Running => "running",
            ExecutionState::Succeeded => "succeeded",
            ExecutionState::Failed => "failed",
            ExecutionState::Cancelled => "cancelled",
            ExecutionState::TimedOut => "timed_out",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ExecutionState::Pending,
            "running" => ExecutionState::Running,
            "succeeded" => ExecutionState::Succeeded,
            "failed" => ExecutionState::Failed,
            "cancelled" => ExecutionState::Cancelled,
            "timed_out" => ExecutionState::TimedOut,
            _ => return None,
        })
    }

    /// True for states nothing follows: `succeeded`, `failed`, `cancelled`.
    ///
    /// `timed_out` is not final: the provider-side operation goes on and its outcome is
    /// still recorded.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ExecutionState::Succeeded | ExecutionState::Failed | ExecutionState::Cancelled
        )
    }

    /// True for states the caller is told about with a callback.
    pub fn is_reportable(self) -> bool {
        self.is_final() || self == ExecutionState::TimedOut
    }

    /// Whether the state machine allows `self -> next`.
    ///
    /// pending -> running -> (succeeded | failed | cancelled | timed_out), pending may fail or be
    /// cancelled directly, and timed_out -> (succeeded | failed | cancelled).
    pub fn can_become(self, next: ExecutionState) -> bool {
        use ExecutionState::*;
        matches!(
            (self, next),
            (Pending, Running | Failed | Cancelled | TimedOut)
                | (Running, Succeeded | Failed | Cancelled | TimedOut)
                | (TimedOut, Succeeded | Failed | Cancelled)
        )
    }
}

impl std::fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a tenant, derived from its executions (see the README's tenant state machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// The worker has never recorded the tenant (only in answers: never stored).
    Absent,
    /// A provision is under way.
    Provisioning,
    /// The compute runs the tenant's last good spec.
    // Stored as "active" by workers before the tenant lifecycle: still read as running.
    #[serde(alias = "active")]
    Running,
    /// An update is under way.
    Updating,
    /// A delete is under way.
    Deleting,
    /// The compute is gone (deleted, or a provision undone).
    Deleted,
    /// The last operation failed and the tenant has no good state to stand on (a failed
    /// provision or delete); a retry or a delete recovers.
    Failed,
    /// An operator must look: something was left that automation cannot clean up (a partial
    /// failure, a revert that failed, a policy's `abort`).
    RequiresManualIntervention,
}

impl TenantState {
    /// Every state, in the README's order.
    pub const ALL: [TenantState; 8] = [
        TenantState::Absent,
        TenantState::Provisioning,
        TenantState::Running,
        TenantState::Updating,
        TenantState::Deleting,
        TenantState::Deleted,
        TenantState::Failed,
        TenantState::RequiresManualIntervention,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Absent => "absent",
            TenantState::Provisioning => "provisioning",
            TenantState::Running => "running",
            TenantState::Updating => "updating",
            TenantState::Deleting => "deleting",
            TenantState::Deleted => "deleted",
            TenantState::Failed => "failed",
            TenantState::RequiresManualIntervention => "requires_manual_intervention",
        }
    }

    /// Parses a wire name (and `active`, the stored name of `running` before it was renamed).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "absent" => TenantState::Absent,
            "provisioning" => TenantState::Provisioning,
            "running" | "active" => TenantState::Running,
            "updating" => TenantState::Updating,
            "deleting" => TenantState::Deleting,
            "deleted" => TenantState::Deleted,
            "failed" => TenantState::Failed,
            "requires_manual_intervention" => TenantState::RequiresManualIntervention,
            _ => return None,
        })
    }
}

impl std::fmt::Display for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tenant needs an operator: set by a non-retriable failure (or a policy's `abort`),
/// cleared by the next successful operation or `compute-worker tenant clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterventionMark {
    /// The failure's code.
    pub code: ErrorCode,
    /// The failure's message.
    pub message: String,
    /// The execution that failed.
    pub execution_id: String,
    /// When the mark was set.
    pub at: DateTime<Utc>,
}

/// A tenant as `GetTenantCompute` and `ListTenantCompute` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantCompute {
    /// The tenant.
    pub tenant_id: String,
    /// Its state (`absent` for a tenant never recorded).
    pub state: TenantState,
    /// The last successfully applied spec (null before the first success and after a
    /// delete).
    pub spec: Option<ComputeSpec>,
    /// The resources that run now.
    #[serde(default)]
    pub resource_ids: ResourceIds,
    /// How many times a spec was applied successfully: it changes exactly when `spec` does.
    pub revision: u64,
    /// The tenant's latest execution.
    pub last_execution_id: Option<String>,
    /// Executions not final yet (pending, running, timed out), oldest first.
    #[serde(default)]
    pub active_execution_ids: Vec<String>,
    /// Set when an operator must look.
    pub requires_intervention: Option<InterventionMark>,
    /// When the tenant last changed (null when absent).
    pub updated_at: Option<DateTime<Utc>>,
}

impl TenantCompute {
    /// What is known of a tenant never recorded.
    pub fn absent(tenant_id: &str) -> Self {
        TenantCompute {
            tenant_id: tenant_id.to_string(),
            state: TenantState::Absent,
            spec: None,
            resource_ids: ResourceIds::default(),
            revision: 0,
            last_execution_id: None,
            active_execution_ids: Vec::new(),
            requires_intervention: None,
            updated_at: None,
        }
    }
}

/// One page of `ListTenantCompute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantPage {
    /// Tenants ordered by id.
    pub tenants: Vec<TenantCompute>,
    /// Pass as `pageToken` for the next page; null on the last.
    pub next_page_token: Option<String>,
}

/// A reference to a secret: where the provider reads it, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The environment variable the workload sees it as.
    pub name: String,
    /// ECS style: an ARN of SSM / Secrets Manager; for the local provider `env:VAR` or
    /// `file:/path`, resolved when the process starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<String>,
    /// Kubernetes style: a key of an existing Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside the Secret.
    pub key: String,
}

/// What the tenant's compute should be.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeSpec {
    /// Container image (required by ECS and Kubernetes, unused by the local provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Entrypoint, as in a Kubernetes container (the local provider's executable and its
    /// first arguments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments appended to `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Number of replicas (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The port the workload listens on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Configuration, exposed to the workload as environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Secrets, as references only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// Who owns the tenant's compute and how it is labelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Labels / tags put on every resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The owning team or person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The environment (`prod`, `staging`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// Where the completion of an execution is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CallbackTarget {
    /// Signal a Temporal workflow (the default: the workflow that called the activity).
    Temporal(TemporalCallback),
    /// Complete a Step Functions task token (`SendTaskSuccess` / `SendTaskFailure`).
    StepFunctions(StepFunctionsCallback),
    /// Resolve or reject a Restate awakeable through a Restate ingress.
    Restate(RestateCallback),
}

impl CallbackTarget {
    /// A short, log-safe description of the target. A task token is a bearer credential
    /// (whoever holds it can complete the task), so only a digest of it is shown.
    pub fn describe(&self) -> String {
        match self {
            CallbackTarget::Temporal(t) => format!("temporal:{}", t.workflow_id),
            CallbackTarget::StepFunctions(t) => {
                format!("stepFunctions:token-{}", token_digest(&t.task_token))
            }
            CallbackTarget::Restate(t) => format!("restate:{}", t.awakeable_id),
        }
    }

    /// The target's kind: `temporal`, `stepFunctions` or `restate`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallbackTarget::Temporal(_) => "temporal",
            CallbackTarget::StepFunctions(_) => "stepFunctions",
            CallbackTarget::Restate(_) => "restate",
        }
    }

    /// How often the target wants to hear that the execution is still running, if at all.
    pub fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        match self {
            CallbackTarget::StepFunctions(StepFunctionsCallback {
                heartbeat_seconds: Some(s),
                ..
            }) => Some(std::time::Duration::from_secs(u64::from(*s))),
            _ => None,
        }
    }
}

/// The longest task token Step Functions issues.
pub const MAX_TASK_TOKEN_LEN: usize = 2048;

/// The first 12 hex digits of the SHA-256 of a token: enough to tell tokens apart in logs.
pub fn token_digest(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Temporal workflow to signal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemporalCallback {
    /// The workflow id to signal.
    pub workflow_id: String,
    /// A specific run; the current run when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The namespace; the worker's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A Step Functions task waiting for its token (`.waitForTaskToken`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepFunctionsCallback {
    /// The task token (`$$.Task.Token`).
    pub task_token: String,
    /// The task state's `HeartbeatSeconds`: the worker sends `SendTaskHeartbeat` well within
    /// it while the execution runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<u32>,
}

impl std::fmt::Debug for StepFunctionsCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFunctionsCallback")
            .field(
                "task_token",
                &format_args!("token-{}", token_digest(&self.task_token)),
            )
            .field("heartbeat_seconds", &self.heartbeat_seconds)
            .finish()
    }
}

/// A Restate awakeable waiting in a handler.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestateCallback {
    /// The awakeable's id (`ctx.awakeable().id`).
    pub awakeable_id: String,
    /// The ingress to complete it through: one of the worker's configured ingress URLs (the
    /// first when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_url: Option<String>,
}

/// Where a callback delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not accepted yet: being retried.
    Pending,
    /// The target accepted it.
    Delivered,
    /// The target said it never will (closed workflow, used or invalid token, malformed id).
    Undeliverable,
}

impl DeliveryState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Undeliverable => "undeliverable",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "undeliverable" => Some(DeliveryState::Undeliverable),
            _ => None,
        }
    }
}

/// One callback of an execution to one target, with every attempt counted (in
/// `ExecutionStatus.callbacks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackDelivery {
    /// The target, log-safe ([`CallbackTarget::describe`]).
    pub target: String,
    /// `temporal`, `stepFunctions` or `restate`.
    pub kind: String,
    /// The execution state reported.
    pub state: ExecutionState,
    /// The callback's sequence number.
    pub sequence: u32,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub outcome: DeliveryState,
    /// The last attempt's error while pending, or why it is undeliverable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the first attempt was made.
    pub first_attempt_at: DateTime<Utc>,
    /// When the last attempt was made.
    pub last_attempt_at: DateTime<Utc>,
}

impl CallbackDelivery {
    /// Whether this row is about `callback` to `target` (log-safe, [`CallbackTarget::describe`])
    /// at the callback's attempt. A row is per (target, state) across the attempts of an
    /// execution, so one last tried before this attempt ended reported an earlier attempt (a
    /// re-opened execution).
    pub fn reports(&self, target: &str, callback: &ComputeCallback) -> bool {
        self.target == target
            && self.state == callback.state
            && self.last_attempt_at >= callback.finished_at
    }
}

/// Input of `ProvisionTenantCompute` and `UpdateTenantCompute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeRequest {
    /// The tenant: a DNS-1123 label.
    pub tenant_id: String,
    /// The desired compute.
    pub spec: ComputeSpec,
    /// Ownership and labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Same key, same execution: a retry attaches instead of starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where to deliver the completion; the calling workflow when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackTarget>,
    /// How long the operation may take (`"90s"`, `"10m"`); the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Input of `DeleteTenantCompute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    /// The tenant.
    pub tenant_id: String,
    /// Same key, same execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where to deliver the completion; the calling workflow when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackTarget>,
    /// How long the delete may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Identifiers of what a provider created, by provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceIds {
    /// ECS service ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_service_arn: Option<String>,
    /// ECS task ARNs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecs_task_arns: Vec<String>,
    /// ECS task definition ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition_arn: Option<String>,
    /// Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes Deployment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_deployment: Option<String>,
    /// Kubernetes ReplicaSet name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_replica_set: Option<String>,
    /// Pod names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_names: Vec<String>,
    /// Container ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_ids: Vec<String>,
    /// Local process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Local process command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_line: Vec<String>,
    /// Local process start time (clock ticks since boot): with the pid, it identifies the
    /// process even after the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start_time: Option<u64>,
}

impl ResourceIds {
    /// True when nothing is identified.
    pub fn is_empty(&self) -> bool {
        *self == ResourceIds::default()
    }
}

/// How far a running execution has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// A one-line description.
    pub message: String,
    /// Ready replicas, where the provider counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<u32>,
    /// Desired replicas, where the provider counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
}

/// One recorded state transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The state entered (or kept, for a note such as a failed attempt).
    pub state: ExecutionState,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, where there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Everything known about one execution (`GetComputeExecution`, the `status` query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    /// The execution.
    pub execution_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The operation.
    pub operation: Operation,
    /// The current state.
    pub state: ExecutionState,
    /// Which attempt of the execution this is: 1, then one more each time the same request
    /// re-opens it after a terminal failure.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The caller's idempotency key, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Progress while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// What the provider created or touched.
    #[serde(default)]
    pub resource_ids: ResourceIds,
    /// Why it failed (or the last failed attempt while still pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ComputeError>,
    /// Every transition, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// When the execution was recorded.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When the provider accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `finishedAt - createdAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The operation's timeout.
    pub timeout_ms: u64,
    /// Every recorded attempt of every activity about this execution, oldest first: only in
    /// `GetComputeExecution`'s answer to `{"executionId", "includeAttempts": true}`, absent
    /// everywhere else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// Every callback delivery of this execution (one per target and reported state), with
    /// its attempts and outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callbacks: Vec<CallbackDelivery>,
}

/// How one activity attempt ended: `ok`, or the code it failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The attempt returned a result.
    Ok,
    /// The attempt failed with this code.
    Failed(ErrorCode),
}

impl AttemptOutcome {
    /// The wire name: `ok` or the error code.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed(code) => code.as_str(),
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(AttemptOutcome::Ok),
            code => ErrorCode::parse(code).map(AttemptOutcome::Failed),
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for AttemptOutcome {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AttemptOutcome".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = std::iter::once("ok")
            .chain(ErrorCode::ALL.iter().map(|c| c.as_str()))
            .collect();
        schemars::json_schema!({
            "description": "How one activity attempt ended: `ok`, or the code it failed with.",
            "type": "string",
            "enum": names,
        })
    }
}

impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        AttemptOutcome::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown attempt outcome {s:?}")))
    }
}

/// One attempt of one activity, as the audit trail keeps it (Temporal's history records only
/// an activity's last attempt). Holds no secret values: the message is the `ComputeError`'s,
/// which never carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The execution it was about, once known (absent, for example, when the request was
    /// refused before one was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The tenant it was about, once known (a tenant id is known only after it was validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The activity's type (`ProvisionTenantCompute`, `WatchComputeExecution`, ...).
    pub activity_type: String,
    /// The activity's id in its workflow.
    pub activity_id: String,
    /// The workflow that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// That workflow's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Temporal's attempt number, from 1.
    pub attempt: u32,
    /// When the worker started the attempt (the worker's clock).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How long it ran, measured on a monotonic clock.
    pub latency_ms: u64,
    /// `ok`, or the error code.
    pub outcome: AttemptOutcome,
    /// Whether Temporal may retry it (the failure's class is retriable); false on success.
    pub retriable: bool,
    /// The provider that raised the failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's own error name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    /// The provider's id of the failed request, where it gave one (AWS `x-amzn-RequestId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
    /// The failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// What the start activities return at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionHandle {
    /// The execution (deterministic: the same request gives the same id).
    pub execution_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The operation.
    pub operation: Operation,
    /// The state when the activity returned; final if the caller attached after the end.
    pub state: ExecutionState,
    /// The execution's attempt (see [`ExecutionStatus::attempt`]).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// What the provider created.
    #[serde(default)]
    pub resource_ids: ResourceIds,
    /// The tracker's workflow id (`compute-execution-<executionId>`), for queries.
    pub tracker_workflow_id: String,
    /// True when this request attached to an execution that already existed.
    pub attached: bool,
    /// The error, when the state is final and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ComputeError>,
}

/// The payload of every callback signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeCallback {
    /// The execution.
    pub execution_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The operation.
    pub operation: Operation,
    /// The reported state (`succeeded`, `failed`, `cancelled`, `timed_out`).
    pub state: ExecutionState,
    /// The execution's attempt: a caller dedupes on (`executionId`, `attempt`, `state`).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// What the provider created.
    #[serde(default)]
    pub resource_ids: ResourceIds,
    /// Absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ComputeError>,
    /// When the execution was recorded.
    pub started_at: DateTime<Utc>,
    /// When it reached the reported state.
    pub finished_at: DateTime<Utc>,
    /// `finishedAt - startedAt`.
    pub duration_ms: u64,
    /// 1 for the first callback of this execution, 2 for the next (after a timeout), ...
    pub sequence: u32,
}

impl ComputeCallback {
    /// The callback reporting `status` as it is now.
    pub fn from_status(status: &ExecutionStatus, sequence: u32) -> Self {
        let finished_at = status.finished_at.unwrap_or(status.updated_at);
        ComputeCallback {
            execution_id: status.execution_id.clone(),
            tenant_id: status.tenant_id.clone(),
            operation: status.operation,
            state: status.state,
            attempt: status.attempt,
            resource_ids: status.resource_ids.clone(),
            error: status.error.clone(),
            started_at: status.created_at,
            finished_at,
            duration_ms: (finished_at - status.created_at).num_milliseconds().max(0) as u64,
            sequence,
        }
    }

    /// The sequence number of a callback reporting `state` to callers already told `told`
    /// (the states reported before, in order): the same state keeps its number, a new one
    /// takes the next. The tracker and the observer number alike, so that a callback sent by
    /// both carries one request id and the server drops the repeat.
    pub fn sequence_for(told: &[ExecutionState], state: ExecutionState) -> u32 {
        let mut states = told.to_vec();
        states.dedup();
        match states.iter().position(|s| *s == state) {
            Some(i) => i as u32 + 1,
            None => states.len() as u32 + 1,
        }
    }

    /// The signal that carries this callback.
    pub fn signal_name(&self) -> &'static str {
        if self.state == ExecutionState::Succeeded {
            self.operation.success_signal()
        } else {
            crate::names::SIGNAL_FAILED
        }
    }
}

/// The current time at the millisecond precision the store keeps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_keeps_its_sequence_and_a_new_one_takes_the_next() {
        use ExecutionState::*;
        assert_eq!(ComputeCallback::sequence_for(&[], Succeeded), 1);
        assert_eq!(ComputeCallback::sequence_for(&[TimedOut], Succeeded), 2);
        assert_eq!(
            ComputeCallback::sequence_for(&[TimedOut, TimedOut], TimedOut),
            1
        );
        assert_eq!(
            ComputeCallback::sequence_for(&[TimedOut, TimedOut], Failed),
            2
        );
    }
}
