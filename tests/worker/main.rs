//! Integration tests: the real worker binary against a real Temporal dev server, with callers
//! in Rust (TenantComputeWorkflow), Python (`temporalio`) and the `temporal` CLI.
// A test crate: its helpers are `pub` for its own modules, and a failed unwrap is a failed test.
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod audit;
mod callbacks;
mod deploy;
mod ecs;
mod ecs_lifecycle;
mod faults;
mod fuzz;
mod k8s_lifecycle;
mod kubernetes;
mod lifecycle;
mod manifests;
mod operating;
mod polyglot;
mod postgres_tls;
mod rigs;
mod secret_scan;
mod simulated;
mod sweep;
mod trust;

use compute_activities::{contract::TenantState, store};
use rigs::{
    WorkerOpts, alive, cli, client, processes_with, query_status, spawn_worker,
    workflow_show_everything,
};
use serde_json::{Value, json};

fn provision(tenant: &str, args: Vec<&str>) -> Value {
    json!({"operation": "provision",
           "request": {"tenantId": tenant, "spec": {"command": ["sleep"], "args": args}},
           "policy": {"callbackTimeout": "20s"}})
}

fn pid_of(v: &Value) -> u64 {
    v["resourceIds"]["pid"].as_u64().expect("resourceIds.pid")
}

#[tokio::test]
async fn provision_signals_the_caller_and_is_idempotent() {
    let worker = spawn_worker("provision", WorkerOpts::default());
    let client = client().await;
    let marker = "3001.1";
    let status = worker
        .run_tenant_workflow(&client, "prov-1", provision("prov", vec![marker]))
        .await
        .completed();
    assert_eq!(status["state"], "succeeded");
    let pid = pid_of(&status);
    assert!(alive(pid), "the workload runs");

    // The caller got compute-provisioned with the execution's facts.
    let view = query_status(&client, "prov-1").await;
    let cbs = view["callbacks"].as_array().unwrap();
    assert_eq!(cbs.len(), 1, "{view}");
    let cb = &cbs[0];
    assert_eq!(cb["state"], "succeeded");
    assert_eq!(cb["executionId"], status["executionId"]);
    assert_eq!(cb["tenantId"], "prov");
    assert_eq!(cb["operation"], "provision");
    assert_eq!(pid_of(cb), pid);
    assert!(
        cb["durationMs"].as_u64().unwrap() >= 300,
        "settle time counted"
    );

    // The same request again: the same execution, still one process.
    let again = worker
        .run_tenant_workflow(&client, "prov-2", provision("prov", vec![marker]))
        .await
        .completed();
    assert_eq!(again["executionId"], status["executionId"]);
    assert_eq!(processes_with(marker).len(), 1);

    // The operator's view: the CLI queries both workflows and lists by tenant.
    let tracker_id = format!(
        "compute-execution-{}",
        status["executionId"].as_str().unwrap()
    );
    let out = cli(&[
        "workflow",
        "query",
        "-w",
        &tracker_id,
        "--name",
        "status",
        "-o",
        "json",
    ])
    .unwrap();
    assert!(
        out.contains("\"succeeded\"") && out.contains(&pid.to_string()),
        "{out}"
    );
    let out = cli(&[
        "workflow", "query", "-w", "prov-1", "--name", "status", "-o", "json",
    ])
    .unwrap();
    assert!(
        out.contains("\"phase\": \"succeeded\"") || out.contains("\"phase\":\"succeeded\""),
        "{out}"
    );
    let listed = cli(&["workflow", "list", "--query", "TenantId='prov'"]).unwrap();
    assert!(
        listed.contains("prov-1") && listed.contains(&tracker_id),
        "{listed}"
    );
}

#[tokio::test]
async fn a_workload_that_exits_at_once_fails_the_operation_and_the_tenant() {
    let worker = spawn_worker("exits", WorkerOpts::default());
    let client = client().await;
    let input = json!({"operation": "provision",
        "request": {"tenantId": "crashy", "spec": {"command": ["sh", "-c", "echo out of memory >&2; exit 3"]}}});
    let (code, non_retryable, details) = worker
        .run_tenant_workflow(&client, "exits-1", input)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED");
    assert!(non_retryable);
    assert_eq!(details["classification"], "non_retriable");
    assert_eq!(details["retriable"], false);
    assert_eq!(details["exitCode"], 3);
    assert!(
        details["stderrTail"]
            .as_str()
            .unwrap()
            .contains("out of memory")
    );

    // The caller got compute-failed carrying the same error.
    let view = query_status(&client, "exits-1").await;
    let cb = &view["callbacks"][0];
    assert_eq!(cb["state"], "failed", "{view}");
    assert_eq!(cb["error"]["code"], "WORKLOAD_FAILED");
    assert_eq!(cb["error"]["retriable"], false);

    let store = store::connect(&worker.database_url()).await.unwrap();
    let tenant = store.get_tenant("crashy").await.unwrap().unwrap();
    assert_eq!(tenant.state, TenantState::Failed);
}

