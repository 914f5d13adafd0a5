//! Starting a workload: its environment (resolved before anything is stopped), its working
//! directory and log files, the spawn itself under its containment, and its record.

use std::{
    ffi::OsString,
    io,
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
};

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::cgroup::{create_cgroup, remove_cgroup};
use super::containment::{RunAs, contain};
use super::errors::{PROVIDER, io_internal, missing_command, spawn_error};
use super::naming::log_path;
use super::provider::LocalProvider;
use super::record::{ProcessIdentity, ProcessRecord, read_proc_stat, spec_hash, write_record};
use super::secrets::secrets_digest;
use super::supervise::signal_group;
use crate::provider::OperationContext;
use crate::{
    contract::{ComputeSpec, now},
    error::{ComputeError, Result},
};

/// The only variables of the worker's own environment a workload inherits: anything else
/// (credentials, the worker's configuration) must not leak into tenants' processes.
const PASSTHROUGH_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// The workload's environment, resolved before anything is stopped or started.
pub(super) struct ResolvedEnv {
    /// The whole environment; later entries win.
    vars: Vec<(OsString, OsString)>,
    secrets_digest: String,
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

impl LocalProvider {
    /// The workload's whole environment; later entries win.
    pub(super) async fn resolve_env(&self, spec: &ComputeSpec) -> Result<ResolvedEnv> {
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

    /// Starts the workload and records it. `env` is resolved beforehand so that a bad secret
    /// is found before anything is stopped.
    pub(super) async fn spawn(
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
        let (program, leading_args) = spec.command.split_first().ok_or_else(missing_command)?;
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
        if let Err(e) = write_record(&dir, &record).await {
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::contract::{Operation, SecretRef};
    use crate::error::ErrorCode;
    use crate::provider::local::naming::RECORD_FILE;
    use crate::provider::local::tests::{TestEnv, op, spec, wait_for_content, wait_for_file};
    use crate::provider::{ComputeProvider, CurrentState};

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
}
