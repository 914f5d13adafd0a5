//! What the worker calls things in the cluster, and which names a tenant may use: object and
//! namespace names, the labels and annotations that mark the worker's objects, the checks on
//! a request's labels, and which Secrets a tenant may reference.

use kube::Resource;

use super::config::{DEFAULT_SECRET_NAME_PREFIX, KubernetesConfig, TENANT_PLACEHOLDER};
use crate::{
    contract::{ComputeSpec, Metadata},
    error::{ComputeError, Result},
};

pub(super) const PROVIDER: &str = "kubernetes";
/// The label every object the worker manages carries (with value [`MANAGED_BY`]).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "compute-worker";
/// The label naming the tenant.
pub const TENANT_LABEL: &str = "compute-worker/tenant";
pub(super) const OWNER_LABEL: &str = "compute-worker/owner";
pub(super) const ENVIRONMENT_LABEL: &str = "compute-worker/environment";
/// The annotation naming the execution that last applied the Deployment.
pub const EXECUTION_ANNOTATION: &str = "compute-worker/execution-id";
pub(super) const OWNER_ANNOTATION: &str = "compute-worker/owner";
pub(super) const ENVIRONMENT_ANNOTATION: &str = "compute-worker/environment";
pub(super) const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub(super) const CONTAINER: &str = "workload";

/// The name of a tenant's Deployment and Service (and namespace, with one per tenant): a
/// DNS-1123 label of at most 63 characters, shortened with a hash when the id is long.
pub fn object_name(tenant_id: &str) -> String {
    let name = format!("tenant-{tenant_id}");
    if name.len() <= 63 {
        return name;
    }
    // 64 bits, so that no two tenants whose long ids share a head are made to collide on
    // purpose (32 bits would take a few minutes to search).
    let hash = compute_contract::digest::sha256_hex(tenant_id, 16);
    let head = name[..63 - 1 - hash.len()].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// The namespace of a tenant's objects.
pub(super) fn tenant_namespace(config: &KubernetesConfig, tenant_id: &str) -> String {
    if config.namespace_per_tenant {
        object_name(tenant_id)
    } else {
        config.namespace.clone()
    }
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
pub(super) fn label_value(s: &str) -> String {
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

/// Checks the request's labels, which become Kubernetes labels.
pub(super) fn check_labels(metadata: &Metadata) -> Result<()> {
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

pub(super) fn has_tenant<K: Resource>(obj: &K, tenant_id: &str) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(TENANT_LABEL))
        .map(String::as_str)
        == Some(tenant_id)
}

pub(super) fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta()
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// Checks that every `secretKeyRef` of `spec` names a Secret the tenant may read: one in
/// its own namespace (a `secretKeyRef` cannot name another) whose name is allowed.
pub(super) fn check_secrets(
    config: &KubernetesConfig,
    tenant_id: &str,
    spec: &ComputeSpec,
) -> Result<()> {
    for (i, s) in spec.secrets.iter().enumerate() {
        let Some(r) = &s.secret_key_ref else {
            continue;
        };
        if !secret_allowed(config, tenant_id, &r.name) {
            return Err(ComputeError::invalid(format!(
                "spec.secrets[{i}].secretKeyRef.name: {}",
                secret_rule(config, tenant_id)
            )));
        }
    }
    Ok(())
}

/// The prefix a tenant's Secret names must start with, `{tenantId}` still in it; `None`
/// when any Secret of the tenant's namespace is allowed.
fn secret_prefix_template(config: &KubernetesConfig) -> Option<&str> {
    match (&config.secret_name_prefix, config.namespace_per_tenant) {
        (Some(p), _) => Some(p.as_str()),
        (None, true) => None,
        (None, false) => Some(DEFAULT_SECRET_NAME_PREFIX),
    }
}

/// Whether the tenant may reference the Secret `name` of its namespace.
pub(super) fn secret_allowed(config: &KubernetesConfig, tenant_id: &str, name: &str) -> bool {
    let Some(template) = secret_prefix_template(config) else {
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
fn secret_rule(config: &KubernetesConfig, tenant_id: &str) -> String {
    let Some(template) = secret_prefix_template(config) else {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{
        KubernetesProvider,
        test_support::{offline, op, spec},
    };
    use super::*;
    use crate::{
        contract::{Operation, SecretKeyRef, SecretRef},
        error::ErrorCode,
        provider::ComputeProvider,
    };

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
        // Existing objects carry these names: the hash must never change.
        assert_eq!(
            name,
            "tenant-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-7d3e74a05d7db15b"
        );
        // A head that ends in '-' once cut is trimmed, and the name stays a label.
        let dashed = format!("{}-{}", "b".repeat(38), "c".repeat(24));
        let name = object_name(&dashed);
        assert!(name.len() <= 63 && is_label_name(&name), "{name}");
        assert!(!name.contains("--"), "{name}");
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
}