#[tokio::test]
async fn bad_input_fails_once_with_invalid_configuration_and_creates_nothing() {
    let worker = spawn_worker("badinput", WorkerOpts::default());
    let decoy = "decoy-plaintext-7f3a91";
    let ok_spec = json!({"command": ["sleep", "1"]});
    let cases = vec![
        ("ProvisionTenantCompute", json!("{not json"), "input"),
        (
            "ProvisionTenantCompute",
            json!({"spec": ok_spec}),
            "tenantId",
        ),
        ("ProvisionTenantCompute", json!({"tenantId": "t1"}), "spec"),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": 42, "spec": ok_spec}),
            "tenantId",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "Bad_Tenant", "spec": ok_spec}),
            "tenantId",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "a".repeat(64), "spec": ok_spec}),
            "tenantId",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": []}}),
            "spec.command",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": "sleep 1"}}),
            "spec.command",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": ["sleep"], "cpu": "lots"}}),
            "spec.cpu",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": ["sleep"], "image": "Not An Image"}}),
            "spec.image",
        ),
        (
            "ProvisionTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": ["sleep"],
            "secrets": [{"name": "DB_PASSWORD", "value": decoy}]}}),
            "spec.secrets[0].value",
        ),
        (
            "UpdateTenantCompute",
            json!({"tenantId": "t1", "spec": {"command": ["sleep"],
            "secrets": [{"name": "DB_PASSWORD", "valueFrom": "env:X", "value": decoy}]}}),
            "spec.secrets[0].value",
        ),
        ("DeleteTenantCompute", json!({"tenantId": ""}), "tenantId"),
        ("GetComputeExecution", json!({}), "executionId"),
        (
            "ListTenantComputeExecutions",
            json!({"tenantId": ["t1"]}),
            "tenantId",
        ),
    ];
    let calls: Vec<Value> = cases
        .iter()
        .map(|(activity, input, _)| json!({"activity": activity, "input": input}))
        .collect();
    let results = worker.python_calls(Value::Array(calls));
    for ((activity, input, field), r) in cases.iter().zip(&results) {
        let e = &r["error"];
        assert_eq!(
            e["type"], "INVALID_CONFIGURATION",
            "{activity} {input}: {r}"
        );
        assert_eq!(e["nonRetryable"], true, "{r}");
        assert!(
            e["message"].as_str().unwrap().starts_with(field),
            "{field}: {r}"
        );
        assert!(!e["message"].as_str().unwrap().contains(decoy));
        // Exactly one attempt, though the caller's policy allowed five.
        let history = cli(&[
            "workflow",
            "show",
            "-w",
            r["workflowId"].as_str().unwrap(),
            "-o",
            "json",
        ])
        .unwrap();
        let history: Value = serde_json::from_str(&history).unwrap();
        let attempts: Vec<u64> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["activityTaskStartedEventAttributes"]["attempt"].as_u64())
            .collect();
        assert_eq!(attempts, vec![1], "{activity} {input}");
    }
    // Nothing created, and the refused value reached no log.
    let store = store::connect(&worker.database_url()).await.unwrap();
    assert!(store.get_tenant("t1").await.unwrap().is_none());
    assert!(
        !worker.log().contains(decoy),
        "a refused secret reached the log"
    );
    assert!(
        std::fs::read_dir(worker.local_dir())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[tokio::test]
async fn update_replaces_and_delete_removes_the_process_with_history() {
    let worker = spawn_worker("upd", WorkerOpts::default());
    let client = client().await;
    let first = worker
        .run_tenant_workflow(&client, "upd-1", provision("upd", vec!["3002.1"]))
        .await
        .completed();
    let old_pid = pid_of(&first);
    let update = json!({"operation": "update",
        "request": {"tenantId": "upd", "spec": {"command": ["sleep"], "args": ["3002.2"], "env": {"MODE": "blue"}}}});
    let updated = worker
        .run_tenant_workflow(&client, "upd-2", update)
        .await
        .completed();
    let new_pid = pid_of(&updated);
    assert_ne!(old_pid, new_pid);
    assert!(!alive(old_pid), "the old process is replaced");
    assert!(alive(new_pid));
    assert_eq!(
        updated["resourceIds"]["commandLine"],
        json!(["sleep", "3002.2"])
    );
    let view = query_status(&client, "upd-2").await;
    assert_eq!(view["callbacks"][0]["state"], "succeeded");
    assert_eq!(view["callbacks"][0]["operation"], "update");

    let deleted = worker
        .run_tenant_workflow(
            &client,
            "upd-3",
            json!({"operation": "delete", "request": {"tenantId": "upd"}}),
        )
        .await
        .completed();
    assert_eq!(deleted["state"], "succeeded");
    assert!(!alive(new_pid), "delete stops the process");
    let view = query_status(&client, "upd-3").await;
    assert_eq!(view["callbacks"][0]["operation"], "delete");
    // Deleting again is idempotent.
    worker
        .run_tenant_workflow(&client, "upd-4", json!({"operation": "delete", "request": {"tenantId": "upd", "idempotencyKey": "again"}}))
        .await
        .completed();

    // GetComputeExecution and ListTenantComputeExecutions, called by name from Python.
    let results = worker.python_calls(json!([
        {"activity": "GetComputeExecution", "input": {"executionId": updated["executionId"]}},
        {"activity": "ListTenantComputeExecutions", "input": {"tenantId": "upd"}},
    ]));
    let got = &results[0]["result"];
    assert_eq!(got["state"], "succeeded");
    let states: Vec<&str> = got["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert!(h["at"].as_str().unwrap().ends_with('Z'));
            h["state"].as_str().unwrap()
        })
        .collect();
    assert_eq!(states, ["pending", "running", "succeeded"]);
    let listed: Vec<&str> = results[1]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operation"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["provision", "update", "delete", "delete"]);
    let store = store::connect(&worker.database_url()).await.unwrap();
    assert_eq!(
        store.get_tenant("upd").await.unwrap().unwrap().state,
        TenantState::Deleted
    );
}

