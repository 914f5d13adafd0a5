//! The simulated provider: a real [`ComputeProvider`] with no external system behind it, for
//! benchmarks and workflow tests (`--provider simulated`). Never the default, and never for
//! tenants' real compute: nothing runs.
//!
//! Every operation is accepted at once and reaches its end `delay` later; with a
//! `failure_rate` above zero, that share of executions (chosen by a hash of the execution id,
//! so a retry or another worker decides the same) fails with `WORKLOAD_FAILED` instead. When
//! an operation ends is written into its resource ids (`simulated:<tenant>:<execution>:<ms>`),
//! not kept in memory, so a worker that restarts, or another worker, observes it the same:
//! the tracking path is exercised exactly as with a real provider.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext};
use crate::{
    contract::{ComputeSpec, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
};

/// The prefix of a simulated resource id.
const PREFIX: &str = "simulated:";

/// The longest an observation waits before it answers "in progress" (well under a watch
/// activity's heartbeat timeout): each answer is a look at the store, so thousands in flight
/// cost a few hundred reads a second.
const MAX_OBSERVE_WAIT: Duration = Duration::from_secs(8);

/// The simulated provider's settings (`--simulated-delay`, `--simulated-failure-rate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedConfig {
    /// How long every operation takes, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// The share of executions that fail (0.0 to 1.0).
    #[serde(default)]
    pub failure_rate: f64,
}

/// The simulated provider.
#[derive(Debug)]
pub struct SimulatedProvider {
    config: SimulatedConfig,
    /// The tenants this process has compute for (for the sweeper's listing only).
    live: Mutex<BTreeMap<String, String>>,
}

impl SimulatedProvider {
    /// Checks the settings.
    pub fn new(config: SimulatedConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.failure_rate) {
            return Err(ComputeError::invalid(format!(
                "--simulated-failure-rate must be between 0.0 and 1.0, not {}",
                config.failure_rate
            )));
        }
        Ok(SimulatedProvider {
            config,
            live: Mutex::new(BTreeMap::new()),
        })
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Starts an operation: its resource ids say when it ends.
    fn begin(&self, op: &OperationContext) -> ResourceIds {
        let ends_at = Self::now_ms().saturating_add(self.config.delay_ms);
        ResourceIds {
            container_ids: vec![format!(
                "{PREFIX}{}:{}:{ends_at}",
                op.tenant_id, op.execution_id
            )],
            ..ResourceIds::default()
        }
    }

    /// When the operation of `resources` ends, and the execution it belongs to.
    fn ends_at(resources: &ResourceIds) -> Option<(u64, &str)> {
        let id = resources.container_ids.first()?.strip_prefix(PREFIX)?;
        let (rest, ms) = id.rsplit_once(':')?;
        let (_, execution) = rest.split_once(':')?;
        Some((ms.parse().ok()?, execution))
    }

    /// Whether this execution is one of the `failure_rate` that fail.
    fn fails(&self, execution_id: &str) -> bool {
        if self.config.failure_rate <= 0.0 {
            return false;
        }
        let digest = Sha256::digest(execution_id.as_bytes());
        let draw = u16::from_be_bytes([digest[0], digest[1]]);
        f64::from(draw) / f64::from(u16::MAX) < self.config.failure_rate
    }

    fn remember(&self, op: &OperationContext) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(op.tenant_id.clone(), op.execution_id.clone());
        }
    }
}

