//! One conformance suite every store backend must pass.
//!
//! [`run_all`] needs a fresh database (tenant names are fixed); [`concurrent_begins`] and
//! [`concurrent_writers`] take two stores on the same database, as two workers would have.

// Test support (compiled only under cfg(test)): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::json;

use super::{
    DeliveryAttempt, ExecutionStore, NewExecution, TenantOutcome, TenantRecord, Transition,
    spec_hash,
};
use crate::{
    contract::{
        AttemptOutcome, AttemptRecord, ComputeSpec, DeliveryState, ExecutionState,
        InterventionMark, Operation, Progress, ResourceIds, TenantState, now,
    },
    error::{ComputeError, ErrorCode},
};

fn new_exec(tenant: &str, op: Operation, key: Option<&str>, arg: &str) -> NewExecution {
    let spec = (op != Operation::Delete).then(|| ComputeSpec {
        command: vec!["sleep".into()],
        args: vec![arg.into()],
        ..Default::default()
    });
    NewExecution {
        tenant_id: tenant.into(),
        operation: op,
        idempotency_key: key.map(str::to_string),
        spec_hash: spec_hash(spec.as_ref()),
        request: json!({"tenantId": tenant, "spec": spec}),
        spec,
        timeout: Duration::from_secs(60),
        provider: Some("conformance".into()),
    }
}

/// Runs every case against one store.
pub async fn run_all(store: &dyn ExecutionStore) {
    // First: it needs the store empty.
    executions_record_their_provider(store).await;
    begin_is_idempotent(store).await;
    transitions_and_history(store).await;
    tenant_state_machine(store).await;
    tenants_list_by_id(store).await;
    cancel_requests(store).await;
    listing_is_chronological(store).await;
    documents_round_trip(store).await;
    attempts_round_trip(store).await;
    deliveries_count_attempts(store).await;
    observation_leases(store).await;
    // Last: it checks that nothing the other cases wrote is pruned.
    pruning_removes_only_what_is_old(store).await;
}

