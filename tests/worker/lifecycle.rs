//! The tenant lifecycle on the local provider: a failed update puts the tenant back on its last
//! good spec, a non-retriable failure marks the tenant until the next success or an operator's
//! `tenant clear`, operations can be cancelled, a retry keeps its execution id, and requests
//! mean the same whatever the tenant's history. Read by name from Python (`GetTenantCompute`,
//! `ListTenantCompute`, `CancelComputeExecution`) and by operators (`compute-worker tenant`).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::rigs::{
    TestWorker, WorkerOpts, alive, client, processes_with, query_status, spawn_worker,
    worker_log_tail,
};

/// `compute-worker tenant ARGS... --database URL`: stdout, or a panic with stderr.
pub fn tenant_cli(database_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("tenant")
        .args(args)
        .args(["--database", database_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tenant {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sleep_spec(marker: &str) -> Value {
    json!({"command": ["sleep"], "args": [marker]})
}

fn crash_spec() -> Value {
    json!({"command": ["sh", "-c", "echo broken config >&2; exit 3"]})
}

/// The result of one Python call (panics on an activity error).
pub fn result(calls: &[Value], i: usize) -> &Value {
    assert!(calls[i].get("error").is_none(), "call {i}: {}", calls[i]);
    &calls[i]["result"]
}

fn live_pid(marker: &str) -> u32 {
    let pids = processes_with(marker);
    assert_eq!(pids.len(), 1, "one process with {marker}: {pids:?}");
    pids[0]
}

#[tokio::test]
async fn a_failed_update_keeps_the_last_good_spec_running_and_marks_the_tenant() {
    let worker = spawn_worker("lc-revert", WorkerOpts::default());
    let client = client().await;
    let good = "3201.1";
    let provision = json!({"operation": "provision",
        "request": {"tenantId": "lc-revert", "spec": sleep_spec(good)}});
    worker
        .run_tenant_workflow(&client, "lc-revert-1", provision)
        .await
        .completed();

    // An update to a workload that exits at once: it fails, and the old spec runs again.
    let update = json!({"operation": "update",
        "request": {"tenantId": "lc-revert", "spec": crash_spec()}});
    let (code, _, details) = worker
        .run_tenant_workflow(&client, "lc-revert-2", update)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED", "{details}");
    assert_eq!(details["rolledBack"], true, "{details}");
    assert!(details.get("rollbackError").is_none(), "{details}");
    let failed_execution = details["executionId"].as_str().unwrap().to_string();
    let pid = live_pid(good);
    // The caller's view shows the mark.
    let view = query_status(&client, "lc-revert-2").await;
    assert_eq!(
        view["requiresIntervention"]["code"], "WORKLOAD_FAILED",
        "{view}"
    );
    assert_eq!(
        view["requiresIntervention"]["executionId"],
        failed_execution
    );

    // GetTenantCompute, by name from Python: running the last good spec, on the live process.
    let calls = worker.python_calls(json!([
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-revert"}},
        {"activity": "GetTenantCompute", "input": {"tenantId": "never-heard-of"}},
        {"activity": "GetTenantCompute", "input": {"tenantId": "../etc"}},
    ]));
    let tenant = result(&calls, 0);
    assert_eq!(tenant["state"], "running", "{tenant}");
    assert_eq!(tenant["spec"]["args"], json!([good]));
    assert_eq!(tenant["revision"], 1);
    assert_eq!(tenant["resourceIds"]["pid"], pid);
    assert_eq!(tenant["lastExecutionId"], failed_execution);
    assert_eq!(tenant["activeExecutionIds"], json!([]));
    let mark = &tenant["requiresIntervention"];
    assert_eq!(mark["code"], "WORKLOAD_FAILED");
    assert_eq!(mark["executionId"], failed_execution);
    assert!(mark["at"].as_str().unwrap().ends_with('Z'));
    let absent = result(&calls, 1);
    assert_eq!(absent["state"], "absent");
    assert_eq!(absent["spec"], Value::Null);
    assert_eq!(
        calls[2]["error"]["type"], "INVALID_CONFIGURATION",
        "{}",
        calls[2]
    );

    // The operator sees the mark, and clears it; the clearing is in the history.
    let db = worker.database_url();
    let shown: Value =
        serde_json::from_str(&tenant_cli(&db, &["show", "lc-revert", "--json"])).unwrap();
    assert_eq!(
        shown["tenant"]["requiresIntervention"]["code"],
        "WORKLOAD_FAILED"
    );
    assert_eq!(shown["executions"].as_array().unwrap().len(), 2);
    let text = tenant_cli(&db, &["show", "lc-revert"]);
    assert!(
        text.contains("WORKLOAD_FAILED") && text.contains("tenant clear"),
        "{text}"
    );
    let listed = tenant_cli(&db, &["list", "--state", "running"]);
    assert!(
        listed.contains("lc-revert") && listed.contains("WORKLOAD_FAILED"),
        "{listed}"
    );
    let cleared = tenant_cli(&db, &["clear", "lc-revert"]);
    assert!(cleared.contains("cleared"), "{cleared}");
    let calls = worker.python_calls(json!([
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-revert"}},
        {"activity": "GetComputeExecution", "input": {"executionId": failed_execution}},
    ]));
    assert_eq!(result(&calls, 0)["requiresIntervention"], Value::Null);
    let notes: Vec<&str> = result(&calls, 1)["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["message"].as_str())
        .collect();
    assert!(notes.iter().any(|n| n.contains("cleared by")), "{notes:?}");

    // Marked again, the next success clears the mark and applies its spec.
    let update = json!({"operation": "update",
        "request": {"tenantId": "lc-revert", "spec": crash_spec(), "idempotencyKey": "again"}});
    worker
        .run_tenant_workflow(&client, "lc-revert-3", update)
        .await
        .failed();
    let better = "3201.2";
    let update = json!({"operation": "update",
        "request": {"tenantId": "lc-revert", "spec": sleep_spec(better)}});
    worker
        .run_tenant_workflow(&client, "lc-revert-4", update)
        .await
        .completed();
    let calls = worker.python_calls(json!([
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-revert"}},
    ]));
    let tenant = result(&calls, 0);
    assert_eq!(tenant["requiresIntervention"], Value::Null, "{tenant}");
    assert_eq!(
        (tenant["revision"].as_u64(), &tenant["spec"]["args"]),
        (Some(2), &json!([better]))
    );
    assert_eq!(tenant["resourceIds"]["pid"], live_pid(better));
    assert!(processes_with(good).is_empty());
}

#[tokio::test]
async fn running_operations_are_cancelled_and_undone() {
    // A long settle keeps every operation in flight long enough to cancel it.
    let worker = spawn_worker(
        "lc-cancel",
        WorkerOpts {
            settle: "30s",
            ..WorkerOpts::default()
        },
    );
    // A provision in flight, cancelled: nothing is left, the caller hears CANCELLED.
    let marker = "3202.1";
    let caller = worker.python_calls_in_background(json!([{
        "activity": "ProvisionTenantCompute",
        "input": {"tenantId": "lc-cancel", "spec": sleep_spec(marker)},
        "waitSignal": true,
    }]));
    let started = wait_for_execution_of(&worker, "lc-cancel", "provision", "running").await;
    assert!(!processes_with(marker).is_empty(), "the workload started");
    let calls = worker.python_calls(json!([
        {"activity": "CancelComputeExecution",
         "input": {"executionId": started, "reason": "wrong tenant"}},
        {"activity": "CancelComputeExecution", "input": {"executionId": started}},
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-cancel"}},
        {"activity": "CancelComputeExecution", "input": {"executionId": "no-such-execution"}},
        {"activity": "CancelComputeExecution", "input": {"executionId": started, "reason": "a\u{0}b"}},
    ]));
    let cancelled = result(&calls, 0);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"]["code"], "CANCELLED");
    assert_eq!(cancelled["error"]["rolledBack"], true);
    assert!(
        cancelled["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong tenant")
    );
    // Idempotent: a finished execution answers unchanged.
    assert_eq!(result(&calls, 1), cancelled);
    assert!(
        processes_with(marker).is_empty(),
        "what the provision started is gone"
    );
    let tenant = result(&calls, 2);
    assert_eq!(tenant["state"], "deleted", "{tenant}");
    assert_eq!(
        tenant["requiresIntervention"],
        Value::Null,
        "an operator's cancel marks nothing"
    );
    assert_eq!(calls[3]["error"]["type"], "NOT_FOUND", "{}", calls[3]);
    assert_eq!(
        calls[4]["error"]["type"], "INVALID_CONFIGURATION",
        "{}",
        calls[4]
    );
    let heard = caller.join().unwrap();
    let signal = &heard[0]["signals"][0];
    assert_eq!(signal["signal"], "compute-failed", "{}", heard[0]);
    assert_eq!(signal["callback"]["state"], "cancelled");
    assert_eq!(signal["callback"]["error"]["code"], "CANCELLED");
}

#[tokio::test]
async fn a_cancelled_update_puts_the_old_spec_back() {
    // A long settle keeps the update in flight long enough to cancel it.
    let worker = spawn_worker(
        "lc-cancel-up",
        WorkerOpts {
            settle: "20s",
            ..WorkerOpts::default()
        },
    );
    let client = client().await;
    let good = "3203.1";
    worker
        .run_tenant_workflow(
            &client,
            "lc-cancel-up-1",
            json!({"operation": "provision",
                   "request": {"tenantId": "lc-cancel-up", "spec": sleep_spec(good)}}),
        )
        .await
        .completed();
    let new = "3203.2";
    let caller = worker.python_calls_in_background(json!([{
        "activity": "UpdateTenantCompute",
        "input": {"tenantId": "lc-cancel-up", "spec": sleep_spec(new)},
        "waitSignal": true,
    }]));
    let update = wait_for_execution_of(&worker, "lc-cancel-up", "update", "running").await;
    let calls = worker.python_calls(json!([
        {"activity": "CancelComputeExecution", "input": {"executionId": update}},
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-cancel-up"}},
    ]));
    let status = result(&calls, 0);
    let heard = caller.join().unwrap();
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["error"]["rolledBack"], true, "{status}");
    let tenant = result(&calls, 1);
    assert_eq!(tenant["state"], "running", "{tenant}");
    assert_eq!(tenant["spec"]["args"], json!([good]));
    assert_eq!(tenant["resourceIds"]["pid"], live_pid(good));
    assert!(processes_with(new).is_empty());
    assert_eq!(
        heard[0]["signals"][0]["callback"]["error"]["code"],
        "CANCELLED"
    );
}

#[tokio::test]
async fn a_retry_after_a_failure_keeps_the_execution_id() {
    let worker = spawn_worker("lc-retry", WorkerOpts::default());
    let client = client().await;
    let retry = json!({"operation": "provision",
        "request": {"tenantId": "lc-retry", "spec": crash_spec()},
        "policy": {"maxAttempts": 2, "initialInterval": "100ms",
                   "onError": {"WORKLOAD_FAILED": "retry"}}});
    let (code, _, details) = worker
        .run_tenant_workflow(&client, "lc-retry-1", retry)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED");
    let view = query_status(&client, "lc-retry-1").await;
    assert_eq!(view["attempt"], 2, "{view}");
    // One execution, two attempts, one callback per attempt.
    let calls = worker.python_calls(json!([
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": "lc-retry"}},
    ]));
    let executions = result(&calls, 0).as_array().unwrap();
    assert_eq!(executions.len(), 1, "{executions:?}");
    let execution = &executions[0];
    assert_eq!(execution["executionId"], details["executionId"]);
    assert_eq!(execution["attempt"], 2);
    let notes: Vec<&str> = execution["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["message"].as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with("attempt 2:")),
        "{notes:?}"
    );
    let callbacks = view["callbacks"].as_array().unwrap();
    let attempts: Vec<u64> = callbacks
        .iter()
        .map(|c| {
            assert_eq!(c["executionId"], execution["executionId"]);
            c["attempt"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(attempts, [1, 2], "{view}");
}

#[tokio::test]
async fn requests_mean_the_same_whatever_the_tenant_ran() {
    let worker = spawn_worker("lc-meaning", WorkerOpts::default());
    let client = client().await;
    // An update of a tenant never provisioned is NOT_FOUND, on the first attempt, recording
    // nothing.
    let calls = worker.python_calls(json!([
        {"activity": "UpdateTenantCompute",
         "input": {"tenantId": "lc-meaning", "spec": sleep_spec("3204.0")}},
        {"activity": "GetTenantCompute", "input": {"tenantId": "lc-meaning"}},
    ]));
    let error = &calls[0]["error"];
    assert_eq!(error["type"], "NOT_FOUND", "{}", calls[0]);
    assert_eq!(error["nonRetryable"], true);
    assert_eq!(result(&calls, 1)["state"], "absent");
    assert!(processes_with("3204.0").is_empty());

    // A provision of a running tenant with another spec applies it, as an update would.
    let first = "3204.1";
    worker
        .run_tenant_workflow(
            &client,
            "lc-meaning-1",
            json!({"operation": "provision",
                   "request": {"tenantId": "lc-meaning", "spec": sleep_spec(first)}}),
        )
        .await
        .completed();
    let second = "3204.2";
    let status = worker
        .run_tenant_workflow(
            &client,
            "lc-meaning-2",
            json!({"operation": "provision",
                   "request": {"tenantId": "lc-meaning", "spec": sleep_spec(second)}}),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded");
    assert!(processes_with(first).is_empty(), "the old spec is replaced");
    let pid = live_pid(second);
    assert!(alive(u64::from(pid)));

    // Deleted, the tenant has nothing to update again.
    worker
        .run_tenant_workflow(
            &client,
            "lc-meaning-3",
            json!({"operation": "delete", "request": {"tenantId": "lc-meaning"}}),
        )
        .await
        .completed();
    let calls = worker.python_calls(json!([
        {"activity": "UpdateTenantCompute",
         "input": {"tenantId": "lc-meaning", "spec": sleep_spec("3204.3")}},
        {"activity": "ListTenantCompute", "input": {"pageSize": 1}},
        {"activity": "ListTenantCompute", "input": {"state": "deleted"}},
        {"activity": "ListTenantCompute", "input": {"pageSize": 0}},
    ]));
    assert_eq!(calls[0]["error"]["type"], "NOT_FOUND", "{}", calls[0]);
    let page = result(&calls, 1);
    assert_eq!(page["tenants"].as_array().unwrap().len(), 1, "{page}");
    let deleted = result(&calls, 2)["tenants"].as_array().unwrap();
    assert!(
        deleted.iter().any(|t| t["tenantId"] == "lc-meaning"),
        "{deleted:?}"
    );
    assert_eq!(calls[3]["error"]["type"], "INVALID_CONFIGURATION");
}

/// `GetTenantCompute` of `tenant`, called by name from Python.
pub fn tenant_compute(worker: &TestWorker, tenant: &str) -> Value {
    let calls = worker.python_calls(json!([
        {"activity": "GetTenantCompute", "input": {"tenantId": tenant}},
    ]));
    result(&calls, 0).clone()
}

/// Waits (a minute at most) until the tenant has an execution of `operation` in `state`; its
/// id.
pub async fn wait_for_execution_of(
    worker: &TestWorker,
    tenant: &str,
    operation: &str,
    state: &str,
) -> String {
    let store = compute_activities::store::connect(&worker.database_url())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = store
            .list_executions(tenant)
            .await
            .unwrap()
            .iter()
            .find(|r| r.status.operation.as_str() == operation && r.status.state.as_str() == state)
        {
            return found.status.execution_id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{tenant}: no {operation} execution reached {state}:\n{}",
            worker_log_tail(&worker.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
