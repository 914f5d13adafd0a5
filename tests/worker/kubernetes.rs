//! The Kubernetes provider end to end: the real worker binary with `--provider kubernetes`
//! against a real kube-apiserver and kube-controller-manager (1.20, `scripts/k8s-rig.sh`, one
//! control plane per test binary), driven by `TenantComputeWorkflow` and the Python caller.
//! Every test has a namespace and a worker of its own (`--k8s-namespace`); every assertion on
//! objects reads the API server with an admin client.
//!
//! What the rig does NOT have, so no test here pretends it does:
//! - No scheduler and no kubelet: the controller manager makes ReplicaSets and Pods, and the
//!   Pods stay Pending on no node. The tests play the kubelet by patching pod status (Running
//!   and Ready, or waiting in ImagePullBackOff); nothing runs, no image is pulled, no Secret's
//!   value is ever read, and the container ids are made up.
//! - A pod that was never scheduled is deleted at once (no grace period): deletes complete
//!   without a kubelet to confirm them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use compute_activities::{contract::ExecutionStatus, store};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Pod, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use temporalio_client::Client;

use crate::ecs::input;
use crate::rigs::{
    Outcome, TestWorker, WorkerOpts, client, container_id, create_namespace, k8s_now, kube_client,
    kube_rig, mark_ready, pod_image, query_status, signals_received, signals_with_times,
    spawn_worker, started_activity_attempts, worker_log_tail,
};

