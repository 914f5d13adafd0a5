//! Supervising a workload once it runs: reaping it (only its parent learns how it exited),
//! stopping it and its process group (SIGTERM, then SIGKILL after the grace), and telling how
//! a dead one exited.

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex, PoisonError},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{process::Child, time::Instant};

use super::cgroup::remove_cgroup;
use super::errors::{PROVIDER, local_error};
use super::provider::LocalProvider;
use super::record::{
    ExitRecord, ProcessIdentity, ProcessRecord, read_exit, remove_record, write_exit,
};
use crate::provider::{CurrentState, OperationContext};
use crate::{
    contract::ResourceIds,
    error::{ComputeError, ErrorCode, Result},
};

/// How often a stop or an observation looks at `/proc` again.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// How long a process may take to disappear after SIGKILL (it can hang in the kernel, e.g. on
/// a dead NFS mount) before the stop is reported as unfinished.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an observation waits for the exit status of a dead process: its parent may be
/// reaping it right now.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
/// How long a reaper's exit status stays in memory when no final observation takes it (the
/// file on disk still has it).
const EXIT_MEMORY: Duration = Duration::from_secs(600);

/// Exit statuses learnt by this worker's reapers, with when.
pub(super) type Exits = Arc<StdMutex<HashMap<ProcessIdentity, (ExitRecord, Instant)>>>;

/// Sends `signal` to the process group led by `pid`; `Ok(false)` when the group is gone.
pub(super) fn signal_group(pid: u32, signal: Signal) -> Result<bool> {
    let Some(pgid) = i32::try_from(pid).ok().filter(|&p| p > 1) else {
        return Ok(false);
    };
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(Errno::EPERM) => Err(ComputeError::new(
            ErrorCode::PermissionDenied,
            format!("the worker is not allowed to signal process group {pid}"),
        )
        .with_provider(PROVIDER, Some("EPERM"))),
        Err(e) => Err(ComputeError::internal(format!(
            "sending {signal} to process group {pid} failed"
        ))
        .with_root_cause(e)
        .with_provider(PROVIDER, Some(e.desc()))),
    }
}

