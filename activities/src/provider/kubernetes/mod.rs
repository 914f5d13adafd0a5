//! The kubernetes provider: a tenant's compute is a Deployment `tenant-<tenantId>` (plus a
//! Service of the same name when the spec has a port), in the configured namespace or in a
//! namespace of its own.
//!
//! Create and update are one server-side apply under one field manager, so a retry is a
//! no-op and an update is a diff. Completion comes from watches, not polls: one shared
//! `Watch` per worker (a reflector each for Deployments, ReplicaSets and Pods, all selected
//! by `app.kubernetes.io/managed-by=compute-worker`) feeds every in-flight execution, and an
//! observation wakes as soon as one of its own tenant's objects changes.
//!
//! Its settings ([`config`]) are compiled always; the provider itself only with the
//! `kubernetes` feature, one file per role: `provider` makes the API calls of an operation,
//! `naming` says what things are called and which names a tenant may use, `render` what is
//! applied, `errors` what the API's errors mean, `watch` keeps the shared watches and
//! `rollout` judges a rollout from them.

pub mod config;
#[cfg(feature = "kubernetes")]
mod errors;
#[cfg(feature = "kubernetes")]
mod naming;
#[cfg(feature = "kubernetes")]
mod provider;
#[cfg(feature = "kubernetes")]
mod render;
#[cfg(feature = "kubernetes")]
mod rollout;
#[cfg(all(test, feature = "kubernetes"))]
mod test_support;
#[cfg(feature = "kubernetes")]
mod watch;

#[cfg(feature = "kubernetes")]
pub use self::{
    errors::{classify, classify_status},
    naming::{EXECUTION_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, TENANT_LABEL, object_name},
    provider::KubernetesProvider,
    render::FIELD_MANAGER,
    watch::Watch,
};
pub use config::*;
