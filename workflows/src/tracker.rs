//! The tracker: one durable workflow per execution (`compute-execution-<executionId>`).
//!
//! It watches the provider (through a heartbeating activity) until the execution is final,
//! records the timeout when it passes without cancelling anything, and delivers a callback to
//! every caller that attached, at least once. Any worker can continue it after a crash: all
//! its state is in the workflow's history.
//!
//! Its input and signals come from anyone who can start or signal a workflow in the
//! namespace, so they arrive raw and are validated here: a malformed `attach-callback` is
//! dropped with a warning and never fails a workflow task. Before its history grows large
//! (a day of Step Functions heartbeats every second would pass Temporal's limits), a run
//! continues as new, handing over its targets, deliveries and deadline.

// The workflow macros generate undocumented constants for every method.
#![allow(missing_docs)]

use std::{
    pin::pin,
    time::{Duration, SystemTime},
};

use compute_contract::{
    ComputeError, activity,
    input::raw,
    messages::{
        AttachCallback, HeartbeatInput, MAX_CALLBACK_TARGETS, TENANT_ID_KEY, TrackerInput,
        WatchInput,
    },
    names,
    types::{CallbackTarget, ComputeCallback, ExecutionState, ExecutionStatus, Operation},
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use temporalio_common::{RetryPolicy, data_converters::RawValue};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, CancellableFuture, ContinueAsNewOptions, LocalActivityOptions,
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
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
    /// `attach-callback` signals dropped by this run (malformed, or past the target limit).
    #[serde(default)]
    pub signals_dropped: u32,
    /// Which run of the tracker this is (1, then one more after each continue-as-new).
    #[serde(default)]
    pub runs: u32,
}

/// How many history events a run may grow to before it continues as new, unless the input
/// says otherwise: well under Temporal's warning (10,240 events) and limit (51,200).
pub const DEFAULT_MAX_HISTORY_EVENTS: u32 = 5_000;

/// How long a tracker waits for its observer's wake-up before it looks at the store itself:
/// the last line when no worker is left to take the execution over, long enough to cost
/// nothing for operations of minutes.
pub const OBSERVER_FALLBACK: Duration = Duration::from_secs(600);

/// What a run hands over to the next when it continues as new.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Carried {
    targets: Vec<CallbackTarget>,
    deliveries: Vec<CarriedDelivery>,
    status: Option<ExecutionStatus>,
    heartbeats_sent: u32,
    heartbeat_finished: Vec<CallbackTarget>,
    /// When the execution times out (milliseconds since the epoch, workflow time).
    deadline_ms: Option<u64>,
    /// The timeout was already reported.
    timed_out: bool,
    /// Runs before this one.
    runs: u32,
}

/// A delivery with its target (the record alone never carries the target: queries show it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CarriedDelivery {
    record: DeliveryRecord,
    target: Option<CallbackTarget>,
}

