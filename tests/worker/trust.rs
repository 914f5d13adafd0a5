//! The trust boundary, tried as a careless or hostile caller would (issue 11): the real worker,
//! a Python caller and the `temporal` CLI against the shared dev server.
//!
//! - Local secret references outside the operator's allow-list are refused on the first
//!   attempt with one message, whatever exists; `/dev/zero`, a FIFO, a symlink out of the
//!   allowed directory and an oversized file are refused without being read (the worker's
//!   peak memory stays small); a workload that echoes an allowed secret gets its stderr tail
//!   back without the value; no canary reaches any output.
//! - Oversized, over-deep and over-long input, bad durations, foreign namespaces and malformed
//!   awakeable ids are refused on attempt 1, on public and internal activities, and on
//!   `TenantComputeWorkflow`'s input.
//! - Malformed `attach-callback` signals sent with the CLI never wedge a live tracker.
//! - A tracker continues as new with a short history limit and still tells every caller.
//! - SIGTERM releases in-flight watches to another worker; no tracker fails.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    rigs::{
        Outcome, WorkerOpts, cli, client, postgres_database, query_status, spawn_shared_worker,
        spawn_worker, start_and_wait, started_activity_attempts, wait_result, workflow_history,
        workflow_show_everything,
    },
    secret_scan::{occurrences, sqlite_dump},
};