/// An execution under observation belongs to one live observer; a gone or expired observer's
/// executions are taken over, once each; an ended observation is nobody's.
async fn observation_leases(store: &dyn ExecutionStore) {
    let mut ids = Vec::new();
    for n in 0..3 {
        let begin = store
            .begin_execution(new_exec(
                &format!("lease-{n}"),
                Operation::Provision,
                None,
                "1",
            ))
            .await
            .unwrap();
        ids.push(begin.record.status.execution_id);
    }
    let t = 1_000_000;
    store.observer_alive("a", t + 10_000).await.unwrap();
    store.observer_alive("b", t + 10_000).await.unwrap();
    // Nobody's: nothing to take over.
    assert!(store.claim_orphans("b", t, 10).await.unwrap().is_empty());
    for id in &ids {
        assert!(store.claim_observation(id, "a", t).await.unwrap());
    }
    // Again by the same observer: still its own.
    assert!(store.claim_observation(&ids[0], "a", t).await.unwrap());
    // A live observer's executions are not taken, by a claim or a takeover.
    assert!(!store.claim_observation(&ids[0], "b", t).await.unwrap());
    assert!(store.claim_orphans("b", t, 10).await.unwrap().is_empty());
    let mut mine = store.observed_by("a").await.unwrap();
    mine.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(mine, expected);
    // An ended observation is nobody's, even once its observer is gone.
    store.end_observation(&ids[2], "a").await.unwrap();
    // `a` stops renewing: past its lease, its executions are taken over, at most `limit` at
    // a time and each once.
    let later = t + 10_001;
    let first = store.claim_orphans("b", later, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let rest = store.claim_orphans("b", later, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(first, rest);
    assert!(
        store
            .claim_orphans("b", later, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!rest.contains(&ids[2]) && !first.contains(&ids[2]));
    assert_eq!(store.observed_by("a").await.unwrap(), Vec::<String>::new());
    assert_eq!(store.observed_by("b").await.unwrap().len(), 2);
    // `a` cannot end what `b` took over.
    store.end_observation(&ids[0], "a").await.unwrap();
    assert_eq!(store.observed_by("b").await.unwrap().len(), 2);
    // A stopped observer's executions go at once, without waiting for the lease.
    store.observer_gone("b").await.unwrap();
    let taken = store.claim_orphans("c", t, 10).await.unwrap();
    assert_eq!(taken.len(), 2);
    // A gone observer's execution can be claimed directly too (a retried start).
    store.observer_gone("c").await.unwrap();
    assert!(store.claim_observation(&ids[0], "a", t).await.unwrap());
    for id in &ids {
        store.end_observation(id, "a").await.unwrap();
        store.end_observation(id, "c").await.unwrap();
    }
    assert!(store.observed_by("c").await.unwrap().is_empty());
    store.observer_gone("a").await.unwrap();
}

/// An empty store knows no provider; an execution makes its provider known, and only it; an
/// execution that recorded no provider (as every one before executions had a provider) counts
/// for any.
async fn executions_record_their_provider(store: &dyn ExecutionStore) {
    for provider in ["local", "ecs", "kubernetes", "conformance"] {
        assert!(!store.knows_provider(provider).await.unwrap(), "{provider}");
    }
    store
        .begin_execution(NewExecution {
            provider: Some("ecs".into()),
            ..new_exec("provider-ecs", Operation::Provision, None, "1")
        })
        .await
        .unwrap();
    assert!(store.knows_provider("ecs").await.unwrap());
    for provider in ["local", "ECS", "ec", ""] {
        assert!(!store.knows_provider(provider).await.unwrap(), "{provider}");
    }
    store
        .begin_execution(NewExecution {
            provider: None,
            ..new_exec("provider-unknown", Operation::Provision, None, "1")
        })
        .await
        .unwrap();
    assert!(store.knows_provider("local").await.unwrap());
    assert!(store.knows_provider("kubernetes").await.unwrap());
}

fn year(y: i32) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&format!("{y}-06-01T00:00:00Z"))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// Retention deletes the attempts that finished and the deliveries last tried before the
/// cutoff, across several batches, and nothing else: not a row at the cutoff, not a delivery
/// first tried long ago but retried since, not what the other cases wrote (all later).
async fn pruning_removes_only_what_is_old(store: &dyn ExecutionStore) {
    let cutoff = year(2002);
    let old_attempts = 2 * super::PRUNE_BATCH as u32 + 7;
    let at = |finished: chrono::DateTime<chrono::Utc>, n: u32| AttemptRecord {
        started_at: finished - chrono::Duration::seconds(1),
        finished_at: finished,
        ..attempt(
            Some("pruned-1"),
            Some("pruned"),
            "WatchComputeExecution",
            n,
            1000,
            None,
        )
    };
    for n in 1..=old_attempts {
        store.record_attempt(at(year(2001), n)).await.unwrap();
    }
    let kept_attempts = [at(cutoff, 9001), at(year(2003), 9002), at(year(2003), 9003)];
    for a in &kept_attempts {
        store.record_attempt(a.clone()).await.unwrap();
    }
    let old_deliveries = super::PRUNE_BATCH as u32 + 3;
    let sent = |target: String, at: chrono::DateTime<chrono::Utc>| DeliveryAttempt {
        execution_id: "pruned-1".into(),
        kind: "restate".into(),
        target,
        state: ExecutionState::Succeeded,
        sequence: 1,
        outcome: DeliveryState::Pending,
        error: None,
        at,
    };
    for n in 0..old_deliveries {
        store
            .record_delivery(sent(format!("restate:sign_old{n}"), year(2001)))
            .await
            .unwrap();
    }
    for a in [
        sent("restate:sign_recent".into(), year(2003)),
        sent("restate:sign_at_cutoff".into(), cutoff),
        sent("restate:sign_retried".into(), year(2001)),
        sent("restate:sign_retried".into(), year(2003)),
    ] {
        store.record_delivery(a).await.unwrap();
    }
    let audit = store.list_executions("audit").await.unwrap()[0]
        .status
        .execution_id
        .clone();
    let others_attempts = store.list_attempts(&audit).await.unwrap();
    assert_eq!(others_attempts.len(), 3);
    let others_deliveries = store.list_deliveries("deliveries-1").await.unwrap();
    assert!(!others_deliveries.is_empty());

    let pruned = store.prune(cutoff).await.unwrap();
    assert_eq!(
        pruned,
        super::PruneCounts {
            attempts: u64::from(old_attempts),
            deliveries: u64::from(old_deliveries),
        }
    );
    assert_eq!(
        store.list_attempts("pruned-1").await.unwrap(),
        kept_attempts
    );
    let targets: Vec<String> = store
        .list_deliveries("pruned-1")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.target)
        .collect();
    assert_eq!(
        targets,
        [
            "restate:sign_retried",
            "restate:sign_at_cutoff",
            "restate:sign_recent"
        ]
    );
    assert_eq!(
        store.list_deliveries("deliveries-1").await.unwrap(),
        others_deliveries
    );
    assert_eq!(store.list_attempts(&audit).await.unwrap(), others_attempts);
    // Nothing left to prune; a cutoff before everything prunes nothing either.
    assert_eq!(
        store.prune(cutoff).await.unwrap(),
        super::PruneCounts::default()
    );
    assert_eq!(
        store.prune(year(1990)).await.unwrap(),
        super::PruneCounts::default()
    );
}

async fn begin_is_idempotent(store: &dyn ExecutionStore) {
    let a = store
        .begin_execution(new_exec("idem", Operation::Provision, None, "1"))
        .await
        .unwrap();
    assert!(a.created);
    assert_eq!(a.record.status.state, ExecutionState::Pending);
    let b = store
        .begin_execution(new_exec("idem", Operation::Provision, None, "1"))
        .await
        .unwrap();
    assert!(!b.created);
    assert_eq!(a.record.status.execution_id, b.record.status.execution_id);
    // A different spec is a different execution.
    let c = store
        .begin_execution(new_exec("idem", Operation::Provision, None, "2"))
        .await
        .unwrap();
    assert!(c.created);
    assert_ne!(c.record.status.execution_id, a.record.status.execution_id);
    // A key maps to one execution whatever happened since.
    let k1 = store
        .begin_execution(new_exec("idem", Operation::Update, Some("k"), "3"))
        .await
        .unwrap();
    store
        .begin_execution(new_exec("idem", Operation::Delete, None, ""))
        .await
        .unwrap();
    let k2 = store
        .begin_execution(new_exec("idem", Operation::Update, Some("k"), "4"))
        .await
        .unwrap();
    assert!(!k2.created);
    assert_eq!(k1.record.status.execution_id, k2.record.status.execution_id);
    // After a failure the same unkeyed request re-opens its execution: same id, next attempt.
    let f = store
        .begin_execution(new_exec("retry", Operation::Provision, None, "1"))
        .await
        .unwrap();
    let id = f.record.status.execution_id.clone();
    store
        .transition(Transition {
            error: Some(ComputeError::new(ErrorCode::WorkloadFailed, "exit 1")),
            ..Transition::to(&id, ExecutionState::Failed)
        })
        .await
        .unwrap();
    let again = store
        .begin_execution(new_exec("retry", Operation::Provision, None, "1"))
        .await
        .unwrap();
    assert!(!again.created && again.reopened);
    let s = &again.record.status;
    assert_eq!(s.execution_id, id);
    assert_eq!((s.state, s.attempt), (ExecutionState::Pending, 2));
    assert_eq!((s.error.as_ref(), s.finished_at), (None, None));
    assert_eq!(
        s.history.last().unwrap().message.as_deref(),
        Some("attempt 2: the same request again after the execution ended failed")
    );
    let tenant = store.get_tenant("retry").await.unwrap().unwrap();
    assert_eq!(tenant.last_execution_id.as_deref(), Some(id.as_str()));
    assert_eq!(tenant.active_execution_ids, std::slice::from_ref(&id));
    // Sent again while it runs, it attaches to the new attempt.
    let attached = store
        .begin_execution(new_exec("retry", Operation::Provision, None, "1"))
        .await
        .unwrap();
    assert!(!attached.created && !attached.reopened);
    assert_eq!(attached.record.status.attempt, 2);
    // A keyed request re-opens the execution its key names, cancelled ones too.
    let keyed = store
        .begin_execution(new_exec("retry", Operation::Update, Some("kk"), "2"))
        .await
        .unwrap();
    let kid = keyed.record.status.execution_id.clone();
    store
        .transition(Transition::to(&kid, ExecutionState::Cancelled))
        .await
        .unwrap();
    let reopened = store
        .begin_execution(new_exec("retry", Operation::Update, Some("kk"), "2"))
        .await
        .unwrap();
    assert!(reopened.reopened);
    assert_eq!(reopened.record.status.execution_id, kid);
    assert_eq!(reopened.record.status.attempt, 2);
    // An update of a tenant with no compute is refused, and records nothing.
    for tenant in ["never-seen", "retry-gone"] {
        if tenant == "retry-gone" {
            let d = store
                .begin_execution(new_exec(tenant, Operation::Provision, None, "1"))
                .await
                .unwrap();
            let id = d.record.status.execution_id;
            store
                .transition(Transition::to(&id, ExecutionState::Cancelled))
                .await
                .unwrap();
        }
        let before = store.list_executions(tenant).await.unwrap().len();
        let refused = store
            .begin_execution(new_exec(tenant, Operation::Update, None, "2"))
            .await
            .unwrap_err();
        let e = refused.to_compute_error();
        assert_eq!(e.code, ErrorCode::NotFound, "{tenant}");
        assert!(e.message.contains("provision it first"), "{}", e.message);
        assert_eq!(store.list_executions(tenant).await.unwrap().len(), before);
    }
    assert!(store.get_tenant("never-seen").await.unwrap().is_none());
}

async fn transitions_and_history(store: &dyn ExecutionStore) {
    let b = store
        .begin_execution(new_exec("hist", Operation::Provision, Some("h"), "1"))
        .await
        .unwrap();
    let id = b.record.status.execution_id.clone();
    let ids = ResourceIds {
        pid: Some(42),
        ..Default::default()
    };
    let r = store
        .transition(Transition {
            resource_ids: Some(ids.clone()),
            ..Transition::to(&id, ExecutionState::Running)
        })
        .await
        .unwrap();
    assert!(r.applied);
    assert!(r.record.status.started_at.is_some());
    // Repeating a transition is harmless, going back is refused without change.
    let again = store
        .transition(Transition::to(&id, ExecutionState::Running))
        .await
        .unwrap();
    assert!(!again.applied);
    let back = store
        .transition(Transition::to(&id, ExecutionState::Pending))
        .await
        .unwrap();
    assert!(!back.applied);
    assert_eq!(back.record.status.state, ExecutionState::Running);
    let timed_out = store
        .transition(Transition {
            error: Some(ComputeError::new(ErrorCode::Timeout, "too slow")),
            ..Transition::to(&id, ExecutionState::TimedOut)
        })
        .await
        .unwrap();
    assert!(timed_out.applied);
    let done = store
        .transition(Transition::to(&id, ExecutionState::Succeeded))
        .await
        .unwrap();
    assert!(done.applied);
    let s = done.record.status;
    assert_eq!(s.state, ExecutionState::Succeeded);
    assert_eq!(s.error, None, "success clears the timeout error");
    assert_eq!(s.resource_ids, ids);
    assert!(s.finished_at.is_some() && s.duration_ms.is_some());
    let states: Vec<_> = s.history.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        vec![
            ExecutionState::Pending,
            ExecutionState::Running,
            ExecutionState::TimedOut,
            ExecutionState::Succeeded
        ]
    );
    assert!(s.history.windows(2).all(|w| w[0].at <= w[1].at));
    let late = store
        .transition(Transition::to(&id, ExecutionState::Failed))
        .await
        .unwrap();
    assert!(!late.applied, "the first final state wins");
    assert!(
        store
            .transition(Transition::to("missing", ExecutionState::Running))
            .await
            .is_err()
    );
    assert!(store.get_execution("missing").await.unwrap().is_none());
}