/// The tracker workflow.
#[workflow]
pub struct ComputeExecutionTracker {
    input: TrackerInput,
    /// Why the input was refused (the run fails with it at once).
    refused: Option<ComputeError>,
    targets: Vec<CallbackTarget>,
    status: Option<ExecutionStatus>,
    deliveries: Vec<DeliveryRecord>,
    heartbeats_sent: u32,
    /// Targets that take no more heartbeats (their token was used or expired).
    heartbeat_finished: Vec<CallbackTarget>,
    deadline_ms: Option<u64>,
    timed_out: bool,
    runs: u32,
    /// `attach-callback` signals dropped because they were malformed or over the limit.
    signals_dropped: u32,
    /// `execution-changed` signals heard by this run.
    wakes: u32,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
    /// Starts with no targets: they arrive by `attach-callback` (the first with the start),
    /// or with what an earlier run handed over.
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: RawValue) -> Self {
        let (input, refused) = match TrackerInput::from_raw(&input) {
            Ok(i) => (i, None),
            Err(e) => (
                TrackerInput {
                    execution_id: String::new(),
                    tenant_id: String::new(),
                    operation: Operation::Provision,
                    timeout_ms: 0,
                    max_history_events: 0,
                    carried: None,
                    observed: false,
                },
                Some(e),
            ),
        };
        let carried = match input.carried.clone().map(serde_json::from_value::<Carried>) {
            None => Ok(Carried::default()),
            Some(Ok(c)) if c.targets.len() <= MAX_CALLBACK_TARGETS => Ok(c),
            Some(_) => Err(ComputeError::invalid(
                "input.carried: not what a tracker hands over",
            )),
        };
        let (carried, refused) = match (carried, refused) {
            (Ok(c), r) => (c, r),
            (Err(e), r) => (Carried::default(), r.or(Some(e))),
        };
        ComputeExecutionTracker {
            input,
            refused,
            targets: carried.targets,
            status: carried.status,
            deliveries: carried
                .deliveries
                .into_iter()
                .map(|d| DeliveryRecord {
                    target_key: d.target,
                    ..d.record
                })
                .collect(),
            heartbeats_sent: carried.heartbeats_sent,
            heartbeat_finished: carried.heartbeat_finished,
            deadline_ms: carried.deadline_ms,
            timed_out: carried.timed_out,
            runs: carried.runs,
            signals_dropped: 0,
            wakes: 0,
        }
    }

    /// The input of the next run: everything this one knows.
    fn hand_over(&self) -> TrackerInput {
        let carried = Carried {
            targets: self.targets.clone(),
            deliveries: self
                .deliveries
                .iter()
                .map(|d| CarriedDelivery {
                    record: d.clone(),
                    target: d.target_key.clone(),
                })
                .collect(),
            status: self.status.clone(),
            heartbeats_sent: self.heartbeats_sent,
            heartbeat_finished: self.heartbeat_finished.clone(),
            deadline_ms: self.deadline_ms,
            timed_out: self.timed_out,
            runs: self.runs + 1,
        };
        TrackerInput {
            carried: serde_json::to_value(carried).ok(),
            ..self.input.clone()
        }
    }

    fn history_limit(&self) -> u32 {
        match self.input.max_history_events {
            0 => DEFAULT_MAX_HISTORY_EVENTS,
            n => n,
        }
    }

    /// Watches the execution to its end and delivers every callback; meanwhile heartbeats
    /// the targets that asked for it.
    #[run(name = names::TRACKER_WORKFLOW)]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ExecutionStatus> {
        let ctx = &*ctx;
        if let Some(e) = ctx.state(|s| s.refused.clone()) {
            return Err(terminate(e));
        }
        let limit = ctx.state(Self::history_limit);
        // Heartbeats go on while a completion is being retried: a Step Functions task with
        // `HeartbeatSeconds` would time out while its target is briefly down.
        let mut work = pin!(
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
            .fuse()
        );
        // Whatever is in flight when the history is long enough is safe to drop: a watch
        // records what it saw in the store before it returns (the next run reads it back),
        // and a delivery not recorded here is sent again (at least once; Temporal drops a
        // repeated signal by its request id).
        temporalio_sdk::workflows::select! {
            out = work => out,
            _ = ctx.wait_condition(|_| {
                ctx.history_length() >= limit || ctx.continue_as_new_suggested()
            }).fuse() => {
                let next = ctx.state(Self::hand_over);
                match ctx.continue_as_new(raw(&next), ContinueAsNewOptions::default()) {
                    Err(t) => Err(t),
                    Ok(never) => match never {},
                }
            }
        }
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
        let first = if input.observed {
            Self::read_store(ctx, &input.execution_id).await?
        } else {
            ctx.execute_activity(
                activity::GetExecution,
                raw(&serde_json::json!({ "executionId": input.execution_id })),
                persistent_options(),
            )
            .await
            .map_err(|e| terminate(compute_error_of(&e)))?
        };
        ctx.state_mut(|s| s.status = Some(first.clone()));

        // The deadline is fixed by the first run; later runs wait only for what is left.
        let now_ms = ctx.workflow_time().map(millis).unwrap_or(0);
        let deadline_ms = ctx.state_mut(|s| {
            *s.deadline_ms
                .get_or_insert(now_ms.saturating_add(input.timeout_ms))
        });
        // No timer once the timeout was reported (by an earlier run).
        let mut timer = (!ctx.state(|s| s.timed_out)).then(|| {
            crate::timer::timer(
                ctx,
                Duration::from_millis(deadline_ms.saturating_sub(now_ms).max(1)),
            )
        });
        let mut status = first;
        if input.observed {
            return Self::wait_for_observer(ctx, &input.execution_id, status, timer, deadline_ms)
                .await;
        }
        while !status.state.is_final() {
            let known_progress = status.progress.clone();
            let mut watch = pin!(ctx.execute_activity(
                activity::WatchExecution,
                raw(&WatchInput {
                    execution_id: input.execution_id.clone(),
                    known_progress,
                }),
                watch_options(),
            ));
            let first_done = match timer.as_mut() {
                Some(timer) => temporalio_sdk::workflows::select! {
                    r = watch.as_mut() => Some(r),
                    _ = &mut *timer => None,
                },
                None => Some(watch.as_mut().await),
            };
            let result = match first_done {
                Some(r) => r,
                None => {
                    // The timeout passed: report it, keep the same watch going.
                    timer = None;
                    Self::report_timeout(ctx, &input.execution_id).await?;
                    watch.as_mut().await
                }
            };
            status = result.map_err(|e| terminate(compute_error_of(&e)))?;
            ctx.state_mut(|s| s.status = Some(status.clone()));
        }
        if let Some(timer) = timer {
            timer.cancel();
        }
        Ok(status)
    }

    /// Waits for the worker's observer to say the execution changed, then reads the store,
    /// until the execution is final; reports the timeout when it passes. Nothing runs on the
    /// server meanwhile: no activity, no heartbeat, one timer (the timeout's, or when that
    /// is further off or already reported, [`OBSERVER_FALLBACK`]'s, after which the tracker
    /// reads the store whether woken or not).
    async fn wait_for_observer(
        ctx: &WorkflowContext<Self>,
        execution_id: &str,
        mut status: ExecutionStatus,
        mut timeout: Option<impl CancellableFuture + Unpin>,
        deadline_ms: u64,
    ) -> WorkflowResult<ExecutionStatus> {
        // Wake-ups counted before the last read: one that arrives while a read is under way
        // wakes the next wait at once rather than being taken for already seen.
        let mut seen = 0;
        while !status.state.is_final() {
            let mut woken = pin!(ctx.wait_condition(move |s| s.wakes > seen));
            let now_ms = ctx.workflow_time().map(millis).unwrap_or(0);
            let fallback_ms = u64::try_from(OBSERVER_FALLBACK.as_millis()).unwrap_or(u64::MAX);
            let timeout_first =
                timeout.is_some() && deadline_ms.saturating_sub(now_ms) <= fallback_ms;
            let timed_out = match timeout.as_mut() {
                Some(t) if timeout_first => temporalio_sdk::workflows::select! {
                    _ = woken.as_mut() => false,
                    _ = &mut *t => true,
                },
                _ => {
                    let mut fallback = crate::timer::timer(ctx, OBSERVER_FALLBACK);
                    temporalio_sdk::workflows::select! {
                        _ = woken.as_mut() => fallback.cancel(),
                        _ = &mut fallback => {},
                    };
                    false
                }
            };
            if timed_out {
                timeout = None;
                Self::report_timeout(ctx, execution_id).await?;
            }
            seen = ctx.state(|s| s.wakes);
            status = Self::read_store(ctx, execution_id).await?;
            ctx.state_mut(|s| s.status = Some(status.clone()));
        }
        if let Some(t) = timeout {
            t.cancel();
        }
        Ok(status)
    }

    /// The execution's status from the store, as a local activity: a read of a few
    /// milliseconds needs no round trip through the task queue, and costs one history event.
    async fn read_store(
        ctx: &WorkflowContext<Self>,
        execution_id: &str,
    ) -> WorkflowResult<ExecutionStatus> {
        ctx.execute_local_activity(
            activity::GetExecution,
            raw(&serde_json::json!({ "executionId": execution_id })),
            LocalActivityOptions::builder()
                .start_to_close_timeout(Duration::from_secs(30))
                .retry_policy(unlimited_retries())
                .build(),
        )
        .await
        .map_err(|e| terminate(compute_error_of(&e)))
    }

    /// The timeout passed: records it (the execution goes on) and tells every target.
    async fn report_timeout(ctx: &WorkflowContext<Self>, execution_id: &str) -> WorkflowResult<()> {
        let timed_out = ctx
            .execute_activity(
                activity::MarkTimedOut,
                raw(&execution_id.to_string()),
                persistent_options(),
            )
            .await
            .map_err(|e| terminate(compute_error_of(&e)))?;
        ctx.state_mut(|s| {
            s.status = Some(timed_out.clone());
            s.timed_out = true;
        });
        if timed_out.state == ExecutionState::TimedOut {
            Self::deliver_all(ctx, &timed_out).await;
        }
        Ok(())
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
                let told: Vec<ExecutionState> = s.deliveries.iter().map(|d| d.state).collect();
                ComputeCallback::sequence_for(&told, status.state)
            });
            let callback = ComputeCallback::from_status(status, sequence);
            // Each delivery is recorded as it ends, not when the last one does: a run that
            // continues as new meanwhile hands over every delivery already made, so the next
            // run sends only what is left.
            let sends = pending.into_iter().map(|target| {
                let callback = callback.clone();
                async move {
                    let record = deliver(ctx, target, callback).await;
                    ctx.state_mut(|s| s.deliveries.push(record));
                }
            });
            temporalio_sdk::workflows::join_all(sends).await;
        }
    }

    /// `attach-callback`: one more caller to tell (duplicates are ignored). Anyone in the
    /// namespace can send it: a payload that is not a valid target is dropped with a warning
    /// (never its content), and so is a target past [`MAX_CALLBACK_TARGETS`].
    #[signal(name = names::SIGNAL_ATTACH_CALLBACK)]
    pub fn attach_callback(&mut self, _ctx: &mut SyncWorkflowContext<Self>, attach: RawValue) {
        let target = match AttachCallback::from_raw(&attach) {
            Ok(a) => a.target,
            Err(e) => {
                self.signals_dropped += 1;
                tracing::warn!(execution_id = %self.input.execution_id, reason = %e.message, "Dropped a malformed attach-callback signal.");
                return;
            }
        };
        let Some(target) = target else { return };
        if self.targets.contains(&target) {
            return;
        }
        if self.targets.len() >= MAX_CALLBACK_TARGETS {
            self.signals_dropped += 1;
            tracing::warn!(execution_id = %self.input.execution_id, limit = MAX_CALLBACK_TARGETS, "Dropped an attach-callback signal: the execution has as many callers as it takes.");
            return;
        }
        self.targets.push(target);
    }

    /// `execution-changed`: the worker's observer saw the execution reach a final state. It
    /// only wakes the tracker, which reads the store: whoever sends it, with whatever payload,
    /// causes at most one read.
    #[signal(name = names::SIGNAL_EXECUTION_CHANGED)]
    pub fn execution_changed(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _changed: RawValue) {
        self.wakes = self.wakes.saturating_add(1);
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
            signals_dropped: self.signals_dropped,
            runs: self.runs + 1,
        }
    }
}