/// A random canary: a value that must never be seen in any output.
fn canary(label: &str) -> String {
    let mut bytes = [0u8; 12];
    getrandom(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{label}-{hex}")
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Asserts a Python caller's result is a refusal on the first attempt, and returns its
/// message.
fn refused_once(r: &Value, activity: &str) -> String {
    let e = &r["error"];
    assert_eq!(e["type"], "INVALID_CONFIGURATION", "{activity}: {r}");
    assert_eq!(e["nonRetryable"], true, "{activity}: {r}");
    let wf = r["workflowId"].as_str().unwrap();
    assert_eq!(
        started_activity_attempts(wf, activity),
        vec![1],
        "{activity}: exactly one attempt though the caller allowed five: {r}"
    );
    e["message"].as_str().unwrap().to_string()
}

fn provision_input(tenant: &str, secrets: Value) -> Value {
    json!({"tenantId": tenant, "spec": {"command": ["sleep", "300"], "secrets": secrets}})
}

#[tokio::test]
async fn local_secret_references_are_scoped_and_never_leak() {
    let forbidden = canary("forbidden-env");
    let allowed = canary("allowed-env");
    let in_file = canary("allowed-file");
    let outside = canary("outside-file");
    let root = tempfile::tempdir().unwrap();
    let vault = root.path().join("vault");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&vault).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(vault.join("token"), format!("{in_file}\n")).unwrap();
    std::fs::write(elsewhere.join("outside.txt"), &outside).unwrap();
    std::fs::write(vault.join("big"), vec![b'x'; 65 * 1024 + 1]).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("outside.txt"), vault.join("escape")).unwrap();
    let fifo = vault.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let worker = spawn_worker(
        "trust-secrets",
        WorkerOpts {
            env: vec![
                ("CANARY_FORBIDDEN", forbidden.clone()),
                ("ALLOWED_TOKEN", allowed.clone()),
            ],
            args: vec![
                "--local-secret-env-allow".into(),
                "ALLOWED_*,OTHER_NAME".into(),
                "--local-secret-dir".into(),
                vault.display().to_string(),
            ],
            ..Default::default()
        },
    );
    let refs = [
        "env:CANARY_FORBIDDEN".to_string(),
        "env:ALLOWED_BUT_UNSET".to_string(),
        "env:AWS_SECRET_ACCESS_KEY".to_string(),
        "file:/dev/zero".to_string(),
        "file:/etc/hostname".to_string(),
        "file:vault/token".to_string(),
        format!("file:{}", fifo.display()),
        format!("file:{}", vault.join("escape").display()),
        format!("file:{}", vault.join("big").display()),
        format!("file:{}/../elsewhere/outside.txt", vault.display()),
        format!("file:{}", vault.join("missing").display()),
        format!("file:{}", vault.display()),
    ];
    let calls: Vec<Value> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"activity": "ProvisionTenantCompute",
                   "input": provision_input(&format!("ts-{i}"),
                                            json!([{"name": "X", "valueFrom": r}]))})
        })
        .collect();
    let started = Instant::now();
    let results = worker.python_calls(Value::Array(calls));
    // The FIFO never blocks anything: every refusal came back at once.
    assert!(started.elapsed() < Duration::from_secs(60), "{results:?}");
    let messages: Vec<String> = results
        .iter()
        .map(|r| refused_once(r, "ProvisionTenantCompute"))
        .collect();
    for (r, m) in refs.iter().zip(&messages) {
        assert!(m.starts_with("spec.secrets[0].valueFrom"), "{r}: {m}");
        assert!(!m.contains("CANARY") && !m.contains("vault"), "{r}: {m}");
    }
    // Nothing to probe: a forbidden variable and an allowed but unset one read the same, and
    // so do a missing file and one outside the directory.
    assert_eq!(messages[0], messages[1]);
    assert_eq!(messages[0], messages[2]);
    // (Index 5 is a relative path, which may say so: nothing is probed by that.)
    let file_messages: std::collections::BTreeSet<&String> = messages[3..]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(file_messages.len(), 1, "{messages:#?}");
    // Nothing was recorded for a refused request.
    let dump = sqlite_dump(&worker.dir.path().join("store.db"));
    assert!(
        !dump.contains("ts-0"),
        "a refused request was recorded: {dump}"
    );
    // /dev/zero and the oversized file were never read: peak memory stays small.
    let peak = worker.peak_rss_kib();
    assert!(
        peak > 0 && peak < 200 * 1024,
        "peak RSS {peak} KiB after hostile references"
    );

    // An allowed secret echoed to stderr (as is and base64) does not come back.
    let client = client().await;
    let script = "echo \"leak:$X:$Y\" >&2; printf %s \"$X\" | base64 >&2; \
                  printf %s \"$Y\" | base64 >&2; exit 3";
    let outcome = worker
        .run_tenant_workflow(
            &client,
            "trust-echo-1",
            json!({"operation": "provision",
                   "request": {"tenantId": "ts-echo", "spec": {
                       "command": ["sh", "-c", script],
                       "secrets": [{"name": "X", "valueFrom": "env:ALLOWED_TOKEN"},
                                   {"name": "Y", "valueFrom":
                                       format!("file:{}", vault.join("token").display())}]}},
                   "policy": {"maxAttempts": 1, "callbackTimeout": "20s"}}),
        )
        .await;
    let Outcome::Failed { code, details, .. } = outcome else {
        panic!("the echoing workload must fail: {outcome:?}");
    };
    assert_eq!(code.as_deref(), Some("WORKLOAD_FAILED"), "{details:?}");
    let details = details.unwrap();
    let shown = details.to_string();
    assert!(shown.contains("leak:"), "the tail is kept: {shown}");
    let needles = [
        forbidden.clone(),
        allowed.clone(),
        in_file.clone(),
        outside.clone(),
        base64(allowed.as_bytes()),
        base64(in_file.as_bytes()),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_eq!(occurrences(shown.as_bytes(), &needles), 0, "{shown}");

    // Every output: the callback and status (in the caller's history), the tracker's
    // history, the store, the log.
    let view = query_status(&client, "trust-echo-1").await;
    let execution_id = view["executionId"].as_str().unwrap().to_string();
    let mut everything = workflow_show_everything("trust-echo-1");
    everything.push_str(&workflow_show_everything(&format!(
        "compute-execution-{execution_id}"
    )));
    for r in &results {
        everything.push_str(&workflow_show_everything(r["workflowId"].as_str().unwrap()));
    }
    everything.push_str(&sqlite_dump(&worker.dir.path().join("store.db")));
    everything.push_str(&worker.log());
    assert!(everything.contains("leak:"), "positive control");
    assert_eq!(occurrences(everything.as_bytes(), &needles), 0);
}

