//! The simulated provider (`--provider simulated`): an instant operation is finished and told
//! by the start activity alone, with no tracker; a slow one is tracked to its end; a failing
//! one fails with its code. The crash points of the instant path are in the fault suite.

use compute_activities::{contract::ExecutionState, names, store};
use serde_json::{Value, json};

use crate::rigs::{OBSERVING, WorkerOpts, cli, spawn_worker, workflow_history};

fn simulated(delay: &str, failure_rate: &str) -> WorkerOpts<'static> {
    WorkerOpts {
        args: vec![
            "--provider".into(),
            "simulated".into(),
            "--simulated-delay".into(),
            delay.into(),
            "--simulated-failure-rate".into(),
            failure_rate.into(),
        ],
        ..Default::default()
    }
}

fn call(activity: &str, input: Value) -> Value {
    json!({"activity": activity, "input": input, "waitSignal": true})
}

/// The one signal of a call, as `(signal name, callback)`.
fn only_signal(out: &Value) -> (String, Value) {
    assert!(out.get("error").is_none(), "the caller failed: {out}");
    let signals = out["signals"].as_array().cloned().unwrap_or_default();
    assert_eq!(signals.len(), 1, "one callback: {out}");
    (
        signals[0]["signal"].as_str().unwrap().to_string(),
        signals[0]["callback"].clone(),
    )
}

#[tokio::test]
async fn an_instant_operation_is_finished_and_told_by_the_start_activity() {
    let worker = spawn_worker("sim-instant", simulated("0s", "0.0"));
    let spec = json!({"image": "bench/app:1"});
    let out = worker.python_calls(json!([
        call(
            names::PROVISION_ACTIVITY,
            json!({"tenantId": "sim-a", "spec": spec})
        ),
        call(
            names::UPDATE_ACTIVITY,
            json!({"tenantId": "sim-a", "spec": {"image": "bench/app:2"}})
        ),
        call(names::DELETE_ACTIVITY, json!({"tenantId": "sim-a"})),
    ]));
    let expected = ["compute-provisioned", "compute-updated", "compute-deleted"];
    for (out, signal) in out.iter().zip(expected) {
        // The handle already says it is done.
        assert_eq!(out["result"]["state"], "succeeded", "{out}");
        let (name, callback) = only_signal(out);
        assert_eq!(name, signal, "{out}");
        assert_eq!(callback["executionId"], out["result"]["executionId"]);
        assert_eq!(callback["state"], "succeeded");
        assert_eq!(callback["sequence"], 1);
    }
    // The store has every final state and every delivery, as the tracker would record them.
    let store = store::connect(&worker.database_url()).await.unwrap();
    let executions = store.list_executions("sim-a").await.unwrap();
    assert_eq!(executions.len(), 3);
    for e in &executions {
        assert_eq!(e.status.state, ExecutionState::Succeeded, "{e:?}");
        let deliveries = store.list_deliveries(&e.status.execution_id).await.unwrap();
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        assert_eq!(deliveries[0].state, ExecutionState::Succeeded);
    }
    // No tracker ran: nothing was watched.
    let log = worker.log();
    assert!(
        !log.contains(names::WATCH_EXECUTION_ACTIVITY) && !log.contains(OBSERVING),
        "a watch ran"
    );
    assert!(
        !log.contains(names::DELIVER_CALLBACK_ACTIVITY),
        "a tracker delivered"
    );

    // A second caller of the finished provision (same key) is told too, from its own call.
    let key = json!({"tenantId": "sim-b", "spec": spec, "idempotencyKey": "k-1"});
    let first = worker.python_calls(json!([call(names::PROVISION_ACTIVITY, key.clone())]));
    let again = worker.python_calls(json!([call(names::PROVISION_ACTIVITY, key)]));
    assert_eq!(again[0]["result"]["attached"], true, "{again:?}");
    assert_eq!(
        again[0]["result"]["executionId"],
        first[0]["result"]["executionId"]
    );
    let (name, _) = only_signal(&again[0]);
    assert_eq!(name, "compute-provisioned");
}

#[tokio::test]
async fn a_slow_operation_is_tracked_to_its_end() {
    let worker = spawn_worker("sim-slow", simulated("2s", "0.0"));
    let out = worker.python_calls(json!([call(
        names::PROVISION_ACTIVITY,
        json!({"tenantId": "sim-slow", "spec": {"image": "bench/app:1"}})
    )]));
    assert_eq!(out[0]["result"]["state"], "running", "{out:?}");
    let (name, callback) = only_signal(&out[0]);
    assert_eq!(name, "compute-provisioned");
    assert_eq!(callback["state"], "succeeded");
    assert!(
        callback["durationMs"].as_u64().unwrap() >= 2000,
        "{callback}"
    );
    // Watched by the worker's observer: the tracker's history holds no watch activity and no
    // heartbeat, only its two reads of the store, its wake-up and the delivery.
    assert!(worker.log().contains(OBSERVING));
    // The caller was told by the observer itself, as soon as the final state was in the
    // store; the tracker's delivery (after the caller heard: wait for the tracker to end)
    // found it done and sent nothing (one signal, above).
    let tracker = names::tracker_workflow_id(out[0]["result"]["executionId"].as_str().unwrap());
    cli(&["workflow", "result", "--workflow-id", &tracker]).unwrap();
    let log = worker.log();
    assert!(log.contains("Callback delivered by the observer."), "{log}");
    assert!(
        log.contains("Callback delivered before; not sent again."),
        "{log}"
    );
    let history = workflow_history(&tracker);
    let events = history["events"].as_array().unwrap();
    let activities: Vec<&str> = events
        .iter()
        .filter_map(|e| e["activityTaskScheduledEventAttributes"]["activityType"]["name"].as_str())
        .collect();
    assert_eq!(activities, [names::DELIVER_CALLBACK_ACTIVITY], "{history}");
    // Its two reads of the store are local activities (a marker each).
    let reads = events
        .iter()
        .filter(|e| e["eventType"] == "EVENT_TYPE_MARKER_RECORDED")
        .count();
    assert_eq!(reads, 2, "{history}");
    let woken = events
        .iter()
        .filter(|e| {
            e["workflowExecutionSignaledEventAttributes"]["signalName"]
                == names::SIGNAL_EXECUTION_CHANGED
        })
        .count();
    assert_eq!(woken, 1, "{history}");
    eprintln!(
        "SIMULATED tracker history events for one slow operation: {}",
        events.len()
    );
    assert!(
        events.len() <= 26,
        "{} events in the tracker's history: {history}",
        events.len()
    );
}

#[tokio::test]
async fn a_failing_operation_fails_with_its_code() {
    let worker = spawn_worker("sim-fail", simulated("0s", "1.0"));
    let out = worker.python_calls(json!([call(
        names::PROVISION_ACTIVITY,
        json!({"tenantId": "sim-fail", "spec": {"image": "bench/app:1"}})
    )]));
    let (name, callback) = only_signal(&out[0]);
    assert_eq!(name, "compute-failed", "{out:?}");
    assert_eq!(callback["state"], "failed");
    assert_eq!(callback["error"]["code"], "WORKLOAD_FAILED");
    assert_eq!(callback["error"]["retriable"], false);
}

#[test]
fn a_failure_rate_outside_zero_to_one_stops_the_worker_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args([
            "run",
            "--provider",
            "simulated",
            "--simulated-failure-rate",
            "2",
        ])
        .args(["--database", "sqlite::memory:"])
        .env("TEMPORAL_ADDRESS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("--simulated-failure-rate"), "{said}");
}