const TENANT_LABEL: &str = "compute-worker/tenant";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const EXECUTION_ANNOTATION: &str = "compute-worker/execution-id";
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// How long a test waits for the rig, the worker or Temporal before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

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
        self.worker_as(name, &self.kubeconfig)
    }

    /// A worker with the Kubernetes provider on this test's namespace, as whoever
    /// `kubeconfig` names.
    fn worker_as(&self, name: &str, kubeconfig: &Path) -> TestWorker {
        spawn_worker(
            name,
            WorkerOpts {
                args: ["--provider", "kubernetes", "--k8s-namespace", &self.ns]
                    .map(String::from)
                    .to_vec(),
                env: vec![("KUBECONFIG", kubeconfig.display().to_string())],
                ..Default::default()
            },
        )
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.kube.clone(), &self.ns)
    }

    fn replica_set_api(&self) -> Api<ReplicaSet> {
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

    /// Every Deployment in the namespace.
    async fn all_deployments(&self) -> Vec<Deployment> {
        self.deployments()
            .list(&ListParams::default())
            .await
            .expect("list Deployments")
            .items
    }

    /// The tenant's ReplicaSets, by name.
    async fn replica_sets(&self, tenant: &str) -> Vec<ReplicaSet> {
        let mut items = self
            .replica_set_api()
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

    /// Waits until the tenant has exactly `n` live pods owned by one ReplicaSet (the newest
    /// revision's) and returns them by name.
    async fn wait_for_pods(&self, tenant: &str, n: usize) -> Vec<Pod> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pods = self.pods(tenant).await;
            let rs = self.current_replica_set(tenant).await;
            let current: Vec<Pod> = pods
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| rs.as_ref().is_some_and(|rs| owned_by(p, rs)))
                .collect();
            if current.len() == n {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} pods of tenant {tenant}:\n{}",
                self.describe(tenant).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ReplicaSet of the Deployment's current revision.
    async fn current_replica_set(&self, tenant: &str) -> Option<ReplicaSet> {
        let dep = self.deployment(tenant).await?;
        let revision = annotation(&dep.metadata, REVISION_ANNOTATION)?;
        self.replica_sets(tenant)
            .await
            .into_iter()
            .find(|rs| annotation(&rs.metadata, REVISION_ANNOTATION) == Some(revision.clone()))
    }

    /// Creates a Secret (its value is never read: there is no kubelet).
    async fn create_secret(&self, name: &str, key: &str, value: &str) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.kube.clone(), &self.ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the Secret");
    }

    /// Plays the kubelet: the pod runs and is Ready.
    async fn mark_ready(&self, pod: &Pod) {
        mark_ready(&self.pod_api(), pod)
            .await
            .unwrap_or_else(|e| panic!("mark {:?} ready: {e}", pod.metadata.name));
    }

    /// Plays the kubelet: the pod's image cannot be pulled.
    async fn mark_image_pull_backoff(&self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap();
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
        self.pod_api()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("mark {name} ImagePullBackOff: {e}"));
    }

    /// Plays the kubelet in the background for a tenant: every pod that appears is made
    /// Running and Ready, until the returned guard is dropped.
    fn kubelet(&self, tenant: &str) -> Kubelet {
        let pods = self.pod_api();
        let tenant = tenant.to_string();
        let marked: Arc<Mutex<Vec<String>>> = Arc::default();
        let marked_in_task = marked.clone();
        let task = tokio::spawn(async move {
            loop {
                for pod in pods_of(&pods, &tenant).await {
                    if pod.metadata.deletion_timestamp.is_some() || pod_ready(&pod) {
                        continue;
                    }
                    // A pod deleted since the list is no error: the next round forgets it.
                    if mark_ready(&pods, &pod).await.is_ok() {
                        let name = pod.metadata.name.clone().unwrap();
                        let mut marked = marked_in_task.lock().unwrap();
                        if !marked.contains(&name) {
                            marked.push(name);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Kubelet { task, marked }
    }

    /// Everything about the tenant's objects, for a failure message.
    async fn describe(&self, tenant: &str) -> String {
        let dep = self.deployment(tenant).await;
        let mut out = format!(
            "Deployment: {}\n",
            dep.map(|d| json!({"annotations": d.metadata.annotations,
                               "generation": d.metadata.generation,
                               "status": d.status}))
                .unwrap_or(Value::Null)
        );
        for rs in self.replica_sets(tenant).await {
            out.push_str(&format!(
                "ReplicaSet {}: revision {:?}, spec.replicas {:?}, status {}\n",
                rs.metadata.name.clone().unwrap_or_default(),
                annotation(&rs.metadata, REVISION_ANNOTATION),
                rs.spec.as_ref().and_then(|s| s.replicas),
                json!(rs.status)
            ));
        }
        for p in self.pods(tenant).await {
            out.push_str(&format!(
                "Pod {}: deleting {}, status {}\n",
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.deletion_timestamp.is_some(),
                json!(p.status)
            ));
        }
        out
    }

    /// Runs a `TenantComputeWorkflow` that must succeed; a failure panics with the caller's
    /// and the tracker's `status`, the tenant's objects and the worker's log.
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
            other => {
                let view = query_status(client, id).await;
                let tracker = match view["executionId"].as_str() {
                    Some(e) => query_status(client, &format!("compute-execution-{e}")).await,
                    None => Value::Null,
                };
                panic!(
                    "{id} did not succeed: {other:?}\ncaller's status: {view}\ntracker's \
                     status: {tracker}\n{}worker log tail:\n{}",
                    self.describe(tenant).await,
                    worker_log_tail(&worker.log(), 20)
                );
            }
        }
    }
}

/// The background kubelet of [`Rig::kubelet`]; stops when dropped.
struct Kubelet {
    task: tokio::task::JoinHandle<()>,
    marked: Arc<Mutex<Vec<String>>>,
}

impl Kubelet {
    /// The pods it made Ready so far.
    fn marked(&self) -> Vec<String> {
        self.marked.lock().unwrap().clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn pods_of(api: &Api<Pod>, tenant: &str) -> Vec<Pod> {
    let mut items = api
        .list(&ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}")))
        .await
        .expect("list Pods")
        .items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    items
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn owned_by(pod: &Pod, rs: &ReplicaSet) -> bool {
    let uid = rs.metadata.uid.as_deref().unwrap_or("-");
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid)
}

pub fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

pub fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

pub fn names<K: kube::Resource>(objs: &[K]) -> Vec<String> {
    objs.iter().map(name_of).collect()
}

/// No faults expected: one attempt, and a stuck operation ends (TIMEOUT) in 60 s with its
/// progress in the panic instead of the workflow's 120 s limit.
pub fn one_attempt() -> Value {
    json!({"maxAttempts": 1})
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The tenant's latest execution in the worker's store, once there is one.
async fn latest_execution(worker: &TestWorker, tenant: &str) -> ExecutionStatus {
    let store = store::connect(&worker.database_url()).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(r) = store.list_executions(tenant).await.unwrap().pop() {
            return r.status;
        }
        assert!(
            Instant::now() < deadline,
            "no execution of {tenant} was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the worker's store records `ready`/`desired` as the execution's progress
/// (what `GetComputeExecution` returns) while it still runs.
async fn wait_for_progress(worker: &TestWorker, execution_id: &str, ready: u32, desired: u32) {
    let store = store::connect(&worker.database_url()).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = store
            .get_execution(execution_id)
            .await
            .unwrap()
            .expect("the execution exists")
            .status;
        assert!(
            matches!(status.state.as_str(), "pending" | "running"),
            "the execution ended before {ready}/{desired} replicas were ready: {status:?}"
        );
        if let Some(p) = &status.progress
            && p.ready == Some(ready)
            && p.desired == Some(desired)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the progress never showed {ready}/{desired}: {:?}",
            status.progress
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rig on its own (no worker): a Deployment gets a ReplicaSet and Pending pods; playing
/// the kubelet makes it Available; an unscheduled pod is deleted at once.
#[tokio::test]
async fn k8s_rig_plays_the_kubelet() {
    let rig = Rig::start("k8s-rig").await;
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "tenant-rig", "labels": {TENANT_LABEL: "rig"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {TENANT_LABEL: "rig"}},
            "template": {
                "metadata": {"labels": {TENANT_LABEL: "rig"}},
                "spec": {"containers": [{"name": "workload", "image": "nginx:1.27"}]},
            },
        },
    }))
    .unwrap();
    rig.deployments()
        .create(&PostParams::default(), &dep)
        .await
        .expect("create a Deployment");
    let pods = rig.wait_for_pods("rig", 1).await;
    assert_eq!(
        pods[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending"),
        "no scheduler, no kubelet"
    );
    rig.mark_ready(&pods[0]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let dep = rig.deployment("rig").await.unwrap();
        let available = dep
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            });
        if available && dep.status.as_ref().and_then(|s| s.ready_replicas) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Deployment never became Available:\n{}",
            rig.describe("rig").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.pod_api()
        .delete(&name_of(&pods[0]), &Default::default())
        .await
        .expect("delete the pod");
    assert!(
        rig.pod_api()
            .get_opt(&name_of(&pods[0]))
            .await
            .unwrap()
            .is_none(),
        "an unscheduled pod goes at once"
    );
}

/// Provision: the worker applies the Deployment (labels, annotation, env, the Secret as a
/// reference) and a Service; the test plays the kubelet, and `compute-provisioned` arrives
/// with the pods, their container ids and the ReplicaSet. The latency from the last pod Ready
/// to the caller's signal is printed (shown with --nocapture).
#[tokio::test]
async fn k8s_provision_creates_the_deployment_and_reports_its_pods() {
    let rig = Rig::start("k8s-prov").await;
    let secret_value = "k8s-s3cr3t-nobody-reads-4b7e";
    // Named under the tenant's default prefix `tenant-<tenantId>-`.
    rig.create_secret("tenant-k8s-prov-api", "token", secret_value)
        .await;
    let worker = rig.worker("k8s-prov");
    let client = client().await;
    let tenant = "k8s-prov";
    let request = json!({"tenantId": tenant, "spec": {
            "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
            "cpu": 0.25, "memory": 128, "replicas": 2, "port": 8080,
            "env": {"MODE": "blue"}, "config": {"LOG_LEVEL": "debug"},
            "secrets": [{"name": "API_TOKEN",
                         "secretKeyRef": {"name": "tenant-k8s-prov-api", "key": "token"}}]},
        "metadata": {"owner": "platform-team", "environment": "staging",
                     "labels": {"team": "platform"}},
        "timeout": "60s"});

    let run = async {
        let status = rig
            .run_ok(
                &worker,
                &client,
                "k8s-prov-1",
                tenant,
                input("provision", request.clone(), one_attempt()),
            )
            .await;
        (status, Instant::now())
    };
    let kubelet = async {
        // The controller made two Pending pods; the execution runs and reports 0/2 ready.
        let pods = rig.wait_for_pods(tenant, 2).await;
        let execution = latest_execution(&worker, tenant).await;
        wait_for_progress(&worker, &execution.execution_id, 0, 2).await;
        // One pod Ready: 1/2, still running.
        rig.mark_ready(&pods[0]).await;
        wait_for_progress(&worker, &execution.execution_id, 1, 2).await;
        // The last one: from now on the clock runs.
        rig.mark_ready(&pods[1]).await;
        (pods, Instant::now(), Utc::now())
    };
    let ((status, result_at), (pods, ready_at, ready_wall)) = tokio::join!(run, kubelet);

    // The latency: last pod Ready -> the worker's store -> the caller's signal -> its result.
    let signaled_at: DateTime<Utc> = signals_with_times("k8s-prov-1")
        .into_iter()
        .find(|(name, _)| name == "compute-provisioned")
        .map(|(_, at)| at)
        .expect("the caller got compute-provisioned");
    let view = query_status(&client, "k8s-prov-1").await;
    let callbacks = view["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 1, "{view}");
    let cb = &callbacks[0];
    let finished_at: DateTime<Utc> = str_of(cb, "/finishedAt").parse().unwrap();
    let to_store = (finished_at - ready_wall).num_milliseconds();
    let to_signal = (signaled_at - ready_wall).num_milliseconds();
    let to_result = result_at.duration_since(ready_at).as_millis();
    eprintln!(
        "k8s latency from the last pod Ready: succeeded in the store {to_store} ms, \
         compute-provisioned signal recorded {to_signal} ms, caller's result {to_result} ms"
    );
    assert!(
        to_signal < 2000,
        "the callback took {to_signal} ms after the last pod was Ready: the watches should \
         wake the observation at once"
    );

    // The callback: the execution, the ReplicaSet, the pods and their containers.
    let execution_id = str_of(&status, "/executionId");
    let rs = rig.replica_sets(tenant).await;
    assert_eq!(rs.len(), 1, "{}", rig.describe(tenant).await);
    let pod_names = names(&pods);
    let container_ids: Vec<String> = pod_names.iter().map(|p| container_id(p)).collect();
    for ids in [&status["resourceIds"], &cb["resourceIds"]] {
        assert_eq!(ids["k8sNamespace"], "k8s-prov", "{ids}");
        assert_eq!(ids["k8sDeployment"], "tenant-k8s-prov", "{ids}");
        assert_eq!(ids["k8sReplicaSet"], name_of(&rs[0]).as_str(), "{ids}");
        assert_eq!(strings(&ids["podNames"]), pod_names, "{ids}");
        let mut got = strings(&ids["containerIds"]);
        got.sort();
        let mut want = container_ids.clone();
        want.sort();
        assert_eq!(got, want, "{ids}");
    }
    assert_eq!(cb["state"], "succeeded");
    assert_eq!(cb["operation"], "provision");
    assert_eq!(cb["executionId"], execution_id);
    assert_eq!(signals_received("k8s-prov-1"), ["compute-provisioned"]);

    // The Deployment as applied.
    let dep = rig.deployment(tenant).await.expect("the Deployment exists");
    let labels = dep.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        (MANAGED_BY_LABEL, "compute-worker"),
        (TENANT_LABEL, tenant),
        ("compute-worker/owner", "platform-team"),
        ("compute-worker/environment", "staging"),
        ("team", "platform"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{labels:?}");
    }
    assert_eq!(
        annotation(&dep.metadata, EXECUTION_ANNOTATION).as_deref(),
        Some(execution_id)
    );
    let spec = dep.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector.match_labels,
        Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), "compute-worker".to_string()),
            (TENANT_LABEL.to_string(), tenant.to_string()),
        ]))
    );
    let template = spec.template.spec.as_ref().unwrap();
    assert_eq!(template.automount_service_account_token, Some(false));
    assert_eq!(template.containers.len(), 1);
    let c = &template.containers[0];
    assert_eq!(c.name, "workload");
    assert_eq!(c.image.as_deref(), Some("nginx:1.27"));
    assert_eq!(c.command, Some(vec!["nginx".to_string()]));
    assert_eq!(
        c.args,
        Some(vec!["-g".to_string(), "daemon off;".to_string()])
    );
    let env = json!(c.env);
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "MODE", "value": "blue"})),
        "{env}"
    );
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "LOG_LEVEL", "value": "debug"})),
        "{env}"
    );
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "API_TOKEN", "valueFrom":
            {"secretKeyRef": {"name": "tenant-k8s-prov-api", "key": "token", "optional": false}}})),
        "{env}"
    );
    // The baseline pod security profile, as the API server stored it; the pods the
    // controller made from the template carry it too.
    assert_eq!(
        json!(template.security_context),
        json!({"seccompProfile": {"type": "RuntimeDefault"}})
    );
    // The API server drops a false host namespace flag as the default it is.
    for host in [template.host_network, template.host_pid, template.host_ipc] {
        assert_ne!(host, Some(true), "{}", json!(template));
    }
    assert_eq!(
        json!(c.security_context),
        json!({"allowPrivilegeEscalation": false, "privileged": false})
    );
    for p in &pods {
        let pod_spec = p.spec.as_ref().unwrap();
        assert_eq!(
            json!(pod_spec.security_context),
            json!({"seccompProfile": {"type": "RuntimeDefault"}}),
            "{}",
            name_of(p)
        );
        assert_eq!(
            json!(pod_spec.containers[0].security_context),
            json!({"allowPrivilegeEscalation": false, "privileged": false})
        );
    }
    let resources = json!(c.resources);
    assert_eq!(
        resources["limits"],
        json!({"cpu": "250m", "memory": "128Mi"})
    );
    assert_eq!(resources["requests"], resources["limits"]);
    assert_eq!(
        json!(c.ports)[0],
        json!({"name": "main", "containerPort": 8080, "protocol": "TCP"})
    );
    // The pods carry the same labels, and the Service selects them.
    for p in &pods {
        let l = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(l.get(TENANT_LABEL).map(String::as_str), Some(tenant));
    }
    let service = rig
        .services()
        .get_opt("tenant-k8s-prov")
        .await
        .unwrap()
        .expect("a Service for the port");
    let sspec = service.spec.unwrap();
    assert_eq!(sspec.selector, spec.selector.match_labels);
    assert_eq!(json!(sspec.ports)[0]["port"], 8080);
    assert_eq!(json!(sspec.ports)[0]["targetPort"], 8080);

    // The secret's value went nowhere: the worker only named the Secret.
    assert!(!worker.log().contains(secret_value));
    assert!(!json!(dep).to_string().contains(secret_value));
}