async fn tenant_state_machine(store: &dyn ExecutionStore) {
    let t = "lifecycle";
    let p = store
        .begin_execution(new_exec(t, Operation::Provision, None, "1"))
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Provisioning);
    assert_eq!(
        (tenant.spec.as_ref(), tenant.revision),
        (None, 0),
        "nothing applied yet"
    );
    let pid = p.record.status.execution_id;
    assert_eq!(tenant.active_execution_ids, std::slice::from_ref(&pid));
    let ids = ResourceIds {
        pid: Some(7),
        ..Default::default()
    };
    store
        .transition(Transition {
            resource_ids: Some(ids.clone()),
            ..Transition::to(&pid, ExecutionState::Running)
        })
        .await
        .unwrap();
    store
        .transition(Transition::to(&pid, ExecutionState::Succeeded))
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Running);
    assert_eq!(tenant.resource_ids, ids);
    assert_eq!(tenant.spec.as_ref().unwrap().args, ["1"]);
    assert_eq!(tenant.revision, 1);
    assert!(tenant.active_execution_ids.is_empty());
    assert_eq!(tenant.intervention, None);

    // A failed update put back on the last good spec: running, old spec and ids, marked.
    let u = store
        .begin_execution(new_exec(t, Operation::Update, None, "2"))
        .await
        .unwrap();
    assert_eq!(u.previous_tenant.unwrap().resource_ids, ids);
    assert_eq!(
        store.get_tenant(t).await.unwrap().unwrap().state,
        TenantState::Updating
    );
    let uid = u.record.status.execution_id;
    let reverted = ResourceIds {
        pid: Some(9),
        ..Default::default()
    };
    let mut crash = ComputeError::new(ErrorCode::WorkloadFailed, "exit 1");
    crash.rolled_back = true;
    store
        .transition(Transition {
            resource_ids: Some(ResourceIds {
                pid: Some(8),
                ..Default::default()
            }),
            error: Some(crash),
            tenant: Some(TenantOutcome {
                state: TenantState::Running,
                resource_ids: reverted.clone(),
            }),
            ..Transition::to(&uid, ExecutionState::Failed)
        })
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Running);
    assert_eq!(tenant.resource_ids, reverted);
    assert_eq!(
        tenant.spec.as_ref().unwrap().args,
        ["1"],
        "the last good spec"
    );
    assert_eq!(tenant.revision, 1);
    let mark = tenant.intervention.clone().unwrap();
    assert_eq!(
        (mark.code, mark.message.as_str(), mark.execution_id.as_str()),
        (ErrorCode::WorkloadFailed, "exit 1", uid.as_str())
    );
    // An operator clears the mark; the clearing is in the failed execution's history.
    let cleared = store
        .clear_intervention(t, "cleared by ops")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cleared.intervention, cleared.state),
        (None, TenantState::Running)
    );
    let h = store
        .get_execution(&uid)
        .await
        .unwrap()
        .unwrap()
        .status
        .history;
    assert_eq!(h.last().unwrap().message.as_deref(), Some("cleared by ops"));
    assert!(
        store
            .clear_intervention("nobody", "x")
            .await
            .unwrap()
            .is_none()
    );

    // A revert that failed needs an operator, whatever the activity said.
    let u2 = store
        .begin_execution(new_exec(t, Operation::Update, None, "3"))
        .await
        .unwrap();
    let u2id = u2.record.status.execution_id;
    let mut broken = ComputeError::new(ErrorCode::WorkloadFailed, "exit 2");
    broken.rollback_error = Some("WORKLOAD_FAILED: exit 3".into());
    store
        .transition(Transition {
            error: Some(broken),
            tenant: Some(TenantOutcome {
                state: TenantState::Running,
                resource_ids: reverted.clone(),
            }),
            ..Transition::to(&u2id, ExecutionState::Failed)
        })
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::RequiresManualIntervention);
    assert!(
        tenant
            .intervention
            .unwrap()
            .message
            .contains("putting the tenant back failed")
    );
    // The next success clears the mark and applies its spec.
    let u3 = store
        .begin_execution(new_exec(t, Operation::Update, None, "4"))
        .await
        .unwrap();
    let u3id = u3.record.status.execution_id;
    store
        .transition(Transition::to(&u3id, ExecutionState::Running))
        .await
        .unwrap();
    store
        .transition(Transition::to(&u3id, ExecutionState::Succeeded))
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!((tenant.state, tenant.revision), (TenantState::Running, 2));
    assert_eq!(tenant.spec.as_ref().unwrap().args, ["4"]);
    assert_eq!(tenant.intervention, None);

    let d = store
        .begin_execution(new_exec(t, Operation::Delete, None, ""))
        .await
        .unwrap();
    assert_eq!(
        store.get_tenant(t).await.unwrap().unwrap().state,
        TenantState::Deleting
    );
    let did = d.record.status.execution_id;
    store
        .transition(Transition::to(&did, ExecutionState::Running))
        .await
        .unwrap();
    // An older execution finishing late does not speak for the tenant.
    store
        .transition(Transition::to(&uid, ExecutionState::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        store.get_tenant(t).await.unwrap().unwrap().state,
        TenantState::Deleting
    );
    store
        .transition(Transition::to(&did, ExecutionState::Succeeded))
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Deleted);
    assert!(tenant.resource_ids.is_empty());
    assert_eq!(tenant.spec, None, "a deleted tenant has no spec");
    store
        .mark_tenant(
            t,
            InterventionMark {
                code: ErrorCode::PartialFailure,
                message: "operator".into(),
                execution_id: did.clone(),
                at: now(),
            },
            Some(TenantState::RequiresManualIntervention),
        )
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::RequiresManualIntervention);
    assert_eq!(tenant.intervention.unwrap().code, ErrorCode::PartialFailure);
    let h = store
        .get_execution(&did)
        .await
        .unwrap()
        .unwrap()
        .status
        .history;
    assert_eq!(
        h.last().unwrap().message.as_deref(),
        Some("tenant marked as requiring manual intervention: PARTIAL_FAILURE: operator")
    );
    // Cleared, a marked tenant without a good spec is failed.
    let cleared = store.clear_intervention(t, "ok").await.unwrap().unwrap();
    assert_eq!(cleared.state, TenantState::Failed);
}

