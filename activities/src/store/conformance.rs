//! One conformance suite every store backend must pass.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use super::{ExecutionStore, NewExecution, Transition, spec_hash};
use crate::{
    contract::{ComputeSpec, ExecutionState, Operation, ResourceIds, TenantState},
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
        spec,
        request: json!({"tenantId": tenant}),
        timeout: Duration::from_secs(60),
    }
}

/// Runs every case against one store.
pub async fn run_all(store: &dyn ExecutionStore) {
    begin_is_idempotent(store).await;
    transitions_and_history(store).await;
    tenant_state_machine(store).await;
    listing_is_chronological(store).await;
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
    // After a failure the same unkeyed request is a new attempt.
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
    assert!(again.created);
    assert_ne!(again.record.status.execution_id, id);
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
    assert!(tenant.spec.is_some());
    let pid = p.record.status.execution_id;
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
    assert_eq!(tenant.state, TenantState::Active);
    assert_eq!(tenant.resource_ids, ids);

    let u = store
        .begin_execution(new_exec(t, Operation::Update, None, "2"))
        .await
        .unwrap();
    assert_eq!(u.previous_tenant.unwrap().resource_ids, ids);
    let uid = u.record.status.execution_id;
    store
        .transition(Transition {
            error: Some(ComputeError::new(ErrorCode::PartialFailure, "half")),
            ..Transition::to(&uid, ExecutionState::Failed)
        })
        .await
        .unwrap();
    let tenant = store.get_tenant(t).await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::RequiresManualIntervention);

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
    store
        .set_tenant_state(t, TenantState::RequiresManualIntervention, &did, "operator")
        .await
        .unwrap();
    assert_eq!(
        store.get_tenant(t).await.unwrap().unwrap().state,
        TenantState::RequiresManualIntervention
    );
    let h = store
        .get_execution(&did)
        .await
        .unwrap()
        .unwrap()
        .status
        .history;
    assert_eq!(h.last().unwrap().message.as_deref(), Some("operator"));
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