#[tokio::test]
async fn hostile_inputs_are_refused_on_the_first_attempt() {
    let worker = spawn_worker("trust-input", WorkerOpts::default());
    let ok = json!({"tenantId": "ti-ok", "spec": {"command": ["sleep", "300"]}});
    let cases: Vec<(Value, &str, &str)> = vec![
        // Deeper than the SDK decoder's own limit: once retried forever as "Encoding error".
        (
            json!({"activity": "ProvisionTenantCompute", "input": ok, "build": {"kind": "deep", "levels": 300}}),
            "ProvisionTenantCompute",
            "deeper than 32",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": ok, "build": {"kind": "deep", "levels": 40}}),
            "ProvisionTenantCompute",
            "deeper than 32",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": ok, "build": {"kind": "pad", "bytes": 400_000}}),
            "ProvisionTenantCompute",
            "256 KiB",
        ),
        (
            json!({"activity": "UpdateTenantCompute", "input": ok, "build": {"kind": "pad", "bytes": 70_000}}),
            "UpdateTenantCompute",
            "64 KiB",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": ok, "build": {"kind": "items", "count": 1500}}),
            "ProvisionTenantCompute",
            "more than 1000",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": {"tenantId": "ti-ns",
                   "spec": {"command": ["sleep", "1"]},
                   "callback": {"temporal": {"workflowId": "w", "namespace": "someone-else"}}}}),
            "ProvisionTenantCompute",
            "callback.temporal.namespace",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": {"tenantId": "ti-rs",
                   "spec": {"command": ["sleep", "1"]},
                   "callback": {"restate": {"awakeableId": "inv_1abc"}}}}),
            "ProvisionTenantCompute",
            "callback.restate.awakeableId",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": {"tenantId": "ti-hb",
                   "spec": {"command": ["sleep", "1"]},
                   "callback": {"stepFunctions": {"taskToken": "t", "heartbeatSeconds": 0}}}}),
            "ProvisionTenantCompute",
            "callback.stepFunctions.heartbeatSeconds",
        ),
        (
            json!({"activity": "ProvisionTenantCompute", "input": {"tenantId": "ti-to",
                   "spec": {"command": ["sleep", "1"]}, "timeout": "0s"}}),
            "ProvisionTenantCompute",
            "timeout",
        ),
        (
            json!({"activity": "GetComputeExecution", "input": {"executionId": "x"},
                   "build": {"kind": "deep", "levels": 200}}),
            "GetComputeExecution",
            "deeper than 32",
        ),
        // The internal activities take anything a caller sends, too.
        (
            json!({"activity": "WatchComputeExecution", "input": "not-an-object"}),
            "WatchComputeExecution",
            "input",
        ),
        (
            json!({"activity": "MarkComputeExecutionTimedOut", "input": {"no": "string"}}),
            "MarkComputeExecutionTimedOut",
            "input",
        ),
        (
            json!({"activity": "DeliverComputeCallback", "input": {"target": {"bogus": true},
                   "callback": {}}}),
            "DeliverComputeCallback",
            "input",
        ),
        (
            json!({"activity": "HeartbeatComputeCallbacks", "input": [1, 2, 3]}),
            "HeartbeatComputeCallbacks",
            "input",
        ),
        (
            json!({"activity": "CheckComputeCallback", "input": {"callback": {"restate": {}}},
                   "build": {"kind": "deep", "levels": 150}}),
            "CheckComputeCallback",
            "deeper than 32",
        ),
        (
            json!({"activity": "MarkTenantRequiresIntervention",
                   "input": {"tenantId": "../etc", "executionId": "e-1", "reason": "x"}}),
            "MarkTenantRequiresIntervention",
            "tenantId",
        ),
    ];
    let calls: Vec<Value> = cases.iter().map(|(c, _, _)| c.clone()).collect();
    let results = worker.python_calls(Value::Array(calls));
    for ((call, activity, expected), r) in cases.iter().zip(&results) {
        let m = refused_once(r, activity);
        assert!(m.contains(expected), "{call}: {m}");
        assert!(m.len() < 400, "the message never carries the input: {m}");
    }
    // Nothing of it was recorded.
    let dump = sqlite_dump(&worker.dir.path().join("store.db"));
    assert!(!dump.contains("ti-"), "{dump}");

    // A raw `json/protobuf` payload (as Go and Java send proto messages) is read like
    // `json/plain`.
    let raw = worker.python_calls(json!([{"activity": "ProvisionTenantCompute",
        "input": {"tenantId": "ti-proto", "spec": {"command": ["sleep", "300"]}},
        "encoding": "json/protobuf", "waitSignal": true}]));
    assert_eq!(raw[0]["result"]["state"], "running", "{raw:?}");
    assert_eq!(
        raw[0]["signals"][0]["signal"], "compute-provisioned",
        "{raw:?}"
    );
    // The same question as json/plain and as a compute.v1 message gets the same answer; a
    // message of another package is refused at once.
    let query = json!({"executionId": raw[0]["result"]["executionId"]});
    let answers = worker.python_calls(json!([
        {"activity": "GetComputeExecution", "input": query},
        {"activity": "GetComputeExecution", "input": query, "encoding": "json/protobuf",
         "messageType": "compute.v1.ExecutionQuery"},
        {"activity": "GetComputeExecution", "input": query, "encoding": "json/protobuf",
         "messageType": "acme.v1.ExecutionQuery"},
    ]));
    assert_eq!(answers[0]["result"]["state"], "succeeded", "{answers:?}");
    assert_eq!(answers[0]["result"], answers[1]["result"]);
    let m = refused_once(&answers[2], "GetComputeExecution");
    assert!(m.contains("package compute.v1"), "{m}");

    // TenantComputeWorkflow's own input: too deep for the SDK's decoder, and a floor.
    let client = client().await;
    let mut deep = json!({"operation": "provision", "request": ok});
    for _ in 0..200 {
        deep = json!({"a": deep});
    }
    for (id, input, expected) in [
        ("trust-wf-deep", deep, "deeper than 32"),
        (
            "trust-wf-floor",
            json!({"operation": "provision", "request": ok,
                   "policy": {"callbackTimeout": "100ms"}}),
            "policy.callbackTimeout",
        ),
    ] {
        match start_and_wait(
            &client,
            &worker.task_queue,
            "TenantComputeWorkflow",
            id,
            input,
        )
        .await
        {
            Outcome::Failed {
                code,
                non_retryable,
                details,
            } => {
                assert_eq!(code.as_deref(), Some("INVALID_CONFIGURATION"), "{id}");
                assert!(non_retryable, "{id}");
                let message = details.unwrap()["message"].as_str().unwrap().to_string();
                assert!(message.contains(expected), "{id}: {message}");
            }
            other => panic!("{id}: expected a refusal, got {other:?}"),
        }
        // Refused in the first workflow task: no task failed and was retried.
        let history = workflow_history(id);
        let failed_tasks = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_FAILED")
            .count();
        assert_eq!(failed_tasks, 0, "{id}: {history}");
    }
}

