//! The provider trait every backend implements, and the factory that picks one.
//!
//! A provider is idempotent by construction: provisioning what exists returns it, deleting
//! what is gone succeeds. Every error it returns is already classified ([`ComputeError`]),
//! at the place where the backend's own error is understood.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    contract::{ComputeSpec, Metadata, Operation, Progress, ResourceIds},
    error::{ComputeError, Result},
};

pub mod ecs;
// Only the ECS and Kubernetes providers use the kit.
#[cfg_attr(not(any(feature = "ecs", feature = "kubernetes")), allow(dead_code))]
pub(crate) mod kit;
pub mod kubernetes;
pub mod local;
pub mod metered;
pub mod simulated;

/// The execution a provider call belongs to (for names, tags and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationContext {
    /// The execution.
    pub execution_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The operation.
    pub operation: Operation,
    /// The request's ownership and labels (empty where the request has none, as for delete).
    pub metadata: Metadata,
}

impl OperationContext {
    /// The context of putting the tenant back after this execution failed or was cancelled:
    /// an update under the execution id `<executionId>-revert`.
    pub fn revert(&self) -> OperationContext {
        OperationContext {
            execution_id: format!("{}-revert", self.execution_id),
            operation: Operation::Update,
            ..self.clone()
        }
    }
}

/// What the tenant has now, as the store knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurrentState {
    /// The spec last applied, if any.
    pub spec: Option<ComputeSpec>,
    /// The resources last recorded.
    pub resource_ids: ResourceIds,
}

/// What an observation of an execution found.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Not there yet.
    InProgress(Progress),
    /// The desired state is reached; the final resource ids.
    Succeeded(ResourceIds),
    /// The operation failed for good.
    Failed(ComputeError),
}

/// A resource the worker manages, as its provider lists it (for the orphan sweeper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedResource {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// What it is: `process`, `ecs-service`, `deployment`.
    pub kind: String,
    /// Its identifier: a pid, a service ARN, `namespace/name`.
    pub id: String,
    /// The execution that last created or changed it, where the provider recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

