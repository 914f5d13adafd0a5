//! [`LocalProvider`] and its [`ComputeProvider`] operations: each checks the tenant, takes its
//! locks and delegates to the module of the role (spawn, supervise, observe, prune).

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::cgroup::check_cgroup_parent;
use super::config::LocalConfig;
use super::containment::{RunAs, run_as_user};
use super::errors::{PROVIDER, config_error, io_internal, local_error, missing_command};
use super::naming::{WORK_DIR, check_tenant_id};
use super::record::ProcessIdentity;
use super::secrets::SecretPolicy;
use super::supervise::Exits;
use crate::provider::{
    ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext,
};
use crate::{
    contract::{ComputeSpec, Operation, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
};

/// The local provider (see the [module documentation](super)).
#[derive(Debug)]
pub struct LocalProvider {
    pub(super) config: LocalConfig,
    /// `state_dir`, absolute, so that children's working directories and the records stay
    /// valid whatever the worker's working directory.
    pub(super) root: PathBuf,
    pub(super) secrets: Arc<SecretPolicy>,
    pub(super) run_as: Option<RunAs>,
    pub(super) tenant_locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Exit statuses learnt by this worker's reapers, with when; shared with them. An entry
    /// goes once a final observation took it, or after `EXIT_MEMORY`.
    pub(super) exits: Exits,
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
        let secrets = Arc::new(SecretPolicy::from_config(&config)?);
        let run_as = run_as_user(&config, &root)?;
        check_cgroup_parent(&config)?;
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

    pub(super) fn settle(&self) -> Duration {
        Duration::from_millis(self.config.settle_ms)
    }
}

#[async_trait]
impl ComputeProvider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn validate(&self, _tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        match spec.command.first() {
            None => return Err(missing_command()),
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
        self.stop_tenant(record.as_ref(), &current.resource_ids)
            .await?;
        Ok(self.spawn(op, desired, env).await?.resource_ids())
    }

    async fn revert(
        &self,
        op: &OperationContext,
        previous: &CurrentState,
        failed: &ResourceIds,
    ) -> Result<ResourceIds> {
        // The update may have failed before it stopped the last good process (a secret it
        // could not read): that process is the revert.
        if let Some(identity) = ProcessIdentity::from_ids(&previous.resource_ids)
            && identity.is_live()
        {
            return Ok(previous.resource_ids.clone());
        }
        crate::provider::reapply(self, op, previous, failed).await
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

    async fn ready(&self) -> Result<()> {
        // Every operation writes under the state directory: it must be there and be one.
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ComputeError::internal(
                "the local provider's state directory is not a directory",
            )
            .with_provider(PROVIDER, Some("IoError"))),
            Err(e) => Err(io_internal(
                "the local provider's state directory is gone",
                &e,
            )),
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