#[async_trait]
impl ComputeProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn validate(&self, _tenant_id: &str, _spec: &ComputeSpec) -> Result<()> {
        // The contract's own validation already ran; nothing runs here, so no field matters
        // and no secret reference is ever resolved.
        Ok(())
    }

    async fn provision(&self, op: &OperationContext, _spec: &ComputeSpec) -> Result<ResourceIds> {
        self.remember(op);
        Ok(self.begin(op))
    }

    async fn update(
        &self,
        op: &OperationContext,
        _current: &CurrentState,
        _desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        self.remember(op);
        Ok(self.begin(op))
    }

    async fn delete(&self, op: &OperationContext, _current: &CurrentState) -> Result<ResourceIds> {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&op.tenant_id);
        }
        Ok(self.begin(op))
    }

    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation> {
        let Some((ends_at, execution)) = Self::ends_at(resources) else {
            return Err(ComputeError::new(
                ErrorCode::NotFound,
                "the execution has no simulated resource to observe",
            )
            .with_provider(self.name(), None));
        };
        let left = Duration::from_millis(ends_at.saturating_sub(Self::now_ms()));
        if !left.is_zero() {
            // Waits here rather than in the caller's poll loop: the answer comes the moment
            // the operation ends.
            let wait = left.min(MAX_OBSERVE_WAIT);
            tokio::time::sleep(wait).await;
            if wait < left {
                // The same message for the whole wait, as a real provider's changes only when
                // something happens: a countdown would be a progress write per look.
                let ends = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ends_at as i64)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                return Ok(Observation::InProgress(Progress {
                    message: format!("simulated: ends at {ends}"),
                    ready: Some(0),
                    desired: Some(1),
                }));
            }
        }
        if self.fails(execution) {
            return Ok(Observation::Failed(
                ComputeError::new(
                    ErrorCode::WorkloadFailed,
                    format!(
                        "simulated failure of {} (failure rate {})",
                        op.operation.as_str(),
                        self.config.failure_rate
                    ),
                )
                .with_provider(self.name(), None),
            ));
        }
        Ok(Observation::Succeeded(resources.clone()))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        let live = self
            .live
            .lock()
            .map_err(|_| ComputeError::internal("the simulated provider's state is poisoned"))?;
        Ok(live
            .iter()
            .map(|(tenant, execution)| ManagedResource {
                tenant_id: tenant.clone(),
                kind: "simulated".into(),
                id: tenant.clone(),
                execution_id: Some(execution.clone()),
            })
            .collect())
    }

    fn observes_at_once(&self) -> bool {
        // An operation's end is in its resource ids; only a delay makes `observe` wait.
        self.config.delay_ms == 0
    }

    fn poll_interval(&self) -> Duration {
        // `observe` waits for the end itself.
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Operation;

    fn op(execution: &str) -> OperationContext {
        OperationContext {
            execution_id: execution.into(),
            tenant_id: "t-1".into(),
            operation: Operation::Provision,
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn an_instant_operation_is_done_at_its_first_observation() {
        let p = SimulatedProvider::new(SimulatedConfig::default()).unwrap();
        let ids = p
            .provision(&op("e-1"), &ComputeSpec::default())
            .await
            .unwrap();
        assert_eq!(
            p.observe(&op("e-1"), &ids).await.unwrap(),
            Observation::Succeeded(ids.clone())
        );
        assert_eq!(p.list_managed().await.unwrap().len(), 1);
        p.delete(&op("e-2"), &CurrentState::default())
            .await
            .unwrap();
        assert!(p.list_managed().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_operation_is_in_progress_until_its_delay_passed() {
        let p = SimulatedProvider::new(SimulatedConfig {
            delay_ms: 60_000,
            failure_rate: 0.0,
        })
        .unwrap();
        let ids = p
            .provision(&op("e-1"), &ComputeSpec::default())
            .await
            .unwrap();
        assert!(matches!(
            p.observe(&op("e-1"), &ids).await.unwrap(),
            Observation::InProgress(_)
        ));
        // Another provider (a restarted worker) reads the same end from the ids.
        let other = SimulatedProvider::new(SimulatedConfig::default()).unwrap();
        assert!(matches!(
            other.observe(&op("e-1"), &ids).await.unwrap(),
            Observation::InProgress(_)
        ));
    }

    #[tokio::test]
    async fn the_failure_rate_picks_executions_by_their_id() {
        let all = SimulatedProvider::new(SimulatedConfig {
            delay_ms: 0,
            failure_rate: 1.0,
        })
        .unwrap();
        let ids = all
            .provision(&op("e-1"), &ComputeSpec::default())
            .await
            .unwrap();
        let Observation::Failed(e) = all.observe(&op("e-1"), &ids).await.unwrap() else {
            panic!("a failure rate of 1 fails every execution");
        };
        assert_eq!(e.code, ErrorCode::WorkloadFailed);
        assert!(!e.retriable);
        let half = SimulatedProvider::new(SimulatedConfig {
            delay_ms: 0,
            failure_rate: 0.5,
        })
        .unwrap();
        let failed = (0..400).filter(|i| half.fails(&format!("e-{i}"))).count();
        assert!((120..280).contains(&failed), "{failed} of 400 failed");
        assert_eq!(half.fails("e-7"), half.fails("e-7"));
    }

    #[test]
    fn a_failure_rate_outside_zero_to_one_is_refused() {
        for rate in [-0.1, 1.5, f64::NAN] {
            let e = SimulatedProvider::new(SimulatedConfig {
                delay_ms: 0,
                failure_rate: rate,
            })
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        }
    }

    #[tokio::test]
    async fn resources_that_are_not_simulated_are_not_found() {
        let p = SimulatedProvider::new(SimulatedConfig::default()).unwrap();
        let e = p
            .observe(&op("e-1"), &ResourceIds::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
    }
}
