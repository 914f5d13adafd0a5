//! The tracker: one durable workflow per execution (`compute-execution-<executionId>`).
//!
//! It watches the provider (through a heartbeating activity) until the execution is final,
//! records the timeout when it passes without cancelling anything, and delivers a callback to
//! every caller that attached, at least once. Any worker can continue it after a crash: all
//! its state is in the workflow's history.

// The workflow macros generate undocumented constants for every method.
#![allow(missing_docs)]

use std::{pin::pin, time::Duration};

use compute_activities::{
    ComputeActivities,
    activities::{AttachCallback, HeartbeatInput, TENANT_ID_KEY, TrackerInput, WatchInput},
    contract::{CallbackTarget, ComputeCallback, ExecutionState, ExecutionStatus},
    names,
};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, CancellableFuture, SyncWorkflowContext, WorkflowContext, WorkflowContextView,
    WorkflowResult,
};

use crate::{
    callbacks::{deliver, with_heartbeats},
    compute_error_of, terminate,
};

/// One delivery the tracker made (or gave up on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Where, log-safe ([`CallbackTarget::describe`]: a task token shows only as a digest).
    pub target: String,
    /// The target itself (workflow state only: never in a query's answer).
    #[serde(skip)]
    pub target_key: Option<CallbackTarget>,
    /// Which state was reported.
    pub state: ExecutionState,
    /// The callback's sequence number.
    pub sequence: u32,
    /// Accepted by the target.
    pub delivered: bool,
    /// Why not, when it never will be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undeliverable_reason: Option<String>,
    /// The attempts it took.
    #[serde(default)]
    pub attempts: u32,
}

/// What the tracker's `status` query answers: the execution's status and the deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackerView {
    /// The execution tracked.
    pub execution_id: String,
    /// The latest status the tracker has (absent until its first read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ExecutionStatus>,
    /// Every caller attached (log-safe).
    pub targets: Vec<String>,
    /// Every delivery.
    pub callbacks: Vec<DeliveryRecord>,
    /// Heartbeats the targets took (Step Functions `SendTaskHeartbeat`).
    #[serde(default)]
    pub heartbeats_sent: u32,
}

/// The tracker workflow.
#[workflow]
pub struct ComputeExecutionTracker {
    input: TrackerInput,
    targets: Vec<CallbackTarget>,
    status: Option<ExecutionStatus>,
    deliveries: Vec<DeliveryRecord>,
    heartbeats_sent: u32,
    /// Targets that take no more heartbeats (their token was used or expired).
    heartbeat_finished: Vec<CallbackTarget>,
}

/// Retried until it succeeds (bounded backoff, no attempt limit): losing a completion is
/// never the answer.
fn unlimited_retries() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(500))
        .maximum_interval(Duration::from_secs(30))
        .build()
}

fn watch_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(24 * 3600))
        .heartbeat_timeout(Duration::from_secs(10))
        .retry_policy(unlimited_retries())
        .build()
}

/// Short activities (reads, the timeout mark, deliveries).
pub(crate) fn persistent_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(unlimited_retries())
        .build()
}

