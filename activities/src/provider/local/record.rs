//! What the provider records of a tenant's process, and how it tells that process apart from
//! any other: `process.json`, the exit files, `/proc/<pid>/stat`, and the careful reading and
//! atomic writing of the worker's own small files.

use std::{
    io,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use compute_contract::digest::sha256_hex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::errors::{PROVIDER, io_internal};
use super::naming::{RECORD_FILE, exit_name, temporary_path};
use super::provider::LocalProvider;
use crate::{
    contract::{ComputeSpec, ResourceIds, SecretRef},
    error::{ComputeError, Result},
};

/// `USER_HZ`, the unit of `/proc/<pid>/stat` start times: 100 on every Linux architecture
/// (the kernel converts to it whatever its internal tick rate).
const CLOCK_TICKS_PER_SEC: u64 = 100;
/// Bounds on the worker's own small files, so that a corrupted one cannot exhaust memory.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;
const MAX_EXIT_FILE_BYTES: u64 = 4096;

/// What `process.json` holds: the process the provider started for a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ProcessRecord {
    pub(super) pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: with the pid, it identifies the process.
    pub(super) process_start_time: u64,
    pub(super) command_line: Vec<String>,
    pub(super) execution_id: String,
    pub(super) started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) spec_hash: Option<String>,
    /// The references (never the values) of the process's secrets, resolved again to scrub
    /// them from its stderr. None in a record of an older worker: secrets unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) secrets: Option<Vec<SecretRef>>,
    /// A digest of the values resolved at the spawn, to tell whether a value resolved again
    /// is still the one the process got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) secrets_digest: Option<String>,
    /// The cgroup the process was put in, removed once it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cgroup: Option<PathBuf>,
}

impl ProcessRecord {
    pub(super) fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.process_start_time,
        }
    }

    pub(super) fn resource_ids(&self) -> ResourceIds {
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
pub(super) struct ExitRecord {
    pub(super) exit_code: Option<i32>,
    pub(super) signal: Option<i32>,
}

/// A process, told apart from later processes with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ProcessIdentity {
    pub(super) pid: u32,
    pub(super) start_time: u64,
}

impl ProcessIdentity {
    pub(super) fn from_ids(ids: &ResourceIds) -> Option<Self> {
        Some(ProcessIdentity {
            pid: ids.pid?,
            start_time: ids.process_start_time?,
        })
    }

    /// Whether this very process still runs (a zombie has exited, it is just not reaped).
    pub(super) fn is_live(self) -> bool {
        matches!(
            read_proc_stat(self.pid),
            Some(stat) if stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X')
        )
    }

    pub(super) fn exit_file(self, tenant_dir: &Path) -> PathBuf {
        tenant_dir.join(exit_name(self.pid, self.start_time))
    }
}

/// The parts of `/proc/<pid>/stat` the provider needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) start_time: u64,
}

pub(super) fn read_proc_stat(pid: u32) -> Option<ProcStat> {
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
pub(super) fn started_at_from_proc(start_time: u64) -> Option<DateTime<Utc>> {
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

/// The hash of a spec, kept in the record: the full SHA-256 of its JSON, in hex.
pub(super) fn spec_hash(spec: &ComputeSpec) -> Option<String> {
    // The spec holds secret references, never values, so its hash reveals nothing.
    let bytes = serde_json::to_vec(spec).ok()?;
    Some(sha256_hex(bytes, 64))
}

/// Opens one of the worker's own files (or a secret) for reading: a final symlink is not
/// followed and a FIFO planted in its place does not block the open.
pub(super) async fn open_for_reading(path: &Path) -> io::Result<tokio::fs::File> {
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
    let tmp = temporary_path(path);
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

/// Writes the tenant's `process.json`.
pub(super) async fn write_record(tenant_dir: &Path, record: &ProcessRecord) -> io::Result<()> {
    match serde_json::to_vec_pretty(record) {
        Ok(bytes) => write_atomically(&tenant_dir.join(RECORD_FILE), &bytes).await,
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Removes the tenant's `process.json`, if it has one.
pub(super) async fn remove_record(tenant_dir: &Path) -> Result<()> {
    match tokio::fs::remove_file(tenant_dir.join(RECORD_FILE)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_internal("removing the tenant's process.json failed", &e)),
    }
}

/// Writes how the process `identity` exited, for the other workers on the host.
pub(super) async fn write_exit(
    tenant_dir: &Path,
    identity: ProcessIdentity,
    exit: &ExitRecord,
) -> io::Result<()> {
    match serde_json::to_vec(exit) {
        Ok(bytes) => write_atomically(&identity.exit_file(tenant_dir), &bytes).await,
        Err(e) => Err(io::Error::other(e)),
    }
}

/// How the process `identity` exited, if a worker recorded it.
pub(super) async fn read_exit(tenant_dir: &Path, identity: ProcessIdentity) -> Option<ExitRecord> {
    let bytes = read_own_file(&identity.exit_file(tenant_dir), MAX_EXIT_FILE_BYTES)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl LocalProvider {
    /// The tenant's `process.json`; None when it has none.
    pub(super) async fn read_record(&self, tenant_id: &str) -> Result<Option<ProcessRecord>> {
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
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::contract::{Operation, now};
    use crate::provider::local::tests::{TestEnv, identity, op, spec};
    use crate::provider::{ComputeProvider, CurrentState};

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
    fn the_spec_hash_is_the_full_sha256_of_the_spec_json() {
        // Stored records hold it: it must stay what earlier workers wrote.
        let s = spec(&["sleep", "30"]);
        let hex = format!("{:x}", Sha256::digest(serde_json::to_vec(&s).unwrap()));
        assert_eq!(spec_hash(&s), Some(hex));
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
}
