//! `--k8s-*`: the Kubernetes provider's flags and their conversion into its config.

use clap::Args;
use compute_activities::provider::kubernetes::{KubernetesConfig, PodSecurity};

/// Settings of the Kubernetes provider; each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Kubernetes: the prefix of every Secret a `secretKeyRef` may name (`{tenantId}` stands
    /// for the tenant's id). Default: `tenant-<tenantId>-`, or any Secret with
    /// --k8s-namespace-per-tenant.
    #[arg(long, env = "K8S_SECRET_NAME_PREFIX")]
    pub k8s_secret_name_prefix: Option<String>,
    /// Kubernetes: the security profile of tenant pods: `baseline` (no privilege escalation,
    /// RuntimeDefault seccomp, nothing privileged, no host namespaces) or `restricted`
    /// (also runAsNonRoot and every capability dropped).
    #[arg(long, env = "K8S_POD_SECURITY", default_value = "baseline", value_parser = pod_security)]
    pub k8s_pod_security: PodSecurity,
    /// Kubernetes: the namespace of every tenant's objects.
    #[arg(long, env = "K8S_NAMESPACE", default_value = "default")]
    pub k8s_namespace: String,
    /// Kubernetes: give each tenant a namespace of its own (`tenant-<id>`) instead.
    #[arg(
        long,
        env = "K8S_NAMESPACE_PER_TENANT",
        conflicts_with = "k8s_namespace"
    )]
    pub k8s_namespace_per_tenant: bool,
    /// Kubernetes: how long a rollout may make no progress before it fails
    /// (the Deployments' progressDeadlineSeconds).
    #[arg(long, env = "K8S_PROGRESS_DEADLINE", default_value = "10m", value_parser = progress_deadline)]
    pub k8s_progress_deadline: i32,
}

impl From<KubernetesArgs> for KubernetesConfig {
    fn from(a: KubernetesArgs) -> Self {
        KubernetesConfig {
            namespace: a.k8s_namespace,
            namespace_per_tenant: a.k8s_namespace_per_tenant,
            progress_deadline_seconds: a.k8s_progress_deadline,
            secret_name_prefix: a.k8s_secret_name_prefix,
            pod_security: a.k8s_pod_security,
            ..KubernetesConfig::default()
        }
    }
}

fn pod_security(s: &str) -> Result<PodSecurity, String> {
    s.parse()
        .map_err(|e: compute_activities::ComputeError| e.message)
}

/// A Deployment's `progressDeadlineSeconds` is an `int32` of whole seconds, at least one.
fn progress_deadline(s: &str) -> Result<i32, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    i32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| "must be 1s to 68 years".to_string())
}
