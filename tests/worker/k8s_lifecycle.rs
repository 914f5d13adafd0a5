//! The tenant lifecycle (issue 13) on the Kubernetes provider, against the real
//! kube-apiserver and kube-controller-manager of `scripts/k8s-rig.sh` (see kubernetes.rs):
//! a failed update is rolled back to the last good template, operations are cancelled and
//! undone, requests mean the same whatever the tenant ran, and a Service refused beside its
//! Deployment is a partial failure whose retry applies only the Service. Read as users read
//! it: the API server's objects, `GetTenantCompute` / `CancelComputeExecution` by name from
//! Python, and `compute-worker tenant`.
//!
//! The rig has no scheduler and no kubelet: the tests play the kubelet ([`Rig::kubelet`]),
//! making the pods of good images Running and Ready, putting those of a broken image in
//! ImagePullBackOff, and leaving those of a slow image Pending (an operation in flight).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, Service},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use temporalio_client::Client;

use crate::ecs::input;
use crate::kubernetes::{
    annotation, name_of, names, one_attempt, owned_by, pod_ready, pods_of, strings,
};
use crate::lifecycle::{result, tenant_cli, tenant_compute, wait_for_execution_of};
use crate::rigs::{
    Outcome, TestWorker, WorkerOpts, client, create_namespace, k8s_now, kube_client, kube_rig,
    mark_ready, pod_image, query_status, signals_received, spawn_worker, started_activity_attempts,
    worker_log_tail,
};

const TENANT_LABEL: &str = "compute-worker/tenant";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const EXECUTION_ANNOTATION: &str = "compute-worker/execution-id";
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// How long a test waits for the rig, the worker or Temporal before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// An image whose pull the test's kubelet fails (ImagePullBackOff).
const BROKEN_IMAGE: &str = "registry.invalid/no-such-image:1";
/// An image whose pods the test's kubelet leaves Pending: an operation stays in flight.
const SLOW_IMAGE: &str = "registry.invalid/slow-image:1";

/// One test's Kubernetes: its namespace on the shared rig and an admin client.
struct Rig {
    ns: String,
    kube: kube::Client,
    kubeconfig: PathBuf,
}

impl Rig {
    /// Starts the shared rig if need be and creates the namespace `ns`.
    async fn start(ns: &str) -> Rig {
        let shared = kube_rig();
        let kube = kube_client(&shared.kubeconfig).await;
        create_namespace(&kube, ns).await;
        Rig {
            ns: ns.to_string(),
            kube,
            kubeconfig: shared.kubeconfig.clone(),
        }
    }

