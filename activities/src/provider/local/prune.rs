//! The retention of a tenant's old files: logs, exit files and stale temporary files older
//! than `fileRetentionMs` are removed, never the logs of the tenant's live execution, and the
//! cgroups of workloads that are gone with them.

use std::{
    io,
    path::Path,
    time::{Duration, SystemTime},
};

use super::cgroup::remove_cgroup;
use super::errors::io_internal;
use super::naming::{check_tenant_id, log_name};
use super::provider::LocalProvider;
use crate::error::Result;

/// Removes `dir`'s logs, exit files and stale temporary files last modified longer than
/// `retention` ago, except the logs of `keep_execution`; how many it removed. Blocking.
fn prune_dir(dir: &Path, keep_execution: Option<&str>, retention: Duration) -> io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
        return Ok(0);
    };
    let keep: Vec<String> = keep_execution
        .map(|e| ["stdout", "stderr"].map(|stream| log_name(e, stream)))
        .into_iter()
        .flatten()
        .collect();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = (name.starts_with("exit-") && name.ends_with(".json"))
            || name.ends_with(".log")
            || (name.starts_with('.') && name.ends_with(".tmp"));
        if !ours || keep.iter().any(|k| k == name) {
            continue;
        }
        // `DirEntry::metadata` does not follow a symlink.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.modified().map_or(true, |modified| modified > cutoff) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "removing an old workload file failed"),
        }
    }
    Ok(removed)
}

impl LocalProvider {
    /// Removes the tenant's files older than the retention, except `keep_execution`'s logs;
    /// how many. Failures are logged: retention must never fail an operation.
    pub(super) async fn prune_tenant(
        &self,
        tenant_id: &str,
        keep_execution: Option<&str>,
    ) -> usize {
        if self.config.file_retention_ms == 0 {
            return 0;
        }
        let dir = self.tenant_dir(tenant_id);
        let keep = keep_execution.map(str::to_string);
        let retention = Duration::from_millis(self.config.file_retention_ms);
        let pruned =
            tokio::task::spawn_blocking(move || prune_dir(&dir, keep.as_deref(), retention)).await;
        match pruned {
            Ok(Ok(removed)) => removed,
            Ok(Err(e)) => {
                tracing::warn!(tenant_id, error = %e, "pruning the tenant's old files failed");
                0
            }
            Err(e) => {
                tracing::warn!(tenant_id, error = %e, "pruning the tenant's old files failed");
                0
            }
        }
    }

    /// Removes every tenant's logs and exit files older than `file_retention_ms` (never those
    /// of a tenant's live execution), and the cgroups of workloads that are gone; how many
    /// files it removed. Meant for a periodic background task.
    pub async fn prune_files(&self) -> Result<usize> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_internal("listing the state directory failed", &e)),
        };
        let mut tenants = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_internal("listing the state directory failed", &e))?
        {
            let tenant_id = entry.file_name().to_string_lossy().into_owned();
            if check_tenant_id(&tenant_id).is_ok()
                && entry.file_type().await.is_ok_and(|t| t.is_dir())
            {
                tenants.push(tenant_id);
            }
        }
        let mut removed = 0;
        for tenant_id in tenants {
            // Under the tenant's lock, so that no spawn opens a log being removed.
            let guard = self.lock_tenant(&tenant_id).await?;
            let record = self.read_record(&tenant_id).await.ok().flatten();
            let live = record.as_ref().filter(|r| r.identity().is_live());
            removed += self
                .prune_tenant(&tenant_id, live.map(|r| r.execution_id.as_str()))
                .await;
            if live.is_none()
                && let Some(cgroup) = record.as_ref().and_then(|r| r.cgroup.as_deref())
            {
                remove_cgroup(cgroup).await;
            }
            drop(guard);
            self.forget_tenant_lock(&tenant_id);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Operation;
    use crate::provider::ComputeProvider;
    use crate::provider::local::tests::{TestEnv, op, spec};

    #[tokio::test]
    async fn old_logs_and_exit_files_are_pruned_but_not_the_live_ones() {
        let env = TestEnv::with(|c| c.file_retention_ms = 3_600_000);
        let p = &env.provider;
        let dir = p.tenant_dir("t27");
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        let plant = |name: &str, when: SystemTime| {
            let path = dir.join(name);
            std::fs::write(&path, "x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        plant("exit-1-2.json", old);
        plant("gone.stderr.log", old);
        plant(".exit-3-4.json.tmp", old);
        plant("recent.stderr.log", SystemTime::now());
        // The live execution's logs, old as they are (a quiet workload).
        plant("exec-1.stdout.log", old);
        plant("exec-1.stderr.log", old);
        plant("unrelated.txt", old);
        p.provision(
            &op("t27", "exec-1", Operation::Provision),
            &spec(&["sleep", "30"]),
        )
        .await
        .unwrap();
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(),
            [
                ".lock",
                "exec-1.stderr.log",
                "exec-1.stdout.log",
                "process.json",
                "recent.stderr.log",
                "unrelated.txt",
                "work"
            ]
        );

        // The periodic pass: the live execution's logs stay, the rest of the old go.
        plant("exit-5-6.json", old);
        plant("exec-1.stdout.log", old);
        let other = p.tenant_dir("t28");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("old.stdout.log"), "x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(other.join("old.stdout.log"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(p.prune_files().await.unwrap(), 2);
        assert!(dir.join("exec-1.stdout.log").exists());
        assert!(!dir.join("exit-5-6.json").exists());
        assert!(!other.join("old.stdout.log").exists());
        assert!(p.tenant_locks.lock().unwrap().is_empty());
    }
}
