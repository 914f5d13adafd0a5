//! The workload's own cgroup, when `cgroupParent` names a delegated cgroup v2 directory: it
//! holds `spec.memory` as `memory.max`, and takes down stragglers that left the process group.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use nix::errno::Errno;
use tokio::time::Instant;

use super::config::LocalConfig;
use super::errors::config_error;
use super::naming::cgroup_name;
use super::supervise::{CHECK_INTERVAL, KILL_WAIT};
use crate::error::Result;
use crate::provider::OperationContext;

/// Checks that `config`'s cgroup parent, if any, is a cgroup v2 directory.
pub(super) fn check_cgroup_parent(config: &LocalConfig) -> Result<()> {
    if let Some(parent) = &config.cgroup_parent
        && !parent.join("cgroup.procs").exists()
    {
        return Err(config_error(format!(
            "local provider: cgroupParent {} is not a cgroup v2 directory",
            parent.display()
        )));
    }
    Ok(())
}

/// The workload's cgroup under `parent`, with `memory.max` set when the spec has a memory
/// limit; whether that limit could be set. None when the host does not let the worker create
/// it (the spec's memory is then set as `RLIMIT_DATA`).
pub(super) fn create_cgroup(
    parent: &Path,
    op: &OperationContext,
    memory_mib: Option<u64>,
) -> Option<(PathBuf, bool)> {
    let dir = parent.join(cgroup_name(op));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        // A retry of the same execution.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the workload's cgroup; using rlimits only");
            return None;
        }
    }
    let memory_set = match memory_mib {
        None => false,
        Some(mib) => {
            // Not `fs::write`: a missing `memory.max` (no memory controller) must not be
            // created as a plain file.
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("memory.max"))
                .and_then(|mut f| {
                    f.write_all(mib.saturating_mul(1024 * 1024).to_string().as_bytes())
                });
            if let Err(e) = &written {
                tracing::warn!(
                    error = %e,
                    "cannot set memory.max in the workload's cgroup; using RLIMIT_DATA"
                );
            }
            written.is_ok()
        }
    };
    Some((dir, memory_set))
}

/// Kills whatever is left in a workload's cgroup and removes it. Best effort: what remains
/// is retried by the next stop and by
/// [`LocalProvider::prune_files`](super::LocalProvider::prune_files).
pub(super) async fn remove_cgroup(dir: &Path) {
    // `cgroup.kill` (Linux 5.14) takes down stragglers that left the process group.
    if let Ok(mut kill) = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
    {
        let _ = kill.write_all(b"1");
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // Busy while killed processes are still on their way out.
            Err(e)
                if e.raw_os_error() == Some(Errno::EBUSY as i32) && Instant::now() < deadline =>
            {
                tokio::time::sleep(CHECK_INTERVAL).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "removing a workload's cgroup failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::contract::Operation;
    use crate::error::ErrorCode;
    use crate::provider::local::LocalProvider;
    use crate::provider::local::tests::{TestEnv, config, op, spec};
    use crate::provider::{ComputeProvider, CurrentState};

    /// A cgroup v2 directory this test may create children in, if the host has one.
    fn test_cgroup_parent() -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let mount = mounts
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")?[1]
            .to_string();
        let parent = Path::new(&mount).join(format!("compute-worker-test-{}", std::process::id()));
        std::fs::create_dir(&parent).ok()?;
        Some(parent)
    }

    #[tokio::test]
    async fn workloads_run_in_a_cgroup_of_their_own() {
        let dir = TempDir::new().unwrap();
        let mut c = config(dir.path());
        c.cgroup_parent = Some(dir.path().to_path_buf());
        assert_eq!(
            LocalProvider::new(c.clone()).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
        let Some(parent) = test_cgroup_parent() else {
            eprintln!("no writable cgroup v2 hierarchy on this host: cgroup placement untested");
            return;
        };
        c.cgroup_parent = Some(parent.clone());
        let env = TestEnv {
            provider: LocalProvider::new(c).unwrap(),
            dir,
        };
        let p = &env.provider;
        let mut s = spec(&["sh", "-c", "cat /proc/self/cgroup; sleep 30"]);
        s.memory = Some(64);
        let ids = p
            .provision(&op("t30", "exec-1", Operation::Provision), &s)
            .await
            .unwrap();
        let cgroup = parent.join("t30@exec-1");
        assert!(cgroup.is_dir());
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        let pid = ids.pid.unwrap().to_string();
        assert!(procs.lines().any(|l| l == pid), "{procs}");
        if cgroup.join("memory.max").exists() {
            assert_eq!(
                std::fs::read_to_string(cgroup.join("memory.max"))
                    .unwrap()
                    .trim(),
                (64 * 1024 * 1024).to_string()
            );
        }
        p.delete(
            &op("t30", "exec-2", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
        assert!(!cgroup.exists());
        std::fs::remove_dir(&parent).unwrap();
    }
}
