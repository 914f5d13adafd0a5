//! Telling callers, shared by the tracker and `TenantComputeWorkflow`: one delivery to one
//! target, and heartbeats to targets that asked for them (a Step Functions task with
//! `HeartbeatSeconds` fails with `States.Timeout` unless it hears from us in time).

use std::{pin::pin, time::Duration};

use compute_contract::{
    activity,
    input::raw,
    messages::{DeliverInput, HeartbeatInput, HeartbeatOutcome},
    types::{CallbackTarget, ComputeCallback},
};
use futures::FutureExt;
use temporalio_common::RetryPolicy;
use temporalio_sdk::{ActivityOptions, CancellableFuture, WorkflowContext};

use crate::{compute_error_of, tracker::DeliveryRecord};

/// Delivers `callback` to `target` (the activity is retried until the target accepts it or
/// says it never will) and returns the record of how it went.
pub async fn deliver<W>(
    ctx: &WorkflowContext<W>,
    target: CallbackTarget,
    callback: ComputeCallback,
) -> DeliveryRecord {
    let (state, sequence) = (callback.state, callback.sequence);
    let outcome = ctx
        .execute_activity(
            activity::DeliverCallback,
            raw(&DeliverInput {
                target: target.clone(),
                callback,
            }),
            crate::tracker::persistent_options(),
        )
        .await;
    let (delivered, undeliverable_reason, attempts) = match outcome {
        Ok(o) => (o.delivered, o.undeliverable_reason, o.attempts),
        Err(e) => (false, Some(compute_error_of(&e).message), 0),
    };
    DeliveryRecord {
        target: target.describe(),
        target_key: Some(target),
        state,
        sequence,
        delivered,
        undeliverable_reason,
        attempts,
    }
}

/// The least time between two heartbeats.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often to heartbeat `targets`: 40% of the shortest `heartbeatSeconds` (so one late or
/// failed heartbeat still leaves time for the next), at least a second; `None` when none
/// asked for heartbeats.
pub fn heartbeat_interval(targets: &[CallbackTarget]) -> Option<Duration> {
    targets
        .iter()
        .filter_map(CallbackTarget::heartbeat_interval)
        .min()
        .map(|d| d.mul_f64(0.4).max(MIN_HEARTBEAT_INTERVAL))
}

/// One try: a heartbeat that fails is replaced by the next one, not retried.
fn heartbeat_options(interval: Duration) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(interval.max(Duration::from_secs(10)))
        .retry_policy(RetryPolicy::builder().maximum_attempts(1).build())
        .build()
}

/// Runs `work` to its end while heartbeating the targets `subject` names (re-read whenever
/// the workflow's state changes, so a target attached meanwhile is picked up); `record`
/// stores each heartbeat's outcome in the workflow's state.
pub async fn with_heartbeats<W, T>(
    ctx: &WorkflowContext<W>,
    subject: impl Fn(&W) -> Option<HeartbeatInput>,
    record: impl Fn(&mut W, HeartbeatOutcome),
    work: impl Future<Output = T>,
) -> T {
    let mut work = pin!(work.fuse());
    let due = |s: &W| subject(s).filter(|i| heartbeat_interval(&i.targets).is_some());
    loop {
        let Some(input) = ctx.state(due) else {
            temporalio_sdk::workflows::select! {
                out = work.as_mut() => return out,
                _ = ctx.wait_condition(|s| due(s).is_some()) => continue,
            }
        };
        let interval = heartbeat_interval(&input.targets).unwrap_or(MIN_HEARTBEAT_INTERVAL);
        let targets = input.targets.clone();
        let mut timer = crate::timer::timer(ctx, interval);
        let fired = temporalio_sdk::workflows::select! {
            out = work.as_mut() => {
                timer.cancel();
                return out;
            }
            _ = ctx.wait_condition(|s| due(s).map(|i| i.targets) != Some(targets.clone())) => false,
            _ = &mut timer => true,
        };
        if !fired {
            timer.cancel();
            continue;
        }
        let mut beat = pin!(ctx.execute_activity(
            activity::HeartbeatCallbacks,
            raw(&input),
            heartbeat_options(interval),
        ));
        temporalio_sdk::workflows::select! {
            out = work.as_mut() => {
                beat.cancel();
                return out;
            }
            r = beat.as_mut() => {
                if let Ok(outcome) = r {
                    ctx.state_mut(|s| record(s, outcome));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute_contract::types::{StepFunctionsCallback, TemporalCallback};

    fn sfn(seconds: Option<u32>) -> CallbackTarget {
        CallbackTarget::StepFunctions(StepFunctionsCallback {
            task_token: format!("token-{seconds:?}"),
            heartbeat_seconds: seconds,
        })
    }

    #[test]
    fn the_shortest_heartbeat_wins_with_a_floor() {
        let temporal = CallbackTarget::Temporal(TemporalCallback {
            workflow_id: "w".into(),
            run_id: None,
            namespace: None,
        });
        assert_eq!(heartbeat_interval(&[temporal.clone(), sfn(None)]), None);
        assert_eq!(
            heartbeat_interval(&[sfn(Some(60)), temporal, sfn(Some(10))]),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            heartbeat_interval(&[sfn(Some(1))]),
            Some(MIN_HEARTBEAT_INTERVAL)
        );
    }
}