/// The pods cannot pull their image: the Python caller (by activity name) gets
/// `compute-failed` with INVALID_CONFIGURATION and the provider's code ImagePullBackOff.
#[tokio::test]
async fn k8s_image_pull_backoff_fails_with_invalid_configuration() {
    let rig = Rig::start("k8s-pull").await;
    let worker = rig.worker("k8s-pull");
    let tenant = "k8s-pull";
    let request = json!({"tenantId": tenant,
        "spec": {"image": "registry.invalid/no-such-image:1"}, "timeout": "60s"});
    let caller = worker.python_calls_in_background(json!([{
        "activity": "ProvisionTenantCompute", "input": request, "waitSignal": true}]));
    let pods = rig.wait_for_pods(tenant, 1).await;
    rig.mark_image_pull_backoff(&pods[0]).await;
    let results = tokio::task::spawn_blocking(move || caller.join().expect("python caller"))
        .await
        .unwrap();

    let r = &results[0];
    assert_eq!(
        r["result"]["state"], "running",
        "the handle comes back at once: {r}"
    );
    let signals = r["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1, "{r}");
    assert_eq!(signals[0]["signal"], "compute-failed", "{r}");
    let cb = &signals[0]["callback"];
    assert_eq!(cb["state"], "failed");
    assert_eq!(cb["executionId"], r["result"]["executionId"]);
    let error = &cb["error"];
    assert_eq!(error["code"], "INVALID_CONFIGURATION", "{error}");
    assert_eq!(error["retriable"], false);
    assert_eq!(error["classification"], "non_retriable");
    assert_eq!(error["provider"], "kubernetes");
    assert_eq!(error["providerCode"], "ImagePullBackOff", "{error}");
    let message = str_of(error, "/message");
    assert!(
        message.contains(&name_of(&pods[0])) && message.contains("ImagePullBackOff"),
        "{message}"
    );

    // The execution and the tenant are failed in the store; the Deployment stays (no policy
    // asked for a rollback).
    let store = store::connect(&worker.database_url()).await.unwrap();
    let tenant_record = store.get_tenant(tenant).await.unwrap().unwrap();
    assert_eq!(tenant_record.state.as_str(), "failed");
    assert!(rig.deployment(tenant).await.is_some());
}

/// The same provision twice with one key (concurrently), twice without a key (concurrently),
/// and once more under a new key: one Deployment, one ReplicaSet, the same pods.
#[tokio::test]
async fn k8s_provisioning_twice_makes_one_deployment_and_one_replica_set() {
    let rig = Rig::start("k8s-twice").await;
    let worker = rig.worker("k8s-twice");
    let client = client().await;
    let kubelet = rig.kubelet("k8s-twice");
    let tenant = "k8s-twice";
    let spec = json!({"image": "nginx:1.27", "replicas": 2, "env": {"MODE": "blue"}});
    let keyed = json!({"tenantId": tenant, "spec": spec, "idempotencyKey": "release-1",
                       "timeout": "60s"});

    let (a, b) = tokio::join!(
        rig.run_ok(
            &worker,
            &client,
            "k8s-twice-a",
            tenant,
            input("provision", keyed.clone(), one_attempt())
        ),
        rig.run_ok(
            &worker,
            &client,
            "k8s-twice-b",
            tenant,
            input("provision", keyed.clone(), one_attempt())
        ),
    );
    let execution_id = str_of(&a, "/executionId").to_string();
    assert_eq!(b["executionId"], execution_id.as_str());
    assert_eq!(a["resourceIds"], b["resourceIds"]);
    // Each caller heard of the end by its signal, or (the observer finished before its start
    // activity answered) from the final state in its handle: never twice.
    let mut told = 0;
    for wf in ["k8s-twice-a", "k8s-twice-b"] {
        let got = signals_received(wf);
        assert!(
            got.is_empty() || got == ["compute-provisioned"],
            "{wf}: {got:?}"
        );
        told += got.len();
    }
    // And every signal a caller heard is a delivery the store recorded (from the tracker, or
    // from the start activity of a caller that attached after the end).
    let store = store::connect(&worker.database_url()).await.unwrap();
    let delivered = store
        .list_deliveries(&execution_id)
        .await
        .unwrap()
        .iter()
        .filter(|d| d.outcome == compute_activities::contract::DeliveryState::Delivered)
        .count();
    assert_eq!(delivered, told, "{told} told");

    let rs = rig.replica_sets(tenant).await;
    assert_eq!(names(&rig.all_deployments().await), ["tenant-k8s-twice"]);
    assert_eq!(rs.len(), 1, "{}", rig.describe(tenant).await);
    let rs_name = name_of(&rs[0]);
    let pods = names(&rig.pods(tenant).await);
    assert_eq!(pods.len(), 2);
    assert_eq!(str_of(&a, "/resourceIds/k8sReplicaSet"), rs_name);
    assert_eq!(strings(&a["resourceIds"]["podNames"]), pods);

    // Without a key, the same spec twice at once: the two attach to one execution, and
    // nothing new is created.
    let unkeyed = json!({"tenantId": tenant, "spec": spec, "timeout": "60s"});
    let (c, d) = tokio::join!(
        rig.run_ok(
            &worker,
            &client,
            "k8s-twice-c",
            tenant,
            input("provision", unkeyed.clone(), one_attempt())
        ),
        rig.run_ok(
            &worker,
            &client,
            "k8s-twice-d",
            tenant,
            input("provision", unkeyed.clone(), one_attempt())
        ),
    );
    assert_eq!(c["executionId"], d["executionId"]);
    assert_eq!(str_of(&c, "/resourceIds/k8sReplicaSet"), rs_name);

    // A new key: a new execution whose apply changes nothing but the execution annotation,
    // so the Deployment keeps its revision and its ReplicaSet. (Its generation does grow:
    // Kubernetes counts a change of a Deployment's annotations as a new generation.)
    let mut rekeyed = keyed.clone();
    rekeyed["idempotencyKey"] = json!("release-2");
    let e = rig
        .run_ok(
            &worker,
            &client,
            "k8s-twice-e",
            tenant,
            input("provision", rekeyed, one_attempt()),
        )
        .await;
    assert_ne!(e["executionId"], execution_id.as_str());
    assert_eq!(str_of(&e, "/resourceIds/k8sReplicaSet"), rs_name);
    assert_eq!(strings(&e["resourceIds"]["podNames"]), pods);
    let dep = rig.deployment(tenant).await.unwrap();
    assert_eq!(
        annotation(&dep.metadata, REVISION_ANNOTATION).as_deref(),
        Some("1"),
        "the re-apply rolled nothing out"
    );
    assert_eq!(
        annotation(&dep.metadata, EXECUTION_ANNOTATION).as_deref(),
        e["executionId"].as_str()
    );

    assert_eq!(names(&rig.all_deployments().await), ["tenant-k8s-twice"]);
    assert_eq!(names(&rig.replica_sets(tenant).await), [rs_name]);
    assert_eq!(names(&rig.pods(tenant).await), pods);
    let mut marked = kubelet.marked();
    marked.sort();
    assert_eq!(
        marked, pods,
        "only the first two pods ever needed a kubelet"
    );
}

/// Update: a new image and env roll out a new ReplicaSet (the test plays the kubelet for its
/// pods), the old one is scaled to 0, and `compute-updated` names the new ReplicaSet.
#[tokio::test]
async fn k8s_update_rolls_out_a_new_replica_set() {
    let rig = Rig::start("k8s-update").await;
    let worker = rig.worker("k8s-update");
    let client = client().await;
    let kubelet = rig.kubelet("k8s-update");
    let tenant = "k8s-update";
    let provision = json!({"tenantId": tenant, "timeout": "60s",
        "spec": {"image": "nginx:1.27", "replicas": 2, "env": {"MODE": "blue"}}});
    let first = rig
        .run_ok(
            &worker,
            &client,
            "k8s-update-1",
            tenant,
            input("provision", provision, one_attempt()),
        )
        .await;
    let old_rs = str_of(&first, "/resourceIds/k8sReplicaSet").to_string();
    let old_pods = strings(&first["resourceIds"]["podNames"]);
    assert_eq!(old_pods.len(), 2);

    let update = json!({"tenantId": tenant, "timeout": "60s",
        "spec": {"image": "nginx:1.28", "replicas": 2, "env": {"MODE": "green"}}});
    let updated = rig
        .run_ok(
            &worker,
            &client,
            "k8s-update-2",
            tenant,
            input("update", update, one_attempt()),
        )
        .await;
    let new_rs = str_of(&updated, "/resourceIds/k8sReplicaSet").to_string();
    assert_ne!(new_rs, old_rs);
    let new_pods = strings(&updated["resourceIds"]["podNames"]);
    assert_eq!(new_pods.len(), 2, "{updated}");
    assert!(
        new_pods.iter().all(|p| !old_pods.contains(p)),
        "{old_pods:?} {new_pods:?}"
    );

    // The API server agrees: two ReplicaSets, the new one (revision 2) runs the new spec and
    // owns the reported pods, the old one is scaled to 0 and its pods are gone.
    let all = rig.replica_sets(tenant).await;
    assert_eq!(all.len(), 2, "{}", rig.describe(tenant).await);
    let find = |name: &str| all.iter().find(|rs| name_of(*rs) == name).unwrap().clone();
    let (old, new) = (find(&old_rs), find(&new_rs));
    assert_eq!(
        annotation(&new.metadata, REVISION_ANNOTATION).as_deref(),
        Some("2")
    );
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(old.status.as_ref().unwrap().replicas, 0);
    assert_eq!(new.spec.as_ref().unwrap().replicas, Some(2));
    let template = new.spec.as_ref().unwrap().template.as_ref().unwrap();
    let c = &template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("nginx:1.28"));
    assert_eq!(json!(c.env), json!([{"name": "MODE", "value": "green"}]));
    let live: Vec<Pod> = rig
        .pods(tenant)
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(names(&live), new_pods);
    assert!(live.iter().all(|p| owned_by(p, &new)));
    let marked = kubelet.marked();
    assert!(
        new_pods.iter().all(|p| marked.contains(p)),
        "the new pods became Ready only through the test's kubelet: {marked:?}"
    );
    let dep = rig.deployment(tenant).await.unwrap();
    assert_eq!(
        annotation(&dep.metadata, EXECUTION_ANNOTATION).as_deref(),
        updated["executionId"].as_str()
    );

    // The caller heard compute-updated with the new ReplicaSet.
    let view = query_status(&client, "k8s-update-2").await;
    let cb = &view["callbacks"][0];
    assert_eq!(cb["operation"], "update", "{view}");
    assert_eq!(cb["state"], "succeeded");
    assert_eq!(cb["resourceIds"]["k8sReplicaSet"], new_rs.as_str());
    assert_eq!(strings(&cb["resourceIds"]["podNames"]), new_pods);
    assert_eq!(signals_received("k8s-update-2"), ["compute-updated"]);
}

