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
//! by [`LocalProvider::prune_files`], never those of the tenant's live execution.
//!
//! A pid alone never identifies a process, since pids are reused: the tenant's process is
//! live only while `/proc/<pid>/stat` exists, shows the recorded start time and is not a
//! zombie. This is also how a restarted worker re-adopts a workload it did not spawn. Each
//! workload runs in its own session, so it outlives a crash of the worker, is not hit by a
//! Ctrl-C in the worker's terminal, and can be stopped as a whole process group.
//!
//! # Secrets
//!
//! Secret references are denied by default. `env:NAME` resolves only a name the operator
//! allowed (`secretEnvAllow`: exact names or `PREFIX*`), `file:PATH` only an absolute path that,
//! symlinks and `..` resolved, is a regular file of at most 64 KiB under one of `secretDirs`.
//! [`validate`](ComputeProvider::validate) checks this before anything is recorded, with one
//! message whether or not the variable or file exists, so nothing can be probed. Files are read
//! without following a final symlink, without blocking on a FIFO swapped in, and with a bound.
//!
//! A resolved value never leaves the worker: the stderr tail of a failed workload has every
//! value of its execution's secrets, raw and in base64 (standard and URL-safe), replaced by
//! `[REDACTED]`. The observer may be another worker or a restarted one, so the references are
//! kept in `process.json` and resolved again (through the same checks); when a value cannot be
//! resolved again, has changed since the spawn or is too short to scrub (under 4 bytes), the
//! tail is withheld altogether.
//!
//! # Containment
//!
//! Set in the child before exec: `spec.memory` as a cgroup v2 `memory.max` when `cgroupParent`
//! names a delegated cgroup the worker may create children in, else as `RLIMIT_DATA` (not
//! `RLIMIT_AS`, which breaks runtimes that reserve address space, such as Node and the JVM);
//! `RLIMIT_NOFILE` and `RLIMIT_NPROC` from the configuration; and, with `runAsUser`, that
//! user's uid and primary gid, supplementary groups dropped.

