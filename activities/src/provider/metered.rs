//! A provider that counts and times every call of the one it wraps
//! (`compute_provider_calls_total`, `compute_provider_call_duration_seconds`).

use std::{sync::Arc, time::Instant};

use super::*;
use crate::metrics::Metrics;

/// Wraps a provider; the worker runs its provider through one.
pub struct MeteredProvider {
    inner: Arc<dyn ComputeProvider>,
    metrics: Metrics,
}

impl MeteredProvider {
    /// Counts `inner`'s calls in `metrics`.
    pub fn wrap(inner: Arc<dyn ComputeProvider>, metrics: Metrics) -> Arc<dyn ComputeProvider> {
        Arc::new(MeteredProvider { inner, metrics })
    }

    async fn timed<T>(&self, call: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = f.await;
        self.metrics
            .provider_call(call, started.elapsed(), result.as_ref().err());
        result
    }
}

#[async_trait]
impl ComputeProvider for MeteredProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn validate(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        self.inner.validate(tenant_id, spec)
    }

    fn validate_metadata(&self, metadata: &Metadata) -> Result<()> {
        self.inner.validate_metadata(metadata)
    }

    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds> {
        self.timed("provision", self.inner.provision(op, spec))
            .await
    }

    async fn update(
        &self,
        op: &OperationContext,
        current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        self.timed("update", self.inner.update(op, current, desired))
            .await
    }

    async fn revert(
        &self,
        op: &OperationContext,
        previous: &CurrentState,
        failed: &ResourceIds,
    ) -> Result<ResourceIds> {
        self.timed("revert", self.inner.revert(op, previous, failed))
            .await
    }

    async fn delete(&self, op: &OperationContext, current: &CurrentState) -> Result<ResourceIds> {
        self.timed("delete", self.inner.delete(op, current)).await
    }

    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation> {
        self.timed("observe", self.inner.observe(op, resources))
            .await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        self.timed("list_managed", self.inner.list_managed()).await
    }

    fn observes_at_once(&self) -> bool {
        self.inner.observes_at_once()
    }

    fn poll_interval(&self) -> Duration {
        self.inner.poll_interval()
    }

    async fn prune(&self, older_than: Duration) -> Result<usize> {
        self.timed("prune", self.inner.prune(older_than)).await
    }

    async fn ready(&self) -> Result<()> {
        self.timed("ready", self.inner.ready()).await
    }
}