/// Delete: the Deployment goes in the foreground, so when `compute-deleted` arrives its
/// ReplicaSet and pods are gone too, and so is the Service. Deleting again succeeds.
#[tokio::test]
async fn k8s_delete_removes_everything_in_the_foreground() {
    let rig = Rig::start("k8s-delete").await;
    let worker = rig.worker("k8s-delete");
    let client = client().await;
    let _kubelet = rig.kubelet("k8s-delete");
    let tenant = "k8s-delete";
    let provision = json!({"tenantId": tenant, "timeout": "60s",
        "spec": {"image": "nginx:1.27", "replicas": 2, "port": 8080}});
    rig.run_ok(
        &worker,
        &client,
        "k8s-delete-1",
        tenant,
        input("provision", provision, one_attempt()),
    )
    .await;
    assert!(rig.deployment(tenant).await.is_some());
    assert_eq!(rig.replica_sets(tenant).await.len(), 1);
    assert_eq!(rig.pods(tenant).await.len(), 2);
    assert!(
        rig.services()
            .get_opt("tenant-k8s-delete")
            .await
            .unwrap()
            .is_some()
    );

    let deleted = rig
        .run_ok(
            &worker,
            &client,
            "k8s-delete-2",
            tenant,
            input(
                "delete",
                json!({"tenantId": tenant, "timeout": "60s"}),
                one_attempt(),
            ),
        )
        .await;
    assert_eq!(deleted["operation"], "delete");
    // Read at once, with no waiting: foreground deletion removed the dependents before the
    // Deployment, and the worker reported only when the Deployment was gone.
    assert!(rig.deployment(tenant).await.is_none());
    assert_eq!(names(&rig.replica_sets(tenant).await), Vec::<String>::new());
    assert_eq!(names(&rig.pods(tenant).await), Vec::<String>::new());
    assert!(
        rig.services()
            .get_opt("tenant-k8s-delete")
            .await
            .unwrap()
            .is_none()
    );
    let view = query_status(&client, "k8s-delete-2").await;
    assert_eq!(view["callbacks"][0]["operation"], "delete", "{view}");
    assert_eq!(view["callbacks"][0]["state"], "succeeded");
    assert_eq!(signals_received("k8s-delete-2"), ["compute-deleted"]);

    // Deleting what is gone succeeds.
    rig.run_ok(
        &worker,
        &client,
        "k8s-delete-3",
        tenant,
        input(
            "delete",
            json!({"tenantId": tenant, "idempotencyKey": "again", "timeout": "60s"}),
            one_attempt(),
        ),
    )
    .await;
    assert!(rig.all_deployments().await.is_empty());
}