/// One backend (local processes, ECS, Kubernetes).
#[async_trait]
pub trait ComputeProvider: Send + Sync + 'static {
    /// Short name used in errors and logs (`local`, `ecs`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Checks what only this provider cares about (the local provider needs a command, ECS an
    /// image, ...), including that every secret reference is one the operator allowed for
    /// `tenant_id`. Runs before anything is recorded or started. Returns
    /// `INVALID_CONFIGURATION` naming the field.
    fn validate(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()>;

    /// Checks the request's metadata where the provider turns it into its own labels or tags.
    /// Runs with [`validate`](Self::validate), before anything is recorded.
    fn validate_metadata(&self, _metadata: &Metadata) -> Result<()> {
        Ok(())
    }

    /// Creates the tenant's compute, or returns what already exists for it.
    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds>;

    /// Moves the tenant's compute from `current` to `desired`.
    async fn update(
        &self,
        op: &OperationContext,
        current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds>;

    /// Puts the tenant's compute back on `previous` (its last good spec and the resources that
    /// ran it) after an update to something else failed or was cancelled; `failed` holds the
    /// resources of the failed attempt, as far as they are known. Returns the resources that
    /// run `previous` now; the caller observes them (as an update of `op`) until they settle.
    ///
    /// Idempotent like every call here: a retry after a crash re-applies the same spec. `op`
    /// is the failed execution's context with its own id ([`OperationContext::revert`]), so a
    /// provider that recognises a retry by the execution id does not take the failed attempt
    /// for the revert.
    ///
    /// The default re-applies `previous.spec` as an update from `failed`.
    async fn revert(
        &self,
        op: &OperationContext,
        previous: &CurrentState,
        failed: &ResourceIds,
    ) -> Result<ResourceIds> {
        reapply(self, op, previous, failed).await
    }

    /// Removes the tenant's compute; succeeds when there is nothing to remove.
    async fn delete(&self, op: &OperationContext, current: &CurrentState) -> Result<ResourceIds>;

    /// Looks at an execution's resources once. A provider may wait a while (its
    /// [`poll_interval`](Self::poll_interval), or for a watch event) for a change before
    /// answering.
    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation>;

    /// Every resource carrying the worker's `managed-by` mark, one per tenant (the tenant's
    /// compute is removed as a whole with [`delete`](Self::delete)).
    async fn list_managed(&self) -> Result<Vec<ManagedResource>>;

    /// True when [`observe`](Self::observe) answers from what the provider already knows,
    /// without a remote call or a wait, so the start path may take the first look itself and
    /// finish an operation that is already done without starting a tracker. False by default:
    /// providers that ask a remote API, or wait for an event, leave every observation to the
    /// tracker.
    fn observes_at_once(&self) -> bool {
        false
    }

    /// How long the tracker pauses between observations that found the operation in
    /// progress (zero for a provider whose `observe` waits for changes itself).
    fn poll_interval(&self) -> Duration;

    /// Removes what the provider keeps on this host for finished executions older than
    /// `older_than` (the local provider's exit records and logs); how many files went.
    /// Providers that keep nothing locally have nothing to prune.
    async fn prune(&self, _older_than: Duration) -> Result<usize> {
        Ok(0)
    }

    /// Whether the provider answers now, for the worker's readiness probe: one cheap call
    /// (ECS lists one service of its cluster, Kubernetes one Deployment it may manage, the
    /// local provider checks its state directory). The default, for a provider with nothing
    /// remote, is yes.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

/// Reverts by re-applying `previous.spec` as an update from `failed`: what
/// [`ComputeProvider::revert`] does by default, and what a provider that reverts otherwise
/// falls back to when it cannot.
pub async fn reapply<P: ComputeProvider + ?Sized>(
    provider: &P,
    op: &OperationContext,
    previous: &CurrentState,
    failed: &ResourceIds,
) -> Result<ResourceIds> {
    let Some(spec) = previous.spec.as_ref() else {
        return Err(ComputeError::internal(
            "nothing to revert to: the tenant has no last good spec",
        ));
    };
    let current = CurrentState {
        spec: None,
        resource_ids: failed.clone(),
    };
    provider.update(op, &current, spec).await
}

/// Which provider to run, chosen by `--provider`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ProviderConfig {
    /// Local processes on this host.
    Local(local::LocalConfig),
    /// ECS services.
    Ecs(ecs::EcsConfig),
    /// Kubernetes Deployments.
    Kubernetes(kubernetes::KubernetesConfig),
    /// Nothing runs: every operation ends after a set delay (benchmarks and workflow tests).
    Simulated(simulated::SimulatedConfig),
}

/// Builds the configured provider.
pub async fn build(config: &ProviderConfig) -> Result<Arc<dyn ComputeProvider>> {
    match config {
        #[cfg(feature = "local")]
        ProviderConfig::Local(c) => Ok(Arc::new(local::LocalProvider::new(c.clone())?)),
        #[cfg(feature = "ecs")]
        ProviderConfig::Ecs(c) => Ok(Arc::new(ecs::EcsProvider::new(c.clone()).await?)),
        #[cfg(feature = "kubernetes")]
        ProviderConfig::Kubernetes(c) => Ok(Arc::new(
            kubernetes::KubernetesProvider::new(c.clone()).await?,
        )),
        ProviderConfig::Simulated(c) => Ok(Arc::new(simulated::SimulatedProvider::new(c.clone())?)),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other.name())),
    }
}

/// The start-up error for a provider this worker was built without.
fn not_compiled(name: &str) -> ComputeError {
    ComputeError::invalid(format!(
        "the {name} provider is not compiled into this worker: build it with the cargo \
         feature `{name}` (e.g. `cargo build --release --features {name}`)"
    ))
}

impl ProviderConfig {
    /// The provider's name, as `--provider` takes it and as the store records it.
    pub fn name(&self) -> &'static str {
        match self {
            ProviderConfig::Local(_) => "local",
            ProviderConfig::Ecs(_) => "ecs",
            ProviderConfig::Kubernetes(_) => "kubernetes",
            ProviderConfig::Simulated(_) => "simulated",
        }
    }
}

/// Default directory of the local provider's state.
pub fn default_local_state_dir() -> PathBuf {
    PathBuf::from(".compute-worker/local")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    /// A worker built without a provider still knows its name, and says which feature builds
    /// it (a minimal build runs these; a full build compiles every provider in).
    #[tokio::test]
    async fn a_provider_left_out_of_the_build_is_refused_with_its_feature() {
        let configs: Vec<ProviderConfig> = vec![
            #[cfg(not(feature = "local"))]
            ProviderConfig::Local(local::LocalConfig::default()),
            #[cfg(not(feature = "ecs"))]
            ProviderConfig::Ecs(ecs::EcsConfig {
                subnets: vec!["subnet-1".into()],
                ..ecs::EcsConfig::default()
            }),
            #[cfg(not(feature = "kubernetes"))]
            ProviderConfig::Kubernetes(kubernetes::KubernetesConfig::default()),
        ];
        for config in configs {
            let Err(e) = build(&config).await else {
                panic!("{} is not compiled in", config.name());
            };
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
            assert!(!e.retriable);
            assert!(
                e.message
                    .contains(&format!("cargo feature `{}`", config.name())),
                "{}",
                e.message
            );
        }
    }
}
