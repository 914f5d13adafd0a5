//! Kubernetes provider: a tenant's compute is a Deployment `tenant-<tenantId>` (plus a
//! Service of the same name when the spec has a port), in the configured namespace or in a
//! namespace of its own.
//!
//! Create and update are one server-side apply under one field manager, so a retry is a
//! no-op and an update is a diff. Completion comes from watches, not polls: one shared
//! [`Watch`] per worker (a reflector each for Deployments, ReplicaSets and Pods, all selected
//! by `app.kubernetes.io/managed-by=compute-worker`) feeds every in-flight execution, and an
//! observation wakes as soon as any of them changes.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, ReplicaSet},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, Namespace, Pod,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
            SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, watch};

use super::{ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext};
use crate::{
    contract::{ComputeSpec, Metadata, Operation, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, PartialResult, Result},
};

const PROVIDER: &str = "kubernetes";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "compute-worker";
/// The label every object the worker manages carries (with value [`MANAGED_BY`]).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "compute-worker";
/// The label naming the tenant.
pub const TENANT_LABEL: &str = "compute-worker/tenant";
const OWNER_LABEL: &str = "compute-worker/owner";
const ENVIRONMENT_LABEL: &str = "compute-worker/environment";
/// The annotation naming the execution that last applied the Deployment.
pub const EXECUTION_ANNOTATION: &str = "compute-worker/execution-id";
const OWNER_ANNOTATION: &str = "compute-worker/owner";
const ENVIRONMENT_ANNOTATION: &str = "compute-worker/environment";
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
const CONTAINER: &str = "workload";
/// Stands for the tenant's id in [`KubernetesConfig::secret_name_prefix`].
pub const TENANT_PLACEHOLDER: &str = "{tenantId}";
/// The prefix of the Secrets a tenant may reference in a shared namespace, unless the
/// operator configures another.
pub const DEFAULT_SECRET_NAME_PREFIX: &str = "tenant-{tenantId}-";

/// The security profile every tenant pod runs under (`--k8s-pod-security`), after the
/// Kubernetes Pod Security Standards of the same names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    /// No privilege escalation, `RuntimeDefault` seccomp, nothing privileged and no host
    /// namespaces: what common images (nginx, most language runtimes) still run under.
    #[default]
    Baseline,
    /// Baseline, plus `runAsNonRoot` and every capability dropped: images must run as a
    /// non-root user.
    Restricted,
}

impl PodSecurity {
    /// The profile's name, as `--k8s-pod-security` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

impl fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PodSecurity {
    type Err = ComputeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "baseline" => Ok(PodSecurity::Baseline),
            "restricted" => Ok(PodSecurity::Restricted),
            _ => Err(ComputeError::invalid(
                "--k8s-pod-security must be baseline or restricted",
            )),
        }
    }
}

/// Kubernetes provider settings. The cluster itself comes from `KUBECONFIG` (or
/// `~/.kube/config`, or the in-cluster service account), as kube's `Client::try_default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// The namespace of every tenant's objects (unless `namespace_per_tenant`).
    pub namespace: String,
    /// Give each tenant a namespace of its own, named like its Deployment.
    pub namespace_per_tenant: bool,
    /// The Deployments' `progressDeadlineSeconds`: how long a rollout may make no progress
    /// before Kubernetes (and so the operation) calls it failed.
    pub progress_deadline_seconds: i32,
    /// How long one observation waits for a watch event before reporting progress.
    pub observe_window_ms: u64,
    /// The prefix the Secret of every `secretKeyRef` must start with (`{tenantId}` in it
    /// stands for the tenant's id). Unset: [`DEFAULT_SECRET_NAME_PREFIX`], or any Secret
    /// with `namespace_per_tenant`, whose namespace is the tenant's alone. Secrets are
    /// always the tenant's namespace's: a `secretKeyRef` cannot name another.
    pub secret_name_prefix: Option<String>,
    /// The security context of every tenant pod.
    pub pod_security: PodSecurity,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "default".into(),
            namespace_per_tenant: false,
            progress_deadline_seconds: 600,
            observe_window_ms: 5000,
            secret_name_prefix: None,
            pod_security: PodSecurity::Baseline,
        }
    }
}

impl KubernetesConfig {
    /// Checks the settings a provider cannot work with, at start.
    pub fn check(&self) -> Result<()> {
        let Some(prefix) = &self.secret_name_prefix else {
            return Ok(());
        };
        let invalid = |why: &str| {
            Err(ComputeError::invalid(format!(
                "--k8s-secret-name-prefix: {why}"
            )))
        };
        if prefix.is_empty() {
            return invalid(
                "must not be empty (with --k8s-namespace-per-tenant, leave it unset to allow \
                 any Secret of the tenant's namespace)",
            );
        }
        if !prefix
            .replace(TENANT_PLACEHOLDER, "a")
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        {
            return invalid(
                "may hold only lowercase letters, digits, '-', '.' and {tenantId}, as a \
                 Secret's name does",
            );
        }
        match prefix.matches(TENANT_PLACEHOLDER).count() {
            0 => Ok(()),
            1 if matches!(
                prefix.split_once(TENANT_PLACEHOLDER),
                Some((_, after)) if after.starts_with(['-', '.'])
            ) =>
            {
                Ok(())
            }
            // Tenant ids are labels of letters, digits and '-': unless a separator follows
            // the id, tenant `ab`'s prefix would also be a prefix of tenant `abc`'s names.
            _ => invalid("may hold {tenantId} once, followed by '-' or '.'"),
        }
    }
}

