//! The local provider: each tenant's workload is one supervised process on this host.
//!
//! It is the embedded default of the worker and needs nothing but Linux (`/proc`).
//!
//! Everything the provider knows lives under `<state_dir>/<tenant_id>/`:
//!
//! - `process.json`: the process the provider started for the tenant (pid, start time, command
//!   line, execution, start instant, spec hash). Written atomically (temporary file + rename).
//! - `<execution_id>.stdout.log` / `.stderr.log`: the output of the process an execution
//!   started. Files rather than pipes, so a workload never blocks on a full pipe and the tail
//!   survives a restart of the worker.
//! - `exit-<pid>-<starttime>.json`: how a process exited, written by the worker that spawned it
//!   (only a parent can learn the exit status), so other workers on the host can read it.
//! - `.lock`: the `flock` that serializes operations of several workers on one host.
//!
//! A pid alone never identifies a process, since pids are reused: the tenant's process is
//! live only while `/proc/<pid>/stat` exists, shows the recorded start time and is not a
//! zombie. This is also how a restarted worker re-adopts a workload it did not spawn. Each
//! workload runs in its own session, so it outlives a crash of the worker, is not hit by a
//! Ctrl-C in the worker's terminal, and can be stopped as a whole process group.

use std::{
    collections::HashMap,
    ffi::OsString,
    io::{self, SeekFrom},
    os::unix::{ffi::OsStringExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex as StdMutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt},
    process::{Child, Command},
    sync::{Mutex, OwnedMutexGuard},
    time::Instant,
};

use super::{ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext};
use crate::{
    contract::{ComputeSpec, Operation, Progress, ResourceIds, SecretRef, now},
    error::{ComputeError, ErrorCode, Result},
};

const PROVIDER: &str = "local";

/// The only variables of the worker's own environment a workload inherits: anything else
/// (credentials, the worker's configuration) must not leak into tenants' processes.
const PASSTHROUGH_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

const RECORD_FILE: &str = "process.json";
const LOCK_FILE: &str = ".lock";

/// How often a stop or an observation looks at `/proc` again.
const CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// How long a process may take to disappear after SIGKILL (it can hang in the kernel, e.g. on
/// a dead NFS mount) before the stop is reported as unfinished.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an observation waits for the exit status of a dead process: its parent may be
/// reaping it right now.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: u64 = 4096;
/// `USER_HZ`, the unit of `/proc/<pid>/stat` start times: 100 on every Linux architecture
/// (the kernel converts to it whatever its internal tick rate).
const CLOCK_TICKS_PER_SEC: u64 = 100;

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
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            state_dir: super::default_local_state_dir(),
            settle_ms: 1000,
            stop_grace_ms: 5000,
            poll_interval_ms: 200,
        }
    }
}

/// What `process.json` holds: the process the provider started for a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessRecord {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: with the pid, it identifies the process.
    process_start_time: u64,
    command_line: Vec<String>,
    execution_id: String,
    started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec_hash: Option<String>,
}

impl ProcessRecord {
    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.process_start_time,
        }
    }

    fn resource_ids(&self) -> ResourceIds {
        ResourceIds {
            pid: Some(self.pid),
            command_line: self.command_line.clone(),
            process_start_time: Some(self.process_start_time),
            ..ResourceIds::default()
        }
    }
}

/// How a process ended, as its parent learnt it (`exit-<pid>-<starttime>.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExitRecord {
    exit_code: Option<i32>,
    signal: Option<i32>,
}

/// A process, told apart from later processes with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ProcessIdentity {
    pid: u32,
    start_time: u64,
}

impl ProcessIdentity {
    fn from_ids(ids: &ResourceIds) -> Option<Self> {
        Some(ProcessIdentity {
            pid: ids.pid?,
            start_time: ids.process_start_time?,
        })
    }

    /// Whether this very process still runs (a zombie has exited, it is just not reaped).
    fn is_live(self) -> bool {
        matches!(
            read_proc_stat(self.pid),
            Some(stat) if stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X')
        )
    }

    fn exit_file(self, tenant_dir: &Path) -> PathBuf {
        tenant_dir.join(format!("exit-{}-{}.json", self.pid, self.start_time))
    }
}

/// The parts of `/proc/<pid>/stat` the provider needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_time: u64,
}

fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    // pid 0 would make the path name nothing useful and, worse, `killpg(0)` means "my own
    // group": rule it out before anything is read or signalled.
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    // procfs is served from memory: a blocking read is shorter than a hop to a blocking thread.
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may itself contain spaces and parentheses; it ends at the
    // last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` is field 3, so the start time (field 22) is the 19th field after it.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// When a process started, from its `/proc` start time, for a process without a record.