#[tokio::test]
async fn concurrent_operations_on_one_tenant_are_tracked_separately() {
    let worker = spawn_worker("conc", WorkerOpts::default());
    let client = client().await;
    let a = worker.run_tenant_workflow(&client, "conc-a", provision("conc", vec!["3003.1"]));
    // The update comes while the provision is under way (an update of a tenant nobody has
    // provisioned yet is NOT_FOUND, whatever runs beside it).
    let b = async {
        let store = store::connect(&worker.database_url()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.list_executions("conc").await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the provision never began"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        worker
            .run_tenant_workflow(
                &client,
                "conc-b",
                json!({"operation": "update",
                       "request": {"tenantId": "conc", "spec": {"command": ["sleep"], "args": ["3003.2"]}}}),
            )
            .await
    };
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.completed(), b.completed());
    assert_ne!(a["executionId"], b["executionId"]);
    for s in [&a, &b] {
        assert_eq!(s["state"], "succeeded");
        assert_eq!(s["history"].as_array().unwrap().len(), 3);
    }
    // Each caller heard of its own execution. When the update replaced the provision's
    // process mid-settle, the provision got CONFLICT and its retry attached to the result.
    for (wf, status) in [("conc-a", &a), ("conc-b", &b)] {
        let view = query_status(&client, wf).await;
        let cbs = view["callbacks"].as_array().unwrap();
        let last = cbs.last().unwrap();
        assert_eq!(last["executionId"], status["executionId"], "{view}");
        assert_eq!(last["state"], "succeeded");
        for cb in &cbs[..cbs.len() - 1] {
            assert_eq!(cb["error"]["code"], "CONFLICT", "{view}");
        }
    }
    // One tenant, one process in the end.
    assert_eq!(processes_with("3003.").len(), 1);
}

#[tokio::test]
async fn a_python_workflow_calls_by_name_and_receives_the_signal() {
    let worker = spawn_worker("python", WorkerOpts::default());
    let results = worker.python_calls(json!([{
        "activity": "ProvisionTenantCompute",
        "input": {"tenantId": "py-tenant", "spec": {"command": ["sleep", "3004"]},
                  "metadata": {"owner": "python-team"}},
        "waitSignal": true,
    }]));
    let r = &results[0];
    let handle = &r["result"];
    assert_eq!(handle["tenantId"], "py-tenant");
    assert_eq!(
        handle["state"], "running",
        "the handle comes back at once: {r}"
    );
    let signal = &r["signals"][0];
    assert_eq!(signal["signal"], "compute-provisioned", "{r}");
    assert_eq!(signal["callback"]["executionId"], handle["executionId"]);
    assert!(alive(
        signal["callback"]["resourceIds"]["pid"].as_u64().unwrap()
    ));
}

