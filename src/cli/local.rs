//! `--local-*`: the local provider's flags and their conversion into its config.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use compute_activities::provider::local::LocalConfig;

/// Settings of the local provider; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// Local provider: where workloads' records and logs live.
    #[arg(
        long,
        env = "COMPUTE_LOCAL_STATE_DIR",
        default_value = ".compute-worker/local"
    )]
    pub local_state_dir: PathBuf,
    /// Local provider: how long a workload must stay up to count as healthy.
    #[arg(long, env = "COMPUTE_LOCAL_SETTLE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub local_settle: Duration,
    /// Local provider: how long a workload gets between SIGTERM and SIGKILL.
    #[arg(long, env = "COMPUTE_LOCAL_STOP_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub local_stop_grace: Duration,
    /// Local provider: the worker's environment variables an `env:NAME` secret may name
    /// (comma-separated exact names or `PREFIX*` patterns; default: none, so no `env:` secret
    /// resolves).
    #[arg(long, env = "COMPUTE_LOCAL_SECRET_ENV_ALLOW", value_delimiter = ',')]
    pub local_secret_env_allow: Vec<String>,
    /// Local provider: a directory `file:PATH` secrets may lie in, after symlinks are
    /// resolved (repeatable or comma-separated; default: none, so no `file:` secret resolves).
    #[arg(long, env = "COMPUTE_LOCAL_SECRET_DIR", value_delimiter = ',')]
    pub local_secret_dir: Vec<PathBuf>,
    /// Local provider: the user (name or uid) workloads run as, with its primary group and
    /// no supplementary groups (the worker must run as root); default: the worker's own.
    #[arg(long, env = "COMPUTE_LOCAL_RUN_AS_USER")]
    pub local_run_as_user: Option<String>,
    /// Local provider: a delegated cgroup v2 directory; each workload then runs in a child
    /// cgroup with `spec.memory` as `memory.max` (default: `spec.memory` as RLIMIT_DATA).
    #[arg(long, env = "COMPUTE_LOCAL_CGROUP_PARENT")]
    pub local_cgroup_parent: Option<PathBuf>,
    /// Local provider: a workload's open-file limit (RLIMIT_NOFILE; 0 keeps the worker's).
    #[arg(long, env = "COMPUTE_LOCAL_MAX_OPEN_FILES", default_value_t = 4096)]
    pub local_max_open_files: u64,
    /// Local provider: a workload's process limit (RLIMIT_NPROC, counted per user; 0 keeps
    /// the worker's).
    #[arg(long, env = "COMPUTE_LOCAL_MAX_PROCESSES", default_value_t = 0)]
    pub local_max_processes: u64,
}

impl From<LocalArgs> for LocalConfig {
    fn from(a: LocalArgs) -> Self {
        LocalConfig {
            state_dir: a.local_state_dir,
            settle_ms: millis(a.local_settle),
            stop_grace_ms: millis(a.local_stop_grace),
            secret_env_allow: super::non_empty(a.local_secret_env_allow),
            secret_dirs: a.local_secret_dir,
            run_as_user: a.local_run_as_user,
            cgroup_parent: a.local_cgroup_parent,
            max_open_files: a.local_max_open_files,
            max_processes: a.local_max_processes,
            ..LocalConfig::default()
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