/// Starts a TenantComputeWorkflow in the background and returns the tracker id once the
/// execution is known.
async fn start_in_background(
    worker_queue: &str,
    id: &str,
    input: Value,
) -> (tokio::task::JoinHandle<Outcome>, String) {
    let client = client().await;
    let (queue, wf) = (worker_queue.to_string(), id.to_string());
    let task = {
        let client = client.clone();
        tokio::spawn(async move {
            start_and_wait(&client, &queue, "TenantComputeWorkflow", &wf, input).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if cli(&["workflow", "describe", "-w", id]).is_ok() {
            let view = query_status(&client, id).await;
            if let Some(e) = view["executionId"].as_str() {
                return (task, format!("compute-execution-{e}"));
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id} never started its execution"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(workflow_id: &str, name: &str, input: &str) {
    cli(&[
        "workflow",
        "signal",
        "--workflow-id",
        workflow_id,
        "--name",
        name,
        "--input",
        input,
    ])
    .unwrap_or_else(|e| panic!("signal {name} {input}: {e}"));
}

#[tokio::test]
async fn malformed_signals_never_wedge_a_tracker() {
    let worker = spawn_worker(
        "trust-signals",
        WorkerOpts {
            // Long enough for every signal below to reach the live tracker, even on a
            // loaded machine.
            settle: "12s",
            ..Default::default()
        },
    );
    let (task, tracker) = start_in_background(
        &worker.task_queue,
        "trust-signal-1",
        json!({"operation": "provision",
               "request": {"tenantId": "tsig", "spec": {"command": ["sleep", "300"]}},
               "policy": {"callbackTimeout": "30s"}}),
    )
    .await;
    let mut deep = String::new();
    for _ in 0..100 {
        deep.push_str("{\"a\":");
    }
    deep.push('1');
    for _ in 0..100 {
        deep.push('}');
    }
    let bad = [
        "\"not-an-object\"",
        "{\"bogus\": true}",
        "[1, 2, 3]",
        "{\"target\": {\"restate\": {\"awakeableId\": \"../../admin\"}}}",
        "{\"target\": {\"temporal\": {}}}",
        deep.as_str(),
    ];
    for input in bad {
        signal(&tracker, "attach-callback", input);
    }
    // The caller's own callback signals, malformed, are dropped too.
    signal("trust-signal-1", "compute-failed", "\"garbage\"");
    let status = task.await.unwrap().completed();
    assert_eq!(status["state"], "succeeded");
    let client = client().await;
    let view = query_status(&client, &tracker).await;
    assert_eq!(view["signalsDropped"], bad.len() as u64, "{view}");
    assert_eq!(view["targets"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["callbacks"][0]["delivered"], true, "{view}");
    let caller = query_status(&client, "trust-signal-1").await;
    assert_eq!(caller["callbacks"].as_array().unwrap().len(), 1, "{caller}");
    assert!(caller["duplicateCallbacksIgnored"].as_u64().unwrap() >= 1);
    let history = workflow_history(&tracker);
    assert!(
        !history.to_string().contains("WORKFLOW_TASK_FAILED"),
        "a malformed signal failed a workflow task: {history}"
    );
    assert!(
        worker
            .log()
            .contains("Dropped a malformed attach-callback signal.")
    );
}

#[tokio::test]
async fn a_tracker_continues_as_new_and_still_tells_every_caller() {
    let worker = spawn_worker(
        "trust-can",
        WorkerOpts {
            // Long enough for all 20 signals to reach the live tracker on a loaded machine.
            settle: "25s",
            args: vec!["--tracker-history-limit".into(), "40".into()],
            ..Default::default()
        },
    );
    let (task, tracker) = start_in_background(
        &worker.task_queue,
        "trust-can-1",
        json!({"operation": "provision",
               "request": {"tenantId": "tcan", "spec": {"command": ["sleep", "300"]}},
               "policy": {"callbackTimeout": "30s"}}),
    )
    .await;
    // Each signal adds a few events: enough of them pass the limit of 40 several times.
    for i in 0..20 {
        signal(
            &tracker,
            "attach-callback",
            &format!(
                "{{\"target\": {{\"temporal\": {{\"workflowId\": \"trust-can-listener-{i}\"}}}}}}"
            ),
        );
    }
    let status = task.await.unwrap().completed();
    assert_eq!(status["state"], "succeeded");
    let client = client().await;
    // The caller is told first; the tracker ends once every listener was tried.
    wait_result(&client, &tracker).await;
    let view = query_status(&client, &tracker).await;
    assert!(view["runs"].as_u64().unwrap() >= 2, "{view}");
    assert_eq!(view["targets"].as_array().unwrap().len(), 21, "{view}");
    let callbacks = view["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 21, "each caller told once: {view}");
    assert_eq!(
        callbacks.iter().filter(|c| c["delivered"] == true).count(),
        1,
        "the real caller got its callback; the listeners do not exist: {view}"
    );
    let caller = query_status(&client, "trust-can-1").await;
    assert_eq!(caller["callbacks"].as_array().unwrap().len(), 1, "{caller}");
}

#[tokio::test]
async fn sigterm_releases_watches_to_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("trust-term-{}", std::process::id());
    let db = postgres_database("trust_term");
    let database = db.url.clone();
    let local = dir.path().join("local");
    // Long enough that the watches still run when the second worker is up and the first one
    // is stopped (a worker takes seconds to start on a loaded machine).
    let opts = || WorkerOpts {
        settle: "20s",
        ..Default::default()
    };
    let first = spawn_shared_worker(&queue, &database, &local, opts());
    let mut started = Vec::new();
    for i in 0..3 {
        let id = format!("trust-term-{i}");
        let input = json!({"operation": "provision",
            "request": {"tenantId": format!("tterm-{i}"), "spec": {"command": ["sleep", "300"]}},
            "policy": {"callbackTimeout": "60s"}});
        started.push(start_in_background(&queue, &id, input).await);
    }
    // Only the first worker polls so far: it holds every watch.
    let second = spawn_shared_worker(&queue, &database, &local, opts());
    let stopping = Instant::now();
    first.sigterm();
    let mut first = first;
    assert!(
        first.wait_exited(Duration::from_secs(20)),
        "the worker did not stop within its grace"
    );
    let stopped_in = stopping.elapsed();
    for (task, tracker) in started {
        let status = task.await.unwrap().completed();
        assert_eq!(status["state"], "succeeded");
        let history = workflow_history(&tracker);
        let events = history["events"].as_array().unwrap();
        assert_eq!(
            events.last().unwrap()["eventType"],
            "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
            "{tracker} did not complete: {history}"
        );
    }
    assert!(first.log().contains("watches released"), "{}", first.log());
    assert!(
        first.log().contains("The observer stopped."),
        "{}",
        first.log()
    );
    // The first worker gave its executions up when it stopped: the second took them over
    // without waiting for a lease to expire.
    assert!(
        second
            .log()
            .contains("Took over executions whose observer is gone.")
            && second.log().matches(crate::rigs::OBSERVING).count() >= 3,
        "the second worker resumed the watches: {}\n---- first:\n{}",
        crate::rigs::worker_log_tail(&second.log(), 40),
        crate::rigs::worker_log_tail(&first.log(), 60)
    );
    eprintln!("first worker stopped in {stopped_in:?}");
}