/// Tenants list by id, a page at a time, filtered by state.
async fn tenants_list_by_id(store: &dyn ExecutionStore) {
    for (tenant, succeed) in [("list-c", true), ("list-a", true), ("list-b", false)] {
        let b = store
            .begin_execution(new_exec(tenant, Operation::Provision, None, "1"))
            .await
            .unwrap();
        if succeed {
            let id = b.record.status.execution_id;
            store
                .transition(Transition::to(&id, ExecutionState::Running))
                .await
                .unwrap();
            store
                .transition(Transition::to(&id, ExecutionState::Succeeded))
                .await
                .unwrap();
        }
    }
    let ids = |ts: Vec<TenantRecord>| ts.into_iter().map(|t| t.tenant_id).collect::<Vec<_>>();
    let listed = |all: Vec<TenantRecord>| {
        all.into_iter()
            .filter(|t| t.tenant_id.starts_with("list-"))
            .collect::<Vec<_>>()
    };
    let all = listed(store.list_tenants(None, None, 1000).await.unwrap());
    assert_eq!(ids(all), ["list-a", "list-b", "list-c"]);
    let running = listed(
        store
            .list_tenants(Some(TenantState::Running), Some("list-"), 1000)
            .await
            .unwrap(),
    );
    assert_eq!(ids(running), ["list-a", "list-c"]);
    let page = store.list_tenants(None, Some("list-a"), 1).await.unwrap();
    assert_eq!(ids(page), ["list-b"]);
    let provisioning = store
        .list_tenants(Some(TenantState::Provisioning), Some("list-"), 10)
        .await
        .unwrap();
    assert_eq!(provisioning[0].tenant_id, "list-b");
    assert_eq!(provisioning[0].active_execution_ids.len(), 1);
}