/// A spec our validation accepts but the API server refuses (422: a Secret key with a `/`,
/// which a Secret's keys may not have): INVALID_CONFIGURATION on the first attempt, naming the
/// field, and nothing created.
#[tokio::test]
async fn k8s_api_server_refusal_is_invalid_configuration() {
    let rig = Rig::start("k8s-invalid").await;
    let worker = rig.worker("k8s-invalid");
    let client = client().await;
    let tenant = "k8s-invalid";
    let request = json!({"tenantId": tenant, "spec": {"image": "nginx:1.27",
        "secrets": [{"name": "API_TOKEN",
                     "secretKeyRef": {"name": "tenant-k8s-invalid-api", "key": "api/token"}}]}});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(
            &client,
            "k8s-invalid-1",
            input("provision", request, json!({"maxAttempts": 5})),
        )
        .await
        .failed();
    assert_eq!(code, "INVALID_CONFIGURATION", "{details}");
    assert!(non_retryable, "{details}");
    assert_eq!(details["retriable"], false);
    assert_eq!(details["provider"], "kubernetes", "{details}");
    assert_eq!(details["providerCode"], "Invalid", "{details}");
    let message = str_of(&details, "/message");
    assert!(
        message.contains("spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.key"),
        "the message names the field: {message}"
    );
    assert_eq!(
        started_activity_attempts("k8s-invalid-1", "ProvisionTenantCompute"),
        [1]
    );
    assert_eq!(query_status(&client, "k8s-invalid-1").await["attempt"], 1);
    assert!(rig.all_deployments().await.is_empty());
}

