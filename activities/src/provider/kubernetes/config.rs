//! The Kubernetes provider's settings (`--k8s-*`), compiled with or without the `kubernetes`
//! feature so that a worker built without it can still name the provider in its start-up
//! error.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::{ComputeError, Result};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
