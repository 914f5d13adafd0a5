//! The fault suite: kill -9 of a worker at each point of an operation, several workers on one
//! task queue sharing Postgres, concurrent provisions of one tenant. Every case prints its
//! counts (`FAULTS ...` lines on stderr) for the report.

use std::time::{Duration, Instant};

use compute_activities::{
    contract::{DeliveryState, ExecutionState, TenantState},
    faults, names, store,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::ListParams;
use serde_json::{Value, json};
use temporalio_client::{
    UntypedQuery, WorkflowGetResultOptions, WorkflowQueryOptions, WorkflowStartOptions,
};
use temporalio_common::{
    UntypedWorkflow,
    data_converters::{PayloadConverter, RawValue},
};

use crate::rigs::{
    self, OBSERVING, TestWorker, WorkerOpts, client, create_namespace, kube_client, kube_rig,
    mark_ready, postgres_database, processes_with, query_status, spawn_shared_worker, spawn_worker,
};

/// Runs per crash point.
const RUNS: usize = 3;

/// A Python caller's provision call that waits for its callback; a short start-to-close so a
/// provision attempt lost with its worker is retried soon.
fn provision_call(tenant: &str, marker: &str) -> Value {
    json!([{"activity": names::PROVISION_ACTIVITY,
            "input": {"tenantId": tenant, "spec": {"command": ["sleep", marker]}},
            "waitSignal": true, "startToCloseSeconds": 10}])
}

/// The worker's environment that makes it crash at `point`, once (the restarted worker finds
/// the once-file in `once` and goes on).
fn crash_env(point: &str, once: &tempfile::TempDir) -> [(&'static str, String); 2] {
    [
        ("COMPUTE_FAULT_CRASH_AT", point.to_string()),
        (
            "COMPUTE_FAULT_ONCE_FILE",
            once.path().join("crashed").display().to_string(),
        ),
    ]
}

/// A local-provider directory shared by several workers; its workloads are stopped on drop.
struct SharedLocalDir(tempfile::TempDir);

impl SharedLocalDir {
    fn new() -> Self {
        SharedLocalDir(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for SharedLocalDir {
    fn drop(&mut self) {
        rigs::stop_local_workloads(self.0.path());
    }
}

/// What one run ended with.
struct RunOutcome {
    callbacks: usize,
    resources: usize,
    execution_state: String,
    tenant_state: String,
}

fn rank(state: ExecutionState) -> u8 {
    match state {
        ExecutionState::Pending => 0,
        ExecutionState::Running => 1,
        _ => 2,
    }
}

/// Checks one run's end: the caller's handle and callback, one process, one execution with a
/// consistent history, an active tenant.
async fn check_run(worker: &TestWorker, tenant: &str, marker: &str, out: &[Value]) -> RunOutcome {
    let resources = processes_with(marker).len();
    assert_eq!(resources, 1, "exactly one workload for {tenant}");
    check_run_with(worker, tenant, resources, out).await
}

/// [`check_run`] for any provider: `resources` counted (and checked) by the caller.
async fn check_run_with(
    worker: &TestWorker,
    tenant: &str,
    resources: usize,
    out: &[Value],
) -> RunOutcome {
    let call = &out[0];
    assert!(call.get("error").is_none(), "the caller failed: {call}");
    let execution_id = call["result"]["executionId"].as_str().unwrap().to_string();
    let signals = call["signals"].as_array().cloned().unwrap_or_default();
    assert!(!signals.is_empty(), "no callback: {call}");
    for s in &signals {
        assert_eq!(s["signal"], "compute-provisioned", "{call}");
        assert_eq!(
            s["callback"]["executionId"],
            execution_id.as_str(),
            "{call}"
        );
        assert_eq!(s["callback"]["state"], "succeeded", "{call}");
    }

    let store = store::connect(&worker.database_url()).await.unwrap();
    let executions = store.list_executions(tenant).await.unwrap();
    assert_eq!(executions.len(), 1, "one execution for {tenant}");
    let status = &executions[0].status;
    assert_eq!(status.execution_id, execution_id);
    assert_eq!(status.state, ExecutionState::Succeeded, "{status:?}");
    let states: Vec<_> = status.history.iter().map(|h| h.state).collect();
    assert_eq!(states.first(), Some(&ExecutionState::Pending), "{states:?}");
    assert_eq!(
        states.last(),
        Some(&ExecutionState::Succeeded),
        "{states:?}"
    );
    assert!(
        states.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
        "history goes back: {states:?}"
    );
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == ExecutionState::Succeeded)
            .count(),
        1,
        "{states:?}"
    );
    let tenant_state = store.get_tenant(tenant).await.unwrap().unwrap().state;
    assert_eq!(tenant_state, TenantState::Running);
    RunOutcome {
        callbacks: signals.len(),
        resources,
        execution_state: status.state.as_str().to_string(),
        tenant_state: format!("{tenant_state:?}"),
    }
}

fn report(point: &str, outcomes: &[RunOutcome]) {
    report_for(point, "local", outcomes);
}

fn report_for(point: &str, provider: &str, outcomes: &[RunOutcome]) {
    let callbacks: Vec<_> = outcomes.iter().map(|o| o.callbacks).collect();
    let resources: Vec<_> = outcomes.iter().map(|o| o.resources).collect();
    let states: Vec<_> = outcomes
        .iter()
        .map(|o| format!("{}/{}", o.execution_state, o.tenant_state))
        .collect();
    eprintln!(
        "FAULTS point={point} provider={provider} runs={} callbacks={callbacks:?} resources={resources:?} states={states:?}",
        outcomes.len()
    );
}

/// kill -9 at a crash point of the worker (the first worker to reach it), restart, and check
/// the restarted worker finished the job. `RUNS` times, each with a worker of its own.
async fn crash_at_point(point: &str, marker_base: u32) {
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        let once = tempfile::tempdir().unwrap();
        let mut worker = spawn_worker(
            &format!("fault-{point}-{run}"),
            WorkerOpts {
                env: crash_env(point, &once).into(),
                ..Default::default()
            },
        );
        let tenant = format!("crash-{marker_base}-{run}");
        let marker = format!("{marker_base}.{run}");
        let caller = worker.python_calls_in_background(provision_call(&tenant, &marker));
        assert!(
            worker.wait_exited(Duration::from_secs(60)),
            "the worker did not crash at {point}:\n{}",
            worker.log()
        );
        assert!(worker.log().contains("Fault injection: crashing"));
        worker.restart();
        let out = caller.join().expect("python caller");
        outcomes.push(check_run(&worker, &tenant, &marker, &out).await);
    }
    report(point, &outcomes);
}

#[tokio::test]
async fn kill_9_after_the_provider_call_before_the_store_write() {
    crash_at_point(faults::AFTER_PROVIDER_CALL, 4101).await;
}

#[tokio::test]
async fn kill_9_after_the_store_write_before_the_tracker_starts() {
    crash_at_point(faults::BEFORE_TRACKER_START, 4102).await;
}

#[tokio::test]
async fn kill_9_after_the_terminal_state_before_the_signal() {
    crash_at_point(faults::AFTER_TERMINAL_STATE, 4104).await;
}

/// kill -9 while the worker's observer waits for the workload to settle: the restarted worker
/// (a new observer) takes the execution over once the dead one's lease expires.
#[tokio::test]
async fn kill_9_while_the_tracker_waits() {
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        let mut worker = spawn_worker(
            &format!("fault-watch-{run}"),
            WorkerOpts {
                settle: "4s",
                ..Default::default()
            },
        );
        let tenant = format!("crash-4103-{run}");
        let marker = format!("4103.{run}");
        let caller = worker.python_calls_in_background(provision_call(&tenant, &marker));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !worker.log().contains(OBSERVING) {
            assert!(
                Instant::now() < deadline,
                "the watch did not start:\n{}",
                worker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let store = store::connect(&worker.database_url()).await.unwrap();
        let before = store.list_executions(&tenant).await.unwrap();
        assert_eq!(before.len(), 1);
        assert!(
            !before[0].status.state.is_final(),
            "killed while the tracker waits"
        );
        worker.crash_and_restart();
        let out = caller.join().expect("python caller");
        outcomes.push(check_run(&worker, &tenant, &marker, &out).await);
    }
    report("while-tracker-waits", &outcomes);
}

/// 20 concurrent provisions of one tenant: one process, one succeeded execution, the same
/// execution id for every caller.
#[tokio::test]
async fn twenty_concurrent_provisions_of_one_tenant_make_one_resource_set() {
    let worker = spawn_worker("fault-twenty", WorkerOpts::default());
    let client = client().await;
    let input = json!({"operation": "provision",
        "request": {"tenantId": "twenty", "spec": {"command": ["sleep", "4105"]}},
        "policy": {"callbackTimeout": "60s"}});
    let ids: Vec<String> = (0..20).map(|i| format!("twenty-{i}")).collect();
    let results = futures::future::join_all(
        ids.iter()
            .map(|id| worker.run_tenant_workflow(&client, id, input.clone())),
    )
    .await;
    let mut execution_ids = Vec::new();
    for r in results {
        let status = r.completed();
        assert_eq!(status["state"], "succeeded", "{status}");
        execution_ids.push(status["executionId"].as_str().unwrap().to_string());
    }
    execution_ids.dedup();
    assert_eq!(execution_ids.len(), 1, "{execution_ids:?}");
    // Each caller heard of the execution by a callback, or (attached after its end) from
    // the final state in its handle; the tracker signalled every caller that attached.
    let (mut callbacks, mut late, mut duplicates) = (0, Vec::new(), 0);
    for id in &ids {
        let view = query_status(&client, id).await;
        let cbs = view["callbacks"].as_array().unwrap();
        assert!(cbs.len() <= 1, "{view}");
        match cbs.last() {
            Some(cb) => {
                assert_eq!(cb["executionId"], execution_ids[0].as_str(), "{view}");
                assert_eq!(cb["state"], "succeeded", "{view}");
            }
            None => late.push(id.clone()),
        }
        assert_eq!(view["executionId"], execution_ids[0].as_str(), "{view}");
        callbacks += cbs.len();
        duplicates += view["duplicateCallbacksIgnored"].as_u64().unwrap_or(0);
    }
    let tracker = format!("compute-execution-{}", execution_ids[0]);
    let tracker_view = query_status(&client, &tracker).await;
    // Every callback a caller heard is a delivery in the store, one per caller: from the
    // tracker, or from the start activity of a caller that attached after the end.
    let store = store::connect(&worker.database_url()).await.unwrap();
    let deliveries = store.list_deliveries(&execution_ids[0]).await.unwrap();
    let stored = deliveries
        .iter()
        .filter(|d| d.outcome == DeliveryState::Delivered)
        .count();
    assert_eq!(stored, callbacks, "{deliveries:?}");
    // A caller whose handle already carried the final state has completed: the tracker's
    // signal to it is recorded as undeliverable (workflow already completed), never lost.
    let sent = tracker_view["callbacks"].as_array().unwrap();
    let delivered = sent.iter().filter(|c| c["delivered"] == true).count();
    assert!(delivered <= callbacks, "{tracker_view}");
    for c in sent.iter().filter(|c| c["delivered"] != true) {
        let target = c["target"].as_str().unwrap();
        assert!(
            late.iter().any(|l| target == format!("temporal:{l}")),
            "{tracker_view}"
        );
    }
    let undeliverable = sent.len() - delivered;
    let late = late.len();
    assert!(callbacks >= 1);
    let resources = processes_with("4105").len();
    assert_eq!(resources, 1);
    let executions = store.list_executions("twenty").await.unwrap();
    let succeeded = executions
        .iter()
        .filter(|e| e.status.state == ExecutionState::Succeeded)
        .count();
    assert_eq!(executions.len(), 1);
    assert_eq!(succeeded, 1);
    eprintln!(
        "FAULTS case=twenty-concurrent-provisions provider=local callers=20 execution_ids=1 callbacks={callbacks} final_state_in_handle={late} tracker_undeliverable={undeliverable} duplicates_ignored={duplicates} resources={resources} executions={} succeeded={succeeded}",
        executions.len()
    );
}

/// Two workers on one task queue sharing one Postgres database (and one host): 10 tenants
/// provisioned concurrently, one worker killed with SIGKILL while the trackers wait, then the
/// 10 deleted by the survivor; every operation completes once, one process per tenant.
#[tokio::test]
async fn two_workers_on_one_queue_sharing_postgres_complete_each_operation_once() {
    const TENANTS: usize = 10;
    let db = postgres_database("faults_shared");
    let local = SharedLocalDir::new();
    let task_queue = format!("fault-shared-{}", std::process::id());
    let opts = || WorkerOpts {
        settle: "3s",
        ..Default::default()
    };
    let a = spawn_shared_worker(&task_queue, &db.url, local.path(), opts());
    let mut b = spawn_shared_worker(&task_queue, &db.url, local.path(), opts());
    let client = client().await;
    let tenant = |i: usize| format!("shared-{i}");
    let marker = |i: usize| format!("4106.{i}");

    let store = store::connect(&db.url).await.unwrap();
    let mut callbacks = 0;
    let mut requested_on_b = 0;
    for operation in ["provision", "delete"] {
        let runs = futures::future::join_all((0..TENANTS).map(|i| {
            let mut request = json!({"tenantId": tenant(i)});
            if operation == "provision" {
                request["spec"] = json!({"command": ["sleep", marker(i)]});
            }
            let input = json!({"operation": operation, "request": request,
                "policy": {"callbackTimeout": "60s"}});
            let id = format!("shared-{operation}-{i}");
            let (client, task_queue) = (&client, &task_queue);
            async move {
                let outcome =
                    rigs::start_and_wait(client, task_queue, "TenantComputeWorkflow", &id, input)
                        .await;
                (id, outcome)
            }
        }));
        // Mid-way through the provisions: every handle returned, the trackers wait for the
        // workloads to settle (3 s); kill -9 one of the two workers.
        let killer = async {
            if operation != "provision" {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let requested = |w: &TestWorker| w.log().matches("Operation requested.").count();
            while requested(&a) + requested(&b) < TENANTS {
                assert!(Instant::now() < deadline, "provisions not requested");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for i in 0..TENANTS {
                let id = format!("shared-provision-{i}");
                while query_status(&client, &id).await["phase"] == "starting" {
                    assert!(Instant::now() < deadline, "{id} got no handle");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            requested_on_b = requested(&b);
            b.kill9();
        };
        let (runs, ()) = tokio::join!(runs, killer);
        for (id, outcome) in runs {
            let status = outcome.completed();
            assert_eq!(status["state"], "succeeded", "{id}: {status}");
            let view = query_status(&client, &id).await;
            let cbs = view["callbacks"].as_array().unwrap();
            // A provision hears of its end by its callback (it settles for 3 s). A delete of
            // a stopped process may be final already when its start activity answers: the
            // handle says so, and the caller needs no callback (the tracker's then finds it
            // done, or gone).
            if operation == "provision" {
                assert_eq!(cbs.len(), 1, "{id}: {view}");
            } else {
                assert!(cbs.len() <= 1, "{id}: {view}");
            }
            for cb in cbs {
                assert_eq!(cb["executionId"], status["executionId"], "{view}");
            }
            callbacks += cbs.len();
        }
        for i in 0..TENANTS {
            let expected = usize::from(operation == "provision");
            assert_eq!(
                processes_with(&marker(i)).len(),
                expected,
                "{operation} of {}",
                tenant(i)
            );
        }
    }
    let mut executions = 0;
    for i in 0..TENANTS {
        let records = store.list_executions(&tenant(i)).await.unwrap();
        let ops: Vec<_> = records
            .iter()
            .map(|r| (r.status.operation.as_str(), r.status.state.as_str()))
            .collect();
        assert_eq!(ops, [("provision", "succeeded"), ("delete", "succeeded")]);
        executions += records.len();
        assert_eq!(
            store.get_tenant(&tenant(i)).await.unwrap().unwrap().state,
            TenantState::Deleted
        );
    }
    assert!(requested_on_b > 0, "the killed worker served no provision");
    eprintln!(
        "FAULTS case=two-workers-shared-postgres provider=local tenants={TENANTS} operations={} provisions_requested_on_killed_worker={requested_on_b} callbacks={callbacks} executions={executions} processes_after_provision={TENANTS} processes_after_delete=0",
        2 * TENANTS
    );
    drop((a, b));
    drop(store);
}

/// The Temporal dev server stopped for 10 s with operations in flight, then restarted on the
/// same database file: every callback is delivered afterwards.
#[tokio::test]
async fn temporal_stopped_for_10_s_every_callback_is_delivered_afterwards() {
    const OPERATIONS: usize = 4;
    let mut server = rigs::own_temporal_server();
    let worker = spawn_worker(
        "fault-temporal",
        WorkerOpts {
            settle: "3s",
            env: vec![("TEMPORAL_ADDRESS", server.address.clone())],
            ..Default::default()
        },
    );
    let client = server.client().await;
    let conv = PayloadConverter::serde_json();
    for i in 0..OPERATIONS {
        let input = json!({"operation": "provision",
            "request": {"tenantId": format!("outage-{i}"), "spec": {"command": ["sleep", format!("4107.{i}")]}},
            "policy": {"callbackTimeout": "120s"}});
        client
            .start_workflow(
                UntypedWorkflow::new("TenantComputeWorkflow"),
                RawValue::from_value(&input, &conv),
                WorkflowStartOptions::new(worker.task_queue.clone(), format!("outage-{i}"))
                    .execution_timeout(Duration::from_secs(300))
                    .build(),
            )
            .await
            .expect("start workflow");
    }
    // In flight: every operation requested, none settled yet (settle 3 s).
    worker.wait_for_log("Operation requested.", OPERATIONS, Duration::from_secs(30));
    server.stop();
    let stopped_at = Instant::now();
    let delivered_before_stop = worker.log().matches("Callback delivered.").count();
    std::thread::sleep(Duration::from_secs(10));
    server.start();
    let down_for = stopped_at.elapsed();

    let client = server.client().await;
    let mut callbacks = 0;
    for i in 0..OPERATIONS {
        let id = format!("outage-{i}");
        let handle = client.get_workflow_handle::<UntypedWorkflow>(&id);
        let raw = tokio::time::timeout(
            Duration::from_secs(180),
            handle.get_result(WorkflowGetResultOptions::default()),
        )
        .await
        .expect("the workflow did not finish within 180 s after the restart")
        .expect("workflow result");
        let status: Value = raw.to_value(&conv);
        assert_eq!(status["state"], "succeeded", "{status}");
        let view: RawValue = handle
            .query(
                UntypedQuery::new("status"),
                RawValue::from_value(&Value::Null, &conv),
                WorkflowQueryOptions::default(),
            )
            .await
            .expect("query status");
        let view: Value = view.to_value(&conv);
        let cbs = view["callbacks"].as_array().unwrap();
        assert_eq!(cbs.len(), 1, "{view}");
        assert_eq!(cbs[0]["executionId"], status["executionId"]);
        assert_eq!(cbs[0]["state"], "succeeded");
        callbacks += cbs.len();
        assert_eq!(processes_with(&format!("4107.{i}")).len(), 1);
    }
    eprintln!(
        "FAULTS case=temporal-stopped provider=local operations={OPERATIONS} delivered_before_stop={delivered_before_stop} down_for_ms={} callbacks={callbacks} resources={OPERATIONS}",
        down_for.as_millis()
    );
}

/// Postgres stopped (`pg_ctl stop -m immediate`) under a provision: the activity fails with
/// the retriable STORE_UNAVAILABLE and completes once Postgres is back.
#[tokio::test]
async fn store_unavailable_is_retriable_and_completes_after_postgres_returns() {
    let pg = rigs::own_postgres();
    let local = SharedLocalDir::new();
    let task_queue = format!("fault-pg-{}", std::process::id());
    let worker = spawn_shared_worker(&task_queue, &pg.url, local.path(), WorkerOpts::default());
    let client = client().await;
    pg.stop_immediately();
    let input = json!({"operation": "provision",
        "request": {"tenantId": "pgdown", "spec": {"command": ["sleep", "4108"]}},
        "policy": {"maxAttempts": 20, "initialInterval": "500ms", "maximumInterval": "2s",
                   "callbackTimeout": "60s"}});
    let run = worker.run_tenant_workflow(&client, "pgdown-1", input);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !worker.log().contains("STORE_UNAVAILABLE") {
            assert!(
                Instant::now() < deadline,
                "no STORE_UNAVAILABLE:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pg.start();
    };
    let (outcome, ()) = tokio::join!(run, watch);
    let status = outcome.completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    let attempts = rigs::started_activity_attempts("pgdown-1", names::PROVISION_ACTIVITY);
    let last_attempt = attempts.iter().copied().max().unwrap_or(0);
    assert!(last_attempt >= 2, "{attempts:?}");
    let failures = worker
        .log()
        .lines()
        .filter(|l| l.contains("STORE_UNAVAILABLE"))
        .count();
    let resources = processes_with("4108").len();
    assert_eq!(resources, 1);
    let view = query_status(&client, "pgdown-1").await;
    let callbacks = view["callbacks"].as_array().unwrap().len();
    assert_eq!(callbacks, 1, "{view}");
    eprintln!(
        "FAULTS case=store-unavailable provider=local provision_attempts={last_attempt} store_unavailable_log_lines={failures} callbacks={callbacks} resources={resources} state=succeeded"
    );
}

// ---------------------------------------------------------------------------------------------
// The crash points with the Kubernetes provider (the shared 1.20 rig; the test plays the
// kubelet). Resources counted: the tenant's Deployments and its live Pods.
// ---------------------------------------------------------------------------------------------

const K8S_TENANT_LABEL: &str = "compute-worker/tenant";

/// Marks every pod of `tenant` Running and Ready, until aborted.
fn k8s_kubelet(pods: kube::Api<Pod>, tenant: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let lp = ListParams::default().labels(&format!("{K8S_TENANT_LABEL}={tenant}"));
            if let Ok(list) = pods.list(&lp).await {
                for pod in list.items {
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    if pod.metadata.deletion_timestamp.is_none() && !ready {
                        let _ = mark_ready(&pods, &pod).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// kill -9 at `point` (None: while the tracker waits for pods that are not Ready), restart,
/// and check the restarted worker finished the job, `RUNS` times.
async fn k8s_crash_at(point: Option<&str>, ns: &str) {
    let rig = kube_rig();
    let kube = kube_client(&rig.kubeconfig).await;
    create_namespace(&kube, ns).await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(kube.clone(), ns);
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(kube.clone(), ns);
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        let once = tempfile::tempdir().unwrap();
        let mut env = vec![("KUBECONFIG", rig.kubeconfig.display().to_string())];
        if let Some(point) = point {
            env.extend(crash_env(point, &once));
        }
        let mut worker = spawn_worker(
            &format!("{ns}-{run}"),
            WorkerOpts {
                args: ["--provider", "kubernetes", "--k8s-namespace", ns]
                    .map(String::from)
                    .to_vec(),
                env,
                ..Default::default()
            },
        );
        // Tenants (so execution ids and trackers) distinct across tests: they share Temporal.
        let tenant = format!("{ns}-{run}");
        let call = json!([{"activity": names::PROVISION_ACTIVITY,
            "input": {"tenantId": tenant, "spec": {"image": "nginx:1.27"}},
            "waitSignal": true, "startToCloseSeconds": 10}]);
        let caller = worker.python_calls_in_background(call);
        let kubelet = match point {
            Some(point) => {
                let kubelet = k8s_kubelet(pods.clone(), tenant.clone());
                assert!(
                    worker.wait_exited(Duration::from_secs(60)),
                    "the worker did not crash at {point}:\n{}",
                    worker.log()
                );
                assert!(worker.log().contains("Fault injection: crashing"));
                worker.restart();
                kubelet
            }
            None => {
                // The watch runs and its pod exists, not Ready: kill -9 now.
                let deadline = Instant::now() + Duration::from_secs(60);
                let lp = ListParams::default().labels(&format!("{K8S_TENANT_LABEL}={tenant}"));
                while !worker.log().contains(OBSERVING)
                    || pods.list(&lp).await.unwrap().items.is_empty()
                {
                    assert!(
                        Instant::now() < deadline,
                        "no watch or no pod:\n{}",
                        worker.log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                worker.crash_and_restart();
                k8s_kubelet(pods.clone(), tenant.clone())
            }
        };
        let out = tokio::task::spawn_blocking(move || caller.join().expect("python caller"))
            .await
            .unwrap();
        kubelet.abort();
        let lp = ListParams::default().labels(&format!("{K8S_TENANT_LABEL}={tenant}"));
        let deps = deployments.list(&lp).await.unwrap().items.len();
        let live_pods = pods
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        assert_eq!(deps, 1, "one Deployment for {tenant}");
        assert_eq!(live_pods, 1, "one Pod for {tenant}");
        outcomes.push(check_run_with(&worker, &tenant, deps, &out).await);
    }
    report_for(
        point.unwrap_or("while-tracker-waits"),
        "kubernetes",
        &outcomes,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_kill_9_after_the_provider_call_before_the_store_write() {
    k8s_crash_at(Some(faults::AFTER_PROVIDER_CALL), "fault-k8s-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_kill_9_after_the_store_write_before_the_tracker_starts() {
    k8s_crash_at(Some(faults::BEFORE_TRACKER_START), "fault-k8s-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_kill_9_while_the_tracker_waits() {
    k8s_crash_at(None, "fault-k8s-c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_kill_9_after_the_terminal_state_before_the_signal() {
    k8s_crash_at(Some(faults::AFTER_TERMINAL_STATE), "fault-k8s-d").await;
}

// ---------------------------------------------------------------------------------------------
// The crash points with the ECS provider (moto behind the fault proxy). Resources counted: the
// tenant's ACTIVE services.
// ---------------------------------------------------------------------------------------------

/// kill -9 at `point` (None: while the tracker waits on a slow observer), restart, and check
/// the restarted worker finished the job, `RUNS` times.
async fn ecs_crash_at(point: Option<&str>, name: &str) {
    let rig = crate::ecs::Rig::start().await;
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        let once = tempfile::tempdir().unwrap();
        let mut env = rig.aws_env();
        if let Some(point) = point {
            env.extend(crash_env(point, &once));
        }
        // moto completes deployments at once: a slow observer keeps the tracker waiting long
        // enough to be killed while it waits.
        let interval = if point.is_none() { "4s" } else { "300ms" };
        let mut worker = spawn_worker(
            &format!("{name}-{run}"),
            WorkerOpts {
                args: rig.ecs_args(crate::ecs::CLUSTER, interval),
                env,
                ..Default::default()
            },
        );
        let tenant = format!("{name}-{run}");
        let call = json!([{"activity": names::PROVISION_ACTIVITY,
            "input": {"tenantId": tenant, "spec": crate::ecs::spec("nginx:1.27")},
            "waitSignal": true, "startToCloseSeconds": 10}]);
        let caller = worker.python_calls_in_background(call);
        match point {
            Some(point) => {
                assert!(
                    worker.wait_exited(Duration::from_secs(60)),
                    "the worker did not crash at {point}:\n{}",
                    worker.log()
                );
                assert!(worker.log().contains("Fault injection: crashing"));
                worker.restart();
            }
            None => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !worker.log().contains(OBSERVING) {
                    assert!(Instant::now() < deadline, "no watch:\n{}", worker.log());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                worker.crash_and_restart();
            }
        }
        let out = tokio::task::spawn_blocking(move || caller.join().expect("python caller"))
            .await
            .unwrap();
        let suffix = format!("/tenant-{tenant}");
        let mut active = 0;
        for arn in rig.service_arns().await {
            if arn.ends_with(&suffix)
                && rig
                    .service(&tenant)
                    .await
                    .is_some_and(|s| s.status() == Some("ACTIVE"))
            {
                active += 1;
            }
        }
        assert_eq!(active, 1, "one ACTIVE service for {tenant}");
        outcomes.push(check_run_with(&worker, &tenant, active, &out).await);
    }
    report_for(point.unwrap_or("while-tracker-waits"), "ecs", &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_kill_9_after_the_provider_call_before_the_store_write() {
    ecs_crash_at(Some(faults::AFTER_PROVIDER_CALL), "fault-ecs-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_kill_9_after_the_store_write_before_the_tracker_starts() {
    ecs_crash_at(Some(faults::BEFORE_TRACKER_START), "fault-ecs-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_kill_9_while_the_tracker_waits() {
    ecs_crash_at(None, "fault-ecs-c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_kill_9_after_the_terminal_state_before_the_signal() {
    ecs_crash_at(Some(faults::AFTER_TERMINAL_STATE), "fault-ecs-d").await;
}

// ---------------------------------------------------------------------------------------------
// The crash points with the simulated provider at no delay: the start activity finishes the
// operation and tells the caller itself (no tracker), so a crash there is recovered by the
// caller's retry of the start activity alone.
// ---------------------------------------------------------------------------------------------

async fn simulated_crash_at(point: &str, name: &str) {
    let mut outcomes = Vec::new();
    for run in 0..RUNS {
        let once = tempfile::tempdir().unwrap();
        let mut worker = spawn_worker(
            &format!("{name}-{run}"),
            WorkerOpts {
                env: crash_env(point, &once).into(),
                args: vec!["--provider".into(), "simulated".into()],
                ..Default::default()
            },
        );
        let tenant = format!("{name}-{run}");
        let caller = worker.python_calls_in_background(provision_call(&tenant, "1"));
        assert!(
            worker.wait_exited(Duration::from_secs(60)),
            "the worker did not crash at {point}:\n{}",
            worker.log()
        );
        worker.restart();
        let out = caller.join().expect("python caller");
        // Nothing to count outside the worker: the execution's one resource id.
        outcomes.push(check_run_with(&worker, &tenant, 1, &out).await);
    }
    report_for(point, "simulated", &outcomes);
}

#[tokio::test]
async fn simulated_kill_9_after_the_provider_call_before_the_store_write() {
    simulated_crash_at(faults::AFTER_PROVIDER_CALL, "fault-sim-a").await;
}

#[tokio::test]
async fn simulated_kill_9_after_the_final_state_before_the_inline_signal() {
    simulated_crash_at(faults::AFTER_TERMINAL_STATE, "fault-sim-d").await;
}