/// The name of a tenant's Deployment and Service (and namespace, with one per tenant): a
/// DNS-1123 label of at most 63 characters, shortened with a hash when the id is long.
pub fn object_name(tenant_id: &str) -> String {
    let name = format!("tenant-{tenant_id}");
    if name.len() <= 63 {
        return name;
    }
    // 64 bits, so that no two tenants whose long ids share a head are made to collide on
    // purpose (32 bits would take a few minutes to search).
    let digest = Sha256::digest(tenant_id.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let head = name[..63 - 1 - hash.len()].trim_end_matches('-');
    format!("{head}-{hash}")
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name.
fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// Whether a label key belongs to Kubernetes or to the worker. A tenant's label there could
/// pose as the worker's own mark, or steer the cluster: `pod-security.kubernetes.io/enforce`
/// on a tenant's namespace turns off its pod security admission.
fn is_reserved_label_key(key: &str) -> bool {
    if key == MANAGED_BY_LABEL || key == TENANT_LABEL {
        return true;
    }
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    // app.kubernetes.io/ holds the recommended labels (name, version, component, ...), which
    // are the application's to set; of those only managed-by is the worker's.
    prefix != "app.kubernetes.io"
        && (prefix == "compute-worker"
            || prefix == "kubernetes.io"
            || prefix == "k8s.io"
            || prefix.ends_with(".kubernetes.io")
            || prefix.ends_with(".k8s.io"))
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// A label value made from free text (owner, environment): invalid characters become `-`,
/// and it is cut to 63 characters. The exact text is kept in an annotation.
fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Maps a Kubernetes API error onto the error table, where it arises.
pub fn classify(what: &str, err: &kube::Error) -> ComputeError {
    match err {
        kube::Error::Api(status) => classify_status(
            what,
            status.code,
            &status.reason,
            &status.message,
            status.details.as_ref(),
        ),
        kube::Error::Auth(e) => ComputeError::new(
            ErrorCode::PermissionDenied,
            format!("{what}: the worker could not authenticate to Kubernetes"),
        )
        .with_provider(PROVIDER, Some("AuthError"))
        .with_root_cause(e),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_) => ComputeError::new(
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API could not be reached"),
        )
        .with_provider(PROVIDER, Some("ConnectionError"))
        .with_root_cause(err),
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => ComputeError::new(
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API sent a response that could not be read"),
        )
        .with_provider(PROVIDER, Some("ResponseError"))
        .with_root_cause(err),
        other => ComputeError::internal(format!("{what}: unexpected Kubernetes client error"))
            .with_provider(PROVIDER, None)
            .with_root_cause(other),
    }
}

/// The table from the API server's status (HTTP code, reason, message) to our codes.
pub fn classify_status(
    what: &str,
    code: u16,
    reason: &str,
    message: &str,
    details: Option<&kube::core::response::StatusDetails>,
) -> ComputeError {
    let kind = details.map(|d| d.kind.as_str()).unwrap_or_default();
    let (ours, text) = match code {
        409 => (
            ErrorCode::Conflict,
            format!("{what}: a concurrent change got there first: {message}"),
        ),
        422 | 400 => {
            let causes: Vec<String> = details
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| match c.field.as_str() {
                            "" => c.message.clone(),
                            f => format!("{f}: {}", c.message),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let text = if causes.is_empty() {
                format!("{what}: Kubernetes refused the object: {message}")
            } else {
                format!(
                    "{what}: Kubernetes refused the object: {}",
                    causes.join("; ")
                )
            };
            (ErrorCode::InvalidConfiguration, text)
        }
        403 if message.contains("exceeded quota") || message.contains("quota") => (
            ErrorCode::QuotaExceeded,
            format!("{what}: a Kubernetes resource quota would be exceeded: {message}"),
        ),
        401 | 403 => (
            ErrorCode::PermissionDenied,
            format!("{what}: the worker's Kubernetes identity may not do this: {message}"),
        ),
        404 if kind == "namespaces" => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: the namespace does not exist (--k8s-namespace): {message}"),
        ),
        404 => (ErrorCode::NotFound, format!("{what}: {message}")),
        429 => (
            ErrorCode::Throttled,
            format!("{what}: the Kubernetes API is throttling requests"),
        ),
        500..=599 => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API failed (HTTP {code} {reason})"),
        ),
        _ => (
            ErrorCode::Internal,
            format!("{what}: unexpected Kubernetes API error (HTTP {code} {reason}): {message}"),
        ),
    };
    // kube makes up a reason with spaces ("Failed to parse error data") when the body was not
    // a Status, as from a proxy: the HTTP code is the better name then.
    let provider_code = if reason.is_empty() || reason.contains(' ') {
        format!("HTTP{code}")
    } else {
        reason.to_string()
    };
    let mut e = ComputeError::new(ours, text).with_provider(PROVIDER, Some(&provider_code));
    if matches!(
        ours,
        ErrorCode::Throttled | ErrorCode::ProviderTemporarilyUnavailable
    ) {
        let seconds = details.map(|d| d.retry_after_seconds).unwrap_or(0);
        if seconds > 0 {
            e = e.with_retry_after(Duration::from_secs(seconds.into()));
        } else if ours == ErrorCode::Throttled {
            e = e.with_retry_after(Duration::from_secs(1));
        }
    }
    if !message.is_empty() {
        e = e.with_root_cause(message);
    }
    e
}

/// Treats "already gone" as success: deleting is idempotent.
fn ok_if_gone<T>(result: std::result::Result<T, kube::Error>, what: &str) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(classify(what, &e)),
    }
}

/// The shared watches: one reflector per kind, over every object the worker manages.
pub struct Watch {
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    changes: watch::Sender<u64>,
    connections: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watch {
    fn start(client: &Client, namespace: Option<&str>) -> Watch {
        let (changes, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let deployments = spawn_reflector::<Deployment>(
            api(client, namespace),
            &changes,
            &connections,
            &mut tasks,
        );
        let replica_sets = spawn_reflector::<ReplicaSet>(
            api(client, namespace),
            &changes,
            &connections,
            &mut tasks,
        );
        let pods =
            spawn_reflector::<Pod>(api(client, namespace), &changes, &connections, &mut tasks);
        Watch {
            deployments,
            replica_sets,
            pods,
            changes,
            connections,
            tasks,
        }
    }

    async fn ready(&self) -> bool {
        let all = async {
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.replica_sets.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .is_ok()
    }

    /// How many watch streams the worker holds (one per kind).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    changes: &watch::Sender<u64>,
    connections: &Arc<AtomicUsize>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // A plain list + watch: the 1.20 API servers still in use have no streaming lists.
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let changes = changes.clone();
    let connections = connections.clone();
    tasks.push(tokio::spawn(async move {
        connections.fetch_add(1, Ordering::Relaxed);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "Kubernetes watch failed; it restarts with backoff.");
                }
            }
        }
        connections.fetch_sub(1, Ordering::Relaxed);
    }));
    reader
}

/// The Kubernetes provider.
pub struct KubernetesProvider {
    client: Client,
    config: KubernetesConfig,
    watch: OnceCell<Arc<Watch>>,
}

impl KubernetesProvider {
    /// Connects with the default configuration (`KUBECONFIG`, `~/.kube/config` or the
    /// in-cluster service account).
    pub async fn new(config: KubernetesConfig) -> Result<Self> {
        let client = Client::try_default().await.map_err(|e| {
            ComputeError::invalid(
                "the Kubernetes provider found no usable cluster configuration \
                 (set KUBECONFIG or run in a cluster)",
            )
            .with_provider(PROVIDER, Some("InferConfig"))
            .with_root_cause(e)
        })?;
        config.check()?;
        Ok(Self::with_client(client, config))
    }

    /// A provider on a given client (tests use kube's mock service).
    pub fn with_client(client: Client, config: KubernetesConfig) -> Self {
        KubernetesProvider {
            client,
            config,
            watch: OnceCell::new(),
        }
    }

    /// The namespace of a tenant's objects.
    pub fn namespace(&self, tenant_id: &str) -> String {
        if self.config.namespace_per_tenant {
            object_name(tenant_id)
        } else {
            self.config.namespace.clone()
        }
    }

