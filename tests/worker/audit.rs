//! The per-attempt audit trail: every attempt of every activity lands in the store's
//! `activity_attempts` table, because Temporal's history keeps only an activity's last attempt.
//! These tests run the real worker, then read its SQLite file: through the store's API, and with
//! the operator's SQL (Python's `sqlite3` module, not the worker's code).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use compute_activities::{
    contract::{AttemptOutcome, AttemptRecord},
    error::ErrorCode,
    store,
};
use serde_json::{Value, json};

use crate::{
    ecs::{self, Rig},
    rigs::{Fault, TestWorker, WorkerOpts, client, spawn_worker, started_activity_attempts},
};

/// The execution's attempts once `done` holds for them (the tracker records its last activity
/// just after the caller hears of the outcome), for at most 30 s.
async fn trail(
    worker: &TestWorker,
    execution_id: &str,
    done: impl Fn(&[AttemptRecord]) -> bool,
) -> Vec<AttemptRecord> {
    let store = store::connect(&worker.database_url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempts = store.list_attempts(execution_id).await.unwrap();
        if done(&attempts) {
            return attempts;
        }
        assert!(
            Instant::now() < deadline,
            "the audit trail of {execution_id} is incomplete: {attempts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of_type<'a>(attempts: &'a [AttemptRecord], activity: &str) -> Vec<&'a AttemptRecord> {
    attempts
        .iter()
        .filter(|a| a.activity_type == activity)
        .collect()
}

/// Runs `query` with `params` on the worker's SQLite file as an operator would, and returns the
/// rows as JSON objects.
fn sql(worker: &TestWorker, query: &str, params: Value) -> Vec<Value> {
    const SCRIPT: &str = "import json, sqlite3, sys\n\
        con = sqlite3.connect(sys.argv[1])\n\
        con.row_factory = sqlite3.Row\n\
        rows = con.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()\n\
        print(json.dumps([dict(r) for r in rows]))\n";
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(worker.dir.path().join("store.db"))
        .arg(query)
        .arg(params.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "sqlite3 query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The README's query: every attempt about one execution, in order.
const EXECUTION_QUERY: &str = "SELECT activity_type, workflow_id, attempt, outcome, retriable, \
     latency_ms, provider_code, provider_request_id, message, started_at \
     FROM activity_attempts WHERE execution_id = ? ORDER BY started_at, seq";

/// Timestamps and latency agree (both are truncated to the millisecond, hence the slack).
fn assert_consistent(a: &AttemptRecord) {
    let wall = (a.finished_at - a.started_at).num_milliseconds();
    assert!(wall >= 0, "{a:?}");
    assert!(
        (wall - a.latency_ms as i64).abs() <= 2,
        "latency {} ms, wall clock {wall} ms: {a:?}",
        a.latency_ms
    );
}

/// A provision with the local provider: one row per activity attempt, each filed under the
/// execution and its tenant, with the latency it took; `GetComputeExecution` returns them on
/// request. A refused request is one row with its code and no tenant, execution or value.
#[tokio::test]
async fn audit_trail_records_every_activity_of_an_operation() {
    let worker = spawn_worker(
        "audit-local",
        WorkerOpts {
            settle: "1500ms",
            ..Default::default()
        },
    );
    let client = client().await;
    let input = json!({"operation": "provision",
        "request": {"tenantId": "audited", "spec": {"command": ["sleep", "3101"]}}});
    let status = worker
        .run_tenant_workflow(&client, "audit-local-1", input)
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    let execution_id = status["executionId"].as_str().unwrap();
    let tracker = format!("compute-execution-{execution_id}");

    let attempts = trail(&worker, execution_id, |a| {
        !of_type(a, "DeliverComputeCallback").is_empty()
    })
    .await;
    for a in &attempts {
        assert_eq!(a.execution_id.as_deref(), Some(execution_id), "{a:?}");
        assert_eq!(a.tenant_id.as_deref(), Some("audited"), "{a:?}");
        assert_eq!(a.outcome, AttemptOutcome::Ok, "{a:?}");
        assert!(!a.retriable && a.message.is_none() && a.provider.is_none());
        assert_eq!(a.attempt, 1, "nothing was retried: {a:?}");
        assert!(!a.activity_id.is_empty() && a.run_id.is_some());
        assert_consistent(a);
    }
    assert!(
        attempts
            .windows(2)
            .all(|w| w[0].started_at <= w[1].started_at),
        "in the order they started: {attempts:#?}"
    );
    // The caller's start activity, the tracker's reads of the store (local activities: one
    // before the observer woke it, one after) and callback, then the caller's read of the
    // final status. The observer holds no activity while the workload settles.
    let flow: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| {
            let who = match a.workflow_id.as_deref() {
                Some("audit-local-1") => "caller",
                Some(w) if w == tracker => "tracker",
                other => panic!("an attempt of an unknown workflow {other:?}"),
            };
            (a.activity_type.as_str(), who)
        })
        .collect();
    // The observer signals the caller itself before it wakes the tracker, so the caller's
    // read, the tracker's second read and its (backstop) delivery run at the same time, in
    // any order.
    let split = 2.min(flow.len());
    let (before, mut after) = (flow[..split].to_vec(), flow[split..].to_vec());
    after.sort();
    assert_eq!(
        before,
        [
            ("ProvisionTenantCompute", "caller"),
            ("GetComputeExecution", "tracker"),
        ],
        "{attempts:#?}"
    );
    assert_eq!(
        after,
        [
            ("DeliverComputeCallback", "tracker"),
            ("GetComputeExecution", "caller"),
            ("GetComputeExecution", "tracker"),
        ],
        "{attempts:#?}"
    );
    // The tracker's second read came once the workload had settled.
    let reads = of_type(&attempts, "GetComputeExecution");
    let waited = reads[1].started_at - reads[0].started_at;
    assert!(
        waited >= chrono::Duration::milliseconds(1000),
        "the tracker read the store again after {waited}: {attempts:#?}"
    );

    // The operator's SQL sees the same rows.
    let rows = sql(&worker, EXECUTION_QUERY, json!([execution_id]));
    let sql_view: Vec<(String, u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["activity_type"].as_str().unwrap().to_string(),
                r["attempt"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let api_view: Vec<(String, u64, String)> = attempts
        .iter()
        .map(|a| {
            (
                a.activity_type.clone(),
                u64::from(a.attempt),
                a.outcome.to_string(),
            )
        })
        .collect();
    assert_eq!(sql_view, api_view);

    // GetComputeExecution returns the trail on request only, and records its own attempts.
    let results = worker.python_calls(json!([
        {"activity": "GetComputeExecution",
         "input": {"executionId": execution_id, "includeAttempts": true}},
        {"activity": "GetComputeExecution", "input": {"executionId": execution_id}},
    ]));
    let with: Vec<AttemptRecord> =
        serde_json::from_value(results[0]["result"]["attempts"].clone()).unwrap();
    assert_eq!(with, attempts, "{}", results[0]);
    assert_eq!(results[0]["result"]["attempts"][0]["outcome"], "ok");
    assert!(
        results[1]["result"].get("attempts").is_none(),
        "{results:?}"
    );
    let reads = trail(&worker, execution_id, |a| a.len() == attempts.len() + 2).await;
    let callers: Vec<&str> = reads[attempts.len()..]
        .iter()
        .map(|a| a.workflow_id.as_deref().unwrap())
        .collect();
    assert_eq!(
        callers,
        [
            results[0]["workflowId"].as_str().unwrap(),
            results[1]["workflowId"].as_str().unwrap()
        ]
    );

    // A refused request: one attempt, its code and field-naming message, and nothing it said.
    let decoy = "decoy-plaintext-audit-5e1b";
    let refused = worker.python_calls(json!([{"activity": "ProvisionTenantCompute",
        "input": {"tenantId": "audited", "spec": {"command": ["sleep"],
                  "secrets": [{"name": "DB_PASSWORD", "value": decoy}]}}}]));
    assert_eq!(refused[0]["error"]["type"], "INVALID_CONFIGURATION");
    let rows = sql(
        &worker,
        "SELECT * FROM activity_attempts WHERE workflow_id = ? ORDER BY seq",
        json!([refused[0]["workflowId"]]),
    );
    assert_eq!(rows.len(), 1, "exactly one attempt: {rows:?}");
    let row = &rows[0];
    assert_eq!(row["activity_type"], "ProvisionTenantCompute");
    assert_eq!(row["attempt"], 1);
    assert_eq!(row["outcome"], "INVALID_CONFIGURATION");
    assert_eq!(row["retriable"], 0);
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.secrets[0].value"),
        "{row}"
    );
    assert!(
        row["execution_id"].is_null() && row["tenant_id"].is_null(),
        "a refused request is about nothing yet: {row}"
    );
    let everything = sql(&worker, "SELECT * FROM activity_attempts", json!([]));
    assert!(!Value::Array(everything).to_string().contains(decoy));
}

/// CreateService throttled twice: the table has all three attempts of the start activity, with
/// their codes, ECS's request ids and the retry delay between them, where Temporal's history
/// keeps only the last one.
#[tokio::test]
async fn audit_trail_keeps_retried_attempts_with_provider_request_ids() {
    let rig = Rig::start().await;
    let worker = rig.worker("audit-ecs", ecs::CLUSTER);
    let client = client().await;
    rig.proxy.arm("CreateService", 2, Fault::Throttle);
    let request = json!({"tenantId": "audit-ecs", "spec": ecs::spec("nginx:1.27")});
    let status = worker
        .run_tenant_workflow(
            &client,
            "audit-ecs-1",
            ecs::input("provision", request, json!({"maxAttempts": 5})),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(rig.proxy.faulted("CreateService"), 2);
    let execution_id = status["executionId"].as_str().unwrap();

    let attempts = trail(&worker, execution_id, |a| {
        !of_type(a, "DeliverComputeCallback").is_empty()
    })
    .await;
    let starts = of_type(&attempts, "ProvisionTenantCompute");
    let numbers: Vec<u32> = starts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "{attempts:#?}");
    let outcomes: Vec<AttemptOutcome> = starts.iter().map(|a| a.outcome).collect();
    let throttled = AttemptOutcome::Failed(ErrorCode::Throttled);
    assert_eq!(outcomes, [throttled, throttled, AttemptOutcome::Ok]);
    for a in &starts {
        assert_eq!(a.workflow_id.as_deref(), Some("audit-ecs-1"));
        assert_eq!(
            a.activity_id, starts[0].activity_id,
            "one activity, retried"
        );
        assert_eq!(a.tenant_id.as_deref(), Some("audit-ecs"));
        assert_consistent(a);
    }
    for a in &starts[..2] {
        assert!(a.retriable, "{a:?}");
        assert_eq!(a.provider.as_deref(), Some("ecs"));
        assert_eq!(a.provider_code.as_deref(), Some("ThrottlingException"));
        // The proxy's x-amzn-RequestId, as ECS's own would be.
        assert_eq!(
            a.provider_request_id.as_deref(),
            Some("fault-proxy-injected")
        );
        assert!(
            a.message.as_deref().unwrap().contains("throttling"),
            "{a:?}"
        );
    }
    let last = starts[2];
    assert!(!last.retriable && last.provider_request_id.is_none() && last.message.is_none());
    // THROTTLED asks Temporal to wait 2 s before the next attempt.
    for pair in starts.windows(2) {
        let gap = (pair[1].started_at - pair[0].finished_at).num_milliseconds();
        assert!(gap >= 1000, "{gap} ms between attempts: {pair:#?}");
    }
    // Temporal's history shows only the attempt that succeeded.
    assert_eq!(
        started_activity_attempts("audit-ecs-1", "ProvisionTenantCompute"),
        [3]
    );
}
