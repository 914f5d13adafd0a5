//! The manifests the worker applies with server-side apply, as a spec and an operation
//! render them: the tenant's namespace (with one per tenant), Deployment and Service, their
//! labels and annotations, and the pod security of the configured profile.
//!
//! Rendering is pure: the same spec renders the same objects, so a re-apply is a no-op.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, Namespace,
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
use kube::api::PatchParams;

use super::{
    config::{KubernetesConfig, PodSecurity},
    naming::{
        CONTAINER, ENVIRONMENT_ANNOTATION, ENVIRONMENT_LABEL, EXECUTION_ANNOTATION, MANAGED_BY,
        MANAGED_BY_LABEL, OWNER_ANNOTATION, OWNER_LABEL, TENANT_LABEL, label_value, object_name,
        tenant_namespace,
    },
};
use crate::{contract::ComputeSpec, provider::OperationContext};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "compute-worker";

pub(super) fn apply_params() -> PatchParams {
    // force: the worker owns these objects; a field another manager took (an operator's
    // `kubectl edit`) is taken back rather than failing every retry with a conflict.
    PatchParams::apply(FIELD_MANAGER).force()
}

fn selector_labels(tenant_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (TENANT_LABEL.to_string(), tenant_id.to_string()),
    ])
}

fn labels(op: &OperationContext) -> BTreeMap<String, String> {
    let mut labels = op.metadata.labels.clone();
    labels.extend(selector_labels(&op.tenant_id));
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

/// The tenant's own namespace `name` (with one per tenant).
pub(super) fn namespace(op: &OperationContext, name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels(op)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The Deployment a spec asks for.
pub(super) fn deployment(
    config: &KubernetesConfig,
    op: &OperationContext,
    spec: &ComputeSpec,
) -> Deployment {
    let name = object_name(&op.tenant_id);
    let labels = labels(op);
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
        security_context: Some(container_security_context(config.pod_security)),
        ..Default::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(tenant_namespace(config, &op.tenant_id)),
            labels: Some(labels.clone()),
            annotations: Some(annotations(op)),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas.unwrap_or(1) as i32),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&op.tenant_id)),
                ..Default::default()
            },
            progress_deadline_seconds: Some(config.progress_deadline_seconds),
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
fn container_security_context(profile: PodSecurity) -> SecurityContext {
    let restricted = profile == PodSecurity::Restricted;
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

/// The Service in front of the Deployment's `port`.
pub(super) fn service(config: &KubernetesConfig, op: &OperationContext, port: u16) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(object_name(&op.tenant_id)),
            namespace: Some(tenant_namespace(config, &op.tenant_id)),
            labels: Some(labels(op)),
            annotations: Some(annotations(op)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&op.tenant_id)),
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{offline, op, spec};
    use super::*;
    use crate::contract::Operation;

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
}