/// A cancel request is kept once, on an execution that is not final, and a re-opened
/// execution starts without it.
async fn cancel_requests(store: &dyn ExecutionStore) {
    let b = store
        .begin_execution(new_exec("cancel", Operation::Provision, None, "1"))
        .await
        .unwrap();
    let id = b.record.status.execution_id;
    store
        .transition(Transition::to(&id, ExecutionState::Running))
        .await
        .unwrap();
    let first = store
        .request_cancel(&id, Some("wrong image"))
        .await
        .unwrap();
    assert!(first.applied);
    let request = first.record.cancel_requested.clone().unwrap();
    assert_eq!(request.reason.as_deref(), Some("wrong image"));
    assert_eq!(first.record.status.state, ExecutionState::Running);
    assert_eq!(
        first
            .record
            .status
            .history
            .last()
            .unwrap()
            .message
            .as_deref(),
        Some("cancel requested: wrong image")
    );
    let second = store.request_cancel(&id, None).await.unwrap();
    assert!(!second.applied);
    assert_eq!(second.record.cancel_requested, Some(request));
    store
        .transition(Transition::to(&id, ExecutionState::Cancelled))
        .await
        .unwrap();
    assert!(!store.request_cancel(&id, None).await.unwrap().applied);
    let again = store
        .begin_execution(new_exec("cancel", Operation::Provision, None, "1"))
        .await
        .unwrap();
    assert!(again.reopened);
    assert_eq!(again.record.cancel_requested, None);
    assert!(store.request_cancel("missing", None).await.is_err());
}

async fn listing_is_chronological(store: &dyn ExecutionStore) {
    let t = "listing";
    let mut ids = Vec::new();
    for (op, arg) in [
        (Operation::Provision, "1"),
        (Operation::Update, "2"),
        (Operation::Update, "3"),
        (Operation::Delete, ""),
    ] {
        ids.push(
            store
                .begin_execution(new_exec(t, op, None, arg))
                .await
                .unwrap()
                .record
                .status
                .execution_id,
        );
    }
    let listed: Vec<_> = store
        .list_executions(t)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.status.execution_id)
        .collect();
    assert_eq!(listed, ids);
    assert!(store.list_executions("nobody").await.unwrap().is_empty());
}

/// Two stores (two workers) begin the same request at once: one execution.
pub async fn concurrent_begins(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let a: Arc<&dyn ExecutionStore> = Arc::new(a);
    let b: Arc<&dyn ExecutionStore> = Arc::new(b);
    let mut futures = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        futures.push(async move {
            s.begin_execution(new_exec("race", Operation::Provision, None, "1"))
                .await
                .unwrap()
        });
    }
    let outcomes = futures::future::join_all(futures).await;
    let created = outcomes.iter().filter(|o| o.created).count();
    assert_eq!(created, 1);
    let first = &outcomes[0].record.status.execution_id;
    assert!(
        outcomes
            .iter()
            .all(|o| &o.record.status.execution_id == first)
    );
}

