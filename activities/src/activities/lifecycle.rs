//! The tenant lifecycle: reading tenants, putting a tenant back on its last good spec after a
//! failed or cancelled operation, and cancelling an execution.

use std::collections::HashMap;

use tokio::sync::Notify;

use super::*;
use crate::{
    contract::{InterventionMark, ResourceIds, TenantCompute, TenantPage},
    store::{TenantOutcome, TenantRecord},
    validate::TenantListQuery,
};

/// How long a revert (or the removal of what a cancelled provision created) may take to
/// settle before it counts as failed, and the tenant is marked for manual intervention.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// How long `CancelComputeExecution` waits for the tracker to undo a running execution
/// before it answers with the status as it is (the undo goes on).
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// Wakes the watch of an execution on this worker when an operator cancels it, so the undo
/// starts at once rather than at the watch's next look (a watch on another worker sees the
/// request at its next look at the store).
#[derive(Debug, Default)]
pub(super) struct CancelBell {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl CancelBell {
    /// The bell of one execution, for its watch to wait on.
    pub(super) fn bell(&self, execution_id: &str) -> Arc<Notify> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.entry(execution_id.to_string()).or_default().clone()
    }

    /// Forgets an execution's bell once its watch has ended.
    pub(super) fn forget(&self, execution_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.remove(execution_id);
    }

    /// Rings the bell of an execution, if a watch here waits on it.
    pub(super) fn ring(&self, execution_id: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bell) = waiting.get(execution_id) {
            bell.notify_one();
        }
    }
}

/// What putting a tenant back on its last good spec achieved.
// One lives for the length of a call: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PutBack {
    /// Nothing to put back: the tenant has no last good spec (a new tenant's provision), or
    /// a newer execution owns the tenant now.
    Nothing,
    /// The tenant runs its last good spec again, on these resources.
    Done(ResourceIds),
    /// Putting it back failed, for this reason.
    Failed(String),
}

impl PutBack {
    /// Applies the outcome to the failure that led here, and says what the tenant is now
    /// (`None`: the store's default rule decides).
    pub(super) fn apply(self, error: &mut ComputeError) -> Option<TenantOutcome> {
        match self {
            PutBack::Nothing => None,
            PutBack::Done(resource_ids) => {
                error.rolled_back = true;
                Some(TenantOutcome {
                    state: TenantState::Running,
                    resource_ids,
                })
            }
            PutBack::Failed(why) => {
                error.rollback_error = Some(why);
                None
            }
        }
    }
}

fn context_of(status: &ExecutionStatus) -> OperationContext {
    OperationContext {
        execution_id: status.execution_id.clone(),
        tenant_id: status.tenant_id.clone(),
        operation: status.operation,
        metadata: Metadata::default(),
    }
}

impl ComputeActivities {
    /// `GetTenantCompute`: the tenant as the store knows it; `absent` when it does not.
    pub(super) async fn tenant_compute(
        &self,
        tenant_id: &str,
    ) -> Result<TenantCompute, ComputeError> {
        match self.store.get_tenant(tenant_id).await {
            Ok(Some(t)) => Ok(t.to_compute()),
            Ok(None) => Ok(TenantCompute::absent(tenant_id)),
            Err(e) => Err(store_err(e)),
        }
    }

    /// `ListTenantCompute`: one page of tenants, by id.
    pub(super) async fn tenant_page(
        &self,
        query: &TenantListQuery,
    ) -> Result<TenantPage, ComputeError> {
        list_tenant_page(self.store.as_ref(), query)
            .await
            .map_err(store_err)
    }

    /// Puts the tenant of `record` back on its last good spec after the execution failed or
    /// was cancelled; `failed` holds what the failed attempt left. With `settle`, waits
    /// (heartbeating) until the provider reports the revert done, as a watch does.
    pub(super) async fn put_back(
        &self,
        pulse: Pulse<'_>,
        record: &ExecutionRecord,
        failed: &ResourceIds,
        settle: bool,
    ) -> PutBack {
        let status = &record.status;
        if status.operation == Operation::Delete {
            return PutBack::Nothing;
        }
        let tenant = match self.store.get_tenant(&status.tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return PutBack::Nothing,
            Err(e) => return PutBack::Failed(format!("reading the tenant failed: {e}")),
        };
        if tenant.last_execution_id.as_deref() != Some(status.execution_id.as_str()) {
            tracing::info!("A newer execution owns the tenant now: nothing to put back.");
            return PutBack::Nothing;
        }
        let Some(spec) = tenant.spec.clone() else {
            return PutBack::Nothing;
        };
        let op = OperationContext {
            metadata: self.last_good_metadata(&status.tenant_id, &spec).await,
            ..context_of(status).revert()
        };
        let previous = CurrentState {
            spec: Some(spec),
            resource_ids: tenant.resource_ids.clone(),
        };
        tracing::info!(
            revision = tenant.revision,
            "Putting the tenant back on its last good spec."
        );
        let ids = match self.provider.revert(&op, &previous, failed).await {
            Ok(ids) => ids,
            Err(e) => {
                e.log("Putting the tenant back");
                return PutBack::Failed(format!("{}: {}", e.code, e.message));
            }
        };
        if !settle {
            return PutBack::Done(ids);
        }
        match self.settle(pulse, &op, ids).await {
            Ok(ids) => PutBack::Done(ids),
            Err(why) => PutBack::Failed(why),
        }
    }

