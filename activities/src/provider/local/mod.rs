//! The local provider: each tenant's workload is one supervised process on this host.
//!
//! It is the embedded default of the worker and needs nothing but Linux (`/proc`). It is meant
//! for development and single-host use, not for hostile multi-tenancy: workloads share the
//! host's kernel, network and (unless `runAsUser` is set) the worker's uid.
//!
//! Everything the provider knows lives under `<state_dir>/<tenant_id>/`, a directory only the
//! worker may write (mode `0711`, so that a workload running as `runAsUser` can reach its own
//! working directory but neither list nor change anything else):
//!
//! - `process.json`: the process the provider started for the tenant (pid, start time, command
//!   line, execution, start instant, spec hash, the secret references but never their values).
//!   Written atomically (temporary file + rename).
//! - `<execution_id>.stdout.log` / `.stderr.log`: the output of the process an execution
//!   started. Files rather than pipes, so a workload never blocks on a full pipe and the tail
//!   survives a restart of the worker.
//! - `exit-<pid>-<starttime>.json`: how a process exited, written by the worker that spawned it
//!   (only a parent can learn the exit status), so other workers on the host can read it.
//! - `.lock`: the `flock` that serializes operations of several workers on one host.
//! - `work/`: the workload's working directory, the only place it may write (owned by
//!   `runAsUser` when set). The worker's own files are created with `O_NOFOLLOW`, so a symlink
//!   planted in their place is not followed.
//!
//! Logs and exit files older than `fileRetentionMs` are removed when a workload is spawned and
//! by `LocalProvider::prune_files`, never those of the tenant's live execution.
//!
//! A pid alone never identifies a process, since pids are reused: the tenant's process is
//! live only while `/proc/<pid>/stat` exists, shows the recorded start time and is not a
//! zombie. This is also how a restarted worker re-adopts a workload it did not spawn. Each
//! workload runs in its own session, so it outlives a crash of the worker, is not hit by a
//! Ctrl-C in the worker's terminal, and can be stopped as a whole process group.
//!
//! Its settings ([`config`]) are compiled always; the provider itself only with the `local`
//! feature, one module per role:
//!
//! - `provider`: `LocalProvider` and its `ComputeProvider` operations, delegating to the rest;
//! - `naming`: the names of a tenant's files and directories;
//! - `record`: `process.json`, the exit files and `/proc`: which process is the tenant's;
//! - `lock`: the locks that serialize a tenant's operations;
//! - `secrets`: which secret references may resolve, and resolving them;
//! - `scrub`: the stderr tail of a failed workload, its secrets redacted;
//! - `containment`: the user and limits a workload runs under; `cgroup`: its cgroup;
//! - `spawn`: starting a workload; `supervise`: reaping and stopping it;
//! - `observe`: whether an operation is done; `prune`: the retention of old files;
//! - `errors`: how the provider's failures are reported.

#[cfg(feature = "local")]
mod cgroup;
pub mod config;
#[cfg(feature = "local")]
mod containment;
#[cfg(feature = "local")]
mod errors;
#[cfg(feature = "local")]
mod lock;
#[cfg(feature = "local")]
mod naming;
#[cfg(feature = "local")]
mod observe;
#[cfg(feature = "local")]
mod provider;
#[cfg(feature = "local")]
mod prune;
#[cfg(feature = "local")]
mod record;
#[cfg(feature = "local")]
mod scrub;
#[cfg(feature = "local")]
mod secrets;
#[cfg(feature = "local")]
mod spawn;
#[cfg(feature = "local")]
mod supervise;
#[cfg(all(test, feature = "local"))]
mod tests;

pub use config::*;
#[cfg(feature = "local")]
pub use provider::LocalProvider;