/// What a store returns is what it stored, and free text with any character (a workload's
/// stderr may hold a NUL) never makes a transition fail. A backend that cannot store NUL may
/// store U+FFFD instead.
async fn documents_round_trip(store: &dyn ExecutionStore) {
    let mut new = new_exec("docs", Operation::Provision, Some("d"), "1");
    new.request = json!({"tenantId": "docs", "spec": {"args": ["1"], "n": 1.5, "big": u64::MAX}});
    let begun = store.begin_execution(new.clone()).await.unwrap();
    assert_eq!(begun.record.request, new.request);
    assert_eq!(begun.record.spec_hash, new.spec_hash);
    assert_eq!(begun.record.status.timeout_ms, 60_000);
    assert_eq!(begun.record.status.idempotency_key.as_deref(), Some("d"));
    assert_eq!(
        store.get_tenant("docs").await.unwrap().unwrap().spec,
        None,
        "nothing applied yet"
    );
    // Once applied, the tenant's spec is the one the request recorded.
    let mut applied = new_exec("docs-applied", Operation::Provision, None, "1");
    applied.spec.as_mut().unwrap().env =
        [("NOTE".to_string(), "\u{1F600} \"q\"".to_string())].into();
    applied.request = json!({"tenantId": "docs-applied", "spec": applied.spec});
    let a = store.begin_execution(applied.clone()).await.unwrap();
    let aid = a.record.status.execution_id;
    store
        .transition(Transition::to(&aid, ExecutionState::Running))
        .await
        .unwrap();
    store
        .transition(Transition::to(&aid, ExecutionState::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_tenant("docs-applied")
            .await
            .unwrap()
            .unwrap()
            .spec,
        applied.spec
    );
    let id = begun.record.status.execution_id.clone();
    let running = store
        .transition(Transition {
            progress: Some(Progress {
                message: "1 of 2 ready".into(),
                ready: Some(1),
                desired: Some(2),
            }),
            resource_ids: Some(ResourceIds {
                pod_names: vec!["p-1".into(), "p-2".into()],
                ..Default::default()
            }),
            ..Transition::to(&id, ExecutionState::Running)
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_execution(&id).await.unwrap().unwrap(),
        running.record
    );
    assert_eq!(
        running.record.status.progress.as_ref().unwrap().ready,
        Some(1)
    );

    let mut error = ComputeError::new(ErrorCode::WorkloadFailed, "exit 1");
    error.exit_code = Some(1);
    error.stderr_tail = Some("bad\0byte \u{1F600} \"quoted\" \\u0000".into());
    let failed = store
        .transition(Transition {
            error: Some(error.clone()),
            message: Some("attempt 1 failed:\0 WORKLOAD_FAILED".into()),
            ..Transition::to(&id, ExecutionState::Failed)
        })
        .await
        .unwrap();
    assert!(failed.applied);
    let stored = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(stored, failed.record);
    let same_or_replaced = |got: &str, sent: &str| {
        assert!(
            got == sent || got == sent.replace('\0', "\u{FFFD}"),
            "{got:?} != {sent:?}"
        );
    };
    let got = stored.status.error.unwrap();
    same_or_replaced(
        got.stderr_tail.as_deref().unwrap(),
        error.stderr_tail.as_deref().unwrap(),
    );
    assert_eq!(got.exit_code, Some(1));
    assert_eq!(got.code, ErrorCode::WorkloadFailed);
    same_or_replaced(
        stored
            .status
            .history
            .last()
            .unwrap()
            .message
            .as_deref()
            .unwrap(),
        "attempt 1 failed:\0 WORKLOAD_FAILED",
    );
    assert_eq!(stored.status.progress, None, "a final state drops progress");
    assert_eq!(stored.status.resource_ids.pod_names, vec!["p-1", "p-2"]);
    assert_eq!(
        store
            .get_tenant("docs")
            .await
            .unwrap()
            .unwrap()
            .resource_ids,
        stored.status.resource_ids
    );
}

/// Two stores (two workers) write at once, in every way the worker does: first begins of new
/// tenants, many different begins on one tenant, racing final states, interleaved notes, and an
/// old execution finishing while a new one begins, and attempts recorded side by side. Needs the
/// tenants `fresh-*`, `crowd`, `finals`, `notes`, `late-*` and `audited` unused.
pub async fn concurrent_writers(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    concurrent_first_begins(a, b).await;
    concurrent_distinct_begins(a, b).await;
    concurrent_final_states(a, b).await;
    concurrent_notes_keep_their_order(a, b).await;
    late_finish_racing_a_begin(a, b).await;
    concurrent_attempts(a, b).await;
}

/// Several tenants seen for the first time, each begun by both workers at once: one execution
/// each, and only the winner saw no tenant before.
async fn concurrent_first_begins(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let stores = [a, b];
    let mut futures = Vec::new();
    for t in 0..5 {
        for i in 0..8 {
            let store = stores[i % 2];
            let key = (t % 2 == 0).then_some("first");
            futures.push(async move {
                let tenant = format!("fresh-{t}");
                let o = store
                    .begin_execution(new_exec(&tenant, Operation::Provision, key, "1"))
                    .await
                    .unwrap();
                (tenant, o)
            });
        }
    }
    let outcomes = futures::future::join_all(futures).await;
    for t in 0..5 {
        let tenant = format!("fresh-{t}");
        let mine: Vec<_> = outcomes
            .iter()
            .filter(|(name, _)| *name == tenant)
            .map(|(_, o)| o)
            .collect();
        let created: Vec<_> = mine.iter().filter(|o| o.created).collect();
        assert_eq!(created.len(), 1, "{tenant}");
        assert!(created[0].previous_tenant.is_none(), "{tenant}");
        assert!(
            mine.iter()
                .filter(|o| !o.created)
                .all(|o| o.previous_tenant.is_some())
        );
        let ids: HashSet<_> = mine.iter().map(|o| &o.record.status.execution_id).collect();
        assert_eq!(ids.len(), 1, "{tenant}");
        let stored = a.get_tenant(&tenant).await.unwrap().unwrap();
        assert_eq!(stored.generation, 1);
        assert_eq!(stored.state, TenantState::Provisioning);
        assert_eq!(b.list_executions(&tenant).await.unwrap().len(), 1);
    }
}

/// Different requests for one tenant from both workers at once: every one is a new execution
/// with its own id, each bumps the generation once, and the listing and the tenant agree on
/// which came last.
async fn concurrent_distinct_begins(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let t = "crowd";
    let first = a
        .begin_execution(new_exec(t, Operation::Provision, None, "0"))
        .await
        .unwrap();
    let stores = [a, b];
    let outcomes = futures::future::join_all((1..=16).map(|i| {
        let store = stores[i % 2];
        async move {
            store
                .begin_execution(new_exec(t, Operation::Update, None, &i.to_string()))
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(outcomes.iter().all(|o| o.created));
    let mut ids: HashSet<_> = outcomes
        .iter()
        .map(|o| o.record.status.execution_id.clone())
        .collect();
    assert_eq!(ids.len(), 16, "unique execution ids");
    ids.insert(first.record.status.execution_id.clone());
    let tenant = b.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.generation, 17);
    assert_eq!(tenant.state, TenantState::Updating);
    let listed = a.list_executions(t).await.unwrap();
    assert_eq!(listed.len(), 17);
    assert_eq!(
        listed
            .iter()
            .map(|r| r.status.execution_id.clone())
            .collect::<HashSet<_>>(),
        ids
    );
    assert_eq!(
        listed[0].status.execution_id,
        first.record.status.execution_id
    );
    assert_eq!(
        tenant.last_execution_id.as_ref(),
        Some(&listed.last().unwrap().status.execution_id),
        "the tenant's latest execution is the last listed"
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].status.created_at <= w[1].status.created_at)
    );
    assert!(listed.iter().all(|r| r.status.history.len() == 1));
    // Each begin saw the one before it (previous_tenant is the tenant as it was then): the
    // generations seen are all different.
    let seen: HashSet<_> = outcomes
        .iter()
        .map(|o| o.previous_tenant.as_ref().unwrap().generation)
        .collect();
    assert_eq!(seen, (1..=16).collect());
}

/// Both workers try to finish one execution, one with success and one with failure, many times
/// at once: exactly one final state is applied, recorded once, and the tenant follows it.
async fn concurrent_final_states(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let t = "finals";
    let id = a
        .begin_execution(new_exec(t, Operation::Provision, None, "1"))
        .await
        .unwrap()
        .record
        .status
        .execution_id;
    a.transition(Transition::to(&id, ExecutionState::Running))
        .await
        .unwrap();
    let stores = [a, b];
    let outcomes = futures::future::join_all((0..12).map(|i| {
        let store = stores[i % 2];
        let id = id.clone();
        async move {
            let t = if i % 2 == 0 {
                Transition::to(&id, ExecutionState::Succeeded)
            } else {
                Transition {
                    error: Some(ComputeError::new(ErrorCode::WorkloadFailed, "exit 1")),
                    ..Transition::to(&id, ExecutionState::Failed)
                }
            };
            (t.state, store.transition(t).await.unwrap())
        }
    }))
    .await;
    let stored = b.get_execution(&id).await.unwrap().unwrap();
    let winner = stored.status.state;
    assert!(winner.is_final());
    // The losing state is never applied. (Repeating the winning state is not a change of
    // state; with an error it may still count as applied, refreshing the recorded error.)
    assert!(
        outcomes
            .iter()
            .all(|(state, o)| !o.applied || *state == winner),
        "one final state wins"
    );
    assert!(
        outcomes
            .iter()
            .any(|(state, o)| o.applied && *state == winner)
    );
    assert_eq!(
        stored
            .status
            .history
            .iter()
            .filter(|h| h.state.is_final())
            .count(),
        1
    );
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| o.record.status.state == winner)
    );
    let expected = if winner == ExecutionState::Succeeded {
        TenantState::Running
    } else {
        TenantState::Failed
    };
    assert_eq!(a.get_tenant(t).await.unwrap().unwrap().state, expected);
}

/// Both workers add notes to one execution at once: none is lost, each worker's notes keep
/// their order, and time never goes backwards in the history.
async fn concurrent_notes_keep_their_order(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let id = a
        .begin_execution(new_exec("notes", Operation::Provision, None, "1"))
        .await
        .unwrap()
        .record
        .status
        .execution_id;
    a.transition(Transition::to(&id, ExecutionState::Running))
        .await
        .unwrap();
    async fn write(store: &dyn ExecutionStore, id: &str, who: &str) {
        for i in 0..10 {
            let o = store
                .transition(Transition {
                    message: Some(format!("{who}{i}")),
                    ..Transition::to(id, ExecutionState::Running)
                })
                .await
                .unwrap();
            assert!(o.applied);
        }
    }
    futures::join!(write(a, &id, "a"), write(b, &id, "b"));
    let history = b.get_execution(&id).await.unwrap().unwrap().status.history;
    assert_eq!(history.len(), 22);
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    for who in ["a", "b"] {
        let mine: Vec<_> = history
            .iter()
            .filter_map(|h| h.message.as_deref())
            .filter(|m| m.starts_with(who))
            .collect();
        let expected: Vec<_> = (0..10).map(|i| format!("{who}{i}")).collect();
        assert_eq!(mine, expected);
    }
}

/// An old execution finishes on one worker while the other begins a new one for the same
/// tenant: whichever commits first, the tenant ends up speaking for the new execution.
async fn late_finish_racing_a_begin(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    for round in 0..6 {
        let t = format!("late-{round}");
        let old = a
            .begin_execution(new_exec(&t, Operation::Provision, None, "1"))
            .await
            .unwrap()
            .record
            .status
            .execution_id;
        a.transition(Transition::to(&old, ExecutionState::Running))
            .await
            .unwrap();
        let (finisher, beginner) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let (finished, begun) = futures::join!(
            finisher.transition(Transition::to(&old, ExecutionState::Succeeded)),
            beginner.begin_execution(new_exec(&t, Operation::Update, None, "2")),
        );
        assert!(finished.unwrap().applied);
        let begun = begun.unwrap();
        assert!(begun.created);
        let tenant = a.get_tenant(&t).await.unwrap().unwrap();
        assert_eq!(
            tenant.last_execution_id.as_deref(),
            Some(begun.record.status.execution_id.as_str())
        );
        assert_eq!(tenant.state, TenantState::Updating, "{t}");
    }
}

/// An attempt of `activity` about `execution`, started `started_ms_ago` milliseconds ago.
fn attempt(
    execution: Option<&str>,
    tenant: Option<&str>,
    activity: &str,
    number: u32,
    started_ms_ago: i64,
    error: Option<&ComputeError>,
) -> AttemptRecord {
    let finished_at = now();
    AttemptRecord {
        execution_id: execution.map(str::to_string),
        tenant_id: tenant.map(str::to_string),
        activity_type: activity.into(),
        activity_id: format!("{activity}-1"),
        workflow_id: Some("caller-1".into()),
        run_id: Some("run-1".into()),
        attempt: number,
        started_at: finished_at - chrono::Duration::milliseconds(started_ms_ago),
        finished_at,
        latency_ms: started_ms_ago as u64,
        outcome: error.map_or(AttemptOutcome::Ok, |e| AttemptOutcome::Failed(e.code)),
        retriable: error.is_some_and(|e| e.retriable),
        provider: error.and_then(|e| e.provider.clone()),
        provider_code: error.and_then(|e| e.provider_code.clone()),
        provider_request_id: error.and_then(|e| e.provider_request_id.clone()),
        message: error.map(|e| e.message.clone()),
    }
}

/// The audit trail keeps every attempt as recorded, lists an execution's in the order they
/// started (not the order they were written), and keeps other executions' and attempts about
/// no execution apart.
async fn attempts_round_trip(store: &dyn ExecutionStore) {
    let id = store
        .begin_execution(new_exec("audit", Operation::Provision, None, "1"))
        .await
        .unwrap()
        .record
        .status
        .execution_id;
    let throttled = ComputeError::new(ErrorCode::Throttled, "CreateService: ECS is throttling")
        .with_provider("ecs", Some("ThrottlingException"))
        .with_provider_request_id(Some("req-0001"));
    let first = attempt(
        Some(&id),
        Some("audit"),
        "ProvisionTenantCompute",
        1,
        3000,
        Some(&throttled),
    );
    let second = attempt(
        Some(&id),
        Some("audit"),
        "ProvisionTenantCompute",
        2,
        2000,
        None,
    );
    let mut crashed = ComputeError::new(ErrorCode::WorkloadFailed, "exited:\0 code 3");
    crashed.provider = Some("local".into());
    let watch = attempt(
        Some(&id),
        Some("audit"),
        "WatchComputeExecution",
        1,
        1000,
        Some(&crashed),
    );
    let refused = attempt(
        None,
        None,
        "ProvisionTenantCompute",
        1,
        5,
        Some(&ComputeError::invalid("tenantId: is required")),
    );
    // Written out of order: the watch first, the first attempt last.
    for a in [&watch, &refused, &second, &first] {
        store.record_attempt(a.clone()).await.unwrap();
    }
    let listed = store.list_attempts(&id).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0], first);
    assert_eq!(listed[1], second);
    assert_eq!(listed[0].provider_request_id.as_deref(), Some("req-0001"));
    assert_eq!(
        listed[0].outcome,
        AttemptOutcome::Failed(ErrorCode::Throttled)
    );
    assert!(listed[0].retriable && !listed[1].retriable);
    assert_eq!(listed[1].outcome, AttemptOutcome::Ok);
    assert_eq!(listed[1].message, None);
    // A backend that cannot store NUL may store U+FFFD instead.
    let mut watch_stored = watch.clone();
    watch_stored.message = listed[2].message.clone();
    assert_eq!(listed[2], watch_stored);
    let message = listed[2].message.as_deref().unwrap();
    assert!(
        message == "exited:\0 code 3" || message == "exited:\u{FFFD} code 3",
        "{message:?}"
    );
    assert!(store.list_attempts("nobody").await.unwrap().is_empty());
}