/// A request whose `secretKeyRef` names a Secret outside the tenant's prefix (another
/// tenant's, one whose id extends this tenant's, or any other), or whose labels use a
/// reserved prefix, is refused on the first attempt with INVALID_CONFIGURATION naming the
/// field and not the value, whether the Secret exists or not; nothing is created.
#[tokio::test]
async fn k8s_secret_scope_and_reserved_labels_are_refused_on_the_first_attempt() {
    let rig = Rig::start("k8s-scope").await;
    // Secrets that exist in the shared namespace: existing does not make them readable.
    rig.create_secret("tenant-k8s-other-api", "token", "other-tenants-value")
        .await;
    rig.create_secret("tenant-k8s-scope-corp-db", "token", "extended-id-value")
        .await;
    let worker = rig.worker("k8s-scope");
    let client = client().await;
    let tenant = "k8s-scope";
    let secret = |name: &str| {
        json!({"tenantId": tenant, "spec": {"image": "nginx:1.27",
            "secrets": [{"name": "API_TOKEN", "secretKeyRef": {"name": name, "key": "token"}}]}})
    };
    let labelled = |key: &str| {
        json!({"tenantId": tenant, "spec": {"image": "nginx:1.27"},
               "metadata": {"labels": {key: "privileged"}}})
    };
    let cases = [
        (
            "k8s-scope-other",
            secret("tenant-k8s-other-api"),
            "spec.secrets[0].secretKeyRef.name",
            "tenant-k8s-other-api",
        ),
        (
            "k8s-scope-corp",
            secret("tenant-k8s-scope-corp-db"),
            "spec.secrets[0].secretKeyRef.name",
            "tenant-k8s-scope-corp-db",
        ),
        (
            "k8s-scope-missing",
            secret("no-such-secret"),
            "spec.secrets[0].secretKeyRef.name",
            "no-such-secret",
        ),
        (
            "k8s-scope-psa",
            labelled("pod-security.kubernetes.io/enforce"),
            "metadata.labels",
            "pod-security.kubernetes.io",
        ),
        (
            "k8s-scope-mark",
            labelled("kubernetes.io/hostname"),
            "metadata.labels",
            "hostname",
        ),
        (
            "k8s-scope-tenant",
            labelled("compute-worker/tenant"),
            "metadata.labels",
            "compute-worker/tenant",
        ),
    ];
    for (id, request, field, value) in cases {
        let message = worker
            .run_tenant_workflow(
                &client,
                id,
                input("provision", request, json!({"maxAttempts": 5})),
            )
            .await
            .refused_once(id, "ProvisionTenantCompute");
        assert!(message.starts_with(field), "{id}: {message}");
        assert!(
            !message.contains(value),
            "{id}: the message repeats the value: {message}"
        );
    }
    assert!(rig.all_deployments().await.is_empty());
    let log = worker.log();
    for value in ["other-tenants-value", "extended-id-value"] {
        assert!(!log.contains(value));
    }
}

