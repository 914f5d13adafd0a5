//! The provider itself: the API calls each operation makes, in the order it makes them, and
//! an observation's wait on the shared watches. What it applies (`render`), what things are
//! called (`naming`), what errors and rollouts mean (`errors`, `rollout`) live next to it.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Service},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch},
    runtime::reflector::ObjectRef,
};
use tokio::sync::OnceCell;

use super::{
    config::KubernetesConfig,
    errors::{classify, ok_if_gone, service_failed_after_deployment},
    naming::{
        self, EXECUTION_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, PROVIDER, TENANT_LABEL,
        has_tenant, object_name,
    },
    render::{self, apply_params},
    rollout::{self, Evaluation},
    watch::{Watch, api},
};
use crate::provider::{
    ComputeProvider, CurrentState, ManagedResource, Observation, OperationContext,
    kit::{Look, look_until},
};
use crate::{
    contract::{ComputeSpec, Metadata, Operation, Progress, ResourceIds},
    error::{ComputeError, ErrorCode, Result},
};

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
        naming::tenant_namespace(&self.config, tenant_id)
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
        naming::check_secrets(&self.config, tenant_id, spec)
    }

    /// Whether the tenant may reference the Secret `name` of its namespace.
    pub fn secret_allowed(&self, tenant_id: &str, name: &str) -> bool {
        naming::secret_allowed(&self.config, tenant_id, name)
    }

    /// Checks the request's labels, which become Kubernetes labels.
    pub fn check_metadata(metadata: &Metadata) -> Result<()> {
        naming::check_labels(metadata)
    }

    /// The Deployment a spec asks for.
    pub fn deployment(&self, op: &OperationContext, spec: &ComputeSpec) -> Deployment {
        render::deployment(&self.config, op, spec)
    }

    fn ids(&self, tenant_id: &str) -> ResourceIds {
        ResourceIds {
            k8s_namespace: Some(self.namespace(tenant_id)),
            k8s_deployment: Some(object_name(tenant_id)),
            ..Default::default()
        }
    }

    /// Applies the tenant's objects (namespace, Deployment, Service) as `spec` asks.
    ///
    /// Every object is applied on every call, a retry's too: rendering is pure, so a retry of
    /// the same execution sends the Deployment it sent before, which server-side apply takes
    /// as a no-op (no new generation, no rollout), and only what failed changes. A Service
    /// step that fails once the Deployment is applied names both parts in `partial`.
    async fn apply(&self, op: &OperationContext, spec: &ComputeSpec) -> Result<Deployment> {
        // Again here: a request recorded before the rules tightened must not apply either.
        Self::check_metadata(&op.metadata)?;
        self.check_secrets(&op.tenant_id, spec)?;
        let ns = self.namespace(&op.tenant_id);
        let name = object_name(&op.tenant_id);
        if self.config.namespace_per_tenant {
            Api::<Namespace>::all(self.client.clone())
                .patch(
                    &ns,
                    &apply_params(),
                    &Patch::Apply(&render::namespace(op, &ns)),
                )
                .await
                .map_err(|e| classify("applying the tenant's namespace", &e))?;
        }
        let deployment = self.deployment(op, spec);
        let applied = Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .patch(&name, &apply_params(), &Patch::Apply(&deployment))
            .await
            .map_err(|e| classify("applying the Deployment", &e))?;
        tracing::info!(
            namespace = %ns,
            deployment = %name,
            generation = applied.metadata.generation.unwrap_or_default(),
            "Applied the tenant's Deployment."
        );
        let services = Api::<Service>::namespaced(self.client.clone(), &ns);
        match spec.port {
            Some(port) => {
                const WHAT: &str = "applying the Service";
                services
                    .patch(
                        &name,
                        &apply_params(),
                        &Patch::Apply(&render::service(&self.config, op, port)),
                    )
                    .await
                    .map_err(|e| {
                        service_failed_after_deployment(&ns, &name, WHAT, classify(WHAT, &e))
                    })?;
            }
            None => {
                const WHAT: &str = "deleting the Service";
                ok_if_gone(services.delete(&name, &DeleteParams::default()).await, WHAT)
                    .map_err(|e| service_failed_after_deployment(&ns, &name, WHAT, e))?
            }
        }
        Ok(applied)
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
        match rollout::evaluate(watch, op, ns, name) {
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
        ok_if_gone(
            Api::<Deployment>::namespaced(self.client.clone(), &ns)
                .delete(&name, &foreground)
                .await,
            "deleting the Deployment",
        )?;
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
        let bell = watch.bells.of(&ns, &op.tenant_id);
        let look = look_until(&bell, deadline, async || {
            Ok(match self.observe_once(&watch, op, &ns, &name).await? {
                progress @ Observation::InProgress(_) => Look::NotYet(progress),
                done => Look::Done(done),
            })
        })
        .await?;
        match look {
            Look::Done(observation) | Look::NotYet(observation) => Ok(observation),
        }
    }

    async fn ready(&self) -> Result<()> {
        // One Deployment of the namespace (or of any, per tenant): the apiserver answers and
        // the worker's RBAC lets it list what it manages.
        let api: Api<Deployment> = api(
            &self.client,
            (!self.config.namespace_per_tenant).then_some(self.config.namespace.as_str()),
        );
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| classify("listing Deployments", &e))
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
    use http::Method;
    use serde_json::{Value, json};

    use super::super::{
        naming::{OWNER_ANNOTATION, OWNER_LABEL},
        test_support::{DEPLOYMENT, Exchange, SERVICE, api_status, mock_provider, op, spec},
    };
    use super::*;
    use crate::contract::SecretRef;

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

    /// The Deployment is applied and its Service is not: the failure names both parts, and the
    /// retry sends the very Deployment the first attempt sent (server-side apply takes it as
    /// a no-op, so nothing rolls out again) before it applies the Service.
    #[tokio::test]
    async fn a_service_failure_after_the_deployment_is_partial_and_a_retry_rolls_nothing() {
        let deployment_ok = || Exchange {
            method: Method::PATCH,
            path: DEPLOYMENT,
            status: 200,
            body: applied_deployment(2),
        };
        let service_answer = |status: u16, body: Value| Exchange {
            method: Method::PATCH,
            path: SERVICE,
            status,
            body,
        };
        let refused = api_status(
            422,
            "Invalid",
            "Service \"tenant-acme\" is invalid",
            json!({"kind": "services", "causes": [{"reason": "FieldValueInvalid",
                "message": "Invalid value: 8080: provided port is already allocated",
                "field": "spec.ports[0].nodePort"}]}),
        );
        let (provider, server) = mock_provider(vec![deployment_ok(), service_answer(422, refused)]);
        let err = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        let first = server.await.unwrap();
        assert_eq!(err.code, ErrorCode::PartialFailure, "{err}");
        assert!(!err.retriable);
        let partial = err.partial.unwrap();
        assert_eq!(partial.succeeded, ["deployment default/tenant-acme"]);
        assert_eq!(
            partial.failed,
            [
                "service default/tenant-acme: Kubernetes refused the object: \
              spec.ports[0].nodePort: Invalid value: 8080: provided port is already allocated"
            ]
        );

        // A Service failure that may pass stays retriable, with the parts attached; an update
        // applies the same way.
        let (provider, server) = mock_provider(vec![
            Exchange {
                method: Method::GET,
                path: DEPLOYMENT,
                status: 200,
                body: applied_deployment(2),
            },
            deployment_ok(),
            service_answer(
                503,
                api_status(503, "ServiceUnavailable", "etcd is down", json!({})),
            ),
        ]);
        let err = provider
            .update(&op(Operation::Update), &CurrentState::default(), &spec())
            .await
            .unwrap_err();
        server.await.unwrap();
        assert_eq!(err.code, ErrorCode::ProviderTemporarilyUnavailable, "{err}");
        assert!(err.retriable);
        assert_eq!(
            err.partial.unwrap().succeeded,
            ["deployment default/tenant-acme"]
        );

        // The retry of the provision.
        let (provider, server) = mock_provider(vec![
            deployment_ok(),
            service_answer(
                201,
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tenant-acme"}}),
            ),
        ]);
        provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap();
        let retry = server.await.unwrap();
        assert_eq!(
            retry[0], first[0],
            "the retry changed the Deployment it applies"
        );
        assert_eq!(retry[1]["kind"], "Service");
    }

    /// Removing a stale Service is a Service step too: its failure is partial like an apply's.
    #[tokio::test]
    async fn a_failed_delete_of_a_stale_service_is_partial() {
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
                status: 403,
                body: api_status(
                    403,
                    "Forbidden",
                    "services \"tenant-acme\" is forbidden: User \"x\" cannot delete",
                    json!({"kind": "services"}),
                ),
            },
        ]);
        let spec = ComputeSpec {
            port: None,
            ..spec()
        };
        let err = provider
            .provision(&op(Operation::Provision), &spec)
            .await
            .unwrap_err();
        server.await.unwrap();
        assert_eq!(err.code, ErrorCode::PartialFailure, "{err}");
        let partial = err.partial.unwrap();
        assert_eq!(partial.succeeded, ["deployment default/tenant-acme"]);
        assert!(
            partial.failed[0].starts_with(
                "service default/tenant-acme: the worker's Kubernetes identity may not do this"
            ),
            "{partial:?}"
        );
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
}
