//! The local provider's settings (`--local-*`), compiled with or without the `local`
//! feature so that a worker built without it can still name the provider in its start-up
//! error.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of the local provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalConfig {
    /// Where the provider keeps its records and the workloads' logs.
    pub state_dir: PathBuf,
    /// A workload is healthy once it has stayed up this long (milliseconds).
    pub settle_ms: u64,
    /// How long a workload has to exit after SIGTERM before it gets SIGKILL (milliseconds).
    pub stop_grace_ms: u64,
    /// How often the tracker observes an operation (milliseconds).
    pub poll_interval_ms: u64,
    /// The worker's environment variables an `env:NAME` secret may name: exact names, or
    /// `PREFIX*` for every name starting with `PREFIX`. Empty: no `env:` secret resolves.
    pub secret_env_allow: Vec<String>,
    /// The directories a `file:PATH` secret may lie in (after symlinks are resolved). Empty:
    /// no `file:` secret resolves.
    pub secret_dirs: Vec<PathBuf>,
    /// `RLIMIT_NOFILE` of a workload (soft and hard); 0 leaves the worker's own.
    pub max_open_files: u64,
    /// `RLIMIT_NPROC` of a workload; 0 leaves the worker's own. The kernel counts every
    /// process of the uid, the worker's included unless `run_as_user` is set.
    pub max_processes: u64,
    /// A delegated cgroup v2 directory: each workload then runs in a child cgroup of it, with
    /// `spec.memory` as its `memory.max`. None: `spec.memory` is set as `RLIMIT_DATA`.
    pub cgroup_parent: Option<PathBuf>,
    /// The user (name or numeric uid) workloads run as, with its primary group and no
    /// supplementary groups. None: the worker's own user. Needs a worker running as root.
    pub run_as_user: Option<String>,
    /// How long workloads' logs and exit files are kept (milliseconds); 0 keeps them forever.
    pub file_retention_ms: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            state_dir: crate::provider::default_local_state_dir(),
            settle_ms: 1000,
            stop_grace_ms: 5000,
            poll_interval_ms: 200,
            secret_env_allow: Vec::new(),
            secret_dirs: Vec::new(),
            max_open_files: 4096,
            max_processes: 0,
            cgroup_parent: None,
            run_as_user: None,
            file_retention_ms: 30 * 24 * 60 * 60 * 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_camel_case() {
        let config: LocalConfig = serde_json::from_str(r#"{"settleMs": 5}"#).unwrap();
        assert_eq!(config.settle_ms, 5);
        assert_eq!(config.stop_grace_ms, 5000);
        assert_eq!(config.poll_interval_ms, 200);
        assert_eq!(config.state_dir, crate::provider::default_local_state_dir());
        assert!(config.secret_env_allow.is_empty());
        assert!(config.secret_dirs.is_empty());
        assert_eq!(config.max_open_files, 4096);
        assert_eq!(config.max_processes, 0);
        assert_eq!(config.cgroup_parent, None);
        assert_eq!(config.run_as_user, None);
        assert_eq!(config.file_retention_ms, 30 * 24 * 3600 * 1000);
        let config: LocalConfig = serde_json::from_str(
            r#"{"secretEnvAllow": ["A", "B_*"], "secretDirs": ["/s"], "maxOpenFiles": 5,
                "maxProcesses": 6, "cgroupParent": "/c", "runAsUser": "nobody",
                "fileRetentionMs": 7}"#,
        )
        .unwrap();
        assert_eq!(config.secret_env_allow, ["A", "B_*"]);
        assert_eq!(config.secret_dirs, [PathBuf::from("/s")]);
        assert_eq!(
            (
                config.max_open_files,
                config.max_processes,
                config.file_retention_ms
            ),
            (5, 6, 7)
        );
        assert_eq!(config.cgroup_parent, Some(PathBuf::from("/c")));
        assert_eq!(config.run_as_user.as_deref(), Some("nobody"));
    }
}