/// The ServiceAccount, Role and RoleBinding of deploy/kubernetes/rbac.yaml (in the test's
/// namespace) are all the worker needs: a worker holding only that account's token
/// provisions and deletes.
#[tokio::test]
async fn k8s_rbac_manifest_is_enough_for_the_worker() {
    let rig = Rig::start("k8s-rbac").await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/rbac.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut obj: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if obj.is_null() {
            continue;
        }
        assert_eq!(obj["metadata"]["namespace"], "default", "{obj}");
        obj["metadata"]["namespace"] = json!(rig.ns);
        if let Some(subjects) = obj["subjects"].as_array_mut() {
            for s in subjects {
                if s["namespace"] == "default" {
                    s["namespace"] = json!(rig.ns);
                }
            }
        }
        let kind = str_of(&obj, "/kind").to_string();
        let pp = PostParams::default();
        let ns = &rig.ns;
        let created = match kind.as_str() {
            "ServiceAccount" => create_in::<ServiceAccount>(&rig.kube, ns, obj, &pp).await,
            "Role" => create_in::<Role>(&rig.kube, ns, obj, &pp).await,
            "RoleBinding" => create_in::<RoleBinding>(&rig.kube, ns, obj, &pp).await,
            other => panic!("unexpected kind {other} in {}", manifest.display()),
        };
        created.unwrap_or_else(|e| panic!("apply the {kind}: {e}"));
        kinds.push(kind);
    }
    assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding"]);

    // Kubernetes 1.20's token controller gives the account a token Secret.
    let secrets = Api::<Secret>::namespaced(rig.kube.clone(), &rig.ns);
    let deadline = Instant::now() + PATIENCE;
    let token = loop {
        let list = secrets
            .list(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
            .await
            .expect("list token Secrets");
        let found = list.items.into_iter().find_map(|s| {
            let for_us = annotation(&s.metadata, "kubernetes.io/service-account.name")
                .is_some_and(|a| a == "compute-worker");
            let token = s.data?.get("token")?.0.clone();
            for_us.then(|| String::from_utf8(token).unwrap())
        });
        if let Some(t) = found {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no token Secret for the compute-worker ServiceAccount:\n{}",
            kube_rig().log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A kubeconfig with that token and nothing else.
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rig.kubeconfig).unwrap()).unwrap();
    let mut config = admin.clone();
    config["users"] = json!([{"name": "compute-worker", "user": {"token": token}}]);
    config["contexts"] = json!([{"name": "rig", "context":
        {"cluster": str_of(&admin, "/clusters/0/name"), "user": "compute-worker",
         "namespace": rig.ns}}]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();

    // The token is the account's, and the account is not an admin.
    let limited = kube_client(&kubeconfig).await;
    let denied = Api::<Secret>::namespaced(limited.clone(), &rig.ns)
        .list(&ListParams::default())
        .await
        .expect_err("the worker's account may not read Secrets");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied:?}"
    );
    Api::<Pod>::namespaced(limited, &rig.ns)
        .list(&ListParams::default())
        .await
        .expect("the worker's account may list pods");

    let worker = rig.worker_as("k8s-rbac", &kubeconfig);
    let client = client().await;
    let _kubelet = rig.kubelet("k8s-rbac");
    let tenant = "k8s-rbac";
    let provisioned = rig
        .run_ok(
            &worker,
            &client,
            "k8s-rbac-1",
            tenant,
            input(
                "provision",
                json!({"tenantId": tenant, "timeout": "60s",
                       "spec": {"image": "nginx:1.27", "port": 8080}}),
                one_attempt(),
            ),
        )
        .await;
    assert_eq!(signals_received("k8s-rbac-1"), ["compute-provisioned"]);
    assert_eq!(
        strings(&provisioned["resourceIds"]["podNames"]).len(),
        1,
        "{provisioned}"
    );
    assert!(rig.deployment(tenant).await.is_some());
    rig.run_ok(
        &worker,
        &client,
        "k8s-rbac-2",
        tenant,
        input(
            "delete",
            json!({"tenantId": tenant, "timeout": "60s"}),
            one_attempt(),
        ),
    )
    .await;
    assert_eq!(signals_received("k8s-rbac-2"), ["compute-deleted"]);
    assert!(rig.deployment(tenant).await.is_none());
    assert!(rig.pods(tenant).await.is_empty());
    let log = worker.log();
    assert!(
        !log.contains("is forbidden"),
        "the worker was refused something:\n{}",
        worker_log_tail(&log, 20)
    );
}