#[workflow_methods]
impl ComputeExecutionTracker {
    /// Starts with no targets: they arrive by `attach-callback` (the first with the start).
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: TrackerInput) -> Self {
        ComputeExecutionTracker {
            input,
            targets: Vec::new(),
            status: None,
            deliveries: Vec::new(),
            heartbeats_sent: 0,
            heartbeat_finished: Vec::new(),
        }
    }

    /// Watches the execution to its end and delivers every callback; meanwhile heartbeats
    /// the targets that asked for it.
    #[run(name = names::TRACKER_WORKFLOW)]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ExecutionStatus> {
        let ctx = &*ctx;
        // Heartbeats go on while a completion is being retried: a Step Functions task with
        // `HeartbeatSeconds` would time out while its target is briefly down.
        with_heartbeats(
            ctx,
            Self::heartbeat_subject,
            |s, outcome| {
                s.heartbeats_sent += outcome.sent;
                s.heartbeat_finished.extend(outcome.finished);
            },
            async {
                let status = Self::watch_to_end(ctx).await?;
                Self::deliver_all(ctx, &status).await;
                Ok(status)
            },
        )
        .await
    }

    /// The targets to heartbeat: those that asked and have not been told anything yet.
    fn heartbeat_subject(&self) -> Option<HeartbeatInput> {
        let targets: Vec<CallbackTarget> = self
            .targets
            .iter()
            .filter(|t| {
                t.heartbeat_interval().is_some()
                    && !self.heartbeat_finished.contains(t)
                    && !self
                        .deliveries
                        .iter()
                        .any(|d| d.target_key.as_ref() == Some(*t))
            })
            .cloned()
            .collect();
        (!targets.is_empty()).then(|| HeartbeatInput {
            execution_id: self.input.execution_id.clone(),
            tenant_id: self.input.tenant_id.clone(),
            operation: self.input.operation,
            targets,
        })
    }

    /// Watches the execution until it is final, reporting the timeout when it passes.
    async fn watch_to_end(ctx: &WorkflowContext<Self>) -> WorkflowResult<ExecutionStatus> {
        let input = ctx.state(|s| s.input.clone());
        ctx.upsert_search_attributes([TENANT_ID_KEY.value_set(input.tenant_id.clone())]);
        let first = ctx
            .execute_activity(
                ComputeActivities::get_compute_execution,
                serde_json::json!({ "executionId": input.execution_id }),
                persistent_options(),
            )
            .await
            .map_err(|e| terminate(compute_error_of(&e)))?;
        ctx.state_mut(|s| s.status = Some(first.clone()));

        let mut timer = ctx.timer(Duration::from_millis(input.timeout_ms.max(1)));
        let mut timer_live = true;
        let mut status = first;
        while !status.state.is_final() {
            let known_progress = status.progress.clone();
            let mut watch = pin!(ctx.execute_activity(
                ComputeActivities::watch_compute_execution,
                WatchInput {
                    execution_id: input.execution_id.clone(),
                    known_progress,
                },
                watch_options(),
            ));
            let first_done = if timer_live {
                temporalio_sdk::workflows::select! {
                    r = watch.as_mut() => Some(r),
                    _ = &mut timer => None,
                }
            } else {
                Some(watch.as_mut().await)
            };
            let result = match first_done {
                Some(r) => r,
                None => {
                    // The timeout passed: report it, keep the same watch going.
                    timer_live = false;
                    let timed_out = ctx
                        .execute_activity(
                            ComputeActivities::mark_compute_execution_timed_out,
                            input.execution_id.clone(),
                            persistent_options(),
                        )
                        .await
                        .map_err(|e| terminate(compute_error_of(&e)))?;
                    ctx.state_mut(|s| s.status = Some(timed_out.clone()));
                    if timed_out.state == ExecutionState::TimedOut {
                        Self::deliver_all(ctx, &timed_out).await;
                    }
                    watch.as_mut().await
                }
            };
            status = result.map_err(|e| terminate(compute_error_of(&e)))?;
            ctx.state_mut(|s| s.status = Some(status.clone()));
        }
        if timer_live {
            timer.cancel();
        }
        Ok(status)
    }

    /// Delivers `status` to every target that has not had it, all at once (a target that is
    /// down does not hold up the others), including targets that attach while this runs.
    async fn deliver_all(ctx: &WorkflowContext<Self>, status: &ExecutionStatus) {
        loop {
            let pending = ctx.state(|s| {
                s.targets
                    .iter()
                    .filter(|t| {
                        !s.deliveries
                            .iter()
                            .any(|d| d.target_key.as_ref() == Some(*t) && d.state == status.state)
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            });
            if pending.is_empty() {
                return;
            }
            let sequence = ctx.state(|s| {
                let mut states: Vec<ExecutionState> =
                    s.deliveries.iter().map(|d| d.state).collect();
                states.dedup();
                match states.iter().position(|st| *st == status.state) {
                    Some(i) => i as u32 + 1,
                    None => states.len() as u32 + 1,
                }
            });
            let callback = ComputeCallback::from_status(status, sequence);
            let sends = pending
                .into_iter()
                .map(|target| deliver(ctx, target, callback.clone()));
            let records = temporalio_sdk::workflows::join_all(sends).await;
            ctx.state_mut(|s| s.deliveries.extend(records));
        }
    }

    /// `attach-callback`: one more caller to tell (duplicates are ignored).
    #[signal(name = names::SIGNAL_ATTACH_CALLBACK)]
    pub fn attach_callback(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        attach: AttachCallback,
    ) {
        if let Some(target) = attach.target
            && !self.targets.contains(&target)
        {
            self.targets.push(target);
        }
    }

    /// `status`: the execution's status and the deliveries so far.
    #[query(name = names::STATUS_QUERY)]
    pub fn status(&self, _ctx: &WorkflowContextView) -> TrackerView {
        TrackerView {
            execution_id: self.input.execution_id.clone(),
            status: self.status.clone(),
            targets: self.targets.iter().map(CallbackTarget::describe).collect(),
            callbacks: self.deliveries.clone(),
            heartbeats_sent: self.heartbeats_sent,
        }
    }
}
