//! `TenantComputeWorkflow`: the ready-made caller. It runs one operation under a declared
//! policy, waits for the callback (polling the store when the callback is late), and returns
//! the final `ExecutionStatus` or fails with the `ComputeError`.

// The workflow macros generate undocumented constants for every method.
#![allow(missing_docs)]

use std::time::Duration;

use compute_contract::{
    ComputeError, ErrorCode, activity,
    input::{self, raw},
    messages::{HeartbeatInput, InterventionInput, TENANT_ID_KEY},
    names,
    types::{
        CallbackTarget, ComputeCallback, ExecutionHandle, ExecutionState, ExecutionStatus,
        InterventionMark, Operation, TenantCompute,
    },
    validate,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_common::data_converters::RawValue;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, ActivityOptions, CancellableFuture, SyncWorkflowContext,
    WorkflowContext, WorkflowContextView, WorkflowResult,
};

use crate::{
    callbacks::{deliver, with_heartbeats},
    compute_error_of,
    policy::{OnError, Policy, TenantComputeInput, parse_input},
    terminate,
};

/// What the `status` query of `TenantComputeWorkflow` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantComputeView {
    /// `provision`, `update` or `delete` (absent if the input was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The tenant, when the request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// What the workflow is doing: `starting`, `waiting`, `polling`, `backoff`,
    /// `rolling_back`, `aborting`, `succeeded`, `failed`.
    pub phase: String,
    /// The operation attempt (1-based).
    pub attempt: u32,
    /// The current execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Its last known state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ExecutionState>,
    /// Every distinct callback received, in arrival order.
    pub callbacks: Vec<ComputeCallback>,
    /// Callbacks dropped as duplicates of (executionId, state), or unreadable.
    pub duplicate_callbacks_ignored: u32,
    /// The final or latest status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<ExecutionStatus>,
    /// The error that ended it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ComputeError>,
    /// The request's own `callback`, told once, when the workflow ends (log-safe form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_target: Option<String>,
    /// How that final callback went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_delivery: Option<crate::tracker::DeliveryRecord>,
    /// Heartbeats the callback target took while the workflow ran.
    #[serde(default)]
    pub heartbeats_sent: u32,
    /// The tenant's manual-intervention mark, as read when the operation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_intervention: Option<InterventionMark>,
}

/// The ready-made caller workflow.
#[workflow]
pub struct TenantComputeWorkflow {
    raw_input: Value,
    /// Why the input was refused before it could be read at all (too large, too deep, not
    /// JSON).
    refused: Option<ComputeError>,
    view: TenantComputeView,
    /// The request's `callback`, taken out of the request (see `run`).
    target: Option<CallbackTarget>,
    heartbeat_finished: bool,
}

fn start_options(policy: &Policy) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(120))
        .retry_policy(policy.retry_policy())
        .build()
}

fn read_options(policy: &Policy) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(policy.retry_policy())
        .build()
}

