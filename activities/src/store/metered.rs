//! A store that counts every call of the one it wraps (`compute_store_queries_total`) and
//! records each operation's end where the store applies it (`compute_operations_total`,
//! `compute_operation_duration_seconds`): a final transition is applied once whatever retries
//! it, so each operation counts once.

use std::sync::Arc;

use super::*;
use crate::metrics::{Metrics, OK};

/// Wraps a store; the worker runs its store through one.
pub struct MeteredStore {
    inner: Arc<dyn ExecutionStore>,
    backend: &'static str,
    metrics: Metrics,
}

impl MeteredStore {
    /// Counts `inner`'s calls, labelled `backend` (see [`backend_of`]).
    pub fn wrap(
        inner: Arc<dyn ExecutionStore>,
        backend: &'static str,
        metrics: Metrics,
    ) -> Arc<dyn ExecutionStore> {
        Arc::new(MeteredStore {
            inner,
            backend,
            metrics,
        })
    }

    fn counted<T>(&self, result: Result<T>) -> Result<T> {
        let outcome = match &result {
            Ok(_) => OK,
            Err(e) => e.to_compute_error().code.as_str(),
        };
        self.metrics.store_query(self.backend, outcome);
        result
    }
}

#[async_trait]
impl ExecutionStore for MeteredStore {
    async fn begin_execution(&self, new: NewExecution) -> Result<BeginOutcome> {
        self.counted(self.inner.begin_execution(new).await)
    }

    async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        self.counted(self.inner.get_execution(execution_id).await)
    }

    async fn list_executions(&self, tenant_id: &str) -> Result<Vec<ExecutionRecord>> {
        self.counted(self.inner.list_executions(tenant_id).await)
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        let outcome = self.counted(self.inner.transition(transition).await)?;
        if outcome.applied && outcome.record.status.state.is_final() {
            self.metrics.operation_ended(&outcome.record.status);
        }
        Ok(outcome)
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>> {
        self.counted(self.inner.get_tenant(tenant_id).await)
    }

    async fn list_tenants(
        &self,
        state: Option<TenantState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>> {
        self.counted(self.inner.list_tenants(state, after, limit).await)
    }

    async fn mark_tenant(
        &self,
        tenant_id: &str,
        mark: InterventionMark,
        state: Option<TenantState>,
    ) -> Result<()> {
        self.counted(self.inner.mark_tenant(tenant_id, mark, state).await)
    }

    async fn clear_intervention(
        &self,
        tenant_id: &str,
        note: &str,
    ) -> Result<Option<TenantRecord>> {
        self.counted(self.inner.clear_intervention(tenant_id, note).await)
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> Result<TransitionOutcome> {
        self.counted(self.inner.request_cancel(execution_id, reason).await)
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> Result<()> {
        self.counted(self.inner.record_attempt(attempt).await)
    }

    async fn list_attempts(&self, execution_id: &str) -> Result<Vec<AttemptRecord>> {
        self.counted(self.inner.list_attempts(execution_id).await)
    }

    async fn record_delivery(&self, attempt: DeliveryAttempt) -> Result<()> {
        self.counted(self.inner.record_delivery(attempt).await)
    }

    async fn list_deliveries(&self, execution_id: &str) -> Result<Vec<CallbackDelivery>> {
        self.counted(self.inner.list_deliveries(execution_id).await)
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<PruneCounts> {
        self.counted(self.inner.prune(older_than).await)
    }

    async fn knows_provider(&self, provider: &str) -> Result<bool> {
        self.counted(self.inner.knows_provider(provider).await)
    }

    async fn observer_alive(&self, observer: &str, until_ms: i64) -> Result<()> {
        self.counted(self.inner.observer_alive(observer, until_ms).await)
    }

    async fn observer_gone(&self, observer: &str) -> Result<()> {
        self.counted(self.inner.observer_gone(observer).await)
    }

    async fn claim_observation(
        &self,
        execution_id: &str,
        observer: &str,
        now_ms: i64,
    ) -> Result<bool> {
        self.counted(
            self.inner
                .claim_observation(execution_id, observer, now_ms)
                .await,
        )
    }

    async fn claim_orphans(&self, observer: &str, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        self.counted(self.inner.claim_orphans(observer, now_ms, limit).await)
    }

    async fn end_observation(&self, execution_id: &str, observer: &str) -> Result<()> {
        self.counted(self.inner.end_observation(execution_id, observer).await)
    }

    async fn observed_by(&self, observer: &str) -> Result<Vec<String>> {
        self.counted(self.inner.observed_by(observer).await)
    }

    async fn ping(&self) -> Result<()> {
        self.counted(self.inner.ping().await)
    }
}