fn started_at_from_proc(start_time: u64) -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_secs: i64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let boot = DateTime::from_timestamp(boot_secs, 0)?;
    let since_boot_ms = i64::try_from(start_time.checked_mul(1000)? / CLOCK_TICKS_PER_SEC).ok()?;
    Some(boot + chrono::Duration::milliseconds(since_boot_ms))
}

/// Sends `signal` to the process group led by `pid`; `Ok(false)` when the group is gone.
fn signal_group(pid: u32, signal: Signal) -> Result<bool> {
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

/// Puts the child in a session of its own, with itself as process group leader.
#[allow(unsafe_code)]
fn run_in_new_session(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. `setsid` is a plain system call, and turning its errno into an
    // `io::Error` (`from_raw_os_error`) neither allocates nor takes a lock.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
}

/// Both locks that serialize one tenant's operations; dropping it releases them.
struct TenantGuard {
    // Field order is drop order: the host-wide lock goes first, so that a task of this
    // worker waiting on the in-process lock gets the file lock at once.
    _host: Flock<std::fs::File>,
    _process: OwnedMutexGuard<()>,
}

/// The local provider (see the module documentation).
#[derive(Debug)]
pub struct LocalProvider {
    config: LocalConfig,
    /// `state_dir`, absolute, so that children's working directories and the records stay
    /// valid whatever the worker's working directory.
    root: PathBuf,
    tenant_locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Exit statuses learnt by this worker's reapers; shared with them.
    exits: Arc<StdMutex<HashMap<ProcessIdentity, ExitRecord>>>,
}

fn local_error(code: ErrorCode, message: impl Into<String>, provider_code: &str) -> ComputeError {
    ComputeError::new(code, message).with_provider(PROVIDER, Some(provider_code))
}

fn io_internal(what: &str, error: &io::Error) -> ComputeError {
    ComputeError::internal(what.to_string())
        .with_root_cause(error)
        .with_provider(PROVIDER, Some("IoError"))
}

/// Rules out tenant ids that would escape the state directory (the generic validation should
/// already have refused them).
fn check_tenant_id(tenant_id: &str) -> Result<()> {
    if tenant_id.is_empty()
        || tenant_id == "."
        || tenant_id == ".."
        || tenant_id.contains(['/', '\0'])
    {
        return Err(local_error(
            ErrorCode::InvalidConfiguration,
            "tenantId: not usable as a directory name",
            "InvalidTenantId",
        ));
    }
    Ok(())
}

/// Turns an execution id into a file name component.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn log_path(tenant_dir: &Path, execution_id: &str, stream: &str) -> PathBuf {
    tenant_dir.join(format!("{}.{stream}.log", file_safe(execution_id)))
}

