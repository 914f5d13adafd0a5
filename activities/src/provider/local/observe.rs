//! Whether an operation is done: a provision or update once its process has stayed up for
//! the settle time (or how it failed, with its exit status and scrubbed stderr tail), a delete
//! once the process is gone.

use chrono::Utc;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::errors::local_error;
use super::naming::log_path;
use super::provider::LocalProvider;
use super::record::{ExitRecord, ProcessIdentity, ProcessRecord, started_at_from_proc};
use super::supervise::{CHECK_INTERVAL, wait_gone};
use crate::provider::{ComputeProvider, Observation, OperationContext};
use crate::{
    contract::{Progress, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
};

impl LocalProvider {
    /// Why the process `identity` is gone: how it exited, with its scrubbed stderr tail.
    async fn workload_failure(
        &self,
        op: &OperationContext,
        identity: ProcessIdentity,
        record: Option<&ProcessRecord>,
    ) -> ComputeError {
        let dir = self.tenant_dir(&op.tenant_id);
        let exit = self.exit_status(&dir, identity).await;
        // The process may have been started by an earlier execution (an idempotent provision).
        let execution_id = record.map_or(op.execution_id.as_str(), |r| r.execution_id.as_str());
        let tail = self
            .scrubbed_stderr_tail(&log_path(&dir, execution_id, "stderr"), record)
            .await;
        let settle = self.config.settle_ms;
        let (message, provider_code) = match exit {
            Some(ExitRecord {
                exit_code: Some(code),
                ..
            }) => (
                format!("workload exited with code {code} during the {settle}ms settle time"),
                "ProcessExited",
            ),
            Some(ExitRecord {
                signal: Some(signal),
                ..
            }) => {
                let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
                (
                    format!(
                        "workload was killed by signal {signal} ({name}) during the {settle}ms \
                         settle time"
                    ),
                    "ProcessSignaled",
                )
            }
            _ => (
                format!(
                    "workload exited during the {settle}ms settle time; its exit status is \
                     unknown (it was not started by this worker and no other worker recorded it)"
                ),
                "ProcessGone",
            ),
        };
        let mut error = local_error(ErrorCode::WorkloadFailed, message, provider_code);
        error.exit_code = exit.and_then(|e| e.exit_code);
        error.stderr_tail = tail;
        error
    }

    /// Provision/update: succeeded once the process has stayed up for the settle time.
    pub(super) async fn observe_settle(
        &self,
        op: &OperationContext,
        resources: &ResourceIds,
    ) -> Result<Observation> {
        let record = self.read_record(&op.tenant_id).await.ok().flatten();
        let identity = match (ProcessIdentity::from_ids(resources), &record, resources.pid) {
            (Some(identity), _, _) => identity,
            (None, Some(record), Some(pid)) if record.pid == pid => record.identity(),
            _ => {
                return Ok(Observation::Failed(local_error(
                    ErrorCode::Internal,
                    "the execution names no process (pid and start time) to observe",
                    "NoProcess",
                )));
            }
        };
        let record = record.filter(|r| r.identity() == identity);
        let started_at = record
            .as_ref()
            .map(|r| r.started_at)
            .or_else(|| started_at_from_proc(identity.start_time));
        let settle = self.settle();
        let deadline = Instant::now() + self.poll_interval();
        loop {
            if !identity.is_live() {
                // A concurrent operation on the tenant may have replaced this process: that is
                // a conflict a retry resolves, not a crash of the workload. An update stops the
                // old process before it records the new one, so the record is read once it is
                // done.
                self.wait_for_tenant_operations(&op.tenant_id).await;
                if let Some(current) = self.read_record(&op.tenant_id).await.ok().flatten()
                    && current.identity() != identity
                    && current.execution_id != op.execution_id
                    && current.identity().is_live()
                {
                    return Ok(Observation::Failed(local_error(
                        ErrorCode::Conflict,
                        format!(
                            "the process was replaced by a concurrent operation ({})",
                            current.execution_id
                        ),
                        "Superseded",
                    )));
                }
                let error = self.workload_failure(op, identity, record.as_ref()).await;
                return Ok(Observation::Failed(error));
            }
            // Without a start instant (no record, no boot time) a live process is all there
            // is to go by.
            let up = started_at.map_or(settle, |t| (Utc::now() - t).to_std().unwrap_or_default());
            if up >= settle {
                return Ok(Observation::Succeeded(resources.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Observation::InProgress(Progress {
                    message: format!(
                        "settling: up for {}ms of {}ms",
                        up.as_millis(),
                        settle.as_millis()
                    ),
                    ..Progress::default()
                }));
            }
            tokio::time::sleep(left.min(settle - up).min(CHECK_INTERVAL)).await;
        }
    }

    /// Delete: succeeded once the process is gone.
    pub(super) async fn observe_gone(&self, resources: &ResourceIds) -> Observation {
        let Some(identity) = ProcessIdentity::from_ids(resources) else {
            return Observation::Succeeded(ResourceIds::default());
        };
        if wait_gone(identity, self.poll_interval()).await {
            Observation::Succeeded(ResourceIds::default())
        } else {
            Observation::InProgress(Progress {
                message: format!("waiting for process {} to exit", identity.pid),
                ..Progress::default()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::contract::Operation;
    use crate::error::ErrorCode;
    use crate::provider::local::tests::{TestEnv, observe_until_final, op, spec};
    use crate::provider::{ComputeProvider, Observation};

    #[tokio::test]
    async fn immediate_exit_fails_with_code_and_stderr() {
        let env = TestEnv::new();
        let p = &env.provider;
        let o = op("t2", "exec-1", Operation::Provision);
        let ids = p
            .provision(&o, &spec(&["sh", "-c", "echo boom >&2; exit 3"]))
            .await
            .unwrap();
        let (outcome, _) = observe_until_final(p, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.code, ErrorCode::WorkloadFailed);
        assert_eq!(error.exit_code, Some(3));
        assert!(error.stderr_tail.as_deref().unwrap().contains("boom"));
        assert!(error.message.contains("code 3"), "{}", error.message);
        assert_eq!(error.provider.as_deref(), Some("local"));
    }

    #[tokio::test]
    async fn another_worker_reads_the_exit_status_from_disk() {
        let env = TestEnv::new();
        let o = op("t2b", "exec-1", Operation::Provision);
        let ids = env
            .provider
            .provision(&o, &spec(&["sh", "-c", "echo oops >&2; exit 7"]))
            .await
            .unwrap();
        let other = env.second_provider();
        let (outcome, _) = observe_until_final(&other, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.exit_code, Some(7));
        assert!(error.stderr_tail.as_deref().unwrap().contains("oops"));
    }
}