#[tokio::test]
async fn k8s_sweep_removes_a_stray_deployment_and_keeps_the_tenants() {
    let rig = Rig::start("k8s-sweep").await;
    let worker = rig.worker("k8s-sweep");
    let client = client().await;
    let _kubelet = rig.kubelet("k8s-sweep-kept");
    let kept = json!({"tenantId": "k8s-sweep-kept", "timeout": "60s",
        "spec": {"image": "nginx:1.27", "replicas": 1}});
    rig.run_ok(
        &worker,
        &client,
        "k8s-sweep-1",
        "k8s-sweep-kept",
        input("provision", kept, one_attempt()),
    )
    .await;
    // A Deployment with the worker's marks that no tenant in its store accounts for (left by
    // a lost store, or copied by hand).
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), "compute-worker".to_string()),
        (TENANT_LABEL.to_string(), "k8s-sweep-stray".to_string()),
    ]);
    let stray: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "tenant-k8s-sweep-stray", "labels": labels,
                     "annotations": {EXECUTION_ANNOTATION: "lost-execution"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "workload", "image": "nginx:1.27"}]}}}
    }))
    .unwrap();
    rig.deployments()
        .create(&PostParams::default(), &stray)
        .await
        .unwrap();

    let args = |apply: bool| {
        let mut a: Vec<String> = ["--provider", "kubernetes", "--k8s-namespace", &rig.ns]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if apply {
            a.push("--apply".into());
        }
        a
    };
    let env = [("KUBECONFIG", rig.kubeconfig.display().to_string())];
    let report = crate::sweep::sweep(&worker.database_url(), &args(false), &env);
    let orphans = report["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{report}");
    assert_eq!(orphans[0]["tenantId"], "k8s-sweep-stray");
    assert_eq!(orphans[0]["reason"], "tenant-unknown");
    assert_eq!(orphans[0]["kind"], "deployment");
    assert_eq!(orphans[0]["executionId"], "lost-execution");
    assert!(
        rig.deployment("k8s-sweep-stray").await.is_some(),
        "a dry run removes nothing"
    );

    let report = crate::sweep::sweep(&worker.database_url(), &args(true), &env);
    assert_eq!(report["removals"][0]["removed"], true, "{report}");
    let deadline = Instant::now() + PATIENCE;
    while rig.deployment("k8s-sweep-stray").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the stray Deployment is never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rig.deployment("k8s-sweep-kept").await.is_some(),
        "the tenant's own Deployment stays"
    );
    let report = crate::sweep::sweep(&worker.database_url(), &args(false), &env);
    assert_eq!(report["orphans"], json!([]), "{report}");
}

/// Creates one manifest object of kind `K` in a namespace.
async fn create_in<K>(
    kube: &kube::Client,
    ns: &str,
    obj: Value,
    pp: &PostParams,
) -> kube::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(obj).unwrap();
    Api::<K>::namespaced(kube.clone(), ns)
        .create(pp, &object)
        .await
        .map(|_| ())
}
