//! The locks that serialize one tenant's operations: an in-process mutex for this worker's
//! tasks, and a `flock` on the tenant's `.lock` for the other workers on the host.

use std::{
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    sync::{Arc, PoisonError},
};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::OwnedMutexGuard;

use super::errors::{io_internal, task_failed};
use super::naming::LOCK_FILE;
use super::provider::LocalProvider;
use crate::error::Result;

/// Both locks that serialize one tenant's operations; dropping it releases them.
pub(super) struct TenantGuard {
    // Field order is drop order: the host-wide lock goes first, so that a task of this
    // worker waiting on the in-process lock gets the file lock at once.
    _host: Flock<std::fs::File>,
    _process: OwnedMutexGuard<()>,
}

impl LocalProvider {
    /// Waits until no operation of this worker on the tenant is under way (without taking
    /// anything, creating anything, or waiting for other workers): an observation that finds
    /// its process gone reads the record only after a concurrent update has written it.
    pub(super) async fn wait_for_tenant_operations(&self, tenant_id: &str) {
        let lock = self
            .tenant_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant_id)
            .cloned();
        if let Some(lock) = lock {
            drop(lock.lock().await);
        }
    }

    /// Takes both of the tenant's locks, creating its directory if needed.
    pub(super) async fn lock_tenant(&self, tenant_id: &str) -> Result<TenantGuard> {
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
        .map_err(|e| task_failed("locking the tenant failed", "LockFailed", e))?
        .map_err(|e| io_internal("locking the tenant's state directory failed", &e))?;
        Ok(TenantGuard {
            _host: host,
            _process: process,
        })
    }

    /// Drops the tenant's in-process lock unless someone holds or waits for it (whoever
    /// clones it does so under the map's lock, so the count cannot grow meanwhile).
    pub(super) fn forget_tenant_lock(&self, tenant_id: &str) {
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
}