    /// The shared watches, started on first use and synced.
    pub async fn watch(&self) -> Result<Arc<Watch>> {
        let watch = self
            .watch
            .get_or_init(|| async {
                let ns =
                    (!self.config.namespace_per_tenant).then_some(self.config.namespace.as_str());
                Arc::new(Watch::start(&self.client, ns))
            })
            .await
            .clone();
        if watch.ready().await {
            Ok(watch)
        } else {
            Err(ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "the Kubernetes watches have not synced yet",
            )
            .with_provider(PROVIDER, Some("WatchNotSynced")))
        }
    }

    /// Checks what only Kubernetes cares about in a spec.
    pub fn validate_spec(spec: &ComputeSpec) -> Result<()> {
        if spec.image.is_none() {
            return Err(ComputeError::invalid(
                "spec.image: is required by the Kubernetes provider",
            ));
        }
        for (i, s) in spec.secrets.iter().enumerate() {
            // The generic validation checks the Secret's name and the key's length; the
            // key's characters are left to the API server, whose 422 names the field.
            if s.secret_key_ref.is_none() {
                return Err(ComputeError::invalid(format!(
                    "spec.secrets[{i}]: the Kubernetes provider needs a secretKeyRef \
                     {{\"name\", \"key\"}} of an existing Secret"
                )));
            }
        }
        Ok(())
    }

    /// Checks that every `secretKeyRef` of `spec` names a Secret the tenant may read: one in
    /// its own namespace (a `secretKeyRef` cannot name another) whose name is allowed.
    pub fn check_secrets(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        for (i, s) in spec.secrets.iter().enumerate() {
            let Some(r) = &s.secret_key_ref else {
                continue;
            };
            if !self.secret_allowed(tenant_id, &r.name) {
                return Err(ComputeError::invalid(format!(
                    "spec.secrets[{i}].secretKeyRef.name: {}",
                    self.secret_rule(tenant_id)
                )));
            }
        }
        Ok(())
    }

    /// The prefix a tenant's Secret names must start with, `{tenantId}` still in it; `None`
    /// when any Secret of the tenant's namespace is allowed.
    fn secret_prefix_template(&self) -> Option<&str> {
        match (
            &self.config.secret_name_prefix,
            self.config.namespace_per_tenant,
        ) {
            (Some(p), _) => Some(p.as_str()),
            (None, true) => None,
            (None, false) => Some(DEFAULT_SECRET_NAME_PREFIX),
        }
    }

    /// Whether the tenant may reference the Secret `name` of its namespace.
    pub fn secret_allowed(&self, tenant_id: &str, name: &str) -> bool {
        let Some(template) = self.secret_prefix_template() else {
            return true;
        };
        let Some((before, after)) = template.split_once(TENANT_PLACEHOLDER) else {
            return name.starts_with(template);
        };
        // Without a separator after the id, tenant `ab`'s names would include tenant `abc`'s
        // (the configuration check refuses such a prefix; this holds without it too).
        if !after.starts_with(['-', '.']) {
            return false;
        }
        let Some(rest) = name
            .strip_prefix(before)
            .and_then(|r| r.strip_prefix(tenant_id))
            .and_then(|r| r.strip_prefix(after))
        else {
            return false;
        };
        // Tenant ids may hold '-': were one allowed after `tenant-a-`, tenant `a` would reach
        // `tenant-a-b-db`, which is tenant `a-b`'s.
        !(after.starts_with('-') && rest.contains('-'))
    }

    /// What a refused Secret name should have been, for the message.
    fn secret_rule(&self, tenant_id: &str) -> String {
        let Some(template) = self.secret_prefix_template() else {
            return "must name a Secret of the tenant's namespace".into();
        };
        let prefix = template.replacen(TENANT_PLACEHOLDER, tenant_id, 1);
        match template.split_once(TENANT_PLACEHOLDER) {
            Some((_, after)) if after.starts_with('-') => format!(
                "must name one of the tenant's Secrets: a name that starts with {prefix:?} and \
                 has no further '-' (use '.' between words, as in {prefix}db.password)"
            ),
            _ => format!("must name a Secret whose name starts with {prefix:?}"),
        }
    }

    /// Checks the request's labels, which become Kubernetes labels.
    pub fn check_metadata(metadata: &Metadata) -> Result<()> {
        for (k, v) in &metadata.labels {
            if !is_label_key(k) {
                return Err(ComputeError::invalid(
                    "metadata.labels: a key is not a valid Kubernetes label key \
                     ([prefix/]name, name at most 63 letters, digits, '-', '_' or '.')",
                ));
            }
            if is_reserved_label_key(k) {
                return Err(ComputeError::invalid(
                    "metadata.labels: keys under kubernetes.io/, k8s.io/ and their subdomains \
                     (but for app.kubernetes.io/) are Kubernetes' own, and keys under \
                     compute-worker/ and app.kubernetes.io/managed-by are the worker's own",
                ));
            }
            if !is_label_value(v) {
                return Err(ComputeError::invalid(
                    "metadata.labels: a value is not a valid Kubernetes label value \
                     (at most 63 letters, digits, '-', '_' or '.')",
                ));
            }
        }
        Ok(())
    }

    fn selector_labels(tenant_id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (TENANT_LABEL.to_string(), tenant_id.to_string()),
        ])
    }

    fn labels(op: &OperationContext) -> BTreeMap<String, String> {
        let mut labels = op.metadata.labels.clone();
        labels.extend(Self::selector_labels(&op.tenant_id));
        if let Some(owner) = op.metadata.owner.as_deref().map(label_value) {
            labels.insert(OWNER_LABEL.into(), owner);
        }
        if let Some(env) = op.metadata.environment.as_deref().map(label_value) {
            labels.insert(ENVIRONMENT_LABEL.into(), env);
        }
        labels
    }

    fn annotations(op: &OperationContext) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([(EXECUTION_ANNOTATION.to_string(), op.execution_id.clone())]);
        if let Some(owner) = &op.metadata.owner {
            a.insert(OWNER_ANNOTATION.into(), owner.clone());
        }
        if let Some(env) = &op.metadata.environment {
            a.insert(ENVIRONMENT_ANNOTATION.into(), env.clone());
        }
        a
    }

    /// The Deployment a spec asks for.
    pub fn deployment(&self, op: &OperationContext, spec: &ComputeSpec) -> Deployment {
        let name = object_name(&op.tenant_id);
        let labels = Self::labels(op);
        let mut env: Vec<EnvVar> = spec
            .env
            .iter()
            .chain(spec.config.iter())
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            })
            .collect();
        env.extend(spec.secrets.iter().filter_map(|s| {
            let r = s.secret_key_ref.as_ref()?;
            Some(EnvVar {
                name: s.name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }));
        let mut quantities = BTreeMap::new();
        if let Some(cpu) = spec.cpu {
            quantities.insert(
                "cpu".to_string(),
                Quantity(format!("{}m", (cpu * 1000.0).round() as u64)),
            );
        }
        if let Some(memory) = spec.memory {
            quantities.insert("memory".to_string(), Quantity(format!("{memory}Mi")));
        }
        let resources = (!quantities.is_empty()).then(|| ResourceRequirements {
            limits: Some(quantities.clone()),
            requests: Some(quantities),
            ..Default::default()
        });
        let container = Container {
            name: CONTAINER.into(),
            image: spec.image.clone(),
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            args: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: (!env.is_empty()).then_some(env),
            ports: spec.port.map(|p| {
                vec![ContainerPort {
                    container_port: p.into(),
                    name: Some("main".into()),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]
            }),
            resources,
            security_context: Some(self.container_security_context()),
            ..Default::default()
        };
        Deployment {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace(&op.tenant_id)),
                labels: Some(labels.clone()),
                annotations: Some(Self::annotations(op)),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(spec.replicas.unwrap_or(1) as i32),
                selector: LabelSelector {
                    match_labels: Some(Self::selector_labels(&op.tenant_id)),
                    ..Default::default()
                },
                progress_deadline_seconds: Some(self.config.progress_deadline_seconds),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        // The workload does not talk to the API server on our behalf.
                        automount_service_account_token: Some(false),
                        host_network: Some(false),
                        host_pid: Some(false),
                        host_ipc: Some(false),
                        security_context: Some(PodSecurityContext {
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".into(),
                                localhost_profile: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The workload container's security context under the configured profile. Fixed
    /// values only: the rendered template decides whether an apply rolls out.
    fn container_security_context(&self) -> SecurityContext {
        let restricted = self.config.pod_security == PodSecurity::Restricted;
        SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            run_as_non_root: restricted.then_some(true),
            capabilities: restricted.then(|| Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }
    }

    fn service(&self, op: &OperationContext, port: u16) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(object_name(&op.tenant_id)),
                namespace: Some(self.namespace(&op.tenant_id)),
                labels: Some(Self::labels(op)),
                annotations: Some(Self::annotations(op)),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(Self::selector_labels(&op.tenant_id)),
                ports: Some(vec![ServicePort {
                    name: Some("main".into()),
                    port: port.into(),
                    target_port: Some(IntOrString::Int(port.into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn apply_params() -> PatchParams {
        // force: the worker owns these objects; a field another manager took (an operator's
        // `kubectl edit`) is taken back rather than failing every retry with a conflict.
        PatchParams::apply(FIELD_MANAGER).force()
    }

    fn ids(&self, tenant_id: &str) -> ResourceIds {
        ResourceIds {
            k8s_namespace: Some(self.namespace(tenant_id)),
            k8s_deployment: Some(object_name(tenant_id)),
            ..Default::default()
        }
    }

    /// Applies the tenant's objects (namespace, Deployment, Service) as `spec` asks.
    async fn apply(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<Deployment> {
        // Again here: a request recorded before the rules tightened must not apply either.
        Self::check_metadata(&op.metadata)?;
        self.check_secrets(&op.tenant_id, spec)?;
        let ns = self.namespace(&op.tenant_id);
        let name = object_name(&op.tenant_id);
        if self.config.namespace_per_tenant {
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    labels: Some(Self::labels(op)),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<Namespace>::all(self.client.clone())
                .patch(&ns, &Self::apply_params(), &Patch::Apply(&namespace))
                .await
                .map_err(|e| classify("applying the tenant's namespace", &e))?;
        }
        let deployment = self.deployment(op, spec);
        let applied = Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .patch(&name, &Self::apply_params(), &Patch::Apply(&deployment))
            .await
            .map_err(|e| classify("applying the Deployment", &e))?;
        let services = Api::<Service>::namespaced(self.client.clone(), &ns);
        match spec.port {
            Some(port) => {
                services
                    .patch(
                        &name,
                        &Self::apply_params(),
                        &Patch::Apply(&self.service(op, port)),
                    )
                    .await
                    .map_err(|e| classify("applying the Service", &e))?;
            }
            None => ok_if_gone(
                services.delete(&name, &DeleteParams::default()).await,
                "deleting the Service",
            )?,
        }
        tracing::info!(
            namespace = %ns,
            deployment = %name,
            generation = applied.metadata.generation.unwrap_or_default(),
            "Applied the tenant's Deployment."
        );
        Ok(applied)
    }

    /// What the watches say about a provision or update.
    fn evaluate_rollout(
        &self,
        watch: &Watch,
        op: &OperationContext,
        ns: &str,
        name: &str,
    ) -> Evaluation {
        let Some(dep) = watch.deployments.get(&ObjectRef::new(name).within(ns)) else {
            return Evaluation::Missing;
        };
        let applied_by = dep
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXECUTION_ANNOTATION));
        if applied_by.map(String::as_str) != Some(op.execution_id.as_str()) {
            return Evaluation::AppliedByOther(applied_by.cloned().unwrap_or_default());
        }
        if dep.metadata.deletion_timestamp.is_some() {
            return Evaluation::Done(Observation::Failed(
                ComputeError::new(
                    ErrorCode::Conflict,
                    format!("the Deployment {ns}/{name} is being deleted"),
                )
                .with_provider(PROVIDER, Some("Terminating")),
            ));
        }
        Evaluation::Done(rollout_observation(
            &dep,
            &watch.replica_sets.state(),
            &watch.pods.state(),
        ))
    }

    async fn get_deployment(&self, ns: &str, name: &str) -> Result<Option<Deployment>> {
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| classify("reading the Deployment", &e))
    }

    async fn observe_once(
        &self,
        watch: &Watch,
        op: &OperationContext,
        ns: &str,
        name: &str,
    ) -> Result<Observation> {
        if op.operation == Operation::Delete {
            if watch
                .deployments
                .get(&ObjectRef::new(name).within(ns))
                .is_some()
            {
                let pods = watch
                    .pods
                    .state()
                    .iter()
                    .filter(|p| {
                        p.metadata.namespace.as_deref() == Some(ns)
                            && has_tenant(p.as_ref(), &op.tenant_id)
                    })
                    .count();
                return Ok(Observation::InProgress(Progress {
                    message: format!(
                        "waiting for the foreground deletion of {ns}/{name} ({pods} pods left)"
                    ),
                    ready: None,
                    desired: Some(0),
                }));
            }
            // The watch may lag behind the API: confirm with a read before calling it done.
            return Ok(match self.get_deployment(ns, name).await? {
                None => Observation::Succeeded(self.ids(&op.tenant_id)),
                Some(_) => Observation::InProgress(Progress {
                    message: format!("waiting for the watch to see {ns}/{name} deleted"),
                    ready: None,
                    desired: Some(0),
                }),
            });
        }
        match self.evaluate_rollout(watch, op, ns, name) {
            Evaluation::Done(o) => Ok(o),
            Evaluation::Missing => match self.get_deployment(ns, name).await? {
                Some(_) => Ok(Observation::InProgress(Progress {
                    message: format!("waiting for the watch to see {ns}/{name}"),
                    ready: None,
                    desired: None,
                })),
                None => Ok(Observation::Failed(
                    ComputeError::new(
                        ErrorCode::NotFound,
                        format!("the Deployment {ns}/{name} was deleted while it rolled out"),
                    )
                    .with_provider(PROVIDER, Some("NotFound")),
                )),
            },
            Evaluation::AppliedByOther(other) => {
                // The watch may lag behind our own apply: ask the API before concluding.
                let live = self.get_deployment(ns, name).await?;
                let live_by = live
                    .as_ref()
                    .and_then(|d| d.metadata.annotations.as_ref())
                    .and_then(|a| a.get(EXECUTION_ANNOTATION).cloned());
                if live_by.as_deref() == Some(op.execution_id.as_str()) {
                    Ok(Observation::InProgress(Progress {
                        message: format!("waiting for the watch to see {ns}/{name} applied"),
                        ready: None,
                        desired: None,
                    }))
                } else {
                    let by = live_by.unwrap_or(other);
                    Ok(Observation::Failed(
                        ComputeError::new(
                            ErrorCode::Conflict,
                            format!(
                                "the Deployment {ns}/{name} was applied since by execution {by}"
                            ),
                        )
                        .with_provider(PROVIDER, Some("Superseded")),
                    ))
                }
            }
        }
    }

    async fn apply_and_ids(
        &self,
        op: &OperationContext,
        spec: &ComputeSpec,
    ) -> Result<ResourceIds> {
        let applied = self.apply(op, spec).await?;
        let mut ids = self.ids(&op.tenant_id);
        if let Some(ns) = applied.metadata.namespace {
            ids.k8s_namespace = Some(ns);
        }
        Ok(ids)
    }
}

// Short-lived, one per observation: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Evaluation {
    Missing,
    AppliedByOther(String),
    Done(Observation),
}

fn has_tenant<K: Resource>(obj: &K, tenant_id: &str) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(TENANT_LABEL))
        .map(String::as_str)
        == Some(tenant_id)
}

fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// Why a pod of the current ReplicaSet cannot become ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodFailure {
    ImagePull,
    Crash,
    Unschedulable,
}

fn pod_failure(pod: &Pod) -> Option<(PodFailure, String)> {
    let status = pod.status.as_ref()?;
    for c in status.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            let detail = format!("{reason}: {}", w.message.as_deref().unwrap_or_default());
            match reason {
                "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
                    return Some((PodFailure::ImagePull, detail));
                }
                "CrashLoopBackOff" | "CreateContainerConfigError" | "RunContainerError" => {
                    let exit = c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| format!(" (last exit code {})", t.exit_code))
                        .unwrap_or_default();
                    return Some((PodFailure::Crash, format!("{detail}{exit}")));
                }
                _ => {}
            }
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some((
            PodFailure::Crash,
            format!(
                "pod failed: {}",
                status.reason.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
        {
            return Some((
                PodFailure::Unschedulable,
                format!(
                    "Unschedulable: {}",
                    c.message.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    None
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Judges a rollout from a Deployment and the ReplicaSets and Pods the watches hold.
fn rollout_observation(
    dep: &Deployment,
    replica_sets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
) -> Observation {
    let ns = dep.metadata.namespace.clone().unwrap_or_default();
    let name = dep.metadata.name.clone().unwrap_or_default();
    let generation = dep.metadata.generation.unwrap_or_default();
    let desired = dep
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0);
    let status = dep.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let progress = |message: String| {
        Observation::InProgress(Progress {
            message,
            ready: Some(ready.max(0) as u32),
            desired: Some(desired as u32),
        })
    };
    if observed < generation {
        return progress(format!(
            "waiting for the controller to see generation {generation} of {ns}/{name}"
        ));
    }
    // The current ReplicaSet carries the Deployment's revision.
    let revision = dep
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION));
    let uid = dep.metadata.uid.clone().unwrap_or_default();
    let current_rs = replica_sets.iter().find(|rs| {
        rs.metadata.namespace.as_deref() == Some(ns.as_str())
            && owned_by(rs.as_ref(), &uid)
            && revision.is_some()
            && rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                == revision
    });
    let rs_uid = current_rs.and_then(|rs| rs.metadata.uid.clone());
    let mut current_pods: Vec<&Pod> = pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && rs_uid.as_deref().is_some_and(|u| owned_by(*p, u))
        })
        .collect();
    current_pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let pod_name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();

    let failures: Vec<(String, PodFailure, String)> = current_pods
        .iter()
        .filter_map(|p| pod_failure(p).map(|(kind, detail)| (pod_name(p), kind, detail)))
        .collect();
    if let Some((first_pod, kind, detail)) = failures.first() {
        let ready_pods: Vec<String> = current_pods
            .iter()
            .filter(|p| pod_ready(p))
            .map(|p| pod_name(p))
            .collect();
        if !ready_pods.is_empty() {
            return Observation::Failed(
                ComputeError::new(
                    ErrorCode::PartialFailure,
                    format!(
                        "{} of {desired} replicas of {ns}/{name} are up and {} failed; first: {first_pod}: {detail}",
                        ready_pods.len(),
                        failures.len()
                    ),
                )
                .with_provider(PROVIDER, Some("PartialRollout"))
                .with_partial(PartialResult {
                    succeeded: ready_pods,
                    failed: failures.iter().map(|(p, _, _)| p.clone()).collect(),
                }),
            );
        }
        let (code, provider_code, what) = match kind {
            PodFailure::ImagePull => (
                ErrorCode::InvalidConfiguration,
                "ImagePullBackOff",
                "cannot pull the image",
            ),
            PodFailure::Crash => (ErrorCode::WorkloadFailed, "CrashLoopBackOff", "crashed"),
            PodFailure::Unschedulable => (
                ErrorCode::InsufficientCapacity,
                "Unschedulable",
                "cannot be scheduled",
            ),
        };
        return Observation::Failed(
            ComputeError::new(code, format!("pod {ns}/{first_pod} {what}: {detail}"))
                .with_provider(PROVIDER, Some(provider_code)),
        );
    }
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .cloned()
    };
    if let Some(c) = condition("Progressing")
        && c.status == "False"
    {
        return Observation::Failed(
            ComputeError::new(
                ErrorCode::Timeout,
                format!(
                    "the rollout of {ns}/{name} made no progress within its deadline: {}",
                    c.message.unwrap_or_default()
                ),
            )
            .with_provider(
                PROVIDER,
                Some(c.reason.as_deref().unwrap_or("ProgressDeadlineExceeded")),
            ),
        );
    }
    let available = condition("Available").is_some_and(|c| c.status == "True");
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let ready_current = current_pods.iter().filter(|p| pod_ready(p)).count() as i32;
    if available
        && updated == desired
        && ready == desired
        && total == desired
        && ready_current >= desired
    {
        let ids = ResourceIds {
            k8s_namespace: Some(ns),
            k8s_deployment: Some(name),
            k8s_replica_set: current_rs.and_then(|rs| rs.metadata.name.clone()),
            pod_names: current_pods.iter().map(|p| pod_name(p)).collect(),
            container_ids: current_pods
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .filter_map(|c| c.container_id.clone())
                .collect(),
            ..Default::default()
        };
        return Observation::Succeeded(ids);
    }
    progress(format!(
        "{ready}/{desired} replicas ready, {updated} updated, {total} in all"
    ))
}

#[async_trait]
impl ComputeProvider for KubernetesProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn validate(&self, tenant_id: &str, spec: &ComputeSpec) -> Result<()> {
        Self::validate_spec(spec)?;
        self.check_secrets(tenant_id, spec)
    }

    fn validate_metadata(&self, metadata: &Metadata) -> Result<()> {
        Self::check_metadata(metadata)
    }

    async fn provision(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<ResourceIds> {
        self.apply_and_ids(op, spec).await
    }

    async fn update(
        &self,
        op: &OperationContext,
        current: &CurrentState,
        desired: &ComputeSpec,
    ) -> Result<ResourceIds> {
        let ns = self.namespace(&op.tenant_id);
        let name = object_name(&op.tenant_id);
        let Some(live) = self.get_deployment(&ns, &name).await? else {
            return Err(ComputeError::new(
                ErrorCode::NotFound,
                format!("the tenant has no Deployment {ns}/{name}; provision it first"),
            )
            .with_provider(PROVIDER, Some("NotFound")));
        };
        tracing::info!(
            namespace = %ns,
            deployment = %name,
            generation = live.metadata.generation.unwrap_or_default(),
            replica_set = current.resource_ids.k8s_replica_set.as_deref().unwrap_or(""),
            pods = current.resource_ids.pod_names.len(),
            "Updating the tenant's Deployment."
        );
        self.apply_and_ids(op, desired).await
    }

    async fn delete(&self, op: &OperationContext, _current: &CurrentState) -> Result<ResourceIds> {
        let ns = self.namespace(&op.tenant_id);
        let name = object_name(&op.tenant_id);
        let foreground = DeleteParams::foreground();
        ok_if_gone(
            Api::<Service>::namespaced(self.client.clone(), &ns)
                .delete(&name, &foreground)
                .await,
            "deleting the Service",
        )?;
        match Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .delete(&name, &foreground)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(classify("deleting the Deployment", &e)),
        }
        Ok(self.ids(&op.tenant_id))
    }

    async fn observe(&self, op: &OperationContext, resources: &ResourceIds) -> Result<Observation> {
        let watch = self.watch().await?;
        let ns = resources
            .k8s_namespace
            .clone()
            .unwrap_or_else(|| self.namespace(&op.tenant_id));
        let name = resources
            .k8s_deployment
            .clone()
            .unwrap_or_else(|| object_name(&op.tenant_id));
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.observe_window_ms);
        loop {
            // Subscribe before looking, so a change between the look and the wait wakes us.
            let mut changes = watch.changes.subscribe();
            changes.borrow_and_update();
            let observation = self.observe_once(&watch, op, &ns, &name).await?;
            if !matches!(observation, Observation::InProgress(_)) {
                return Ok(observation);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(observation),
            }
        }
    }

    async fn list_managed(&self) -> Result<Vec<ManagedResource>> {
        let api: Api<Deployment> = api(
            &self.client,
            (!self.config.namespace_per_tenant).then_some(self.config.namespace.as_str()),
        );
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        let deployments = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify("listing the managed Deployments", &e))?;
        let mut out: Vec<ManagedResource> = deployments
            .items
            .into_iter()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .filter_map(|d| {
                let tenant_id = d.metadata.labels.as_ref()?.get(TENANT_LABEL)?.clone();
                Some(ManagedResource {
                    tenant_id,
                    kind: "deployment".into(),
                    id: format!(
                        "{}/{}",
                        d.metadata.namespace.clone().unwrap_or_default(),
                        d.metadata.name.clone().unwrap_or_default()
                    ),
                    execution_id: d
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(EXECUTION_ANNOTATION).cloned()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(out)
    }

    fn poll_interval(&self) -> Duration {
        // `observe` itself waits for the next watch event: no sleep is needed in between.
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use k8s_openapi::api::{
        apps::v1::{DeploymentCondition, DeploymentStatus},
        core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
        },
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;
    use crate::contract::{Metadata, SecretKeyRef, SecretRef};

    /// One scripted exchange: the request we expect, and the answer to give.
    struct Exchange {
        method: Method,
        path: &'static str,
        status: u16,
        body: Value,
    }

    fn api_status(code: u16, reason: &str, message: &str, details: Value) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
               "reason": reason, "message": message, "details": details})
    }

    /// A provider whose client talks to kube's mock service, answering `script` in order and
    /// asserting each request's method and path; returns the request bodies seen.
    fn mock_provider(
        script: Vec<Exchange>,
    ) -> (KubernetesProvider, tokio::task::JoinHandle<Vec<Value>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for ex in script {
                let (request, send) = handle.next_request().await.expect("no request came");
                assert_eq!(request.method(), ex.method, "{}", request.uri());
                assert_eq!(request.uri().path(), ex.path);
                let bytes = request.into_body().collect_bytes().await.unwrap();
                bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                send.send_response(
                    Response::builder()
                        .status(ex.status)
                        .body(Body::from(serde_json::to_vec(&ex.body).unwrap()))
                        .unwrap(),
                );
            }
            bodies
        });
        let client = Client::new(service, "default");
        (
            KubernetesProvider::with_client(client, KubernetesConfig::default()),
            server,
        )
    }

    fn op(operation: Operation) -> OperationContext {
        OperationContext {
            execution_id: "exec-1".into(),
            tenant_id: "acme".into(),
            operation,
            metadata: Metadata {
                labels: BTreeMap::from([("team".into(), "payments".into())]),
                owner: Some("Payments Team <p@example.com>".into()),
                environment: Some("prod".into()),
            },
        }
    }

    fn spec() -> ComputeSpec {
        ComputeSpec {
            image: Some("nginx:1.25".into()),
            replicas: Some(2),
            port: Some(8080),
            cpu: Some(0.25),
            memory: Some(512),
            env: BTreeMap::from([("MODE".into(), "fast".into())]),
            secrets: vec![SecretRef {
                name: "API_TOKEN".into(),
                value_from: None,
                secret_key_ref: Some(SecretKeyRef {
                    name: "tenant-acme-api".into(),
                    key: "token".into(),
                }),
            }],
            ..Default::default()
        }
    }

    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/tenant-acme";
    const SERVICE: &str = "/api/v1/namespaces/default/services/tenant-acme";

    fn applied_deployment(generation: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "tenant-acme", "namespace": "default", "generation": generation}})
    }

    #[tokio::test]
    async fn provision_applies_the_deployment_and_service_under_one_field_manager() {
        let (provider, server) = mock_provider(vec![
            Exchange {
                method: Method::PATCH,
                path: DEPLOYMENT,
                status: 201,
                body: applied_deployment(1),
            },
            Exchange {
                method: Method::PATCH,
                path: SERVICE,
                status: 201,
                body: json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tenant-acme"}}),
            },
        ]);
        let ids = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap();
        assert_eq!(ids.k8s_namespace.as_deref(), Some("default"));
        assert_eq!(ids.k8s_deployment.as_deref(), Some("tenant-acme"));
        let bodies = server.await.unwrap();
        let dep = &bodies[0];
        assert_eq!(dep["kind"], "Deployment");
        assert_eq!(dep["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(dep["metadata"]["labels"][TENANT_LABEL], "acme");
        assert_eq!(dep["metadata"]["labels"]["team"], "payments");
        assert_eq!(
            dep["metadata"]["labels"][OWNER_LABEL],
            "Payments-Team--p-example.com"
        );
        assert_eq!(
            dep["metadata"]["annotations"][OWNER_ANNOTATION],
            "Payments Team <p@example.com>"
        );
        assert_eq!(
            dep["metadata"]["annotations"][EXECUTION_ANNOTATION],
            "exec-1"
        );
        assert_eq!(dep["spec"]["replicas"], 2);
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx:1.25");
        assert_eq!(c["resources"]["limits"]["cpu"], "250m");
        assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
        assert_eq!(c["env"][0], json!({"name": "MODE", "value": "fast"}));
        // The secret is a reference to an existing Secret, never a value.
        assert_eq!(
            c["env"][1],
            json!({"name": "API_TOKEN", "valueFrom": {"secretKeyRef":
                {"name": "tenant-acme-api", "key": "token", "optional": false}}})
        );
        // The baseline profile, on the pod and on its container.
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({"seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            (&pod["hostNetwork"], &pod["hostPID"], &pod["hostIPC"]),
            (&json!(false), &json!(false), &json!(false))
        );
        assert_eq!(
            c["securityContext"],
            json!({"allowPrivilegeEscalation": false, "privileged": false})
        );
        assert_eq!(bodies[1]["spec"]["ports"][0]["port"], 8080);
    }

    #[tokio::test]
    async fn without_a_port_a_stale_service_is_deleted_and_a_missing_one_is_fine() {
        let (provider, server) = mock_provider(vec![
            Exchange {
                method: Method::PATCH,
                path: DEPLOYMENT,
                status: 200,
                body: applied_deployment(2),
            },
            Exchange {
                method: Method::DELETE,
                path: SERVICE,
                status: 404,
                body: api_status(
                    404,
                    "NotFound",
                    "services \"tenant-acme\" not found",
                    json!({"name": "tenant-acme", "kind": "services"}),
                ),
            },
        ]);
        let spec = ComputeSpec {
            port: None,
            ..spec()
        };
        provider
            .provision(&op(Operation::Provision), &spec)
            .await
            .unwrap();
        server.await.unwrap();
    }

    /// The error table, request by request: each API answer and the code it must become.
    #[tokio::test]
    async fn api_errors_map_onto_the_error_table() {
        let cases = [
            (
                api_status(409, "Conflict", "the object has been modified", json!({})),
                ErrorCode::Conflict,
                "Conflict",
            ),
            (
                api_status(
                    409,
                    "AlreadyExists",
                    "deployments \"tenant-acme\" already exists",
                    json!({}),
                ),
                ErrorCode::Conflict,
                "AlreadyExists",
            ),
            (
                api_status(
                    422,
                    "Invalid",
                    "Deployment.apps \"tenant-acme\" is invalid",
                    json!({"causes": [{"reason": "FieldValueInvalid",
                        "message": "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain",
                        "field": "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.name"}]}),
                ),
                ErrorCode::InvalidConfiguration,
                "Invalid",
            ),
            (
                api_status(
                    403,
                    "Forbidden",
                    "deployments.apps is forbidden: User \"x\" cannot patch",
                    json!({}),
                ),
                ErrorCode::PermissionDenied,
                "Forbidden",
            ),
            (
                api_status(
                    403,
                    "Forbidden",
                    "deployments.apps \"tenant-acme\" is forbidden: exceeded quota: compute, requested: pods=3, used: pods=10, limited: pods=10",
                    json!({}),
                ),
                ErrorCode::QuotaExceeded,
                "Forbidden",
            ),
            (
                api_status(
                    404,
                    "NotFound",
                    "namespaces \"nope\" not found",
                    json!({"name": "nope", "kind": "namespaces"}),
                ),
                ErrorCode::InvalidConfiguration,
                "NotFound",
            ),
            (
                api_status(
                    429,
                    "TooManyRequests",
                    "too many requests",
                    json!({"retryAfterSeconds": 7}),
                ),
                ErrorCode::Throttled,
                "TooManyRequests",
            ),
            (
                api_status(
                    500,
                    "InternalError",
                    "etcdserver: request timed out",
                    json!({}),
                ),
                ErrorCode::ProviderTemporarilyUnavailable,
                "InternalError",
            ),
            (
                api_status(
                    503,
                    "ServiceUnavailable",
                    "the server is shutting down",
                    json!({"retryAfterSeconds": 3}),
                ),
                ErrorCode::ProviderTemporarilyUnavailable,
                "ServiceUnavailable",
            ),
            (
                json!("<html>bad gateway</html>"),
                ErrorCode::ProviderTemporarilyUnavailable,
                "HTTP502",
            ),
        ];
        for (body, want, provider_code) in cases {
            let status = body["code"].as_u64().unwrap_or(502) as u16;
            let (provider, server) = mock_provider(vec![Exchange {
                method: Method::PATCH,
                path: DEPLOYMENT,
                status,
                body: body.clone(),
            }]);
            let err = provider
                .provision(&op(Operation::Provision), &spec())
                .await
                .unwrap_err();
            server.await.unwrap();
            assert_eq!(err.code, want, "{body}: {err}");
            assert_eq!(err.provider.as_deref(), Some("kubernetes"));
            assert_eq!(err.provider_code.as_deref(), Some(provider_code), "{body}");
            assert_eq!(
                err.retriable,
                want.classification() == crate::error::Classification::Retriable
            );
            match status {
                422 => assert!(
                    err.message.contains(
                        "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.name"
                    ),
                    "{}",
                    err.message
                ),
                429 => assert_eq!(err.retry_after_ms, Some(7000)),
                503 => assert_eq!(err.retry_after_ms, Some(3000)),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_connection_failure_is_retriable() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        let provider = KubernetesProvider::with_client(
            Client::new(service, "default"),
            KubernetesConfig::default(),
        );
        let err = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ProviderTemporarilyUnavailable, "{err}");
        assert!(err.retriable);
    }

    #[tokio::test]
    async fn delete_is_foreground_and_gone_is_success() {
        let (provider, server) = mock_provider(vec![
            Exchange {
                method: Method::DELETE,
                path: SERVICE,
                status: 404,
                body: api_status(404, "NotFound", "not found", json!({"kind": "services"})),
            },
            Exchange {
                method: Method::DELETE,
                path: DEPLOYMENT,
                status: 404,
                body: api_status(404, "NotFound", "not found", json!({"kind": "deployments"})),
            },
        ]);
        let ids = provider
            .delete(&op(Operation::Delete), &CurrentState::default())
            .await
            .unwrap();
        assert_eq!(ids.k8s_deployment.as_deref(), Some("tenant-acme"));
        let bodies = server.await.unwrap();
        assert_eq!(bodies[0]["propagationPolicy"], "Foreground");
    }

    #[tokio::test]
    async fn update_of_a_missing_deployment_is_not_found() {
        let (provider, server) = mock_provider(vec![Exchange {
            method: Method::GET,
            path: DEPLOYMENT,
            status: 404,
            body: api_status(404, "NotFound", "not found", json!({"kind": "deployments"})),
        }]);
        let err = provider
            .update(&op(Operation::Update), &CurrentState::default(), &spec())
            .await
            .unwrap_err();
        server.await.unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
    }

    #[test]
    fn provider_validation() {
        assert!(KubernetesProvider::validate_spec(&spec()).is_ok());
        let no_image = ComputeSpec {
            image: None,
            ..spec()
        };
        assert!(KubernetesProvider::validate_spec(&no_image).is_err());
        let arn = ComputeSpec {
            secrets: vec![SecretRef {
                name: "X".into(),
                value_from: Some("arn:aws:ssm:us-east-1:1:parameter/x".into()),
                secret_key_ref: None,
            }],
            ..spec()
        };
        let err = KubernetesProvider::validate_spec(&arn).unwrap_err();
        assert!(err.message.contains("spec.secrets[0]"), "{err}");
        let mut bad_label = op(Operation::Provision);
        bad_label
            .metadata
            .labels
            .insert("bad key!".into(), "v".into());
        assert!(KubernetesProvider::check_metadata(&bad_label.metadata).is_err());
        let mut reserved = op(Operation::Provision);
        reserved
            .metadata
            .labels
            .insert(TENANT_LABEL.into(), "other".into());
        assert!(KubernetesProvider::check_metadata(&reserved.metadata).is_err());
    }

    #[test]
    fn object_names_are_dns_labels() {
        assert_eq!(object_name("acme"), "tenant-acme");
        // The longest id that fits as it is.
        let fits = "a".repeat(56);
        assert_eq!(object_name(&fits), format!("tenant-{fits}"));
        let long = "a".repeat(63);
        let name = object_name(&long);
        assert!(name.len() <= 63 && is_label_name(&name), "{name}");
        assert_ne!(object_name(&long), object_name(&"a".repeat(62)));
        // A hash of 64 bits: 16 hex digits after the shortened head.
        let (head, hash) = name.rsplit_once('-').unwrap();
        assert_eq!(hash.len(), 16, "{name}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert_eq!(name.len(), 63, "{name}");
        assert!(head.starts_with("tenant-aaaa"), "{name}");
        // A head that ends in '-' once cut is trimmed, and the name stays a label.
        let dashed = format!("{}-{}", "b".repeat(38), "c".repeat(24));
        let name = object_name(&dashed);
        assert!(name.len() <= 63 && is_label_name(&name), "{name}");
        assert!(!name.contains("--"), "{name}");
    }

    /// A provider on a client that must never be called (validation and rendering only).
    fn offline(config: KubernetesConfig) -> KubernetesProvider {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        KubernetesProvider::with_client(Client::new(service, "default"), config)
    }

    fn with_secret(name: &str) -> ComputeSpec {
        ComputeSpec {
            secrets: vec![
                SecretRef {
                    name: "FIRST".into(),
                    value_from: None,
                    secret_key_ref: Some(SecretKeyRef {
                        name: "tenant-acme-first".into(),
                        key: "k".into(),
                    }),
                },
                SecretRef {
                    name: "SECOND".into(),
                    value_from: None,
                    secret_key_ref: Some(SecretKeyRef {
                        name: name.into(),
                        key: "k".into(),
                    }),
                },
            ],
            ..spec()
        }
    }

    /// The refusal of `name` as the second secret, or `None` when it is allowed.
    fn refusal(provider: &KubernetesProvider, tenant: &str, name: &str) -> Option<String> {
        let mut spec = with_secret(name);
        spec.secrets.remove(0);
        let e = provider.validate(tenant, &spec).err()?;
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(!e.retriable);
        assert!(
            e.message.starts_with("spec.secrets[0].secretKeyRef.name: "),
            "{}",
            e.message
        );
        let tail = e
            .message
            .trim_start_matches("spec.secrets[0].secretKeyRef.name: ");
        assert!(!tail.contains(name), "repeats the name: {}", e.message);
        Some(e.message)
    }

    #[tokio::test]
    async fn secrets_are_scoped_to_the_tenant_by_default() {
        let provider = offline(KubernetesConfig::default());
        for allowed in [
            "tenant-acme-api",
            "tenant-acme-db.password",
            "tenant-acme-0",
        ] {
            assert_eq!(refusal(&provider, "acme", allowed), None, "{allowed}");
        }
        for refused in [
            "api",
            "acme-api",
            "tenant-acmex-api",
            "tenant-other-api",
            "xtenant-acme-api",
            // Another tenant's: `acme-corp`'s Secret `db`.
            "tenant-acme-corp-db",
        ] {
            let m = refusal(&provider, "acme", refused).expect(refused);
            assert!(m.contains("\"tenant-acme-\""), "{m}");
        }
        // ... which tenant acme-corp may read, and acme's own it may not.
        assert_eq!(refusal(&provider, "acme-corp", "tenant-acme-corp-db"), None);
        assert!(refusal(&provider, "acme-corp", "tenant-acme-api").is_some());
        // The index names the secret refused, not the first.
        let e = provider
            .validate("acme", &with_secret("other"))
            .unwrap_err();
        assert!(
            e.message.starts_with("spec.secrets[1].secretKeyRef.name"),
            "{e}"
        );
        assert!(
            provider
                .validate("acme", &with_secret("tenant-acme-two"))
                .is_ok()
        );
        // The apply itself refuses too, before any request (the mock answers none).
        let err = provider
            .provision(&op(Operation::Provision), &with_secret("other"))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidConfiguration, "{err}");
    }

    #[tokio::test]
    async fn a_configured_secret_prefix_replaces_the_default() {
        let shared = offline(KubernetesConfig {
            secret_name_prefix: Some("apps-".into()),
            ..KubernetesConfig::default()
        });
        assert_eq!(refusal(&shared, "acme", "apps-db-password"), None);
        assert!(refusal(&shared, "acme", "tenant-acme-db").is_some());
        let per_tenant = offline(KubernetesConfig {
            secret_name_prefix: Some("apps.{tenantId}.".into()),
            ..KubernetesConfig::default()
        });
        assert_eq!(refusal(&per_tenant, "acme", "apps.acme.db-password"), None);
        for refused in [
            "apps.acme-corp.db",
            "apps.other.db",
            "apps.acmedb",
            "apps-acme.db",
        ] {
            let m = refusal(&per_tenant, "acme", refused).expect(refused);
            assert!(m.contains("\"apps.acme.\""), "{m}");
        }
        // A prefix the configuration check refuses allows nothing.
        let ambiguous = offline(KubernetesConfig {
            secret_name_prefix: Some("s-{tenantId}".into()),
            ..KubernetesConfig::default()
        });
        assert!(refusal(&ambiguous, "ab", "s-abc").is_some());
    }

    #[tokio::test]
    async fn namespace_per_tenant_allows_any_secret_of_the_namespace() {
        let provider = offline(KubernetesConfig {
            namespace_per_tenant: true,
            ..KubernetesConfig::default()
        });
        for name in ["api", "db-password", "tenant-other-api"] {
            assert_eq!(refusal(&provider, "acme", name), None, "{name}");
        }
        // A configured prefix still holds there.
        let provider = offline(KubernetesConfig {
            namespace_per_tenant: true,
            secret_name_prefix: Some("app-".into()),
            ..KubernetesConfig::default()
        });
        assert_eq!(refusal(&provider, "acme", "app-db"), None);
        let m = refusal(&provider, "acme", "db").unwrap();
        assert!(m.contains("\"app-\""), "{m}");
    }

    #[test]
    fn secret_prefix_configuration_is_checked() {
        let check = |p: &str| {
            KubernetesConfig {
                secret_name_prefix: Some(p.into()),
                ..KubernetesConfig::default()
            }
            .check()
        };
        for good in [
            DEFAULT_SECRET_NAME_PREFIX,
            "apps-",
            "apps.{tenantId}.",
            "{tenantId}-",
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Apps-",
            "apps_",
            "s-{tenantId}",
            "s-{tenantId}x",
            "{tenantId}-{tenantId}-",
        ] {
            let e = check(bad).unwrap_err();
            assert!(
                e.message.starts_with("--k8s-secret-name-prefix"),
                "{bad}: {e}"
            );
        }
        assert!(KubernetesConfig::default().check().is_ok());
    }

    #[test]
    fn reserved_label_prefixes_are_refused() {
        let labels = |key: &str| Metadata {
            labels: BTreeMap::from([(key.to_string(), "v".to_string())]),
            ..Metadata::default()
        };
        for reserved in [
            "kubernetes.io/hostname",
            "k8s.io/anything",
            "pod-security.kubernetes.io/enforce",
            "pod-security.kubernetes.io/enforce-version",
            "node-role.kubernetes.io/control-plane",
            "x.k8s.io/y",
            "compute-worker/tenant",
            "compute-worker/owner",
            "compute-worker/anything",
            "app.kubernetes.io/managed-by",
        ] {
            let e = KubernetesProvider::check_metadata(&labels(reserved)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{reserved}");
            assert!(
                e.message.starts_with("metadata.labels: "),
                "{reserved}: {e}"
            );
            // The rule names the one reserved key; no other key is repeated.
            if reserved != MANAGED_BY_LABEL {
                assert!(!e.message.contains(reserved), "repeats the key: {e}");
            }
        }
        for allowed in [
            "team",
            "example.com/team",
            "app.kubernetes.io/name",
            "app.kubernetes.io/version",
            "notkubernetes.io/x",
            "compute-worker.example.com/x",
        ] {
            assert!(
                KubernetesProvider::check_metadata(&labels(allowed)).is_ok(),
                "{allowed}"
            );
        }
    }

    /// Every `namespace` anywhere in a rendered object.
    fn namespaces(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "namespace" {
                        out.push(v.as_str().unwrap_or("<not a string>").to_string());
                    }
                    namespaces(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| namespaces(v, out)),
            _ => {}
        }
    }

    #[tokio::test]
    async fn pod_security_profiles_render_and_the_deployment_names_one_namespace() {
        let render = |config: KubernetesConfig| {
            let provider = offline(config);
            serde_json::to_value(provider.deployment(&op(Operation::Provision), &spec())).unwrap()
        };
        let baseline = render(KubernetesConfig::default());
        let pod = &baseline["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_eq!(pod[host], false, "{host}");
        }
        assert_eq!(
            pod["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false, "privileged": false})
        );
        let restricted = render(KubernetesConfig {
            pod_security: PodSecurity::Restricted,
            ..KubernetesConfig::default()
        });
        let pod = &restricted["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(
            pod["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false, "privileged": false,
                   "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}})
        );
        // The same spec renders the same template: a re-apply rolls nothing out.
        assert_eq!(
            render(KubernetesConfig::default()).to_string(),
            baseline.to_string()
        );

        // Only the tenant's namespace is ever named, so a secretKeyRef resolves there.
        for (config, want) in [
            (KubernetesConfig::default(), "default"),
            (
                KubernetesConfig {
                    namespace_per_tenant: true,
                    ..KubernetesConfig::default()
                },
                "tenant-acme",
            ),
        ] {
            let mut found = Vec::new();
            namespaces(&render(config), &mut found);
            assert_eq!(found, [want]);
        }
    }

    #[test]
    fn pod_security_parses_and_prints() {
        for p in [PodSecurity::Baseline, PodSecurity::Restricted] {
            assert_eq!(p.as_str().parse::<PodSecurity>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(PodSecurity::default(), PodSecurity::Baseline);
        assert!("privileged".parse::<PodSecurity>().is_err());
        let config: KubernetesConfig =
            serde_json::from_value(json!({"podSecurity": "restricted"})).unwrap();
        assert_eq!(config.pod_security, PodSecurity::Restricted);
        assert_eq!(config.secret_name_prefix, None);
    }

    // --- Rollout judgement, from objects as the watches hold them. ---

    fn dep(generation: i64, observed: i64, ready: i32, available: bool) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("tenant-acme".into()),
                namespace: Some("default".into()),
                uid: Some("dep-uid".into()),
                generation: Some(generation),
                annotations: Some(BTreeMap::from([(REVISION_ANNOTATION.into(), "2".into())])),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(2),
                updated_replicas: Some(2),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                conditions: Some(vec![DeploymentCondition {
                    type_: "Available".into(),
                    status: if available { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn rs(name: &str, uid: &str, revision: &str) -> Arc<ReplicaSet> {
        Arc::new(ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                annotations: Some(BTreeMap::from([(
                    REVISION_ANNOTATION.into(),
                    revision.into(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    uid: "dep-uid".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn pod(name: &str, rs_uid: &str, ready: bool, waiting: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    uid: rs_uid.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    container_id: ready.then(|| format!("containerd://{name}")),
                    state: waiting.map(|reason| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some("back-off pulling image".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn success_needs_the_current_generation_and_every_replica_ready() {
        let sets = [
            rs("tenant-acme-old", "rs-old", "1"),
            rs("tenant-acme-new", "rs-new", "2"),
        ];
        let pods = [
            pod("old-1", "rs-old", true, None),
            pod("new-b", "rs-new", true, None),
            pod("new-a", "rs-new", true, None),
        ];
        match rollout_observation(&dep(3, 3, 2, true), &sets, &pods) {
            Observation::Succeeded(ids) => {
                assert_eq!(ids.k8s_replica_set.as_deref(), Some("tenant-acme-new"));
                assert_eq!(ids.pod_names, ["new-a", "new-b"]);
                assert_eq!(
                    ids.container_ids,
                    ["containerd://new-a", "containerd://new-b"]
                );
            }
            other => panic!("{other:?}"),
        }
        // The controller has not seen the latest spec yet: not done, whatever the status says.
        assert!(matches!(
            rollout_observation(&dep(4, 3, 2, true), &sets, &pods),
            Observation::InProgress(_)
        ));
        match rollout_observation(&dep(3, 3, 1, false), &sets, &pods[..2]) {
            Observation::InProgress(p) => {
                assert_eq!((p.ready, p.desired), (Some(1), Some(2)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pod_failures_map_to_codes() {
        let sets = [rs("tenant-acme-new", "rs-new", "2")];
        let cases = [
            ("ImagePullBackOff", ErrorCode::InvalidConfiguration),
            ("ErrImagePull", ErrorCode::InvalidConfiguration),
            ("CrashLoopBackOff", ErrorCode::WorkloadFailed),
        ];
        for (reason, want) in cases {
            let pods = [pod("new-a", "rs-new", false, Some(reason))];
            match rollout_observation(&dep(3, 3, 0, false), &sets, &pods) {
                Observation::Failed(e) => assert_eq!(e.code, want, "{reason}: {e}"),
                other => panic!("{reason}: {other:?}"),
            }
        }
        // A failing pod of the old ReplicaSet does not fail the new rollout.
        let old = [
            rs("tenant-acme-old", "rs-old", "1"),
            rs("tenant-acme-new", "rs-new", "2"),
        ];
        let pods = [pod("old-a", "rs-old", false, Some("CrashLoopBackOff"))];
        assert!(matches!(
            rollout_observation(&dep(3, 3, 0, false), &old, &pods),
            Observation::InProgress(_)
        ));
        // Some replicas up, some failed: a partial failure listing both.
        let pods = [
            pod("new-a", "rs-new", true, None),
            pod("new-b", "rs-new", false, Some("ImagePullBackOff")),
        ];
        match rollout_observation(&dep(3, 3, 1, false), &sets, &pods) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::PartialFailure);
                let partial = e.partial.unwrap();
                assert_eq!(partial.succeeded, ["new-a"]);
                assert_eq!(partial.failed, ["new-b"]);
            }
            other => panic!("{other:?}"),
        }
        // Unschedulable pods: no capacity.
        let mut p = (*pod("new-a", "rs-new", false, None)).clone();
        p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
            ..Default::default()
        }]);
        match rollout_observation(&dep(3, 3, 0, false), &sets, &[Arc::new(p)]) {
            Observation::Failed(e) => assert_eq!(e.code, ErrorCode::InsufficientCapacity),
            other => panic!("{other:?}"),
        }
        // Progressing=False (the deadline passed) with no pod to blame: a timeout.
        let mut d = dep(3, 3, 0, false);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
        match rollout_observation(&d, &sets, &[]) {
            Observation::Failed(e) => {
                assert_eq!(e.code, ErrorCode::Timeout);
                assert_eq!(e.provider_code.as_deref(), Some("ProgressDeadlineExceeded"));
            }
            other => panic!("{other:?}"),
        }
    }
}