/// Two stores (two workers) record attempts of one execution at once: none is lost.
async fn concurrent_attempts(a: &dyn ExecutionStore, b: &dyn ExecutionStore) {
    let id = a
        .begin_execution(new_exec("audited", Operation::Provision, None, "1"))
        .await
        .unwrap()
        .record
        .status
        .execution_id;
    let writes = (1..=20u32).map(|n| {
        let store = if n % 2 == 0 { a } else { b };
        let record = attempt(
            Some(&id),
            Some("audited"),
            "GetComputeExecution",
            n,
            i64::from(100 - n),
            None,
        );
        async move { store.record_attempt(record).await.unwrap() }
    });
    futures::future::join_all(writes).await;
    let numbers: HashSet<u32> = a
        .list_attempts(&id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(numbers, (1..=20).collect());
}

fn delivery(
    target: &str,
    state: ExecutionState,
    outcome: DeliveryState,
    ms: i64,
) -> DeliveryAttempt {
    DeliveryAttempt {
        execution_id: "deliveries-1".into(),
        target: target.into(),
        kind: target.split(':').next().unwrap().into(),
        state,
        sequence: 1,
        outcome,
        error: (outcome != DeliveryState::Delivered).then(|| format!("attempt at {ms}")),
        at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap(),
    }
}

/// Attempts of one delivery add up on one row; `delivered` is never undone; targets and
/// states are separate deliveries, listed in the order they were first tried.
async fn deliveries_count_attempts(store: &dyn ExecutionStore) {
    use DeliveryState::{Delivered, Pending, Undeliverable};
    use ExecutionState::{Succeeded, TimedOut};
    let sfn = "stepFunctions:token-0123456789ab";
    for a in [
        delivery(sfn, Succeeded, Pending, 0),
        delivery("restate:sign_1abc", Succeeded, Pending, 5),
        delivery(sfn, Succeeded, Pending, 10),
        delivery(sfn, Succeeded, Delivered, 20),
        // A retried attempt after the recorded success (its activity completion was lost).
        delivery(sfn, Succeeded, Pending, 30),
        delivery("restate:sign_1abc", Succeeded, Undeliverable, 40),
        delivery(sfn, TimedOut, Delivered, -5),
    ] {
        store.record_delivery(a).await.unwrap();
    }
    let listed = store.list_deliveries("deliveries-1").await.unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|d| (d.target.as_str(), d.state, d.attempts, d.outcome))
        .collect();
    assert_eq!(
        summary,
        vec![
            (sfn, TimedOut, 1, Delivered),
            (sfn, Succeeded, 4, Delivered),
            ("restate:sign_1abc", Succeeded, 2, Undeliverable),
        ]
    );
    let sfn_done = &listed[1];
    assert_eq!(sfn_done.kind, "stepFunctions");
    assert_eq!(sfn_done.last_error, None, "a success clears the error");
    assert_eq!(
        (sfn_done.last_attempt_at - sfn_done.first_attempt_at).num_milliseconds(),
        30
    );
    assert_eq!(listed[2].last_error.as_deref(), Some("attempt at 40"));
    assert!(store.list_deliveries("nobody").await.unwrap().is_empty());
}