/// Waits up to `within` for the process to be gone; whether it is.
pub(super) async fn wait_gone(identity: ProcessIdentity, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !identity.is_live() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

impl LocalProvider {
    /// Waits on a child of this worker and records how it ended, in memory and on disk (only
    /// the parent can learn it; other workers on the host read the file).
    pub(super) fn spawn_reaper(
        &self,
        mut child: Child,
        dir: PathBuf,
        identity: Option<ProcessIdentity>,
        cgroup: Option<PathBuf>,
    ) {
        let exits = Arc::clone(&self.exits);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for a workload process failed");
                    return;
                }
            };
            // Empty once the process group is gone; otherwise stop or pruning removes it.
            if let Some(cgroup) = &cgroup {
                let _ = std::fs::remove_dir(cgroup);
            }
            let Some(identity) = identity else { return };
            let exit = ExitRecord {
                exit_code: status.code(),
                signal: status.signal(),
            };
            {
                let mut exits = exits.lock().unwrap_or_else(PoisonError::into_inner);
                // Statuses no final observation took (a workload that exited after it
                // settled) are still on disk.
                exits.retain(|_, (_, learnt)| learnt.elapsed() < EXIT_MEMORY);
                exits.insert(identity, (exit, Instant::now()));
            }
            tracing::info!(
                pid = identity.pid,
                exit_code = ?exit.exit_code,
                signal = ?exit.signal,
                "a workload process exited"
            );
            if let Err(e) = write_exit(&dir, identity, &exit).await {
                tracing::warn!(pid = identity.pid, error = %e, "recording an exit status failed");
            }
        });
    }

    /// Stops a process and its group: SIGTERM, SIGKILL after the grace period; then removes its
    /// cgroup. `Ok(false)` when the process was not running.
    async fn stop(&self, identity: ProcessIdentity, cgroup: Option<&Path>) -> Result<bool> {
        let stopped = self.stop_group(identity).await;
        if let Some(cgroup) = cgroup
            && stopped.is_ok()
        {
            remove_cgroup(cgroup).await;
        }
        stopped
    }

    async fn stop_group(&self, identity: ProcessIdentity) -> Result<bool> {
        if !identity.is_live() {
            return Ok(false);
        }
        tracing::info!(pid = identity.pid, "stopping the workload process");
        if signal_group(identity.pid, Signal::SIGTERM)? {
            let grace = Duration::from_millis(self.config.stop_grace_ms);
            if !wait_gone(identity, grace).await {
                tracing::warn!(
                    pid = identity.pid,
                    grace_ms = self.config.stop_grace_ms,
                    "the workload ignored SIGTERM; killing it"
                );
                signal_group(identity.pid, Signal::SIGKILL)?;
                if !wait_gone(identity, KILL_WAIT).await {
                    return Err(local_error(
                        ErrorCode::Timeout,
                        format!(
                            "process {} did not exit within {}s of SIGKILL",
                            identity.pid,
                            KILL_WAIT.as_secs()
                        ),
                        "KillTimeout",
                    ));
                }
            }
        }
        // Children the workload left behind in its group would otherwise run on untracked.
        // The group id cannot have been reused while any of them is alive.
        let _ = signal_group(identity.pid, Signal::SIGKILL);
        Ok(true)
    }

    /// How a dead process exited, if this worker or another one on the host learnt it. Only a
    /// final observation asks, so the in-memory entry goes once read.
    pub(super) async fn exit_status(
        &self,
        tenant_dir: &Path,
        identity: ProcessIdentity,
    ) -> Option<ExitRecord> {
        let deadline = Instant::now() + EXIT_STATUS_WAIT;
        loop {
            let known = self
                .exits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&identity)
                .map(|(exit, _)| exit);
            if known.is_some() {
                return known;
            }
            if let Some(exit) = read_exit(tenant_dir, identity).await {
                // The reaper fills the map before it writes the file.
                self.exits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&identity);
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }

    /// Delete, under the tenant's lock.
    pub(super) async fn delete_locked(
        &self,
        op: &OperationContext,
        current: &CurrentState,
    ) -> Result<ResourceIds> {
        // A broken record must not make the tenant undeletable: fall back to the store's ids.
        let record = self.read_record(&op.tenant_id).await.unwrap_or_else(|e| {
            tracing::warn!(tenant_id = %op.tenant_id, error = %e, "ignoring an unreadable process record");
            None
        });
        let stopped = self
            .stop_tenant(record.as_ref(), &current.resource_ids)
            .await?;
        remove_record(&self.tenant_dir(&op.tenant_id)).await?;
        Ok(stopped)
    }

    /// Stops the tenant's recorded process and the one the store names, if it is another;
    /// the ids of the first one that was running.
    pub(super) async fn stop_tenant(
        &self,
        record: Option<&ProcessRecord>,
        current: &ResourceIds,
    ) -> Result<ResourceIds> {
        let mut stopped = ResourceIds::default();
        let recorded = record.map(ProcessRecord::identity);
        if let Some(record) = record
            && self
                .stop(record.identity(), record.cgroup.as_deref())
                .await?
        {
            stopped = record.resource_ids();
        }
        if let Some(identity) = ProcessIdentity::from_ids(current)
            && Some(identity) != recorded
            && self.stop(identity, None).await?
            && stopped.is_empty()
        {
            stopped = current.clone();
        }
        Ok(stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Operation;
    use crate::provider::local::tests::{TestEnv, identity, observe_until_final, op, spec};
    use crate::provider::{ComputeProvider, Observation};

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
        let env = TestEnv::new();
        let p = &env.provider;
        let ids = p
            .provision(
                &op("t5", "exec-1", Operation::Provision),
                &spec(&["sh", "-c", "trap '' TERM; touch ready; sleep 30"]),
            )
            .await
            .unwrap();
        // The trap must be in place before the stop, or SIGTERM alone would do.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.work_dir("t5").join("ready").exists() {
            assert!(Instant::now() < deadline, "the workload never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let stopped = p
            .delete(
                &op("t5", "exec-2", Operation::Delete),
                &CurrentState::default(),
            )
            .await
            .unwrap();
        assert_eq!(stopped, ids);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!identity(&ids).is_live());
    }

    #[tokio::test]
    async fn the_in_memory_maps_shrink_when_executions_end() {
        let env = TestEnv::new();
        let p = &env.provider;
        let o = op("t25", "exec-1", Operation::Provision);
        let ids = p
            .provision(&o, &spec(&["sh", "-c", "exit 2"]))
            .await
            .unwrap();
        assert!(p.tenant_locks.lock().unwrap().contains_key("t25"));
        let (outcome, _) = observe_until_final(p, &o, &ids).await;
        assert!(matches!(outcome, Observation::Failed(ref e) if e.exit_code == Some(2)));
        assert!(!p.exits.lock().unwrap().contains_key(&identity(&ids)));
        // Read again, from disk.
        let (again, _) = observe_until_final(p, &o, &ids).await;
        assert_eq!(again, outcome);

        p.delete(
            &op("t25", "exec-2", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
        assert!(!p.tenant_locks.lock().unwrap().contains_key("t25"));

        // Old statuses nobody asked for age out when the next one comes in.
        let stale = ProcessIdentity {
            pid: 1,
            start_time: 1,
        };
        p.exits.lock().unwrap().insert(
            stale,
            (
                ExitRecord {
                    exit_code: Some(0),
                    signal: None,
                },
                Instant::now() - EXIT_MEMORY,
            ),
        );
        let o = op("t26", "exec-1", Operation::Provision);
        let ids = p.provision(&o, &spec(&["true"])).await.unwrap();
        observe_until_final(p, &o, &ids).await;
        assert!(!p.exits.lock().unwrap().contains_key(&stale));
    }
}