use std::{
    collections::HashMap,
    ffi::{CString, OsString},
    io::{self, Read, SeekFrom, Write},
    os::unix::{
        ffi::OsStringExt,
        fs::{OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
        process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex as StdMutex, PoisonError},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::{
        resource::{Resource, getrlimit, setrlimit},
        signal::{Signal, killpg},
    },
    unistd::{Gid, Pid, Uid, User},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
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
/// The workload's working directory, inside the tenant directory.
const WORK_DIR: &str = "work";

/// How often a stop or an observation looks at `/proc` again.
const CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// How long a process may take to disappear after SIGKILL (it can hang in the kernel, e.g. on
/// a dead NFS mount) before the stop is reported as unfinished.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an observation waits for the exit status of a dead process: its parent may be
/// reaping it right now.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);
/// How long a reaper's exit status stays in memory when no final observation takes it (the
/// file on disk still has it).
const EXIT_MEMORY: Duration = Duration::from_secs(600);
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: u64 = 4096;
/// `USER_HZ`, the unit of `/proc/<pid>/stat` start times: 100 on every Linux architecture
/// (the kernel converts to it whatever its internal tick rate).
const CLOCK_TICKS_PER_SEC: u64 = 100;
/// The largest `file:` secret: anything bigger is not a credential, and reading it would let a
/// request exhaust the worker's memory.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// The most all of a spec's secrets may hold together (the kernel refuses a much larger
/// environment at exec anyway), which also bounds what scrubbing them costs.
const MAX_SECRETS_TOTAL_BYTES: u64 = 1024 * 1024;
/// A resolved value shorter than this cannot be scrubbed from output without hiding common
/// words, so a tail that could hold one is withheld instead.
const MIN_SCRUBBED_SECRET_BYTES: usize = 4;
const REDACTED: &[u8] = b"[REDACTED]";
/// The stderr tail of a workload whose secrets could not be resolved again for scrubbing.
const WITHHELD_TAIL: &str = "[withheld: the workload's stderr may contain a secret]";
/// Bounds on the worker's own small files, so that a corrupted one cannot exhaust memory.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;
const MAX_EXIT_FILE_BYTES: u64 = 4096;

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
            state_dir: super::default_local_state_dir(),
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
    /// The references (never the values) of the process's secrets, resolved again to scrub
    /// them from its stderr. None in a record of an older worker: secrets unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secrets: Option<Vec<SecretRef>>,
    /// A digest of the values resolved at the spawn, to tell whether a value resolved again
    /// is still the one the process got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secrets_digest: Option<String>,
    /// The cgroup the process was put in, removed once it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<PathBuf>,
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

/// What the child sets on itself between fork and exec. Prepared before the fork, since
/// nothing may allocate or take a lock there.
#[derive(Debug, Default)]
struct Containment {
    /// Soft and hard limit alike, never above the worker's own hard limit.
    rlimits: Vec<(Resource, u64)>,
    /// `cgroup.procs` of the workload's cgroup.
    cgroup_procs: Option<CString>,
    run_as: Option<RunAs>,
}

/// The user a workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// What a failure to contain the child reports instead of its own errno: one that `exec` never
/// returns, so that it cannot be mistaken for a bad command (an `INVALID_CONFIGURATION`).
const CONTAINMENT_ERRNO: Errno = Errno::EOWNERDEAD;

/// Puts the child in a session of its own, with itself as process group leader, then in its
/// cgroup, under its limits and, last, under its user (the cgroup and limits need the worker's
/// privileges).
#[allow(unsafe_code)]
fn contain(command: &mut Command, containment: Containment) {
    let contained = move || -> io::Result<()> {
        for &(resource, limit) in &containment.rlimits {
            setrlimit(resource, limit, limit)?;
        }
        if let Some(RunAs { uid, gid }) = containment.run_as {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes plain system calls (setsid, open, write, close, setrlimit,
    // setgroups, setgid, setuid) on values prepared before the fork; an `io::Error` made from
    // an errno (`from_raw_os_error`) neither allocates nor takes a lock. The pointers given to
    // open and write point to a `CString` the closure owns and to a static byte.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(procs) = &containment.cgroup_procs {
                // "0" moves the writing process, so no pid needs formatting here.
                let fd =
                    nix::libc::open(procs.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::from(CONTAINMENT_ERRNO));
                }
                let written = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                nix::libc::close(fd);
                if written != 1 {
                    return Err(io::Error::from(CONTAINMENT_ERRNO));
                }
            }
            contained().map_err(|_| io::Error::from(CONTAINMENT_ERRNO))
        });
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
    secrets: Arc<SecretPolicy>,
    run_as: Option<RunAs>,
    tenant_locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Exit statuses learnt by this worker's reapers, with when; shared with them. An entry
    /// goes once a final observation took it, or after [`EXIT_MEMORY`].
    exits: Arc<StdMutex<HashMap<ProcessIdentity, (ExitRecord, Instant)>>>,
}

fn local_error(code: ErrorCode, message: impl Into<String>, provider_code: &str) -> ComputeError {
    ComputeError::new(code, message).with_provider(PROVIDER, Some(provider_code))
}

fn io_internal(what: &str, error: &io::Error) -> ComputeError {
    ComputeError::internal(what.to_string())
        .with_root_cause(error)
        .with_provider(PROVIDER, Some("IoError"))
}

/// A setting of the local provider the worker cannot start with.
fn config_error(message: String) -> ComputeError {
    local_error(ErrorCode::InvalidConfiguration, message, "LocalConfig")
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

fn log_name(execution_id: &str, stream: &str) -> String {
    format!("{}.{stream}.log", file_safe(execution_id))
}

fn log_path(tenant_dir: &Path, execution_id: &str, stream: &str) -> PathBuf {
    tenant_dir.join(log_name(execution_id, stream))
}

/// Opens one of the worker's own files (or a secret) for reading: a final symlink is not
/// followed and a FIFO planted in its place does not block the open.
async fn open_for_reading(path: &Path) -> io::Result<tokio::fs::File> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await?;
    if !file.metadata().await?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads one of the worker's own small files, refusing one larger than `max` bytes.
async fn read_own_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_for_reading(path).await?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok(bytes)
}

/// Writes `path` so that a reader sees either the old content or the new, never a part. The
/// temporary file is created afresh, without following a symlink planted in its place.
async fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    match tokio::fs::remove_file(&tmp).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .await?;
    file.write_all(bytes).await?;
    // tokio's file writes in the background: the rename must not overtake the write.
    file.flush().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// The last lines a process wrote to stderr, if it wrote any, with every form of each of
/// `secrets` (see [`scrub_forms`]) replaced by `[REDACTED]`.
async fn stderr_tail(path: &Path, secrets: &[Vec<u8>]) -> Option<String> {
    let forms = scrub_forms(secrets);
    // An occurrence cut by the start of the read would escape the search: read a margin more
    // and drop it once the search is done.
    let margin = forms.iter().map(|f| f.needle.len() + 4).max().unwrap_or(0) as u64;
    let mut file = open_for_reading(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let from = len.saturating_sub(STDERR_TAIL_BYTES + margin);
    file.seek(SeekFrom::Start(from)).await.ok()?;
    let mut bytes = Vec::new();
    // Bounded: the process (or a stray child of it) may still be writing.
    file.take(STDERR_TAIL_BYTES + margin)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    let skip = if from > 0 { margin as usize } else { 0 };
    let mut scrubbed = redact(&bytes, &forms, skip);
    let mut mid_file = from > 0;
    let max = STDERR_TAIL_BYTES as usize;
    if scrubbed.len() > max {
        scrubbed.drain(..scrubbed.len() - max);
        mid_file = true;
    }
    let text = String::from_utf8_lossy(&scrubbed);
    let mut text: &str = &text;
    if mid_file {
        // The tail starts mid-file, most likely mid-line: drop the fragment.
        if let Some(newline) = text.find('\n') {
            text = &text[newline + 1..];
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    let tail = tail.trim_end();
    (!tail.is_empty()).then(|| tail.to_string())
}

/// One byte string to hide from output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ScrubForm {
    needle: Vec<u8>,
    /// The needle is the base64 of a value's whole 3-byte groups: the group after it (up to 4
    /// characters, padding included) encodes the value's last bytes and is hidden with it.
    last_group: bool,
}

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL_SAFE: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with padding (RFC 4648) in the given alphabet.
fn base64_encode(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                alphabet[((group >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

/// What to hide of each secret value: the value itself and its base64, standard and URL-safe.
/// The base64 form is searched as the encoding of the value's whole 3-byte groups, which is
/// the same padded or not and whatever follows the value (`echo` adds a newline), plus the
/// group after it: it covers the padded and unpadded forms and the encoding of a longer
/// string starting with the value.
fn scrub_forms(values: &[Vec<u8>]) -> Vec<ScrubForm> {
    let mut forms = Vec::new();
    for value in values.iter().filter(|v| !v.is_empty()) {
        forms.push(ScrubForm {
            needle: value.clone(),
            last_group: false,
        });
        let whole = value.len() / 3 * 4;
        if whole == 0 {
            continue;
        }
        for alphabet in [BASE64_STANDARD, BASE64_URL_SAFE] {
            let mut needle = base64_encode(value, alphabet);
            needle.truncate(whole);
            forms.push(ScrubForm {
                needle,
                last_group: value.len() % 3 != 0,
            });
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

fn is_base64_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'-' | b'_' | b'=')
}

/// `bytes` from `skip` on, each run of bytes covered by an occurrence of a form replaced by
/// `[REDACTED]`. Occurrences are searched in the whole of `bytes`, so that one crossing
/// `skip` is hidden too.
fn redact(bytes: &[u8], forms: &[ScrubForm], skip: usize) -> Vec<u8> {
    let mut hidden = vec![false; bytes.len()];
    for form in forms {
        let needle = form.needle.as_slice();
        if needle.is_empty() || needle.len() > bytes.len() {
            continue;
        }
        for start in 0..=bytes.len() - needle.len() {
            if !bytes[start..].starts_with(needle) {
                continue;
            }
            let mut end = start + needle.len();
            if form.last_group {
                let limit = (end + 4).min(bytes.len());
                while end < limit && is_base64_char(bytes[end]) {
                    end += 1;
                }
            }
            hidden[start..end].fill(true);
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = skip.min(bytes.len());
    while i < bytes.len() {
        if hidden[i] {
            out.extend_from_slice(REDACTED);
            while i < bytes.len() && hidden[i] {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
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

/// The one refusal of a reference outside what the operator allowed. It is the same whether
/// or not the variable or file exists, so that a caller cannot probe the worker's host, and
/// it names the field only.
fn secret_not_allowed(index: usize) -> ComputeError {
    local_error(
        ErrorCode::InvalidConfiguration,
        format!(
            "spec.secrets[{index}].valueFrom: not a secret this worker may resolve (an env: \
             variable must be one the operator allowed and set in the worker's environment; a \
             file: path must be absolute and name a regular file of at most 64 KiB in a \
             directory the operator allowed)"
        ),
        "SecretNotAllowed",
    )
}

fn secrets_too_large() -> ComputeError {
    local_error(
        ErrorCode::InvalidConfiguration,
        "spec.secrets: the referenced secrets hold more than 1 MiB together",
        "SecretsTooLarge",
    )
}

/// A reference the operator's allow-lists accept.
enum AllowedSecret<'a> {
    Env(&'a str),
    /// Canonical: symlinks and `..` resolved.
    File(PathBuf),
}

/// What secret references may resolve to (see the module documentation).
#[derive(Debug, Default)]
struct SecretPolicy {
    env_allow: Vec<String>,
    /// Canonical.
    dirs: Vec<PathBuf>,
}

impl SecretPolicy {
    fn env_allowed(&self, name: &str) -> bool {
        self.env_allow
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    fn in_a_dir(&self, path: &Path) -> bool {
        self.dirs
            .iter()
            .any(|dir| path.starts_with(dir) && path != dir)
    }

    /// Checks a reference without reading its value (what validation does). The file checks
    /// only look (`stat`), so a FIFO or a device cannot block or feed them.
    fn check<'a>(&self, index: usize, secret: &'a SecretRef) -> Result<AllowedSecret<'a>> {
        Ok(self.check_sized(index, secret)?.0)
    }

    /// [`check`](Self::check), with the value's size as it looks now.
    fn check_sized<'a>(
        &self,
        index: usize,
        secret: &'a SecretRef,
    ) -> Result<(AllowedSecret<'a>, u64)> {
        match secret_source(index, secret)? {
            SecretSource::Env(name) if self.env_allowed(name) => match std::env::var_os(name) {
                Some(value) => Ok((AllowedSecret::Env(name), value.len() as u64)),
                None => Err(secret_not_allowed(index)),
            },
            SecretSource::Env(_) => Err(secret_not_allowed(index)),
            SecretSource::File(path) => {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(secret_not_allowed(index));
                }
                let real = std::fs::canonicalize(path).map_err(|_| secret_not_allowed(index))?;
                let meta = std::fs::metadata(&real).map_err(|_| secret_not_allowed(index))?;
                if !self.in_a_dir(&real)
                    || !meta.file_type().is_file()
                    || meta.len() > MAX_SECRET_FILE_BYTES
                {
                    return Err(secret_not_allowed(index));
                }
                Ok((AllowedSecret::File(real), meta.len()))
            }
        }
    }

    /// Checks all of a spec's references, and that together they are not too large.
    fn check_all(&self, secrets: &[SecretRef]) -> Result<()> {
        let mut total = 0u64;
        for (index, secret) in secrets.iter().enumerate() {
            total = total.saturating_add(self.check_sized(index, secret)?.1);
        }
        if total > MAX_SECRETS_TOTAL_BYTES {
            return Err(secrets_too_large());
        }
        Ok(())
    }

    /// Resolves all of a spec's references, through the same checks. Blocking.
    fn resolve_all(&self, secrets: &[SecretRef]) -> Result<Vec<Vec<u8>>> {
        let mut total = 0u64;
        let mut values = Vec::with_capacity(secrets.len());
        for (index, secret) in secrets.iter().enumerate() {
            let value = self.resolve(index, secret)?;
            total = total.saturating_add(value.len() as u64);
            if total > MAX_SECRETS_TOTAL_BYTES {
                return Err(secrets_too_large());
            }
            values.push(value);
        }
        Ok(values)
    }

    /// Resolves a reference to its value, through the same checks. Blocking.
    fn resolve(&self, index: usize, secret: &SecretRef) -> Result<Vec<u8>> {
        let value = match self.check(index, secret)? {
            AllowedSecret::Env(name) => std::env::var_os(name).map(OsString::into_vec),
            AllowedSecret::File(path) => self.read_file(&path),
        };
        value.ok_or_else(|| secret_not_allowed(index))
    }

    /// Reads a checked secret file again, safely: it may have been swapped since the check.
    fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        // O_NOFOLLOW: not a symlink swapped in; O_NONBLOCK: a FIFO swapped in cannot block the
        // open (the fstat below then refuses it).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        // A directory on the way could have been swapped for a symlink too: what was opened
        // must still lie in an allowed directory.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        let meta = file.metadata().ok()?;
        if !self.in_a_dir(&opened)
            || !meta.file_type().is_file()
            || meta.len() > MAX_SECRET_FILE_BYTES
        {
            return None;
        }
        let mut bytes = Vec::new();
        // One byte more than allowed tells a file that grew since the fstat.
        (&file)
            .take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return None;
        }
        // Files written by editors and `echo` end with a newline that is not part of the
        // secret.
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Some(bytes)
    }
}

/// A digest of resolved values, kept in the record to tell whether values resolved again are
/// the ones the process got. Each value is length-prefixed, so no two lists collide.
fn secrets_digest(values: &[Vec<u8>]) -> String {
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    format!("{:x}", hasher.finalize())
}

/// The workload's environment, resolved before anything is stopped or started.
struct ResolvedEnv {
    /// The whole environment; later entries win.
    vars: Vec<(OsString, OsString)>,
    secrets_digest: String,
}

fn spec_hash(spec: &ComputeSpec) -> Option<String> {
    // The spec holds secret references, never values, so its hash reveals nothing.
    let bytes = serde_json::to_vec(spec).ok()?;
    Some(format!("{:x}", Sha256::digest(bytes)))
}

/// Classifies a failed spawn. Messages name the field, never a value.
fn spawn_error(error: &io::Error) -> ComputeError {
    if error.raw_os_error() == Some(CONTAINMENT_ERRNO as i32) {
        return ComputeError::internal(
            "putting the workload in its cgroup, under its limits or its user failed",
        )
        .with_provider(PROVIDER, Some("ContainmentFailed"));
    }
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

/// Resolves `run_as_user` (a name or a numeric uid) to its uid and primary gid.
fn resolve_user(user: &str) -> Result<RunAs> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    };
    match found {
        Ok(Some(found)) => Ok(RunAs {
            uid: found.uid,
            gid: found.gid,
        }),
        Ok(None) => Err(config_error(format!(
            "local provider: runAsUser {user:?} is not a user of this host"
        ))),
        Err(e) => Err(config_error(format!(
            "local provider: looking up runAsUser {user:?} failed: {e}"
        ))),
    }
}

/// The workload's cgroup under `parent`, with `memory.max` set when the spec has a memory
/// limit; whether that limit could be set. None when the host does not let the worker create
/// it (the spec's memory is then set as `RLIMIT_DATA`).
fn create_cgroup(
    parent: &Path,
    op: &OperationContext,
    memory_mib: Option<u64>,
) -> Option<(PathBuf, bool)> {
    // `@` is not in `file_safe`'s alphabet, so tenant and execution cannot run into each other.
    let dir = parent.join(format!(
        "{}@{}",
        file_safe(&op.tenant_id),
        file_safe(&op.execution_id)
    ));
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
/// is retried by the next stop and by [`LocalProvider::prune_files`].
async fn remove_cgroup(dir: &Path) {
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
                config_error(format!(
                    "local provider: cannot create the state directory {}: {e}",
                    dir.display()
                ))
                .with_root_cause(&e)
            })?;
        for pattern in &config.secret_env_allow {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.contains(['*', '=', '\0']) || (name.is_empty() && pattern.is_empty()) {
                return Err(config_error(format!(
                    "local provider: secretEnvAllow entry {pattern:?} is neither a variable name \
                     nor a PREFIX* pattern"
                )));
            }
        }
        let dirs = config
            .secret_dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d)
                    .and_then(|c| {
                        if c.is_dir() {
                            Ok(c)
                        } else {
                            Err(io::Error::other("not a directory"))
                        }
                    })
                    .map_err(|e| {
                        config_error(format!(
                            "local provider: secret directory {} is not usable: {e}",
                            d.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let run_as = config
            .run_as_user
            .as_deref()
            .map(resolve_user)
            .transpose()?;
        if let Some(run_as) = run_as {
            let euid = nix::unistd::geteuid();
            if !euid.is_root() && euid != run_as.uid {
                return Err(config_error(
                    "local provider: runAsUser needs a worker running as root".into(),
                ));
            }
            // The run-as user must be able to reach its working directory, never to change
            // the worker's files.
            let mode = std::fs::metadata(&root)
                .map_err(|e| io_internal("reading the state directory's mode failed", &e))?
                .permissions()
                .mode();
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode & 0o7755))
                .map_err(|e| io_internal("restricting the state directory failed", &e))?;
        }
        if let Some(parent) = &config.cgroup_parent
            && !parent.join("cgroup.procs").exists()
        {
            return Err(config_error(format!(
                "local provider: cgroupParent {} is not a cgroup v2 directory",
                parent.display()
            )));
        }
        let secrets = Arc::new(SecretPolicy {
            env_allow: config.secret_env_allow.clone(),
            dirs,
        });
        Ok(LocalProvider {
            config,
            root,
            secrets,
            run_as,
            tenant_locks: StdMutex::default(),
            exits: Arc::default(),
        })
    }

    /// The directory holding a tenant's record, logs and lock (writable by the worker only).
    pub fn tenant_dir(&self, tenant_id: &str) -> PathBuf {
        self.root.join(tenant_id)
    }

    /// The workload's working directory, inside the tenant directory.
    pub fn work_dir(&self, tenant_id: &str) -> PathBuf {
        self.tenant_dir(tenant_id).join(WORK_DIR)
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
            // Others may traverse (to a run-as user's working directory), not list or write.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
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

    /// Drops the tenant's in-process lock unless someone holds or waits for it (whoever
    /// clones it does so under the map's lock, so the count cannot grow meanwhile).
    fn forget_tenant_lock(&self, tenant_id: &str) {
        let mut locks = self
            .tenant_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if locks
            .get(tenant_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(tenant_id);
        }
    }

    async fn read_record(&self, tenant_id: &str) -> Result<Option<ProcessRecord>> {
        let path = self.tenant_dir(tenant_id).join(RECORD_FILE);
        let bytes = match read_own_file(&path, MAX_RECORD_BYTES).await {
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

    /// Resolves secret references to their values, through the allow-lists, on a blocking
    /// thread (file reads are bounded and never wait on a FIFO).
    async fn resolve_secrets(&self, secrets: &[SecretRef]) -> Result<Vec<Vec<u8>>> {
        if secrets.is_empty() {
            return Ok(Vec::new());
        }
        let policy = Arc::clone(&self.secrets);
        let secrets = secrets.to_vec();
        tokio::task::spawn_blocking(move || policy.resolve_all(&secrets))
            .await
            .map_err(|e| {
                ComputeError::internal("resolving the secrets failed")
                    .with_root_cause(e)
                    .with_provider(PROVIDER, Some("SecretTask"))
            })?
    }

    /// The workload's whole environment; later entries win.
    async fn resolve_env(&self, spec: &ComputeSpec) -> Result<ResolvedEnv> {
        let mut vars: Vec<(OsString, OsString)> = PASSTHROUGH_ENV
            .iter()
            .filter_map(|&name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
            .collect();
        vars.extend(
            spec.env
                .iter()
                .chain(&spec.config)
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        let values = self.resolve_secrets(&spec.secrets).await?;
        let secrets_digest = secrets_digest(&values);
        for (secret, value) in spec.secrets.iter().zip(values) {
            vars.push((OsString::from(&secret.name), OsString::from_vec(value)));
        }
        Ok(ResolvedEnv {
            vars,
            secrets_digest,
        })
    }

    /// The values to scrub from a process's output; None when its output must be withheld:
    /// its secrets are unknown, cannot be resolved again, changed since it started, or one is
    /// too short to scrub.
    async fn values_to_scrub(&self, record: Option<&ProcessRecord>) -> Option<Vec<Vec<u8>>> {
        let record = record?;
        let secrets = record.secrets.as_ref()?;
        if secrets.is_empty() {
            return Some(Vec::new());
        }
        let values = self.resolve_secrets(secrets).await.ok()?;
        if record.secrets_digest.as_deref() != Some(secrets_digest(&values).as_str()) {
            return None;
        }
        // An empty value cannot leak.
        if values
            .iter()
            .any(|v| !v.is_empty() && v.len() < MIN_SCRUBBED_SECRET_BYTES)
        {
            return None;
        }
        Some(values)
    }

    /// The workload's working directory, created if needed and owned by the run-as user.
    fn prepare_work_dir(&self, tenant_id: &str) -> io::Result<PathBuf> {
        let work = self.work_dir(tenant_id);
        match std::fs::symlink_metadata(&work) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the work directory is not a directory",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&work)?,
            Err(e) => return Err(e),
        }
        if let Some(RunAs { uid, gid }) = self.run_as {
            std::os::unix::fs::lchown(&work, Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))?;
        Ok(work)
    }

    /// What the child sets on itself before exec.
    fn containment(
        &self,
        spec: &ComputeSpec,
        cgroup: Option<&(PathBuf, bool)>,
    ) -> Result<Containment> {
        let memory_in_cgroup = cgroup.is_some_and(|(_, memory_set)| *memory_set);
        let data = spec
            .memory
            .filter(|_| !memory_in_cgroup)
            .map_or(0, |mib| mib.saturating_mul(1024 * 1024));
        let mut rlimits = Vec::new();
        for (resource, wanted) in [
            (Resource::RLIMIT_DATA, data),
            (Resource::RLIMIT_NOFILE, self.config.max_open_files),
            (Resource::RLIMIT_NPROC, self.config.max_processes),
        ] {
            if wanted == 0 {
                continue;
            }
            // Raising a hard limit needs a privilege; lowering one never fails.
            let (_, hard) = getrlimit(resource).map_err(|e| {
                ComputeError::internal("reading the worker's resource limits failed")
                    .with_root_cause(e)
                    .with_provider(PROVIDER, Some("Rlimit"))
            })?;
            rlimits.push((resource, wanted.min(hard)));
        }
        let cgroup_procs = match cgroup {
            Some((dir, _)) => Some(
                CString::new(dir.join("cgroup.procs").into_os_string().into_vec()).map_err(
                    |_| {
                        ComputeError::internal("the cgroup path contains a NUL byte")
                            .with_provider(PROVIDER, Some("Cgroup"))
                    },
                )?,
            ),
            None => None,
        };
        Ok(Containment {
            rlimits,
            cgroup_procs,
            run_as: self.run_as,
        })
    }

    /// Starts the workload and records it. `env` is resolved beforehand so that a bad secret
    /// is found before anything is stopped.
    async fn spawn(
        &self,
        op: &OperationContext,
        spec: &ComputeSpec,
        env: ResolvedEnv,
    ) -> Result<ProcessRecord> {
        let dir = self.tenant_dir(&op.tenant_id);
        let work = self
            .prepare_work_dir(&op.tenant_id)
            .map_err(|e| io_internal("preparing the workload's working directory failed", &e))?;
        let stdout = open_log(&log_path(&dir, &op.execution_id, "stdout")).await?;
        let stderr = open_log(&log_path(&dir, &op.execution_id, "stderr")).await?;
        let (program, leading_args) = spec.command.split_first().ok_or_else(|| {
            local_error(
                ErrorCode::InvalidConfiguration,
                "spec.command: the local provider needs a command to run",
                "MissingCommand",
            )
        })?;
        let cgroup = self
            .config
            .cgroup_parent
            .as_deref()
            .and_then(|parent| create_cgroup(parent, op, spec.memory));
        let containment = match self.containment(spec, cgroup.as_ref()) {
            Ok(containment) => containment,
            Err(e) => {
                if let Some((cgroup, _)) = &cgroup {
                    remove_cgroup(cgroup).await;
                }
                return Err(e);
            }
        };
        let cgroup = cgroup.map(|(dir, _)| dir);
        let mut command = Command::new(program);
        command
            .args(leading_args)
            .args(&spec.args)
            .env_clear()
            .envs(env.vars)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // The workload must outlive the worker: it is stopped only by `delete`/`update`.
            .kill_on_drop(false);
        contain(&mut command, containment);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                if let Some(cgroup) = &cgroup {
                    remove_cgroup(cgroup).await;
                }
                return Err(spawn_error(&e));
            }
        };

        // The child cannot have been reaped yet (nothing waits on it before the reaper is
        // started below), so its `/proc` entry exists even if it exited already.
        let stat = child.id().and_then(read_proc_stat);
        let (Some(pid), Some(stat)) = (child.id(), stat) else {
            let _ = child.start_kill();
            self.spawn_reaper(child, dir, None, cgroup);
            return Err(ComputeError::internal(
                "the workload's process vanished before it could be identified",
            )
            .with_provider(PROVIDER, Some("NoProcEntry")));
        };
        let identity = ProcessIdentity {
            pid,
            start_time: stat.start_time,
        };
        self.spawn_reaper(child, dir.clone(), Some(identity), cgroup.clone());

        let record = ProcessRecord {
            pid,
            process_start_time: stat.start_time,
            command_line: spec.command.iter().chain(&spec.args).cloned().collect(),
            execution_id: op.execution_id.clone(),
            started_at: now(),
            spec_hash: spec_hash(spec),
            secrets: Some(spec.secrets.clone()),
            secrets_digest: Some(env.secrets_digest),
            cgroup,
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
        self.prune_tenant(&op.tenant_id, Some(&op.execution_id))
            .await;
        Ok(record)
    }

    /// Removes the tenant's files older than the retention, except `keep_execution`'s logs;
    /// how many. Failures are logged: retention must never fail an operation.
    async fn prune_tenant(&self, tenant_id: &str, keep_execution: Option<&str>) -> usize {
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

    /// Waits on a child of this worker and records how it ended, in memory and on disk (only
    /// the parent can learn it; other workers on the host read the file).
    fn spawn_reaper(
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
            let written = match serde_json::to_vec(&exit) {
                Ok(bytes) => write_atomically(&identity.exit_file(&dir), &bytes).await,
                Err(e) => Err(io::Error::other(e)),
            };
            if let Err(e) = written {
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
                .remove(&identity)
                .map(|(exit, _)| exit);
            if known.is_some() {
                return known;
            }
            if let Ok(bytes) = read_own_file(&file, MAX_EXIT_FILE_BYTES).await
                && let Ok(exit) = serde_json::from_slice(&bytes)
            {
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

    /// The stderr tail of a failed process, scrubbed of its secrets, or withheld when they
    /// cannot be scrubbed.
    async fn scrubbed_stderr_tail(
        &self,
        log: &Path,
        record: Option<&ProcessRecord>,
    ) -> Option<String> {
        match self.values_to_scrub(record).await {
            Some(values) => stderr_tail(log, &values).await,
            None => stderr_tail(log, &[]).await.map(|_| {
                tracing::warn!(
                    "withholding a workload's stderr tail: its secrets cannot be scrubbed from it"
                );
                WITHHELD_TAIL.to_string()
            }),
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

    /// Delete, under the tenant's lock.
    async fn delete_locked(
        &self,
        op: &OperationContext,
        current: &CurrentState,
    ) -> Result<ResourceIds> {
        // A broken record must not make the tenant undeletable: fall back to the store's ids.
        let record = self.read_record(&op.tenant_id).await.unwrap_or_else(|e| {
            tracing::warn!(tenant_id = %op.tenant_id, error = %e, "ignoring an unreadable process record");
            None
        });
        let mut stopped = ResourceIds::default();
        let recorded = record.as_ref().map(ProcessRecord::identity);
        if let Some(record) = &record
            && self
                .stop(record.identity(), record.cgroup.as_deref())
                .await?
        {
            stopped = record.resource_ids();
        }
        if let Some(identity) = ProcessIdentity::from_ids(&current.resource_ids)
            && Some(identity) != recorded
            && self.stop(identity, None).await?
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
    // Appending keeps the output of an earlier attempt of the same execution. O_NOFOLLOW and
    // the check below: not a symlink, FIFO or device planted in its place.
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|e| io_internal("creating the workload's log file failed", &e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| io_internal("creating the workload's log file failed", &e))?;
    if !meta.is_file() {
        return Err(
            ComputeError::internal("the workload's log file is not a regular file")
                .with_provider(PROVIDER, Some("IoError")),
        );
    }
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

    fn validate(&self, _tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
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
        self.secrets.check_all(&spec.secrets)
    }

    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        self.validate(&op.tenant_id, spec)?;
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
        let env = self.resolve_env(spec).await?;
        Ok(self.spawn(op, spec, env).await?.resource_ids())
    }

    async fn update(
        &self,
        op: &OperationContext,
        current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        self.validate(&op.tenant_id, desired)?;
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
        let env = self.resolve_env(desired).await?;
        let recorded = record.as_ref().map(ProcessRecord::identity);
        if let Some(record) = &record {
            self.stop(record.identity(), record.cgroup.as_deref())
                .await?;
        }
        if let Some(identity) = ProcessIdentity::from_ids(&current.resource_ids)
            && Some(identity) != recorded
        {
            self.stop(identity, None).await?;
        }
        Ok(self.spawn(op, desired, env).await?.resource_ids())
    }

    async fn delete(&self, op: &OperationContext, current: &CurrentState) -> Result<ResourceIds> {
        check_tenant_id(&op.tenant_id)?;
        let guard = self.lock_tenant(&op.tenant_id).await?;
        let deleted = self.delete_locked(op, current).await;
        drop(guard);
        self.forget_tenant_lock(&op.tenant_id);
        deleted
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

    /// Prunes with the configured `file_retention_ms` (the worker sets it from `--retention`).
    async fn prune(&self, _older_than: Duration) -> Result<usize> {
        self.prune_files().await
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
            Self::with(|_| {})
        }

        /// With the test configuration changed by `tweak`.
        fn with(tweak: impl Fn(&mut LocalConfig)) -> Self {
            let dir = TempDir::new().unwrap();
            let mut config = config(dir.path());
            tweak(&mut config);
            let provider = LocalProvider::new(config).unwrap();
            TestEnv { dir, provider }
        }

        /// Another provider over the same state directory (another worker on the host).
        fn second_provider(&self) -> LocalProvider {
            LocalProvider::new(self.provider.config.clone()).unwrap()
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

    /// The test configuration: `<dir>/secrets` is the one secret directory, `PATH` the one
    /// variable a secret may name.
    fn config(dir: &Path) -> LocalConfig {
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        LocalConfig {
            state_dir: dir.join("state"),
            settle_ms: 300,
            stop_grace_ms: 300,
            poll_interval_ms: 50,
            secret_env_allow: vec!["PATH".into()],
            secret_dirs: vec![dir.join("secrets")],
            ..LocalConfig::default()
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
        let secret_file = env.path("secrets/secret.txt");
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
        p.validate("t", &s).unwrap();
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
        let env = TestEnv::with(|c| {
            c.secret_env_allow = vec!["COMPUTE_WORKER_TEST_SURELY_UNSET_3F9A".into()];
        });
        let p = &env.provider;
        let mut s = spec(&["sleep", "30"]);
        s.secrets = vec![SecretRef {
            name: "TOKEN".into(),
            value_from: Some("env:COMPUTE_WORKER_TEST_SURELY_UNSET_3F9A".into()),
            secret_key_ref: None,
        }];
        // Refused already by validation, before anything is recorded, and by provision too.
        assert_eq!(p.validate("t", &s).unwrap_err(), secret_not_allowed(0));
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
            let e = p.validate("t", s).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
            e.message
        };
        assert!(message(&spec(&[])).starts_with("spec.command"));
        assert!(message(&spec(&[""])).starts_with("spec.command[0]"));

        let mut s = spec(&["sleep", "1"]);
        s.replicas = Some(2);
        assert!(message(&s).contains("one process per tenant"));
        s.replicas = Some(1);
        p.validate("t", &s).unwrap();

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
            secrets: Some(Vec::new()),
            secrets_digest: None,
            cgroup: None,
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

    fn secret(value_from: &str) -> SecretRef {
        SecretRef {
            name: "TOKEN".into(),
            value_from: Some(value_from.to_string()),
            secret_key_ref: None,
        }
    }

    fn with_secret(value_from: &str) -> ComputeSpec {
        let mut s = spec(&["sleep", "30"]);
        s.secrets = vec![secret(value_from)];
        s
    }

    /// Waits for the exact content of a file the workload writes.
    async fn wait_for_content(path: &Path, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds {text:?}, not {expected:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn env_secrets_resolve_only_allowed_names_and_unset_ones_look_forbidden() {
        let dir = TempDir::new().unwrap();
        let mut c = config(dir.path());
        c.secret_env_allow = vec![
            "HOME".into(),
            "PA*".into(),
            "COMPUTE_WORKER_TEST_UNSET_5B1C".into(),
            "COMPUTE_WORKER_TEST_UNSET_PFX_*".into(),
        ];
        let p = LocalProvider::new(c).unwrap();
        assert!(std::env::var_os("HOME").is_some() && std::env::var_os("PATH").is_some());
        p.validate("t", &with_secret("env:HOME")).unwrap();
        p.validate("t", &with_secret("env:PATH")).unwrap();
        let forbidden = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .find(|k| !p.secrets.env_allowed(k))
            .expect("the test process has a variable outside the allow-list");
        for refused in [
            format!("env:{forbidden}"),
            // A prefix of an exact entry, and an exact entry with more after it.
            "env:HOM".into(),
            "env:HOMEX".into(),
            "env:COMPUTE_WORKER_TEST_UNSET_5B1C".into(),
            "env:COMPUTE_WORKER_TEST_UNSET_PFX_9".into(),
        ] {
            let error = p.validate("t", &with_secret(&refused)).unwrap_err();
            assert_eq!(error, secret_not_allowed(0), "{refused}");
            assert_eq!(error.code, ErrorCode::InvalidConfiguration);
            assert!(error.message.starts_with("spec.secrets[0].valueFrom:"));
            assert!(!error.message.contains(&refused[4..]), "{}", error.message);
        }
        // The default allows nothing at all.
        let none = LocalProvider::new(LocalConfig {
            state_dir: dir.path().join("state2"),
            ..LocalConfig::default()
        })
        .unwrap();
        assert_eq!(
            none.validate("t", &with_secret("env:PATH")).unwrap_err(),
            secret_not_allowed(0)
        );
        assert_eq!(
            none.validate(
                "t",
                &with_secret(&format!("file:{}/x", dir.path().display()))
            )
            .unwrap_err(),
            secret_not_allowed(0)
        );
        // A pattern with a `*` elsewhere is a configuration error.
        let mut bad = config(dir.path());
        bad.secret_env_allow = vec!["A*B".into()];
        assert_eq!(
            LocalProvider::new(bad).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
    }

    #[test]
    fn file_secrets_resolve_only_small_regular_files_in_allowed_dirs() {
        let dir = TempDir::new().unwrap();
        let root = dir.path();
        let secrets = root.join("secrets");
        let p = LocalProvider::new(config(root)).unwrap();
        let file = |name: &str| format!("file:{}", secrets.join(name).display());

        std::fs::write(secrets.join("ok.txt"), "v4lue\n").unwrap();
        std::fs::write(root.join("outside.txt"), "outside").unwrap();
        std::fs::write(secrets.join("max.txt"), vec![b'a'; 64 * 1024]).unwrap();
        std::fs::write(secrets.join("big.txt"), vec![b'a'; 65 * 1024]).unwrap();
        std::fs::create_dir(secrets.join("sub")).unwrap();
        std::os::unix::fs::symlink(root.join("outside.txt"), secrets.join("escape")).unwrap();
        std::os::unix::fs::symlink(secrets.join("ok.txt"), secrets.join("inner-link")).unwrap();
        nix::unistd::mkfifo(
            &secrets.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        for allowed in [file("ok.txt"), file("max.txt"), file("inner-link")] {
            p.validate("t", &with_secret(&allowed)).unwrap();
        }
        assert_eq!(
            p.secrets.resolve(0, &secret(&file("ok.txt"))).unwrap(),
            b"v4lue"
        );
        let refused = [
            format!("file:{}", root.join("outside.txt").display()),
            "file:secrets/ok.txt".to_string(),
            format!("file:{}/../outside.txt", secrets.display()),
            file("escape"),
            file("fifo"),
            file("sub"),
            file("big.txt"),
            file("missing.txt"),
            format!("file:{}", secrets.display()),
            "file:/dev/zero".to_string(),
        ];
        for refused in &refused {
            let started = std::time::Instant::now();
            assert_eq!(
                p.validate("t", &with_secret(refused)).unwrap_err(),
                secret_not_allowed(0),
                "{refused}"
            );
            assert_eq!(
                p.secrets.resolve(0, &secret(refused)).unwrap_err(),
                secret_not_allowed(0),
                "{refused}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{refused} blocked"
            );
        }

        // Devices and FIFOs stay refused even in an allowed directory, and reading one that
        // was swapped in after the check neither blocks nor reads it.
        let mut dev = config(root);
        dev.secret_dirs = vec!["/dev".into()];
        let dev = LocalProvider::new(dev).unwrap();
        assert_eq!(
            dev.validate("t", &with_secret("file:/dev/zero"))
                .unwrap_err(),
            secret_not_allowed(0)
        );
        assert_eq!(dev.secrets.read_file(Path::new("/dev/zero")), None);
        let canonical_fifo = std::fs::canonicalize(secrets.join("fifo")).unwrap();
        assert_eq!(p.secrets.read_file(&canonical_fifo), None);
        // A file that grew past the bound after the check is refused too.
        let canonical_big = std::fs::canonicalize(secrets.join("big.txt")).unwrap();
        assert_eq!(p.secrets.read_file(&canonical_big), None);
        // Together, secrets may hold at most 1 MiB.
        let mut many = spec(&["true"]);
        many.secrets = (0..16).map(|_| secret(&file("max.txt"))).collect();
        p.validate("t", &many).unwrap();
        assert_eq!(p.secrets.resolve_all(&many.secrets).unwrap().len(), 16);
        many.secrets.push(secret(&file("ok.txt")));
        assert_eq!(p.validate("t", &many).unwrap_err(), secrets_too_large());
        assert_eq!(
            p.secrets.resolve_all(&many.secrets).unwrap_err(),
            secrets_too_large()
        );
        // And an allowed directory must exist when the worker starts.
        let mut missing = config(root);
        missing.secret_dirs = vec![root.join("nope")];
        assert_eq!(
            LocalProvider::new(missing).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
    }

    #[test]
    fn base64_and_redaction() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                base64_encode(plain.as_bytes(), BASE64_STANDARD),
                encoded.as_bytes()
            );
        }
        assert_eq!(base64_encode(&[0xfb, 0xff], BASE64_STANDARD), b"+/8=");
        assert_eq!(base64_encode(&[0xfb, 0xff], BASE64_URL_SAFE), b"-_8=");

        let forms = scrub_forms(&[b"hunter22".to_vec()]);
        let text = b"a hunter22 b aHVudGVyMjI= c aHVudGVyMjIK d aHVudGVyMjI e";
        assert_eq!(
            String::from_utf8(redact(text, &forms, 0)).unwrap(),
            "a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e"
        );
        // An occurrence crossing `skip` is hidden whole.
        assert_eq!(redact(b"xxhunter22yy", &forms, 5), b"[REDACTED]yy");
    }

    #[tokio::test]
    async fn a_tail_cut_mid_secret_shows_no_part_of_it() {
        let dir = TempDir::new().unwrap();
        let log = dir.path().join("x.stderr.log");
        let value = b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
        for offset in [0, 5, 18, 35] {
            // The secret straddles the first byte of the 4096-byte tail.
            let mut bytes = vec![b'.'; 10_000 - offset];
            bytes.extend_from_slice(&value);
            bytes.extend(std::iter::repeat_n(b'-', 4096 - (value.len() - offset)));
            std::fs::write(&log, &bytes).unwrap();
            let tail = stderr_tail(&log, std::slice::from_ref(&value))
                .await
                .unwrap();
            for window in value.windows(4) {
                assert!(
                    !tail.as_bytes().windows(4).any(|w| w == window),
                    "{offset}: {tail}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_secret_echoed_to_stderr_is_redacted_from_the_tail() {
        let env = TestEnv::new();
        // Chosen so that its base64 holds both `+` and `/`: the URL-safe form differs.
        let value = "s3cret>>>???xy";
        std::fs::write(env.path("secrets/token"), format!("{value}\n")).unwrap();
        let script = "printf '%s\\n' \"$TOKEN\" >&2; printf %s \"$TOKEN\" | base64 >&2; \
                      printf %s \"$TOKEN\" | base64 | tr '+/' '-_' | tr -d = >&2; \
                      echo \"$TOKEN\" | base64 >&2; echo \"key=$TOKEN;\" >&2; \
                      echo done >&2; exit 1";
        let mut s = spec(&["sh", "-c", script]);
        s.secrets = vec![secret(&format!(
            "file:{}",
            env.path("secrets/token").display()
        ))];
        let o = op("t20", "exec-1", Operation::Provision);
        let ids = env.provider.provision(&o, &s).await.unwrap();
        let raw = wait_for_file(&env.provider.tenant_dir("t20").join("exec-1.stderr.log")).await;
        let forms: Vec<String> = [BASE64_STANDARD, BASE64_URL_SAFE]
            .into_iter()
            .map(|a| String::from_utf8(base64_encode(value.as_bytes(), a)).unwrap())
            .collect();
        assert_ne!(forms[0], forms[1]);
        for observer in [&env.provider, &env.second_provider()] {
            let (outcome, _) = observe_until_final(observer, &o, &ids).await;
            let Observation::Failed(error) = outcome else {
                panic!("expected a failure, got {outcome:?}");
            };
            let tail = error.stderr_tail.clone().unwrap();
            assert!(tail.ends_with("done"), "{tail}");
            assert_eq!(tail.matches("[REDACTED]").count(), 5, "{tail}");
            assert!(!tail.contains(value), "{tail}");
            for form in &forms {
                assert!(!tail.contains(&form[..8]), "{tail}");
            }
            assert!(!format!("{error:?}").contains(value));
        }
        // The log itself is the workload's: it is not rewritten.
        assert!(raw.contains(value));
        let record =
            std::fs::read_to_string(env.provider.tenant_dir("t20").join(RECORD_FILE)).unwrap();
        assert!(!record.contains(value) && !record.contains(&forms[0]));
    }

    #[tokio::test]
    async fn a_tail_that_cannot_be_scrubbed_is_withheld() {
        let env = TestEnv::new();
        let failing = |path: &Path| {
            let mut s = spec(&["sh", "-c", "echo \"$TOKEN\" >&2; exit 1"]);
            s.secrets = vec![secret(&format!("file:{}", path.display()))];
            s
        };
        // Too short to scrub.
        let short = env.path("secrets/short");
        std::fs::write(&short, "abc").unwrap();
        let o = op("t21", "exec-1", Operation::Provision);
        let ids = env.provider.provision(&o, &failing(&short)).await.unwrap();
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));

        // Changed since the spawn: the old value cannot be known any more.
        let rotated = env.path("secrets/rotated");
        std::fs::write(&rotated, "first-value").unwrap();
        let o = op("t22", "exec-1", Operation::Provision);
        let ids = env
            .provider
            .provision(&o, &failing(&rotated))
            .await
            .unwrap();
        wait_for_file(&env.provider.tenant_dir("t22").join("exec-1.stderr.log")).await;
        std::fs::write(&rotated, "second-value").unwrap();
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));

        // Gone from the allow-list (another worker configured differently).
        let strict = LocalProvider::new(LocalConfig {
            secret_dirs: Vec::new(),
            ..env.provider.config.clone()
        })
        .unwrap();
        std::fs::write(&rotated, "first-value").unwrap();
        let (outcome, _) = observe_until_final(&strict, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some(WITHHELD_TAIL));
        // Whereas this worker, with the value back, scrubs it.
        let (outcome, _) = observe_until_final(&env.provider, &o, &ids).await;
        let Observation::Failed(error) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert_eq!(error.stderr_tail.as_deref(), Some("[REDACTED]"));
    }

    #[tokio::test]
    async fn limits_are_set_before_exec() {
        let env = TestEnv::with(|c| {
            c.max_open_files = 100;
            c.max_processes = 5000;
        });
        let mut s = spec(&["sh", "-c", "ulimit -d; ulimit -n; ulimit -p"]);
        s.memory = Some(64);
        env.provider
            .provision(&op("t23", "exec-1", Operation::Provision), &s)
            .await
            .unwrap();
        let out = env.provider.tenant_dir("t23").join("exec-1.stdout.log");
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
        // `ulimit -d` counts KiB.
        wait_for_content(&out, &format!("65536\n100\n{}\n", nproc.min(5000))).await;

        // Without a memory limit and with the defaults: RLIMIT_DATA and NPROC left alone.
        let defaults = TestEnv::with(|c| {
            *c = LocalConfig {
                state_dir: c.state_dir.clone(),
                ..LocalConfig::default()
            }
        });
        let (_, data) = getrlimit(Resource::RLIMIT_DATA).unwrap();
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
        let (_, nofile) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let shown = |limit: u64, unit: u64| {
            if limit == nix::libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                (limit / unit).to_string()
            }
        };
        defaults
            .provider
            .provision(
                &op("t23", "exec-1", Operation::Provision),
                &spec(&["sh", "-c", "ulimit -Hd; ulimit -n; ulimit -Hp"]),
            )
            .await
            .unwrap();
        let out = defaults
            .provider
            .tenant_dir("t23")
            .join("exec-1.stdout.log");
        wait_for_content(
            &out,
            &format!(
                "{}\n{}\n{}\n",
                shown(data, 1024),
                nofile.min(4096),
                shown(nproc, 1)
            ),
        )
        .await;
    }

    #[tokio::test]
    async fn the_workload_works_in_its_own_directory_and_cannot_plant_links() {
        let env = TestEnv::new();
        let p = &env.provider;
        let o = op("t24", "exec-1", Operation::Provision);
        p.provision(&o, &spec(&["sh", "-c", "pwd; sleep 30"]))
            .await
            .unwrap();
        let dir = p.tenant_dir("t24");
        wait_for_content(
            &dir.join("exec-1.stdout.log"),
            &format!("{}\n", p.work_dir("t24").display()),
        )
        .await;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&p.work_dir("t24")), 0o700);
        assert_eq!(mode(&dir.join(RECORD_FILE)), 0o600);
        assert_eq!(mode(&dir.join("exec-1.stdout.log")), 0o600);
        p.delete(
            &op("t24", "exec-2", Operation::Delete),
            &CurrentState::default(),
        )
        .await
        .unwrap();

        // Symlinks planted where the worker writes are not followed.
        let victim = env.path("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("exec-3.stderr.log")).unwrap();
        let error = p
            .provision(&op("t24", "exec-3", Operation::Provision), &spec(&["true"]))
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::Internal);
        std::os::unix::fs::symlink(&victim, dir.join(".process.json.tmp")).unwrap();
        let live = p
            .provision(
                &op("t24", "exec-4", Operation::Provision),
                &spec(&["sleep", "30"]),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(!dir.join(".process.json.tmp").exists());
        // A record that is a symlink is not read through either.
        std::fs::remove_file(dir.join(RECORD_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(RECORD_FILE)).unwrap();
        assert_eq!(
            p.read_record("t24").await.unwrap_err().code,
            ErrorCode::Internal
        );
        // Delete falls back to the store's ids.
        let stopped = p
            .delete(
                &op("t24", "exec-5", Operation::Delete),
                &CurrentState {
                    spec: None,
                    resource_ids: live.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(stopped, live);
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

    #[tokio::test]
    async fn run_as_user_runs_the_workload_as_that_user() {
        let dir = TempDir::new().unwrap();
        let mut c = config(dir.path());
        c.run_as_user = Some("compute-worker-no-such-user-7c1f".into());
        assert_eq!(
            LocalProvider::new(c.clone()).unwrap_err().code,
            ErrorCode::InvalidConfiguration
        );
        let nobody = User::from_name("nobody").unwrap().expect("a nobody user");
        c.run_as_user = Some(nobody.uid.to_string());
        if !nix::unistd::geteuid().is_root() {
            // Only root may run workloads as another user; the worker says so at start.
            assert_eq!(
                LocalProvider::new(c).unwrap_err().code,
                ErrorCode::InvalidConfiguration
            );
            return;
        }
        // The temporary directory must be reachable by the run-as user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = TestEnv {
            provider: LocalProvider::new(c).unwrap(),
            dir,
        };
        let p = &env.provider;
        p.provision(
            &op("t29", "exec-1", Operation::Provision),
            &spec(&[
                "sh",
                "-c",
                "id -u; id -g; id -G; touch ok; touch ../planted; sleep 30",
            ]),
        )
        .await
        .unwrap();
        let uid = nobody.uid.as_raw();
        let gid = nobody.gid.as_raw();
        let out = p.tenant_dir("t29").join("exec-1.stdout.log");
        wait_for_content(&out, &format!("{uid}\n{gid}\n{gid}\n")).await;
        let work = std::fs::metadata(p.work_dir("t29")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&work),
                std::os::unix::fs::MetadataExt::gid(&work)
            ),
            (uid, gid)
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.work_dir("t29").join("ok").exists() {
            assert!(
                Instant::now() < deadline,
                "the workload could not write its directory"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!p.tenant_dir("t29").join("planted").exists());
    }

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
