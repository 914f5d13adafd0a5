//! The orphan sweeper: resources carrying the worker's `managed-by` mark that no live tenant
//! accounts for (a crash between a provider call and the store, a store restored from an old
//! backup, someone's manual copy).
//!
//! A resource is an orphan when its tenant is unknown to the store, when the tenant is
//! deleted, or when the execution that last applied it is unknown. Finding is read-only;
//! removing goes through the provider's own delete, so it is as idempotent as any delete.
//!
//! Against the wrong store (a mistyped `--database`, an empty file, another deployment's
//! database) every managed resource looks like an orphan, so removing is refused unless the
//! store has recorded an execution for the provider ([`check_store_knows_provider`]).

use serde::Serialize;

use crate::{
    contract::{Operation, TenantState},
    error::{ComputeError, ErrorCode, Result},
    provider::{ComputeProvider, CurrentState, ManagedResource, OperationContext},
    store::{ExecutionStore, redact_url},
};

/// Why a resource is an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanReason {
    /// The store has no such tenant.
    TenantUnknown,
    /// The store says the tenant is deleted.
    TenantDeleted,
    /// The execution that last applied the resource is not in the store.
    ExecutionUnknown,
}

/// A resource no live tenant accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    /// The resource.
    #[serde(flatten)]
    pub resource: ManagedResource,
    /// Why it is an orphan.
    pub reason: OrphanReason,
}

/// What sweeping one orphan did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    /// The orphan.
    #[serde(flatten)]
    pub orphan: Orphan,
    /// Whether it is gone.
    pub removed: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ComputeError>,
}

fn store_error(e: crate::store::StoreError) -> ComputeError {
    ComputeError::new(ErrorCode::StoreUnavailable, e.to_string())
}

/// Lists the provider's managed resources that no live tenant accounts for.
pub async fn find_orphans(
    store: &dyn ExecutionStore,
    provider: &dyn ComputeProvider,
) -> Result<Vec<Orphan>> {
    let mut orphans = Vec::new();
    for resource in provider.list_managed().await? {
        let tenant = store
            .get_tenant(&resource.tenant_id)
            .await
            .map_err(store_error)?;
        let reason = match tenant {
            None => Some(OrphanReason::TenantUnknown),
            Some(t) if t.state == TenantState::Deleted => Some(OrphanReason::TenantDeleted),
            Some(_) => match &resource.execution_id {
                Some(e) if store.get_execution(e).await.map_err(store_error)?.is_none() => {
                    Some(OrphanReason::ExecutionUnknown)
                }
                _ => None,
            },
        };
        if let Some(reason) = reason {
            orphans.push(Orphan { resource, reason });
        }
    }
    Ok(orphans)
}

/// Refuses to let a sweep remove anything unless the store has recorded an execution for
/// `provider` (its [`ComputeProvider::name`]; executions from before the store recorded
/// providers count for any): `sweep --apply` calls it before [`remove_orphans`].
/// `database_url` is only for the message, which shows it redacted.
pub async fn check_store_knows_provider(
    store: &dyn ExecutionStore,
    provider: &str,
    database_url: &str,
) -> Result<()> {
    if store.knows_provider(provider).await.map_err(store_error)? {
        return Ok(());
    }
    Err(ComputeError::invalid(format!(
        "refusing to remove anything: the store {} has never recorded an execution for \
         provider {provider}; is --database right?",
        redact_url(database_url)
    )))
}

/// Removes orphans with the provider's delete, one tenant at a time; one failure does not
/// stop the others.
pub async fn remove_orphans(provider: &dyn ComputeProvider, orphans: &[Orphan]) -> Vec<Removal> {
    let mut out = Vec::new();
    for orphan in orphans {
        let op = OperationContext {
            execution_id: format!("sweep-{}", orphan.resource.tenant_id),
            tenant_id: orphan.resource.tenant_id.clone(),
            operation: Operation::Delete,
            metadata: Default::default(),
        };
        let result = provider.delete(&op, &CurrentState::default()).await;
        match &result {
            Ok(_) => tracing::info!(
                tenant_id = %op.tenant_id,
                resource = %orphan.resource.id,
                reason = ?orphan.reason,
                "Removed an orphaned resource."
            ),
            Err(e) => e.log("Removing an orphaned resource"),
        }
        out.push(Removal {
            orphan: orphan.clone(),
            removed: result.is_ok(),
            error: result.err(),
        });
    }
    out
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{
        error::Classification,
        store::{NewExecution, spec_hash, sqlite::SqliteStore},
    };

    fn execution(tenant: &str, provider: Option<&str>) -> NewExecution {
        NewExecution {
            tenant_id: tenant.into(),
            operation: Operation::Delete,
            idempotency_key: None,
            spec_hash: spec_hash(None),
            spec: None,
            request: json!({"tenantId": tenant}),
            timeout: Duration::from_secs(5),
            provider: provider.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn a_store_that_never_saw_the_provider_is_refused() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let url = "postgres://app:hunter2@db/x?sslpassword=s3cret";
        let e = check_store_knows_provider(&store, "local", url)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(!e.retriable);
        assert_eq!(e.classification, Classification::NonRetriable);
        assert_eq!(
            e.message,
            "refusing to remove anything: the store postgres://app:***@db/x?sslpassword=*** has \
             never recorded an execution for provider local; is --database right?"
        );
        // Another provider's executions do not vouch for this one.
        store
            .begin_execution(execution("t1", Some("ecs")))
            .await
            .unwrap();
        assert!(
            check_store_knows_provider(&store, "local", url)
                .await
                .is_err()
        );
        check_store_knows_provider(&store, "ecs", url)
            .await
            .unwrap();
        // An execution that recorded no provider (an older worker's) vouches for any.
        store.begin_execution(execution("t2", None)).await.unwrap();
        check_store_knows_provider(&store, "local", url)
            .await
            .unwrap();
    }
}