#[tokio::test]
async fn a_timeout_is_reported_and_the_outcome_still_recorded() {
    // Settle (2.5 s) longer than the request's timeout (1 s): timed_out, then succeeded.
    let worker = spawn_worker(
        "timeout",
        WorkerOpts {
            settle: "2500ms",
            ..Default::default()
        },
    );
    let client = client().await;
    let input = json!({"operation": "provision",
        "request": {"tenantId": "slow", "spec": {"command": ["sleep", "3005"]}, "timeout": "1s"},
        "policy": {"maxAttempts": 3}});
    let status = worker
        .run_tenant_workflow(&client, "timeout-1", input)
        .await
        .completed();
    let states: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "running", "timed_out", "succeeded"]);
    let view = query_status(&client, "timeout-1").await;
    let cbs: Vec<(&str, Option<&str>)> = view["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["state"].as_str().unwrap(), c["error"]["code"].as_str()))
        .collect();
    assert_eq!(cbs, [("timed_out", Some("TIMEOUT")), ("succeeded", None)]);
    assert_eq!(view["callbacks"][0]["error"]["retriable"], true);
}

#[tokio::test]
async fn secret_values_never_reach_logs_or_history() {
    let secret = "s3cr3t-value-only-the-workload-sees-91c2";
    let worker = spawn_worker(
        "secret",
        WorkerOpts {
            env: vec![("TENANT_DB_PASSWORD", secret.to_string())],
            args: vec![
                "--local-secret-env-allow".into(),
                "TENANT_DB_PASSWORD".into(),
            ],
            ..Default::default()
        },
    );
    let client = client().await;
    let input = json!({"operation": "provision", "request": {"tenantId": "vault",
        "spec": {"command": ["sh", "-c", "printf %s \"$DB_PASSWORD\" > seen; exec sleep 3006"],
                 "secrets": [{"name": "DB_PASSWORD", "valueFrom": "env:TENANT_DB_PASSWORD"}]}}});
    let status = worker
        .run_tenant_workflow(&client, "secret-1", input)
        .await
        .completed();
    // The workload got the value...
    let seen = std::fs::read_to_string(worker.local_dir().join("vault/work/seen")).unwrap();
    assert_eq!(seen, secret);
    // ...and nothing else did.
    let tracker = format!(
        "compute-execution-{}",
        status["executionId"].as_str().unwrap()
    );
    for wf in ["secret-1", tracker.as_str()] {
        let shown = workflow_show_everything(wf);
        assert!(shown.contains("vault"), "{wf} has a readable history");
        assert!(
            !shown.contains(secret),
            "secret value in the history of {wf}"
        );
    }
    assert!(workflow_show_everything("secret-1").contains("env:TENANT_DB_PASSWORD"));
    let log = worker.log();
    assert!(log.contains("\"tenant_id\":\"vault\"") && log.contains("execution_id"));
    assert!(!log.contains(secret), "secret value in the worker log");
    let db = std::fs::read(worker.dir.path().join("store.db")).unwrap();
    let wal = std::fs::read(worker.dir.path().join("store.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "secret value in the store"
        );
    }
}