/// Writes `path` so that a reader sees either the old content or the new, never a part.
async fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The last lines a process wrote to stderr, if it wrote any.
async fn stderr_tail(path: &Path) -> Option<String> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let from = len.saturating_sub(STDERR_TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).await.ok()?;
    let mut bytes = Vec::new();
    // Bounded: the process (or a stray child of it) may still be writing.
    file.take(STDERR_TAIL_BYTES)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut text: &str = &text;
    if from > 0 {
        // The read started mid-file, most likely mid-line: drop the fragment.
        if let Some(newline) = text.find('\n') {
            text = &text[newline + 1..];
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    let tail = tail.trim_end();
    (!tail.is_empty()).then(|| tail.to_string())
}

/// Where a secret's value comes from on this host.
enum SecretSource<'a> {
    Env(&'a str),
    File(&'a str),
}

fn secret_source(index: usize, secret: &SecretRef) -> Result<SecretSource<'_>> {
    let field = format!("spec.secrets[{index}].valueFrom");
    if secret.secret_key_ref.is_some() {
        return Err(local_error(
            ErrorCode::InvalidConfiguration,
            format!(
                "spec.secrets[{index}].secretKeyRef: the local provider cannot read Kubernetes \
                 secrets; set {field} to env:VAR or file:/path instead"
            ),
            "UnsupportedSecretSource",
        ));
    }
    let unsupported = || {
        local_error(
            ErrorCode::InvalidConfiguration,
            format!("{field}: the local provider supports only env:VAR and file:/path references"),
            "UnsupportedSecretSource",
        )
    };
    let value_from = secret.value_from.as_deref().ok_or_else(unsupported)?;
    if let Some(var) = value_from.strip_prefix("env:")
        && !var.is_empty()
        && !var.contains(['=', '\0'])
    {
        Ok(SecretSource::Env(var))
    } else if let Some(path) = value_from.strip_prefix("file:")
        && !path.is_empty()
    {
        Ok(SecretSource::File(path))
    } else {
        Err(unsupported())
    }
}

/// Reads a secret's value. Errors name the field only: neither the value nor the reference
/// ends up in a message.
async fn resolve_secret(index: usize, secret: &SecretRef) -> Result<OsString> {
    let field = format!("spec.secrets[{index}].valueFrom");
    match secret_source(index, secret)? {
        SecretSource::Env(var) => std::env::var_os(var).ok_or_else(|| {
            local_error(
                ErrorCode::InvalidConfiguration,
                format!("{field}: the referenced variable is not set in the worker's environment"),
                "SecretNotFound",
            )
        }),
        SecretSource::File(path) => {
            let mut bytes = tokio::fs::read(path).await.map_err(|e| {
                local_error(
                    ErrorCode::InvalidConfiguration,
                    format!("{field}: the referenced file cannot be read ({})", e.kind()),
                    "SecretNotFound",
                )
            })?;
            // Files written by editors and `echo` end with a newline that is not part of the
            // secret.
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            Ok(OsString::from_vec(bytes))
        }
    }
}

/// The workload's whole environment; later entries win.
async fn resolve_env(spec: &ComputeSpec) -> Result<Vec<(OsString, OsString)>> {
    let mut env: Vec<(OsString, OsString)> = PASSTHROUGH_ENV
        .iter()
        .filter_map(|&name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
        .collect();
    env.extend(
        spec.env
            .iter()
            .chain(&spec.config)
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    for (index, secret) in spec.secrets.iter().enumerate() {
        let value = resolve_secret(index, secret).await?;
        env.push((OsString::from(&secret.name), value));
    }
    Ok(env)
}

fn spec_hash(spec: &ComputeSpec) -> Option<String> {
    // The spec holds secret references, never values, so its hash reveals nothing.
    let bytes = serde_json::to_vec(spec).ok()?;
    Some(format!("{:x}", Sha256::digest(bytes)))
}

/// Classifies a failed spawn. Messages name the field, never a value.
fn spawn_error(error: &io::Error) -> ComputeError {
    if error.raw_os_error() == Some(Errno::ENOEXEC as i32) {
        return local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: not an executable this host can run",
            "ENOEXEC",
        );
    }
    match error.kind() {
        io::ErrorKind::NotFound => local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: executable not found",
            "ENOENT",
        ),
        io::ErrorKind::PermissionDenied => local_error(
            ErrorCode::InvalidConfiguration,
            "spec.command[0]: permission denied (is it an executable file?)",
            "EACCES",
        ),
        io::ErrorKind::InvalidInput => local_error(
            ErrorCode::InvalidConfiguration,
            "spec: a command argument or an environment variable contains a NUL byte",
            "InvalidInput",
        ),
        _ => ComputeError::internal("starting spec.command[0] failed")
            .with_root_cause(error)
            .with_provider(PROVIDER, Some("SpawnFailed")),
    }
}

impl LocalProvider {
    /// A provider keeping its state in `config.state_dir`, which is created if needed.
    pub fn new(config: LocalConfig) -> Result<Self, ComputeError> {
        if !Path::new("/proc/self/stat").exists() {
            return Err(local_error(
                ErrorCode::InvalidConfiguration,
                "the local provider needs Linux /proc, which this host does not have",
                "NoProcfs",
            ));
        }
        let dir = &config.state_dir;
        let root = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::canonicalize(dir))
            .map_err(|e| {
                local_error(
                    ErrorCode::InvalidConfiguration,
                    format!(
                        "local provider: cannot create the state directory {}: {e}",
                        dir.display()
                    ),
                    "StateDir",
                )
                .with_root_cause(&e)
            })?;
        Ok(LocalProvider {
            config,
            root,
            tenant_locks: StdMutex::default(),
            exits: Arc::default(),
        })
    }

    /// The directory holding a tenant's record, logs and lock (also the workload's working
    /// directory).
    pub fn tenant_dir(&self, tenant_id: &str) -> PathBuf {
        self.root.join(tenant_id)
    }

    /// The tenant's live process, if it has one.
    pub async fn live_process(&self, tenant_id: &str) -> Option<ResourceIds> {
        check_tenant_id(tenant_id).ok()?;
        let record = self.read_record(tenant_id).await.ok()??;
        record.identity().is_live().then(|| record.resource_ids())
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(self.config.settle_ms)
    }

    async fn lock_tenant(&self, tenant_id: &str) -> Result<TenantGuard> {
        let lock = self
            .tenant_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant_id.to_string())
            .or_default()
            .clone();
        let process = lock.lock_owned().await;
        let dir = self.tenant_dir(tenant_id);
        // `flock` blocks until another worker on the host is done with the tenant.
        let host = tokio::task::spawn_blocking(move || -> io::Result<Flock<std::fs::File>> {
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(LOCK_FILE))?;
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
        })
        .await
        .map_err(|e| {
            ComputeError::internal("locking the tenant failed")
                .with_root_cause(e)
                .with_provider(PROVIDER, Some("LockFailed"))
        })?
        .map_err(|e| io_internal("locking the tenant's state directory failed", &e))?;
        Ok(TenantGuard {
            _host: host,
            _process: process,
        })
    }

    async fn read_record(&self, tenant_id: &str) -> Result<Option<ProcessRecord>> {
        let path = self.tenant_dir(tenant_id).join(RECORD_FILE);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_internal("reading the tenant's process.json failed", &e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ComputeError::internal(format!(
                "{} is not a valid process record; delete the tenant or remove the file",
                path.display()
            ))
            .with_root_cause(e)
            .with_provider(PROVIDER, Some("CorruptRecord"))
        })
    }

    /// Starts the workload and records it. `env` is resolved beforehand so that a bad secret
    /// is found before anything is stopped.
    async fn spawn(
        &self,
        op: &OperationContext,
        spec: &ComputeSpec,
        env: Vec<(OsString, OsString)>,
    ) -> Result<ProcessRecord> {
        let dir = self.tenant_dir(&op.tenant_id);
        let stdout = open_log(&log_path(&dir, &op.execution_id, "stdout")).await?;
        let stderr = open_log(&log_path(&dir, &op.execution_id, "stderr")).await?;
        let (program, leading_args) = spec.command.split_first().ok_or_else(|| {
            local_error(
                ErrorCode::InvalidConfiguration,
                "spec.command: the local provider needs a command to run",
                "MissingCommand",
            )
        })?;
        let mut command = Command::new(program);
        command
            .args(leading_args)
            .args(&spec.args)
            .env_clear()
            .envs(env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // The workload must outlive the worker: it is stopped only by `delete`/`update`.
            .kill_on_drop(false);
        run_in_new_session(&mut command);
        let mut child = command.spawn().map_err(|e| spawn_error(&e))?;

        // The child cannot have been reaped yet (nothing waits on it before the reaper is
        // started below), so its `/proc` entry exists even if it exited already.
        let stat = child.id().and_then(read_proc_stat);
        let (Some(pid), Some(stat)) = (child.id(), stat) else {
            let _ = child.start_kill();
            self.spawn_reaper(child, dir, None);
            return Err(ComputeError::internal(
                "the workload's process vanished before it could be identified",
            )
            .with_provider(PROVIDER, Some("NoProcEntry")));
        };
        let identity = ProcessIdentity {
            pid,
            start_time: stat.start_time,
        };
        self.spawn_reaper(child, dir.clone(), Some(identity));

        let record = ProcessRecord {
            pid,
            process_start_time: stat.start_time,
            command_line: spec.command.iter().chain(&spec.args).cloned().collect(),
            execution_id: op.execution_id.clone(),
            started_at: now(),
            spec_hash: spec_hash(spec),
        };
        let written = match serde_json::to_vec_pretty(&record) {
            Ok(bytes) => write_atomically(&dir.join(RECORD_FILE), &bytes).await,
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = written {
            // An unrecorded process would never be stopped and a retry would start a second
            // one: take it down again.
            let _ = signal_group(pid, Signal::SIGKILL);
            return Err(io_internal("writing the tenant's process.json failed", &e));
        }
        tracing::info!(
            tenant_id = %op.tenant_id,
            execution_id = %op.execution_id,
            pid,
            "started the workload process"
        );
        Ok(record)
    }

    /// Waits on a child of this worker and records how it ended, in memory and on disk (only
    /// the parent can learn it; other workers on the host read the file).
    fn spawn_reaper(&self, mut child: Child, dir: PathBuf, identity: Option<ProcessIdentity>) {
        let exits = Arc::clone(&self.exits);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for a workload process failed");
                    return;
                }
            };
            let Some(identity) = identity else { return };
            let exit = ExitRecord {
                exit_code: status.code(),
                signal: status.signal(),
            };
            exits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(identity, exit);
            tracing::info!(
                pid = identity.pid,
                exit_code = ?exit.exit_code,
                signal = ?exit.signal,
                "a workload process exited"
            );
            let written = match serde_json::to_vec(&exit) {
                Ok(bytes) => write_atomically(&identity.exit_file(&dir), &bytes).await,
                Err(e) => Err(io::Error::other(e)),
            };
            if let Err(e) = written {
                tracing::warn!(pid = identity.pid, error = %e, "recording an exit status failed");
            }
        });
    }

    /// Stops a process and its group: SIGTERM, SIGKILL after the grace period. `Ok(false)`
    /// when the process was not running.
    async fn stop(&self, identity: ProcessIdentity) -> Result<bool> {
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

    /// How a dead process exited, if this worker or another one on the host learnt it.
    async fn exit_status(
        &self,
        tenant_dir: &Path,
        identity: ProcessIdentity,
    ) -> Option<ExitRecord> {
        let deadline = Instant::now() + EXIT_STATUS_WAIT;
        let file = identity.exit_file(tenant_dir);
        loop {
            let known = self
                .exits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&identity)
                .copied();
            if known.is_some() {
                return known;
            }
            if let Ok(bytes) = tokio::fs::read(&file).await
                && let Ok(exit) = serde_json::from_slice(&bytes)
            {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }

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
        let tail = stderr_tail(&log_path(&dir, execution_id, "stderr")).await;
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
    async fn observe_settle(
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
                // a conflict a retry resolves, not a crash of the workload.
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
    async fn observe_gone(&self, resources: &ResourceIds) -> Observation {
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

async fn open_log(path: &Path) -> Result<Stdio> {
    // Appending keeps the output of an earlier attempt of the same execution.
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| io_internal("creating the workload's log file failed", &e))?;
    Ok(Stdio::from(file.into_std().await))
}

/// Waits up to `within` for the process to be gone; whether it is.
async fn wait_gone(identity: ProcessIdentity, within: Duration) -> bool {
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

#[async_trait]
impl ComputeProvider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn validate(&self, spec: &ComputeSpec) -> Result<()> {
        match spec.command.first() {
            None => {
                return Err(local_error(
                    ErrorCode::InvalidConfiguration,
                    "spec.command: the local provider needs a command to run",
                    "MissingCommand",
                ));
            }
            Some(program) if program.is_empty() => {
                return Err(local_error(
                    ErrorCode::InvalidConfiguration,
                    "spec.command[0]: the executable must not be empty",
                    "MissingCommand",
                ));
            }
            Some(_) => {}
        }
        if let Some(replicas) = spec.replicas
            && replicas != 1
        {
            return Err(local_error(
                ErrorCode::InvalidConfiguration,
                "spec.replicas: the local provider runs one process per tenant",
                "UnsupportedReplicas",
            ));
        }
        for (index, secret) in spec.secrets.iter().enumerate() {
            secret_source(index, secret)?;
        }
        Ok(())
    }

    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        self.validate(spec)?;
        let _guard = self.lock_tenant(&op.tenant_id).await?;
        if let Some(record) = self.read_record(&op.tenant_id).await?
            && record.identity().is_live()
        {
            // Never a second process, even for a different spec: changing it is `update`'s job.
            tracing::info!(
                tenant_id = %op.tenant_id,
                pid = record.pid,
                "the workload process is already running"
            );
            return Ok(record.resource_ids());
        }
        let env = resolve_env(spec).await?;
        Ok(self.spawn(op, spec, env).await?.resource_ids())
    }

    async fn update(
        &self,
        op: &OperationContext,
        current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        self.validate(desired)?;
        let _guard = self.lock_tenant(&op.tenant_id).await?;
        let record = self.read_record(&op.tenant_id).await?;
        if let Some(record) = &record
            && record.execution_id == op.execution_id
            && record.identity().is_live()
        {
            // A retry of an update that already restarted the workload.
            return Ok(record.resource_ids());
        }
        // Before anything is stopped: a secret that cannot be read must leave the old process
        // running.
        let env = resolve_env(desired).await?;
        let recorded = record.as_ref().map(ProcessRecord::identity);
        if let Some(identity) = recorded {
            self.stop(identity).await?;
        }
        if let Some(identity) = ProcessIdentity::from_ids(&current.resource_ids)
            && Some(identity) != recorded
        {
            self.stop(identity).await?;
        }
        Ok(self.spawn(op, desired, env).await?.resource_ids())
    }

    async fn delete(&self, op: &OperationContext, current: &CurrentState) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        let _guard = self.lock_tenant(&op.tenant_id).await?;
        // A broken record must not make the tenant undeletable: fall back to the store's ids.
        let record = self.read_record(&op.tenant_id).await.unwrap_or_else(|e| {
            tracing::warn!(tenant_id = %op.tenant_id, error = %e, "ignoring an unreadable process record");
            None
        });
        let mut stopped = ResourceIds::default();
        let recorded = record.as_ref().map(ProcessRecord::identity);
        if let Some(record) = &record
            && self.stop(record.identity()).await?
        {
            stopped = record.resource_ids();
        }
        if let Some(identity) = ProcessIdentity::from_ids(&current.resource_ids)
            && Some(identity) != recorded
            && self.stop(identity).await?
            && stopped.is_empty()
        {
            stopped = current.resource_ids.clone();
        }
        match tokio::fs::remove_file(self.tenant_dir(&op.tenant_id).join(RECORD_FILE)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_internal("removing the tenant's process.json failed", &e)),
        }
        Ok(stopped)
    }

    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation> {
        check_tenant_id(&op.tenant_id)?;
        match op.operation {
            Operation::Provision | Operation::Update => self.observe_settle(op, resources).await,
            Operation::Delete => Ok(self.observe_gone(resources).await),
        }
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_internal("listing the state directory failed", &e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_internal("listing the state directory failed", &e))?
        {
            let tenant_id = entry.file_name().to_string_lossy().into_owned();
            if check_tenant_id(&tenant_id).is_err() || !entry.path().is_dir() {
                continue;
            }
            // Only a live process is a resource: a record of an exited one holds nothing.
            if let Some(record) = self.read_record(&tenant_id).await?
                && record.identity().is_live()
            {
                out.push(ManagedResource {
                    tenant_id,
                    kind: "process".into(),
                    id: record.pid.to_string(),
                    execution_id: Some(record.execution_id),
                });
            }
        }
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(out)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tempfile::TempDir;

    use super::*;
    use crate::contract::SecretKeyRef;

    /// A provider over its own state directory. Dropping it SIGKILLs every process a record
    /// still names, so that a failing test leaves nothing behind.
    struct TestEnv {
        dir: TempDir,
        provider: LocalProvider,
    }

    impl TestEnv {
        fn new() -> Self {
            let dir = TempDir::new().unwrap();
            let provider = LocalProvider::new(config(dir.path())).unwrap();
            TestEnv { dir, provider }
        }

        /// Another provider over the same state directory (another worker on the host).
        fn second_provider(&self) -> LocalProvider {
            LocalProvider::new(config(self.dir.path())).unwrap()
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    impl Drop for TestEnv {
        fn drop(&mut self) {
            let Ok(entries) = std::fs::read_dir(&self.provider.root) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(bytes) = std::fs::read(entry.path().join(RECORD_FILE)) else {
                    continue;
                };
                if let Ok(record) = serde_json::from_slice::<ProcessRecord>(&bytes)
                    && record.identity().is_live()
                {
                    let _ = signal_group(record.pid, Signal::SIGKILL);
                }
            }
        }
    }

    fn config(dir: &Path) -> LocalConfig {
        LocalConfig {
            state_dir: dir.join("state"),
            settle_ms: 300,
            stop_grace_ms: 300,
            poll_interval_ms: 50,
        }
    }

    fn op(tenant: &str, execution: &str, operation: Operation) -> OperationContext {
        OperationContext {
            execution_id: execution.to_string(),
            tenant_id: tenant.to_string(),
            operation,
            metadata: Default::default(),
        }
    }

    fn spec(command: &[&str]) -> ComputeSpec {
        ComputeSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..ComputeSpec::default()
        }
    }

    fn identity(ids: &ResourceIds) -> ProcessIdentity {
        ProcessIdentity::from_ids(ids).expect("pid and start time")
    }

    /// Observes until the answer is final (or fails the test after 5 s).
    async fn observe_until_final(
        provider: &LocalProvider,
        op: &OperationContext,
        ids: &ResourceIds,
    ) -> (Observation, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut in_progress = 0;
        loop {
            match provider.observe(op, ids).await.unwrap() {
                Observation::InProgress(_) => in_progress += 1,
                other => return (other, in_progress),
            }
            assert!(Instant::now() < deadline, "no final observation within 5s");
        }
    }

    async fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.is_empty()
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        let own = read_proc_stat(std::process::id()).unwrap();
        assert_ne!(own.state, 'Z');
        assert!(
            ProcessIdentity {
                pid: std::process::id(),
                start_time: own.start_time
            }
            .is_live()
        );
        assert_eq!(read_proc_stat(0), None);
    }

    #[test]
    fn config_defaults_and_camel_case() {
        let config: LocalConfig = serde_json::from_str(r#"{"settleMs": 5}"#).unwrap();
        assert_eq!(config.settle_ms, 5);
        assert_eq!(config.stop_grace_ms, 5000);
        assert_eq!(config.poll_interval_ms, 200);
        assert_eq!(config.state_dir, super::super::default_local_state_dir());
    }

    #[tokio::test]
    async fn provision_is_idempotent_and_settles() {
        let env = TestEnv::new();
        let p = &env.provider;
        let first = op("t1", "exec-1", Operation::Provision);
        let ids = p.provision(&first, &spec(&["sleep", "30"])).await.unwrap();
        assert!(identity(&ids).is_live());
        assert_eq!(ids.command_line, ["sleep", "30"]);

        // Even with another spec and execution: still the same process.
        let again = p
            .provision(
                &op("t1", "exec-2", Operation::Provision),
                &spec(&["sleep", "40"]),
            )
            .await
            .unwrap();
        assert_eq!(again, ids);
        assert_eq!(p.live_process("t1").await, Some(ids.clone()));

        let (outcome, in_progress) = observe_until_final(p, &first, &ids).await;
        assert_eq!(outcome, Observation::Succeeded(ids.clone()));
        assert!(
            in_progress >= 1,
            "the first observation must still be settling"
        );

        let record: ProcessRecord =
            serde_json::from_slice(&std::fs::read(p.tenant_dir("t1").join(RECORD_FILE)).unwrap())
                .unwrap();
        assert_eq!(record.execution_id, "exec-1");
        assert!(record.spec_hash.is_some());

        p.delete(
            &op("t1", "exec-3", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
    }

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

    #[tokio::test]
    async fn update_replaces_the_process_once() {
        let env = TestEnv::new();
        let p = &env.provider;
        let old = p
            .provision(
                &op("t3", "exec-1", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        let current = CurrentState {
            spec: Some(spec(&["sleep", "30"])),
            resource_ids: old.clone(),
        };
        let mut desired = spec(&["sleep"]);
        desired.args = vec!["31".to_string()];
        let update = op("t3", "exec-2", Operation::Update);
        let new = p.update(&update, &current, &desired).await.unwrap();
        assert!(!identity(&old).is_live());
        assert!(identity(&new).is_live());
        assert_ne!(new.pid, old.pid);
        assert_eq!(new.command_line, ["sleep", "31"]);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", new.pid.unwrap())).unwrap();
        assert_eq!(cmdline, b"sleep\x0031\x00");

        // A retry of the same update must not restart it again.
        let retried = p.update(&update, &current, &desired).await.unwrap();
        assert_eq!(retried, new);
        assert!(identity(&new).is_live());

        let (outcome, _) = observe_until_final(p, &update, &new).await;
        assert_eq!(outcome, Observation::Succeeded(new.clone()));

        p.delete(
            &op("t3", "exec-3", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();
        assert!(!identity(&new).is_live());
    }

    #[tokio::test]
    async fn update_with_an_unreadable_secret_keeps_the_old_process() {
        let env = TestEnv::new();
        let p = &env.provider;
        let old = p
            .provision(
                &op("t3b", "exec-1", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        let mut desired = spec(&["sleep", "31"]);
        desired.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: Some("file:/nonexistent/compute-worker-test-secret".into()),
            secret_key_ref: None,
        }];
        let error = p
            .update(
                &op("t3b", "exec-2", Operation::Update),
                &CurrentState::default(),
                &desired,
            )
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfiguration);
        assert!(error.message.contains("spec.secrets[0].valueFrom"));
        assert!(!error.message.contains("nonexistent"));
        assert!(identity(&old).is_live());
    }

    #[tokio::test]
    async fn delete_stops_and_is_idempotent() {
        let env = TestEnv::new();
        let p = &env.provider;
        let ids = p
            .provision(
                &op("t4", "exec-1", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        let delete = op("t4", "exec-2", Operation::Delete);
        let current = CurrentState {
            spec: None,
            resource_ids: ids.clone(),
        };
        let stopped = p.delete(&delete, &current).await.unwrap();
        assert_eq!(stopped, ids);
        assert!(!identity(&ids).is_live());
        assert_eq!(p.live_process("t4").await, None);
        assert!(!p.tenant_dir("t4").join(RECORD_FILE).exists());
        assert_eq!(
            p.observe(&delete, &stopped).await.unwrap(),
            Observation::Succeeded(ResourceIds::default())
        );

        let again = p.delete(&delete, &current).await.unwrap();
        assert!(again.is_empty());
        // A tenant that never had anything.
        let never = p
            .delete(
                &op("never", "exec-3", Operation::Delete),
                &CurrentState::default(),
            )
            .await
            .unwrap();
        assert!(never.is_empty());
    }

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
        while !p.tenant_dir("t5").join("ready").exists() {
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
    async fn another_worker_re_adopts_a_live_process() {
        let env = TestEnv::new();
        let ids = env
            .provider
            .provision(
                &op("t6", "exec-1", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        let other = env.second_provider();
        assert_eq!(other.live_process("t6").await, Some(ids.clone()));
        let again = other
            .provision(
                &op("t6", "exec-2", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        assert_eq!(again, ids);
        let stopped = other
            .delete(
                &op("t6", "exec-3", Operation::Delete),
                &CurrentState::default(),
            )
            .await
            .unwrap();
        assert_eq!(stopped, ids);
        assert!(!identity(&ids).is_live());
    }

    #[tokio::test]
    async fn secrets_are_resolved_into_the_environment_only() {
        let env = TestEnv::new();
        let p = &env.provider;
        let secret_file = env.path("secret.txt");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let out = env.path("out.txt");
        // A variable of the worker that is not passed through must stay invisible.
        let hidden = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .find(|k| {
                !PASSTHROUGH_ENV.contains(&k.as_str())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit())
            })
            .expect("the test process has some environment");
        let script = format!(
            "printf '%s|%s|%s|%s|%s' \"$FROM_ENV\" \"$FROM_FILE\" \"$PLAIN\" \"$CONF\" \
             \"${{{hidden}:-unset}}\" > \"$OUT\""
        );
        let mut s = spec(&["sh", "-c", &script]);
        s.env = BTreeMap::from([
            ("PLAIN".to_string(), "plain".to_string()),
            ("OUT".to_string(), out.display().to_string()),
        ]);
        s.config = BTreeMap::from([("CONF".to_string(), "conf".to_string())]);
        s.secrets = vec![
            SecretRef {
                name: "FROM_ENV".into(),
                value_from: Some("env:PATH".into()),
                secret_key_ref: None,
            },
            SecretRef {
                name: "FROM_FILE".into(),
                value_from: Some(format!("file:{}", secret_file.display())),
                secret_key_ref: None,
            },
        ];
        p.validate(&s).unwrap();
        let ids = p
            .provision(&op("t7", "exec-1", Operation::Provision), &s)
            .await
            .unwrap();
        let written = wait_for_file(&out).await;
        let path = std::env::var("PATH").unwrap();
        assert_eq!(written, format!("{path}|s3cret|plain|conf|unset"));

        // Nothing the provider writes holds a resolved value.
        let record = std::fs::read_to_string(p.tenant_dir("t7").join(RECORD_FILE)).unwrap();
        assert!(!record.contains("s3cret"));
        assert!(!format!("{ids:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_missing_secret_source_is_invalid_configuration() {
        let env = TestEnv::new();
        let p = &env.provider;
        let mut s = spec(&["sleep", "30"]);
        s.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: Some("env:COMPUTE_WORKER_TEST_SURELY_UNSET_3F9A".into()),
            secret_key_ref: None,
        }];
        p.validate(&s).unwrap();
        let error = p
            .provision(&op("t8", "exec-1", Operation::Provision), &s)
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfiguration);
        assert!(error.message.contains("spec.secrets[0].valueFrom"));
        assert!(!error.message.contains("COMPUTE_WORKER_TEST"));
        assert_eq!(p.live_process("t8").await, None);
    }

    #[test]
    fn validate_names_the_field() {
        let dir = TempDir::new().unwrap();
        let p = LocalProvider::new(config(dir.path())).unwrap();
        let message = |s: &ComputeSpec| {
            let e = p.validate(s).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
            e.message
        };
        assert!(message(&spec(&[])).starts_with("spec.command"));
        assert!(message(&spec(&[""])).starts_with("spec.command[0]"));

        let mut s = spec(&["sleep", "1"]);
        s.replicas = Some(2);
        assert!(message(&s).contains("one process per tenant"));
        s.replicas = Some(1);
        p.validate(&s).unwrap();

        s.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: None,
            secret_key_ref: Some(SecretKeyRef {
                name: "db".into(),
                key: "password".into(),
            }),
        }];
        let m = message(&s);
        assert!(m.contains("spec.secrets[0].secretKeyRef"), "{m}");
        assert!(m.contains("spec.secrets[0].valueFrom"), "{m}");

        s.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: Some("arn:aws:ssm:eu-west-1:1:parameter/x".into()),
            secret_key_ref: None,
        }];
        let m = message(&s);
        assert!(m.starts_with("spec.secrets[0].valueFrom"), "{m}");
        assert!(!m.contains("arn:"), "{m}");
    }

    #[tokio::test]
    async fn a_record_with_another_start_time_is_not_live() {
        let env = TestEnv::new();
        let p = &env.provider;
        // Our own pid with a wrong start time: what a reused pid looks like.
        let own = read_proc_stat(std::process::id()).unwrap();
        let fake = ProcessRecord {
            pid: std::process::id(),
            process_start_time: own.start_time + 1,
            command_line: vec!["sleep".into(), "30".into()],
            execution_id: "exec-0".into(),
            started_at: now(),
            spec_hash: None,
        };
        std::fs::create_dir_all(p.tenant_dir("t9")).unwrap();
        std::fs::write(
            p.tenant_dir("t9").join(RECORD_FILE),
            serde_json::to_vec(&fake).unwrap(),
        )
        .unwrap();
        assert_eq!(p.live_process("t9").await, None);

        // Delete must not touch the stranger; provision must start a process of its own.
        let stopped = p
            .delete(
                &op("t9", "exec-1", Operation::Delete),
                &CurrentState {
                    spec: None,
                    resource_ids: fake.resource_ids(),
                },
            )
            .await
            .unwrap();
        assert!(stopped.is_empty());
        std::fs::write(
            p.tenant_dir("t9").join(RECORD_FILE),
            serde_json::to_vec(&fake).unwrap(),
        )
        .unwrap();
        let ids = p
            .provision(
                &op("t9", "exec-2", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        assert_ne!(ids.pid, Some(std::process::id()));
        assert!(identity(&ids).is_live());
    }

    #[tokio::test]
    async fn a_missing_executable_is_invalid_configuration() {
        let env = TestEnv::new();
        let error = env
            .provider
            .provision(
                &op("t10", "exec-1", Operation::Provision),
                &spec(&["/nonexistent/compute-worker-test-binary"]),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfiguration);
        assert_eq!(error.message, "spec.command[0]: executable not found");
        assert_eq!(env.provider.live_process("t10").await, None);

        let error = env
            .provider
            .provision(
                &op("t10", "exec-2", Operation::Provision),
                &spec(&["compute-worker-test-binary-not-on-path"]),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidConfiguration);
    }
}