    /// The labels and ownership the tenant's last good spec was applied with (a provider that
    /// renders them, as Kubernetes does into the pod template, must get them back with the
    /// spec, or the revert would be a template of its own): those of the latest successful
    /// provision or update of that spec; none when no such execution is recorded.
    async fn last_good_metadata(&self, tenant_id: &str, spec: &ComputeSpec) -> Metadata {
        let hash = store::spec_hash(Some(spec));
        let executions = match self.store.list_executions(tenant_id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the tenant's executions: reverting without its metadata.");
                return Metadata::default();
            }
        };
        executions
            .iter()
            .rev()
            .find(|r| {
                r.status.state == ExecutionState::Succeeded
                    && r.status.operation != Operation::Delete
                    && r.spec_hash == hash
            })
            .and_then(|r| r.request.get("metadata"))
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default()
    }

    /// Observes `ids` as `op` until the provider reports them done, heartbeating, for at most
    /// [`SETTLE_LIMIT`].
    pub(super) async fn settle(
        &self,
        pulse: Pulse<'_>,
        op: &OperationContext,
        ids: ResourceIds,
    ) -> Result<ResourceIds, String> {
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            pulse.beat(format!("settling {}", op.operation)).await;
            match self.provider.observe(op, &ids).await {
                Ok(Observation::Succeeded(done)) => return Ok(done),
                Ok(Observation::Failed(e)) => return Err(format!("{}: {}", e.code, e.message)),
                Err(e) if !e.retriable => return Err(format!("{}: {}", e.code, e.message)),
                Ok(Observation::InProgress(_)) | Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the {} did not settle within {}",
                    op.operation,
                    humantime::format_duration(SETTLE_LIMIT)
                ));
            }
            tokio::time::sleep(
                self.provider
                    .poll_interval()
                    .max(Duration::from_millis(200)),
            )
            .await;
        }
    }

    /// Undoes an execution an operator cancelled: a provision's resources are removed (or,
    /// for a provision over a tenant that had a good spec, the tenant is put back), an update
    /// is put back. Returns the cancel's error and what the tenant is now.
    pub(super) async fn undo(
        &self,
        pulse: Pulse<'_>,
        record: &ExecutionRecord,
    ) -> (ComputeError, Option<TenantOutcome>) {
        let status = &record.status;
        let reason = record
            .cancel_requested
            .as_ref()
            .and_then(|c| c.reason.clone());
        let mut error = ComputeError::new(
            ErrorCode::Cancelled,
            match &reason {
                Some(r) => format!("cancelled by an operator: {r}"),
                None => "cancelled by an operator".to_string(),
            },
        )
        .with_execution_id(&status.execution_id);
        let put_back = self
            .put_back(pulse, record, &status.resource_ids, true)
            .await;
        if put_back != PutBack::Nothing || status.operation != Operation::Provision {
            let outcome = put_back.apply(&mut error);
            return (error, outcome);
        }
        // A new tenant's provision: remove what it created.
        let op = OperationContext {
            operation: Operation::Delete,
            ..context_of(status)
        };
        let current = CurrentState {
            spec: record.spec(),
            resource_ids: status.resource_ids.clone(),
        };
        let removed = match self.provider.delete(&op, &current).await {
            Ok(ids) => self.settle(pulse, &op, ids).await,
            Err(e) => Err(format!("{}: {}", e.code, e.message)),
        };
        match removed {
            Ok(_) => {
                error.rolled_back = true;
                (
                    error,
                    Some(TenantOutcome {
                        state: TenantState::Deleted,
                        resource_ids: ResourceIds::default(),
                    }),
                )
            }
            Err(why) => {
                error.rollback_error =
                    Some(format!("removing what the provision created failed: {why}"));
                (error, None)
            }
        }
    }

    /// `CancelComputeExecution`.
    pub(super) async fn cancel(
        &self,
        ctx: &ActivityContext,
        execution_id: &str,
        reason: Option<String>,
    ) -> Result<ExecutionStatus, ComputeError> {
        let record = match self.store.get_execution(execution_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ComputeError::new(
                    ErrorCode::NotFound,
                    format!("execution {execution_id} does not exist"),
                ));
            }
            Err(e) => return Err(store_err(e)),
        };
        let status = &record.status;
        Span::current().record("tenant_id", status.tenant_id.as_str());
        Span::current().record("operation", status.operation.as_str());
        if status.state.is_final() {
            tracing::info!(state = %status.state, "Cancel of a finished execution: nothing to do.");
            return Ok(record.status);
        }
        if status.state == ExecutionState::Pending {
            // The provider has not taken it (or a start attempt is failing): nothing to undo,
            // and the tenant stays on what it had.
            let tenant = self
                .store
                .get_tenant(&status.tenant_id)
                .await
                .map_err(store_err)?;
            let outcome = tenant.map(|t| untouched(&t));
            let error = ComputeError::new(
                ErrorCode::Cancelled,
                match &reason {
                    Some(r) => format!("cancelled by an operator before the provider took it: {r}"),
                    None => "cancelled by an operator before the provider took it".to_string(),
                },
            )
            .with_execution_id(execution_id);
            let done = self
                .store
                .transition(Transition {
                    error: Some(error),
                    message: Some(crate::store::rules::cancel_note(reason.as_deref())),
                    tenant: outcome,
                    ..Transition::to(execution_id, ExecutionState::Cancelled)
                })
                .await
                .map_err(store_err)?;
            if done.record.status.state == ExecutionState::Cancelled {
                tracing::info!("Cancelled before the provider took it.");
                return Ok(done.record.status);
            }
            // The start attempt got there first: it runs now, so cancel it as running.
            return Box::pin(self.cancel(ctx, execution_id, reason)).await;
        }
        if status.operation == Operation::Delete {
            return Err(ComputeError::new(
                ErrorCode::Conflict,
                "a running delete cannot be stopped: the provider is already removing the \
                 tenant's compute; retry to get its final status",
            )
            .with_execution_id(execution_id));
        }
        let requested = self
            .store
            .request_cancel(execution_id, reason.as_deref())
            .await
            .map_err(store_err)?;
        if requested.applied {
            tracing::info!(reason = ?reason, "Cancel requested; the tracker undoes the execution.");
            self.cancel_bell.ring(execution_id);
        }
        // The tracker's watch does the undo (durably: it is retried until done); wait a while
        // for it so that the answer is usually the final state.
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut latest = requested.record.status;
        while !latest.state.is_final() && tokio::time::Instant::now() < deadline {
            let _ = ctx
                .record_heartbeat("waiting for the undo".to_string())
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(Some(r)) = self.store.get_execution(execution_id).await {
                latest = r.status;
            }
        }
        Ok(latest)
    }

    /// `MarkTenantRequiresIntervention` (a policy's `abort`).
    pub(super) async fn mark_for_intervention(
        &self,
        input: &InterventionInput,
    ) -> Result<(), ComputeError> {
        let mark = InterventionMark {
            code: input.code.unwrap_or(ErrorCode::Internal),
            message: input.reason.clone(),
            execution_id: input.execution_id.clone(),
            at: now(),
        };
        self.store
            .mark_tenant(
                &input.tenant_id,
                mark,
                Some(TenantState::RequiresManualIntervention),
            )
            .await
            .map_err(store_err)
    }
}

/// What a tenant is when an execution of it ends without having touched it.
fn untouched(tenant: &TenantRecord) -> TenantOutcome {
    if tenant.spec.is_some() {
        TenantOutcome {
            state: TenantState::Running,
            resource_ids: tenant.resource_ids.clone(),
        }
    } else {
        TenantOutcome {
            state: TenantState::Deleted,
            resource_ids: ResourceIds::default(),
        }
    }
}

/// One page of tenants from a store: what `ListTenantCompute` and `tenant list` show.
pub async fn list_tenant_page(
    store: &dyn ExecutionStore,
    query: &TenantListQuery,
) -> Result<TenantPage, StoreError> {
    // One more than asked tells whether there is a next page.
    let mut found = store
        .list_tenants(query.state, query.after.as_deref(), query.page_size + 1)
        .await?;
    let more = found.len() > query.page_size as usize;
    found.truncate(query.page_size as usize);
    let next_page_token = more
        .then(|| found.last().map(|t| t.tenant_id.clone()))
        .flatten();
    Ok(TenantPage {
        tenants: found.iter().map(TenantRecord::to_compute).collect(),
        next_page_token,
    })
}