#[tokio::test]
async fn callers_attaching_to_one_execution_all_hear_of_it() {
    let worker = spawn_worker(
        "attach",
        WorkerOpts {
            settle: "2s",
            ..Default::default()
        },
    );
    let client = client().await;
    let request = json!({"tenantId": "shared", "spec": {"command": ["sleep", "3007"]},
                         "idempotencyKey": "release-42"});
    let input = json!({"operation": "provision", "request": request});
    // Two callers with the same key while the execution runs: one execution, two callbacks.
    let (a, b) = tokio::join!(
        worker.run_tenant_workflow(&client, "attach-a", input.clone()),
        worker.run_tenant_workflow(&client, "attach-b", input.clone()),
    );
    let (a, b) = (a.completed(), b.completed());
    assert_eq!(a["executionId"], b["executionId"]);
    for wf in ["attach-a", "attach-b"] {
        let view = query_status(&client, wf).await;
        assert_eq!(
            view["callbacks"][0]["executionId"], a["executionId"],
            "{view}"
        );
    }
    let tracker = format!("compute-execution-{}", a["executionId"].as_str().unwrap());
    let view = query_status(&client, &tracker).await;
    assert_eq!(view["callbacks"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(processes_with("3007").len(), 1);
    // A caller after the end gets the final state in its handle.
    let late =
        worker.python_calls(json!([{"activity": "ProvisionTenantCompute", "input": request}]));
    let handle = &late[0]["result"];
    assert_eq!(handle["state"], "succeeded", "{late:?}");
    assert_eq!(handle["attached"], true);
    assert_eq!(handle["executionId"], a["executionId"]);
}

#[tokio::test]
async fn a_worker_killed_mid_operation_loses_nothing() {
    let mut worker = spawn_worker(
        "crash",
        WorkerOpts {
            settle: "3s",
            ..Default::default()
        },
    );
    let client = client().await;
    let handle = worker.python_calls(json!([{"activity": "ProvisionTenantCompute",
        "input": {"tenantId": "phoenix", "spec": {"command": ["sleep", "3008"]}}}]));
    let execution_id = handle[0]["result"]["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    // kill -9 while the tracker waits for the settle time; a new worker takes over.
    worker.crash_and_restart();
    let tracker = format!("compute-execution-{execution_id}");
    let status = rigs::wait_result(&client, &tracker).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let pid = pid_of(&status);
    assert!(alive(pid));
    assert_eq!(
        processes_with("3008").len(),
        1,
        "the workload was re-adopted, not started twice"
    );
    // And the same request after the restart attaches to it.
    let again = worker.python_calls(json!([{"activity": "ProvisionTenantCompute",
        "input": {"tenantId": "phoenix", "spec": {"command": ["sleep", "3008"]}}}]));
    assert_eq!(again[0]["result"]["executionId"], execution_id.as_str());
    assert_eq!(again[0]["result"]["state"], "succeeded");
}

#[tokio::test]
async fn policies_roll_back_or_abort() {
    let worker = spawn_worker("policy", WorkerOpts::default());
    let client = client().await;
    let crash = json!({"command": ["sh", "-c", "exit 4"]});
    let rollback = json!({"operation": "provision",
        "request": {"tenantId": "rb", "spec": crash},
        "policy": {"onError": {"WORKLOAD_FAILED": "rollback"}}});
    let (code, _, _) = worker
        .run_tenant_workflow(&client, "policy-rb", rollback)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED");
    let store = store::connect(&worker.database_url()).await.unwrap();
    let ops: Vec<_> = store
        .list_executions("rb")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.status.operation.as_str(), r.status.state.as_str()))
        .collect();
    assert_eq!(ops, [("provision", "failed"), ("delete", "succeeded")]);
    assert_eq!(
        store.get_tenant("rb").await.unwrap().unwrap().state,
        TenantState::Deleted
    );

    let abort = json!({"operation": "provision",
        "request": {"tenantId": "ab", "spec": crash},
        "policy": {"onError": {"WORKLOAD_FAILED": "abort"}}});
    let (code, _, _) = worker
        .run_tenant_workflow(&client, "policy-ab", abort)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED");
    assert_eq!(
        store.get_tenant("ab").await.unwrap().unwrap().state,
        TenantState::RequiresManualIntervention
    );

    // A failure declared `retry` is retried, up to maxAttempts, by re-opening the same
    // execution (tests/worker/lifecycle.rs shows the attempts).
    let retry = json!({"operation": "provision",
        "request": {"tenantId": "rt", "spec": crash},
        "policy": {"maxAttempts": 2, "initialInterval": "100ms", "onError": {"WORKLOAD_FAILED": "retry"}}});
    let (code, _, _) = worker
        .run_tenant_workflow(&client, "policy-rt", retry)
        .await
        .failed();
    assert_eq!(code, "WORKLOAD_FAILED");
    let executions = store.list_executions("rt").await.unwrap();
    assert_eq!(executions.len(), 1);
    assert_eq!(executions[0].status.attempt, 2);
    assert_eq!(query_status(&client, "policy-rt").await["attempt"], 2);
}

#[test]
fn retry_policy_prints_the_table_and_policy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("retry-policy")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes = doc["codes"].as_array().unwrap();
    assert!(
        codes
            .iter()
            .any(|c| c["code"] == "THROTTLED" && c["classification"] == "retriable")
    );
    assert!(
        codes.iter().any(|c| c["code"] == "PARTIAL_FAILURE"
            && c["classification"] == "requires_manual_intervention")
    );
    let types = doc["retryPolicy"]["nonRetryableErrorTypes"]
        .as_array()
        .unwrap();
    assert!(types.contains(&json!("INVALID_CONFIGURATION")));
    assert!(!types.contains(&json!("TIMEOUT")));
    assert_eq!(doc["retryPolicy"]["initialInterval"], "1s");
}