    /// A worker with the Kubernetes provider on this test's namespace, as the rig's admin.
    fn worker(&self, name: &str) -> TestWorker {
        spawn_worker(
            name,
            WorkerOpts {
                args: ["--provider", "kubernetes", "--k8s-namespace", &self.ns]
                    .map(String::from)
                    .to_vec(),
                env: vec![("KUBECONFIG", self.kubeconfig.display().to_string())],
                ..Default::default()
            },
        )
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.kube.clone(), &self.ns)
    }

    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.kube.clone(), &self.ns)
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.kube.clone(), &self.ns)
    }

    /// The tenant's Deployment, if it exists.
    async fn deployment(&self, tenant: &str) -> Option<Deployment> {
        self.deployments()
            .get_opt(&format!("tenant-{tenant}"))
            .await
            .expect("get the Deployment")
    }

    /// The tenant's Service, if it exists.
    async fn service(&self, tenant: &str) -> Option<Service> {
        self.services()
            .get_opt(&format!("tenant-{tenant}"))
            .await
            .expect("get the Service")
    }

    /// The tenant's ReplicaSets, by name.
    async fn replica_sets(&self, tenant: &str) -> Vec<ReplicaSet> {
        let mut items = Api::<ReplicaSet>::namespaced(self.kube.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}")))
            .await
            .expect("list ReplicaSets")
            .items;
        items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        items
    }

    /// The tenant's pods (terminating ones included), by name.
    async fn pods(&self, tenant: &str) -> Vec<Pod> {
        pods_of(&self.pod_api(), tenant).await
    }

    /// The tenant's pods that are not being deleted, by name.
    async fn live_pods(&self, tenant: &str) -> Vec<Pod> {
        self.pods(tenant)
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Waits until the tenant has a live pod running `image`.
    async fn wait_for_pod_of(&self, tenant: &str, image: &str) -> Pod {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(p) = self
                .live_pods(tenant)
                .await
                .into_iter()
                .find(|p| pod_image(p) == image)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no pod of {tenant} runs {image}:\n{}",
                self.describe(tenant).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Plays the kubelet in the background for a tenant until the guard is dropped: pods of
    /// [`BROKEN_IMAGE`] cannot pull it, pods of [`SLOW_IMAGE`] stay Pending, every other pod
    /// runs and is Ready.
    fn kubelet(&self, tenant: &str) -> Kubelet {
        let pods = self.pod_api();
        let tenant = tenant.to_string();
        let task = tokio::spawn(async move {
            loop {
                for pod in pods_of(&pods, &tenant).await {
                    if pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    // A pod deleted since the list is no error: the next round forgets it.
                    match pod_image(&pod).as_str() {
                        SLOW_IMAGE => {}
                        BROKEN_IMAGE if !pulling_failed(&pod) => {
                            let _ = mark_image_pull_backoff(&pods, &pod).await;
                        }
                        BROKEN_IMAGE => {}
                        _ if !pod_ready(&pod) => {
                            let _ = mark_ready(&pods, &pod).await;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Kubelet { task }
    }

    /// Waits until the tenant's Deployment has rolled out completely (the controller saw its
    /// generation, every replica updated and Ready, nothing else left) and returns it.
    async fn wait_rolled_out(&self, tenant: &str) -> Deployment {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(dep) = self.deployment(tenant).await {
                let desired = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let s = dep.status.clone().unwrap_or_default();
                if s.observed_generation == dep.metadata.generation
                    && s.updated_replicas == Some(desired)
                    && s.ready_replicas == Some(desired)
                    && s.replicas == Some(desired)
                {
                    return dep;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the Deployment of {tenant} never rolled out:\n{}",
                self.describe(tenant).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ReplicaSet that runs the Deployment's pod template (as the controller finds it).
    async fn template_replica_set(&self, tenant: &str) -> Option<ReplicaSet> {
        let dep = self.deployment(tenant).await?;
        let template = json!(dep.spec?.template);
        self.replica_sets(tenant)
            .await
            .into_iter()
            .find(|rs| same_template(rs, &template))
    }

    /// Everything about the tenant's objects, for a failure message.
    async fn describe(&self, tenant: &str) -> String {
        let dep = self.deployment(tenant).await;
        let mut out = format!(
            "Deployment: {}\n",
            dep.map(|d| json!({"annotations": d.metadata.annotations,
                               "generation": d.metadata.generation,
                               "template": d.spec.map(|s| s.template),
                               "status": d.status}))
                .unwrap_or(Value::Null)
        );
        for rs in self.replica_sets(tenant).await {
            out.push_str(&format!(
                "ReplicaSet {}: revision {:?}, spec.replicas {:?}, status {}\n",
                name_of(&rs),
                annotation(&rs.metadata, REVISION_ANNOTATION),
                rs.spec.as_ref().and_then(|s| s.replicas),
                json!(rs.status)
            ));
        }
        for p in self.pods(tenant).await {
            out.push_str(&format!(
                "Pod {} ({}): deleting {}, ready {}\n",
                name_of(&p),
                pod_image(&p),
                p.metadata.deletion_timestamp.is_some(),
                pod_ready(&p)
            ));
        }
        out
    }

    /// Runs a `TenantComputeWorkflow` that must succeed; a failure panics with the caller's
    /// status, the tenant's objects and the worker's log.
    async fn run_ok(
        &self,
        worker: &TestWorker,
        client: &Client,
        id: &str,
        tenant: &str,
        input: Value,
    ) -> Value {
        match worker.run_tenant_workflow(client, id, input).await {
            Outcome::Completed(status) if status["state"] == "succeeded" => status,
            other => panic!(
                "{id} did not succeed: {other:?}\ncaller's status: {}\n{}worker log tail:\n{}",
                query_status(client, id).await,
                self.describe(tenant).await,
                worker_log_tail(&worker.log(), 30)
            ),
        }
    }
}

/// The background kubelet of [`Rig::kubelet`]; stops when dropped.
struct Kubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Plays the kubelet: the pod's image cannot be pulled.
async fn mark_image_pull_backoff(api: &Api<Pod>, pod: &Pod) -> kube::Result<Pod> {
    let image = pod_image(pod);
    let now = k8s_now();
    let condition = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "lastProbeTime": null,
               "lastTransitionTime": now})
    };
    let patch = json!({"status": {
        "phase": "Pending",
        "startTime": now,
        "conditions": [
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("Ready", "False"),
            condition("ContainersReady", "False"),
        ],
        "containerStatuses": [{
            "name": "workload",
            "ready": false,
            "started": false,
            "restartCount": 0,
            "image": image,
            "imageID": "",
            "state": {"waiting": {
                "reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{image}\""),
            }},
        }],
    }});
    api.patch_status(
        &name_of(pod),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

fn pulling_failed(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|r| r == "ImagePullBackOff")
}

/// Whether a ReplicaSet runs `template` (a Deployment's, as JSON), ignoring the hash label the
/// controller adds.
fn same_template(rs: &ReplicaSet, template: &Value) -> bool {
    let mut theirs = json!(rs.spec.as_ref().and_then(|s| s.template.clone()));
    if let Some(labels) = theirs
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("pod-template-hash");
    }
    let mut ours = template.clone();
    if let Some(labels) = ours
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("pod-template-hash");
    }
    theirs == ours
}

/// Joins a background Python caller without blocking the runtime (the test's kubelet runs on
/// it).
async fn join_caller(caller: std::thread::JoinHandle<Vec<Value>>) -> Vec<Value> {
    tokio::task::spawn_blocking(move || caller.join().expect("python caller"))
        .await
        .unwrap()
}

/// An update to an image whose pods cannot pull it fails with the image-pull code, and the
/// worker puts the Deployment back on the old pod template by itself: the old ReplicaSet and
/// its very pods serve again, the broken ReplicaSet is scaled to 0. The tenant runs its last
/// good spec, marked with the failure until `tenant clear`.
#[tokio::test]
async fn k8s_a_failed_update_is_rolled_back_to_the_old_template_and_marks_the_tenant() {
    let rig = Rig::start("k8s-lc-revert").await;
    let worker = rig.worker("k8s-lc-revert");
    let client = client().await;
    let tenant = "k8s-lc-revert";
    // Plays the kubelet throughout: the revert is observed until the old template's pods are
    // Ready, while the update call waits.
    let _kubelet = rig.kubelet(tenant);
    let good = json!({"image": "nginx:1.27", "replicas": 2, "env": {"MODE": "blue"}});
    let first = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-revert-1",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "spec": good, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    let old_rs = first["resourceIds"]["k8sReplicaSet"]
        .as_str()
        .unwrap()
        .to_string();
    let old_pods = strings(&first["resourceIds"]["podNames"]);
    assert_eq!(old_pods.len(), 2, "{first}");
    let old_template = json!(rig.deployment(tenant).await.unwrap().spec.unwrap().template);

    // The update: its pods cannot pull the image.
    let broken = json!({"image": BROKEN_IMAGE, "replicas": 2, "env": {"MODE": "green"}});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-lc-revert-2",
            input(
                "update",
                json!({"tenantId": tenant, "spec": broken, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await
        .failed();
    assert_eq!(code, "INVALID_CONFIGURATION", "{details}");
    assert!(non_retryable, "{details}");
    assert_eq!(details["providerCode"], "ImagePullBackOff", "{details}");
    assert_eq!(details["rolledBack"], true, "{details}");
    assert!(details.get("rollbackError").is_none(), "{details}");
    let failed = details["executionId"].as_str().unwrap().to_string();
    assert_eq!(signals_received("k8s-lc-revert-2"), ["compute-failed"]);

    // The API server: the Deployment's template is the old one again, the old ReplicaSet
    // runs it with its very pods, the broken one is scaled to 0.
    let dep = rig.wait_rolled_out(tenant).await;
    let describe = rig.describe(tenant).await;
    assert_eq!(
        json!(dep.spec.as_ref().unwrap().template),
        old_template,
        "the template is the old one again:\n{describe}"
    );
    let current = rig
        .template_replica_set(tenant)
        .await
        .expect("a ReplicaSet runs the template");
    assert_eq!(name_of(&current), old_rs, "{describe}");
    let all = rig.replica_sets(tenant).await;
    assert_eq!(all.len(), 2, "{describe}");
    for rs in &all {
        let want = if name_of(rs) == old_rs { 2 } else { 0 };
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(want), "{describe}");
    }
    let live = rig.live_pods(tenant).await;
    assert_eq!(names(&live), old_pods, "the old pods serve:\n{describe}");
    assert!(
        live.iter().all(|p| pod_ready(p) && owned_by(p, &current)),
        "{describe}"
    );

    // The operations port counted both operations, and the revert, as they happened.
    worker.assert_counted_failed_update("kubernetes", "INVALID_CONFIGURATION");

    // GetTenantCompute, by name from Python: running the old spec on the old pods, marked.
    let view = query_status(&client, "k8s-lc-revert-2").await;
    assert_eq!(
        view["requiresIntervention"]["code"], "INVALID_CONFIGURATION",
        "{view}"
    );
    let t = tenant_compute(&worker, tenant);
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["spec"]["image"], "nginx:1.27", "{t}");
    assert_eq!(t["spec"]["env"], json!({"MODE": "blue"}), "{t}");
    assert_eq!(t["revision"], 1, "{t}");
    assert_eq!(t["resourceIds"]["k8sReplicaSet"], old_rs.as_str(), "{t}");
    assert_eq!(strings(&t["resourceIds"]["podNames"]), old_pods, "{t}");
    assert_eq!(t["lastExecutionId"], failed.as_str(), "{t}");
    assert_eq!(t["activeExecutionIds"], json!([]), "{t}");
    let mark = &t["requiresIntervention"];
    assert_eq!(mark["code"], "INVALID_CONFIGURATION", "{t}");
    assert_eq!(mark["executionId"], failed.as_str(), "{t}");
    assert!(
        mark["message"]
            .as_str()
            .unwrap()
            .contains("ImagePullBackOff"),
        "{t}"
    );

    // The operator sees the mark and clears it.
    let db = worker.database_url();
    let shown: Value = serde_json::from_str(&tenant_cli(&db, &["show", tenant, "--json"])).unwrap();
    assert_eq!(shown["tenant"]["state"], "running", "{shown}");
    assert_eq!(
        shown["tenant"]["requiresIntervention"]["code"], "INVALID_CONFIGURATION",
        "{shown}"
    );
    let executions = shown["executions"].as_array().unwrap();
    assert_eq!(executions.len(), 2, "{shown}");
    let failed_update = executions
        .iter()
        .find(|e| e["executionId"] == failed.as_str())
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(failed_update["state"], "failed");
    assert_eq!(
        failed_update["error"]["rolledBack"], true,
        "{failed_update}"
    );
    let cleared = tenant_cli(&db, &["clear", tenant]);
    assert!(cleared.contains("cleared"), "{cleared}");
    let t = tenant_compute(&worker, tenant);
    assert_eq!(t["requiresIntervention"], Value::Null, "{t}");
    assert_eq!(t["state"], "running", "{t}");
    let shown: Value = serde_json::from_str(&tenant_cli(&db, &["show", tenant, "--json"])).unwrap();
    assert_eq!(
        shown["tenant"]["requiresIntervention"],
        Value::Null,
        "{shown}"
    );
    // Clearing the mark touched nothing on the cluster.
    assert_eq!(names(&rig.live_pods(tenant).await), old_pods);
}

/// A revert puts back the tenant's own labels and annotations (owner, environment, custom
/// labels) with the old spec: the reverted Deployment is the one the last good provision
/// applied, so the old ReplicaSet (whose template carries the labels) serves again.
#[tokio::test]
async fn k8s_a_revert_keeps_the_tenants_labels() {
    let rig = Rig::start("k8s-lc-labels").await;
    let worker = rig.worker("k8s-lc-labels");
    let client = client().await;
    let tenant = "k8s-lc-labels";
    let _kubelet = rig.kubelet(tenant);
    let metadata = json!({"owner": "platform-team", "environment": "staging",
                          "labels": {"team": "platform"}});
    let first = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-labels-1",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "spec": {"image": "nginx:1.27"},
                       "metadata": metadata, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    let old_rs = first["resourceIds"]["k8sReplicaSet"]
        .as_str()
        .unwrap()
        .to_string();
    let old = rig.deployment(tenant).await.unwrap();
    let (code, _, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-lc-labels-2",
            input(
                "update",
                json!({"tenantId": tenant, "spec": {"image": BROKEN_IMAGE},
                       "metadata": metadata, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await
        .failed();
    assert_eq!(code, "INVALID_CONFIGURATION", "{details}");
    assert_eq!(details["rolledBack"], true, "{details}");
    let dep = rig.wait_rolled_out(tenant).await;
    let describe = rig.describe(tenant).await;
    assert_eq!(
        dep.metadata.labels, old.metadata.labels,
        "the Deployment's labels are the last good provision's:\n{describe}"
    );
    for key in ["compute-worker/owner", "compute-worker/environment"] {
        assert_eq!(
            annotation(&dep.metadata, key),
            annotation(&old.metadata, key),
            "{key}:\n{describe}"
        );
    }
    assert_eq!(
        json!(dep.spec.as_ref().unwrap().template),
        json!(old.spec.as_ref().unwrap().template),
        "the template is the last good one:\n{describe}"
    );
    let current = rig.template_replica_set(tenant).await.unwrap();
    assert_eq!(
        name_of(&current),
        old_rs,
        "the old ReplicaSet serves again:\n{describe}"
    );
}

/// A provision in flight (its pods never become Ready), cancelled by name from Python:
/// nothing is left on the cluster (Deployment, ReplicaSet, pods, Service), the tenant is
/// `deleted` and unmarked, and the waiting caller hears `compute-failed` CANCELLED.
#[tokio::test]
async fn k8s_a_cancelled_provision_leaves_nothing() {
    let rig = Rig::start("k8s-lc-cancel").await;
    let worker = rig.worker("k8s-lc-cancel");
    let tenant = "k8s-lc-cancel";
    let _kubelet = rig.kubelet(tenant);
    let caller = worker.python_calls_in_background(json!([{
        "activity": "ProvisionTenantCompute",
        "input": {"tenantId": tenant, "timeout": "60s",
                  "spec": {"image": SLOW_IMAGE, "replicas": 2, "port": 8080}},
        "waitSignal": true,
    }]));
    let started = wait_for_execution_of(&worker, tenant, "provision", "running").await;
    rig.wait_for_pod_of(tenant, SLOW_IMAGE).await;
    assert!(rig.deployment(tenant).await.is_some());
    assert!(rig.service(tenant).await.is_some());

    let calls = worker.python_calls(json!([
        {"activity": "CancelComputeExecution",
         "input": {"executionId": started, "reason": "wrong tenant"}},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
    ]));
    let cancelled = result(&calls, 0);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"]["code"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["error"]["rolledBack"], true, "{cancelled}");
    assert!(
        cancelled["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong tenant"),
        "{cancelled}"
    );
    // Read at once: the undo waited for the foreground delete.
    let describe = rig.describe(tenant).await;
    assert!(rig.deployment(tenant).await.is_none(), "{describe}");
    assert_eq!(names(&rig.replica_sets(tenant).await), Vec::<String>::new());
    assert_eq!(names(&rig.pods(tenant).await), Vec::<String>::new());
    assert!(
        rig.service(tenant).await.is_none(),
        "the Service is gone too"
    );
    let t = result(&calls, 1);
    assert_eq!(t["state"], "deleted", "{t}");
    assert_eq!(t["spec"], Value::Null, "{t}");
    assert_eq!(t["requiresIntervention"], Value::Null, "{t}");
    assert_eq!(t["activeExecutionIds"], json!([]), "{t}");

    let heard = join_caller(caller).await;
    assert_eq!(heard[0]["result"]["executionId"], started.as_str());
    let signals = heard[0]["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1, "{}", heard[0]);
    assert_eq!(signals[0]["signal"], "compute-failed", "{}", heard[0]);
    assert_eq!(signals[0]["callback"]["state"], "cancelled");
    assert_eq!(signals[0]["callback"]["error"]["code"], "CANCELLED");
}

/// An update in flight (its new pods stay Pending), cancelled by name from Python: the
/// Deployment gets the old template back and the old ReplicaSet's pods serve, the tenant runs
/// its old spec unmarked, and the waiting caller hears `compute-failed` CANCELLED.
#[tokio::test]
async fn k8s_a_cancelled_update_puts_the_old_template_back() {
    let rig = Rig::start("k8s-lc-cancel-up").await;
    let worker = rig.worker("k8s-lc-cancel-up");
    let client = client().await;
    let tenant = "k8s-lc-cancel-up";
    let _kubelet = rig.kubelet(tenant);
    let first = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-cancel-up-1",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "timeout": "60s",
                       "spec": {"image": "nginx:1.27", "env": {"MODE": "blue"}}}),
                one_attempt(),
            ),
        )
        .await;
    let old_rs = first["resourceIds"]["k8sReplicaSet"]
        .as_str()
        .unwrap()
        .to_string();
    let old_pods = strings(&first["resourceIds"]["podNames"]);
    let old_template = json!(rig.deployment(tenant).await.unwrap().spec.unwrap().template);

    let caller = worker.python_calls_in_background(json!([{
        "activity": "UpdateTenantCompute",
        "input": {"tenantId": tenant, "timeout": "60s",
                  "spec": {"image": SLOW_IMAGE, "env": {"MODE": "green"}}},
        "waitSignal": true,
    }]));
    let update = wait_for_execution_of(&worker, tenant, "update", "running").await;
    // The new template rolls: a pod of it waits, Pending.
    rig.wait_for_pod_of(tenant, SLOW_IMAGE).await;

    let calls = worker.python_calls(json!([
        {"activity": "CancelComputeExecution", "input": {"executionId": update}},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
    ]));
    let status = result(&calls, 0);
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["error"]["code"], "CANCELLED", "{status}");
    assert_eq!(status["error"]["rolledBack"], true, "{status}");
    assert!(status["error"].get("rollbackError").is_none(), "{status}");

    let dep = rig.wait_rolled_out(tenant).await;
    let describe = rig.describe(tenant).await;
    assert_eq!(
        json!(dep.spec.as_ref().unwrap().template),
        old_template,
        "the template is the old one again:\n{describe}"
    );
    let current = rig.template_replica_set(tenant).await.unwrap();
    assert_eq!(name_of(&current), old_rs, "{describe}");
    let live = rig.live_pods(tenant).await;
    assert_eq!(names(&live), old_pods, "{describe}");
    assert!(live.iter().all(pod_ready), "{describe}");

    let t = result(&calls, 1);
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["spec"]["image"], "nginx:1.27", "{t}");
    assert_eq!(t["spec"]["env"], json!({"MODE": "blue"}), "{t}");
    assert_eq!(t["revision"], 1, "{t}");
    assert_eq!(t["resourceIds"]["k8sReplicaSet"], old_rs.as_str(), "{t}");
    assert_eq!(
        t["requiresIntervention"],
        Value::Null,
        "an operator's cancel marks nothing"
    );

    let heard = join_caller(caller).await;
    let signals = heard[0]["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1, "{}", heard[0]);
    assert_eq!(signals[0]["signal"], "compute-failed", "{}", heard[0]);
    assert_eq!(signals[0]["callback"]["operation"], "update");
    assert_eq!(signals[0]["callback"]["error"]["code"], "CANCELLED");
}

/// Requests mean the same whatever the tenant ran: an update of a tenant never provisioned
/// (or deleted) is NOT_FOUND on the first attempt and records nothing; a provision of a
/// running tenant with another spec rolls it out as an update would (a new template and
/// ReplicaSet) and is still a provision; the same spec again returns what runs.
#[tokio::test]
async fn k8s_requests_mean_the_same_whatever_the_tenant_ran() {
    let rig = Rig::start("k8s-lc-meaning").await;
    let worker = rig.worker("k8s-lc-meaning");
    let client = client().await;
    let tenant = "k8s-lc-meaning";
    let _kubelet = rig.kubelet(tenant);
    let update =
        |image: &str| json!({"tenantId": tenant, "spec": {"image": image}, "timeout": "60s"});

    // Never provisioned.
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-lc-meaning-0",
            input("update", update("nginx:1.26"), json!({"maxAttempts": 5})),
        )
        .await
        .failed();
    assert_eq!(code, "NOT_FOUND", "{details}");
    assert!(non_retryable, "{details}");
    assert_eq!(
        started_activity_attempts("k8s-lc-meaning-0", "UpdateTenantCompute"),
        [1]
    );
    let calls = worker.python_calls(json!([
        {"activity": "UpdateTenantCompute", "input": update("nginx:1.26")},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    assert_eq!(calls[0]["error"]["type"], "NOT_FOUND", "{}", calls[0]);
    assert_eq!(calls[0]["error"]["nonRetryable"], true, "{}", calls[0]);
    assert_eq!(result(&calls, 1)["state"], "absent");
    assert_eq!(result(&calls, 2), &json!([]), "nothing recorded");
    assert!(rig.deployment(tenant).await.is_none());

    // Provisioned, then provisioned with another spec: rolled out as an update.
    let first = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-meaning-1",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "spec": {"image": "nginx:1.27"}, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    let old_rs = first["resourceIds"]["k8sReplicaSet"]
        .as_str()
        .unwrap()
        .to_string();
    let second = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-meaning-2",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "spec": {"image": "nginx:1.28"}, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    assert_eq!(second["operation"], "provision", "{second}");
    assert_ne!(second["executionId"], first["executionId"]);
    assert_eq!(
        signals_received("k8s-lc-meaning-2"),
        ["compute-provisioned"]
    );
    let new_rs = second["resourceIds"]["k8sReplicaSet"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_rs, old_rs, "{second}");
    let dep = rig.wait_rolled_out(tenant).await;
    let describe = rig.describe(tenant).await;
    let image = dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("nginx:1.28"), "{describe}");
    assert_eq!(
        annotation(&dep.metadata, REVISION_ANNOTATION).as_deref(),
        Some("2"),
        "{describe}"
    );
    assert_eq!(
        name_of(&rig.template_replica_set(tenant).await.unwrap()),
        new_rs
    );
    let live = rig.live_pods(tenant).await;
    assert_eq!(names(&live), strings(&second["resourceIds"]["podNames"]));
    assert!(live.iter().all(|p| pod_image(p) == "nginx:1.28"));
    let t = tenant_compute(&worker, tenant);
    assert_eq!(t["revision"], 2, "{t}");
    assert_eq!(t["spec"]["image"], "nginx:1.28", "{t}");
    assert_eq!(t["state"], "running", "{t}");

    // The same spec again: what runs, nothing rolled.
    let again = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-meaning-3",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "spec": {"image": "nginx:1.28"}, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    assert_eq!(again["executionId"], second["executionId"], "{again}");
    assert_eq!(again["resourceIds"]["k8sReplicaSet"], new_rs.as_str());
    assert_eq!(
        rig.deployment(tenant).await.unwrap().metadata.generation,
        dep.metadata.generation
    );

    // Deleted: nothing to update again, and the refusal records nothing.
    rig.run_ok(
        &worker,
        &client,
        "k8s-lc-meaning-4",
        tenant,
        input(
            "delete",
            json!({"tenantId": tenant, "timeout": "60s"}),
            one_attempt(),
        ),
    )
    .await;
    let calls = worker.python_calls(json!([
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
    ]));
    let before = result(&calls, 0).as_array().unwrap().len();
    let (code, _, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-lc-meaning-5",
            input("update", update("nginx:1.29"), json!({"maxAttempts": 5})),
        )
        .await
        .failed();
    assert_eq!(code, "NOT_FOUND", "{details}");
    assert_eq!(
        started_activity_attempts("k8s-lc-meaning-5", "UpdateTenantCompute"),
        [1]
    );
    let calls = worker.python_calls(json!([
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": tenant}},
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
    ]));
    assert_eq!(result(&calls, 0).as_array().unwrap().len(), before);
    assert_eq!(result(&calls, 1)["state"], "deleted");
    assert!(rig.deployment(tenant).await.is_none());
}

/// The Service beside the Deployment is refused by the API server (a Service of the same name
/// that the worker does not own already holds a port named `main`, so the merged object is
/// invalid): PARTIAL_FAILURE naming the applied Deployment and the refused Service, and the
/// tenant needs an operator. With the squatter removed, the same request again re-opens the
/// execution (attempt 2) and succeeds, applying only the Service: the Deployment keeps its
/// generation, ReplicaSet and pods.
#[tokio::test]
async fn k8s_a_refused_service_is_a_partial_failure_and_the_retry_applies_only_it() {
    let rig = Rig::start("k8s-lc-partial").await;
    let worker = rig.worker("k8s-lc-partial");
    let client = client().await;
    let tenant = "k8s-lc-partial";
    let _kubelet = rig.kubelet(tenant);
    let ns = rig.ns.clone();
    let squatter: Service = serde_json::from_value(json!({
        "metadata": {"name": format!("tenant-{tenant}"), "labels": {"app": "squatter"}},
        "spec": {"selector": {"app": "squatter"},
                 "ports": [{"name": "main", "port": 9090, "protocol": "TCP"}]},
    }))
    .unwrap();
    rig.services()
        .create(&PostParams::default(), &squatter)
        .await
        .expect("create the squatting Service");

    let request = json!({"tenantId": tenant, "idempotencyKey": "release-1", "timeout": "60s",
                         "spec": {"image": "nginx:1.27", "port": 8080}});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-lc-partial-1",
            input("provision", request.clone(), one_attempt()),
        )
        .await
        .failed();
    assert_eq!(code, "PARTIAL_FAILURE", "{details}");
    assert!(non_retryable, "{details}");
    assert_eq!(details["provider"], "kubernetes", "{details}");
    assert_eq!(
        strings(&details["partial"]["succeeded"]),
        [format!("deployment {ns}/tenant-{tenant}")],
        "{details}"
    );
    let failed = strings(&details["partial"]["failed"]);
    assert_eq!(failed.len(), 1, "{details}");
    let prefix = format!("service {ns}/tenant-{tenant}: ");
    assert!(
        failed[0].starts_with(&prefix) && failed[0].contains("spec.ports"),
        "{details}"
    );
    let execution = details["executionId"].as_str().unwrap().to_string();

    // The Deployment was applied and rolls out (the test's kubelet); the squatter is
    // untouched.
    let dep = rig.wait_rolled_out(tenant).await;
    let generation = dep.metadata.generation;
    let rs = names(&rig.replica_sets(tenant).await);
    assert_eq!(rs.len(), 1, "{}", rig.describe(tenant).await);
    let pods = names(&rig.live_pods(tenant).await);
    let service = rig.service(tenant).await.unwrap();
    assert_eq!(
        json!(service.spec.as_ref().unwrap().ports)[0]["port"],
        9090,
        "the refused apply changed nothing"
    );
    let t = tenant_compute(&worker, tenant);
    assert_eq!(t["state"], "requires_manual_intervention", "{t}");
    assert_eq!(t["requiresIntervention"]["code"], "PARTIAL_FAILURE", "{t}");
    assert_eq!(t["spec"], Value::Null, "{t}");

    // The cause removed, the same request again.
    rig.services()
        .delete(&format!("tenant-{tenant}"), &DeleteParams::default())
        .await
        .expect("delete the squatting Service");
    let retried = rig
        .run_ok(
            &worker,
            &client,
            "k8s-lc-partial-2",
            tenant,
            input("provision", request, one_attempt()),
        )
        .await;
    assert_eq!(retried["executionId"], execution.as_str(), "{retried}");
    assert_eq!(retried["attempt"], 2, "{retried}");
    assert_eq!(
        signals_received("k8s-lc-partial-2"),
        ["compute-provisioned"]
    );

    // Only the Service was applied: the Deployment did not roll again.
    let describe = rig.describe(tenant).await;
    let dep = rig.deployment(tenant).await.unwrap();
    assert_eq!(dep.metadata.generation, generation, "{describe}");
    assert_eq!(
        annotation(&dep.metadata, REVISION_ANNOTATION).as_deref(),
        Some("1"),
        "{describe}"
    );
    assert_eq!(names(&rig.replica_sets(tenant).await), rs, "{describe}");
    assert_eq!(names(&rig.live_pods(tenant).await), pods, "{describe}");
    assert_eq!(strings(&retried["resourceIds"]["podNames"]), pods);
    let service = rig.service(tenant).await.expect("the Service exists now");
    let labels: BTreeMap<String, String> = service.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("compute-worker"),
        "{labels:?}"
    );
    let spec = json!(service.spec);
    assert_eq!(spec["ports"].as_array().unwrap().len(), 1, "{spec}");
    assert_eq!(spec["ports"][0]["port"], 8080, "{spec}");
    assert_eq!(
        spec["selector"],
        json!({MANAGED_BY_LABEL: "compute-worker", TENANT_LABEL: tenant}),
        "{spec}"
    );
    let t = tenant_compute(&worker, tenant);
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["requiresIntervention"], Value::Null, "{t}");
    assert_eq!(t["revision"], 1, "{t}");
    assert_eq!(
        annotation(&dep.metadata, EXECUTION_ANNOTATION).as_deref(),
        Some(execution.as_str())
    );
}