#[workflow_methods]
impl TenantComputeWorkflow {
    /// Keeps the raw input: it is validated in `run`, so a bad input fails the workflow with
    /// `INVALID_CONFIGURATION` instead of failing its task forever.
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: RawValue) -> Self {
        let (raw_input, refused) = match input::decode(&input, "input") {
            Ok(v) => (v, None),
            Err(e) => (Value::Null, Some(e)),
        };
        TenantComputeWorkflow {
            raw_input,
            refused,
            view: TenantComputeView {
                phase: "starting".into(),
                attempt: 1,
                ..Default::default()
            },
            target: None,
            heartbeat_finished: false,
        }
    }

    /// Runs the operation to its end under the declared policy.
    ///
    /// A `callback` in the request (a Step Functions task token, a Restate awakeable, or
    /// another Temporal workflow) is the caller of this workflow, not of one attempt: it is
    /// taken out of the request (so each attempt's callbacks come here), heartbeated while
    /// the workflow runs if it asked, and told once, the final outcome, when it ends.
    #[run(name = names::TENANT_COMPUTE_WORKFLOW)]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ExecutionStatus> {
        let ctx = &*ctx;
        if let Some(e) = ctx.state(|s| s.refused.clone()) {
            return Err(Self::finish_failed(ctx, e));
        }
        let request = ctx.state(|s| s.raw_input.get("request").cloned());
        if let Some(request) = request.filter(|r| r.get("callback").is_some()) {
            let target = ctx
                .execute_activity(
                    activity::CheckCallback,
                    raw(&request),
                    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30)).build(),
                )
                .await
                .map_err(|e| Self::finish_failed(ctx, compute_error_of(&e)))?;
            ctx.state_mut(|s| {
                if let Some(r) = s
                    .raw_input
                    .get_mut("request")
                    .and_then(Value::as_object_mut)
                {
                    r.remove("callback");
                }
                s.view.callback_target = target.as_ref().map(CallbackTarget::describe);
                s.target = target;
            });
        }
        // Heartbeats go on until the caller has been told (its completion may be retried).
        with_heartbeats(
            ctx,
            Self::heartbeat_subject,
            |s, outcome| {
                s.view.heartbeats_sent += outcome.sent;
                s.heartbeat_finished |= !outcome.finished.is_empty();
            },
            async {
                let result = Self::run_policy(ctx).await;
                Self::tell_caller(ctx, &result).await;
                result
            },
        )
        .await
    }

    fn heartbeat_subject(&self) -> Option<HeartbeatInput> {
        let target = self.target.clone()?;
        (!self.heartbeat_finished).then(|| HeartbeatInput {
            execution_id: self.view.execution_id.clone().unwrap_or_default(),
            tenant_id: self.view.tenant_id.clone().unwrap_or_default(),
            operation: self.view.operation.unwrap_or(Operation::Provision),
            targets: vec![target],
        })
    }

    /// Delivers the final outcome to the request's own callback target, if any: retried
    /// until the target accepts it or says it never will.
    async fn tell_caller(ctx: &WorkflowContext<Self>, result: &WorkflowResult<ExecutionStatus>) {
        let Some(target) = ctx.state(|s| s.target.clone()) else {
            return;
        };
        let view = ctx.state(|s| s.view.clone());
        let callback = match (result, view.last_status) {
            (Ok(status), _) => ComputeCallback::from_status(status, 1),
            (Err(_), last) => {
                let error = view.error.clone().unwrap_or_else(|| {
                    ComputeError::internal("TenantComputeWorkflow ended without a result")
                });
                match last {
                    Some(last) => {
                        let mut cb = ComputeCallback::from_status(&last, 1);
                        cb.state = match last.state {
                            ExecutionState::TimedOut | ExecutionState::Cancelled => last.state,
                            _ => ExecutionState::Failed,
                        };
                        cb.error = Some(error);
                        cb
                    }
                    None => {
                        let at = ctx
                            .workflow_time()
                            .map(chrono::DateTime::<chrono::Utc>::from)
                            .unwrap_or_default();
                        ComputeCallback {
                            execution_id: view.execution_id.clone().unwrap_or_default(),
                            tenant_id: view.tenant_id.clone().unwrap_or_default(),
                            operation: view.operation.unwrap_or(Operation::Provision),
                            state: ExecutionState::Failed,
                            attempt: 1,
                            resource_ids: Default::default(),
                            error: Some(error),
                            started_at: at,
                            finished_at: at,
                            duration_ms: 0,
                            sequence: 1,
                        }
                    }
                }
            }
        };
        let record = deliver(ctx, target, callback).await;
        ctx.state_mut(|s| s.view.callback_delivery = Some(record));
    }

    /// The operation under its policy, to the end.
    async fn run_policy(ctx: &WorkflowContext<Self>) -> WorkflowResult<ExecutionStatus> {
        let raw_input = ctx.state(|s| s.raw_input.clone());
        let input = match parse_input(&raw_input) {
            Ok(i) => i,
            Err(e) => return Err(Self::finish_failed(ctx, e)),
        };
        let tenant_id = input
            .request
            .get("tenantId")
            .and_then(Value::as_str)
            .filter(|t| validate::is_dns1123_label(t))
            .map(str::to_string);
        if let Some(t) = &tenant_id {
            ctx.upsert_search_attributes([TENANT_ID_KEY.value_set(t.clone())]);
        }
        ctx.state_mut(|s| {
            s.view.operation = Some(input.operation);
            s.view.tenant_id = tenant_id;
        });

        let policy = input.policy.clone();
        let mut attempt = 1u32;
        // Set when a TIMEOUT is retried: keep waiting for the same execution (and attempt).
        let mut reattach: Option<(String, u32)> = None;
        loop {
            ctx.state_mut(|s| s.view.attempt = attempt);
            // A retry sends the same request again: the worker re-opens the failed execution
            // under the same id (its attempt goes up), so the caller's execution id holds.
            let result = match reattach.take() {
                Some((execution_id, execution_attempt)) => {
                    Self::await_final(ctx, &policy, &execution_id, execution_attempt, true).await
                }
                None => Self::run_once(ctx, &input).await,
            };
            let (execution_id, state, error) = match result {
                Ok(status) if status.state == ExecutionState::Succeeded => {
                    ctx.state_mut(|s| {
                        s.view.phase = "succeeded".into();
                        s.view.state = Some(status.state);
                        s.view.last_status = Some(status.clone());
                    });
                    return Ok(status);
                }
                Ok(status) => {
                    let code = match status.state {
                        ExecutionState::TimedOut => ErrorCode::Timeout,
                        ExecutionState::Cancelled => ErrorCode::Cancelled,
                        _ => ErrorCode::Internal,
                    };
                    let error = status.error.clone().unwrap_or_else(|| {
                        ComputeError::new(code, format!("the execution ended {}", status.state))
                    });
                    ctx.state_mut(|s| s.view.last_status = Some(status.clone()));
                    (
                        Some(status.execution_id),
                        Some((status.state, status.attempt)),
                        error,
                    )
                }
                Err(e) => (ctx.state(|s| s.view.execution_id.clone()), None, e),
            };
            if state.is_some_and(|(st, _)| st.is_final()) {
                Self::read_mark(ctx, &policy).await;
            }
            match policy.action(error.code) {
                Some(OnError::Retry) if attempt < policy.max_attempts => {
                    if let (Some(id), Some((ExecutionState::TimedOut, execution_attempt))) =
                        (&execution_id, state)
                    {
                        reattach = Some((id.clone(), execution_attempt));
                    } else {
                        ctx.state_mut(|s| s.view.phase = "backoff".into());
                        crate::timer::timer(ctx, policy.backoff(attempt)).await;
                    }
                    attempt += 1;
                }
                Some(OnError::Rollback) => {
                    ctx.state_mut(|s| s.view.phase = "rolling_back".into());
                    if let Err(rollback_error) = Self::rollback(ctx, &input, &error).await {
                        let mut e = error;
                        e.root_cause = Some(format!(
                            "{}; the rollback failed too: {}",
                            e.root_cause.unwrap_or_default(),
                            rollback_error
                        ));
                        return Err(Self::finish_failed(ctx, e));
                    }
                    return Err(Self::finish_failed(ctx, error));
                }
                Some(OnError::Abort) => {
                    ctx.state_mut(|s| s.view.phase = "aborting".into());
                    let tenant_id = ctx.state(|s| s.view.tenant_id.clone());
                    if let (Some(tenant_id), Some(execution_id)) = (tenant_id, execution_id) {
                        ctx.execute_activity(
                            activity::MarkTenantIntervention,
                            raw(&InterventionInput {
                                tenant_id,
                                execution_id,
                                reason: format!("{}: {}", error.code, error.message),
                                code: Some(error.code),
                            }),
                            read_options(&policy),
                        )
                        .await
                        .map_err(|e| Self::finish_failed(ctx, compute_error_of(&e)))?;
                        Self::read_mark(ctx, &policy).await;
                    }
                    return Err(Self::finish_failed(ctx, error));
                }
                _ => return Err(Self::finish_failed(ctx, error)),
            }
        }
    }

    /// Starts the operation once and waits for its end.
    async fn run_once(
        ctx: &WorkflowContext<Self>,
        input: &TenantComputeInput,
    ) -> Result<ExecutionStatus, ComputeError> {
        ctx.state_mut(|s| s.view.phase = "starting".into());
        let request = raw(&input.request);
        let options = start_options(&input.policy);
        let handle: Result<ExecutionHandle, ActivityExecutionError> = match input.operation {
            Operation::Provision => {
                ctx.execute_activity(activity::Provision, request, options)
                    .await
            }
            Operation::Update => {
                ctx.execute_activity(activity::Update, request, options)
                    .await
            }
            Operation::Delete => {
                ctx.execute_activity(activity::Delete, request, options)
                    .await
            }
        };
        let handle = handle.map_err(|e| {
            let e = compute_error_of(&e);
            if let Some(id) = &e.execution_id {
                ctx.state_mut(|s| s.view.execution_id = Some(id.clone()));
            }
            e
        })?;
        ctx.state_mut(|s| {
            s.view.execution_id = Some(handle.execution_id.clone());
            s.view.state = Some(handle.state);
        });
        if handle.state.is_final() {
            return Self::read_status(ctx, &input.policy, &handle.execution_id).await;
        }
        Self::await_final(
            ctx,
            &input.policy,
            &handle.execution_id,
            handle.attempt,
            false,
        )
        .await
    }

    /// Reads the tenant's manual-intervention mark into the view (best effort: the view is
    /// for operators, and a failed read must not change the outcome).
    async fn read_mark(ctx: &WorkflowContext<Self>, policy: &Policy) {
        let Some(tenant_id) = ctx.state(|s| s.view.tenant_id.clone()) else {
            return;
        };
        if let Ok(tenant) = Self::read_tenant(ctx, policy, &tenant_id).await {
            ctx.state_mut(|s| s.view.requires_intervention = tenant.requires_intervention);
        }
    }

    async fn read_tenant(
        ctx: &WorkflowContext<Self>,
        policy: &Policy,
        tenant_id: &str,
    ) -> Result<TenantCompute, ComputeError> {
        ctx.execute_activity(
            activity::GetTenant,
            raw(&serde_json::json!({ "tenantId": tenant_id })),
            read_options(policy),
        )
        .await
        .map_err(|e| compute_error_of(&e))
    }

    /// Waits for a final (or, unless `past_timeout`, a timed-out) callback of the execution;
    /// polls the store each time `callbackTimeout` passes without one.
    async fn await_final(
        ctx: &WorkflowContext<Self>,
        policy: &Policy,
        execution_id: &str,
        attempt: u32,
        past_timeout: bool,
    ) -> Result<ExecutionStatus, ComputeError> {
        let wanted = move |state: ExecutionState| {
            state.is_final() || (!past_timeout && state == ExecutionState::TimedOut)
        };
        loop {
            ctx.state_mut(|s| s.view.phase = "waiting".into());
            let id = execution_id.to_string();
            let mut timer = crate::timer::timer(ctx, policy.callback_timeout);
            let got_callback = temporalio_sdk::workflows::select! {
                r = ctx.wait_condition(move |s: &Self| {
                    s.view.callbacks.iter().any(|c| {
                        c.execution_id == id && c.attempt == attempt && wanted(c.state)
                    })
                }) => r.is_ok(),
                _ = &mut timer => false,
            };
            if got_callback {
                timer.cancel();
            } else {
                ctx.state_mut(|s| s.view.phase = "polling".into());
            }
            // The store has the full status (history included); the tracker records the state
            // before it sends the callback, so it is there either way.
            let status = Self::read_status(ctx, policy, execution_id).await?;
            ctx.state_mut(|s| {
                s.view.state = Some(status.state);
                s.view.last_status = Some(status.clone());
            });
            // A later attempt (someone re-sent the request) answers for this one too.
            if wanted(status.state) || status.attempt > attempt {
                return Ok(status);
            }
        }
    }

    async fn read_status(
        ctx: &WorkflowContext<Self>,
        policy: &Policy,
        execution_id: &str,
    ) -> Result<ExecutionStatus, ComputeError> {
        ctx.execute_activity(
            activity::GetExecution,
            raw(&serde_json::json!({ "executionId": execution_id })),
            read_options(policy),
        )
        .await
        .map_err(|e| compute_error_of(&e))
    }

    /// `rollback`: for an update, the worker has already put the tenant back on its last
    /// good spec (`error.rolledBack`), so nothing is left to do; for a provision, the tenant's
    /// compute is deleted unless it has a last good spec to stand on (a provision applied
    /// over an existing tenant was put back like an update). Waits for the delete to end.
    async fn rollback(
        ctx: &WorkflowContext<Self>,
        input: &TenantComputeInput,
        error: &ComputeError,
    ) -> Result<(), ComputeError> {
        if let Some(why) = &error.rollback_error {
            return Err(ComputeError::new(error.code, why.clone()));
        }
        if input.operation != Operation::Provision || error.rolled_back {
            return Ok(());
        }
        let tenant_id = input
            .request
            .get("tenantId")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(id) = tenant_id.as_str()
            && Self::read_tenant(ctx, &input.policy, id)
                .await?
                .spec
                .is_some()
        {
            return Ok(());
        }
        let request = serde_json::json!({
            "tenantId": tenant_id,
            "idempotencyKey": format!("{}#rollback", ctx.workflow_id()),
        });
        let handle = ctx
            .execute_activity(
                activity::Delete,
                raw(&request),
                start_options(&input.policy),
            )
            .await
            .map_err(|e| compute_error_of(&e))?;
        let status = if handle.state.is_final() {
            Self::read_status(ctx, &input.policy, &handle.execution_id).await?
        } else {
            Self::await_final(
                ctx,
                &input.policy,
                &handle.execution_id,
                handle.attempt,
                true,
            )
            .await?
        };
        match status.error {
            Some(e) if status.state != ExecutionState::Succeeded => Err(e),
            _ => Ok(()),
        }
    }

    fn finish_failed(
        ctx: &WorkflowContext<Self>,
        error: ComputeError,
    ) -> temporalio_sdk::WorkflowTermination {
        ctx.state_mut(|s| {
            s.view.phase = "failed".into();
            s.view.error = Some(error.clone());
        });
        terminate(error)
    }

    fn on_callback(&mut self, payload: RawValue) {
        // A malformed signal (anyone in the namespace can send one) must not fail the
        // workflow task: count it and move on.
        let Ok(cb) = input::decode_as::<ComputeCallback>(&payload, "callback signal") else {
            tracing::warn!("Dropped a callback signal that is not a ComputeCallback.");
            self.view.duplicate_callbacks_ignored += 1;
            return;
        };
        if self.view.callbacks.iter().any(|c| {
            c.execution_id == cb.execution_id && c.attempt == cb.attempt && c.state == cb.state
        }) {
            self.view.duplicate_callbacks_ignored += 1;
        } else {
            self.view.callbacks.push(cb);
        }
    }

    /// `compute-provisioned`.
    #[signal(name = names::SIGNAL_PROVISIONED)]
    pub fn compute_provisioned(&mut self, _ctx: &mut SyncWorkflowContext<Self>, cb: RawValue) {
        self.on_callback(cb);
    }

    /// `compute-updated`.
    #[signal(name = names::SIGNAL_UPDATED)]
    pub fn compute_updated(&mut self, _ctx: &mut SyncWorkflowContext<Self>, cb: RawValue) {
        self.on_callback(cb);
    }

    /// `compute-deleted`.
    #[signal(name = names::SIGNAL_DELETED)]
    pub fn compute_deleted(&mut self, _ctx: &mut SyncWorkflowContext<Self>, cb: RawValue) {
        self.on_callback(cb);
    }

    /// `compute-failed`.
    #[signal(name = names::SIGNAL_FAILED)]
    pub fn compute_failed(&mut self, _ctx: &mut SyncWorkflowContext<Self>, cb: RawValue) {
        self.on_callback(cb);
    }

    /// `status`: phase, attempt, execution, callbacks received.
    #[query(name = names::STATUS_QUERY)]
    pub fn status(&self, _ctx: &WorkflowContextView) -> TenantComputeView {
        self.view.clone()
    }
}
