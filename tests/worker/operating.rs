//! The operations port against real operations: `/metrics` moves as operations run and end,
//! `/healthz` and `/readyz` answer probes, `/readyz` follows the store going away and coming
//! back, and the port stays up under clients that misbehave.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::rigs::{
    self, TestWorker, WorkerOpts, http, metric, spawn_shared_worker, spawn_worker,
    stop_local_workloads,
};

/// `compute-worker probe` against the worker's port: (exit code, stdout).
fn probe(worker: &TestWorker, path: &str) -> (Option<i32>, String) {
    let address = worker
        .ops_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args(["probe", "--metrics-address", &address, "--path", path])
        .output()
        .expect("compute-worker probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn provision_call(tenant: &str, command: Value) -> Value {
    json!({"activity": "ProvisionTenantCompute",
           "input": {"tenantId": tenant, "spec": {"command": command}},
           "waitSignal": true})
}

/// Polls `/metrics` until `check` holds on it (`within`); the text it held on.
fn wait_metrics(worker: &TestWorker, within: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = worker.metrics();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics did not get there within {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_follow_real_operations_and_the_probes_answer() {
    let worker = spawn_worker(
        "ops-local",
        WorkerOpts {
            settle: "2s",
            ..Default::default()
        },
    );
    let (status, body) = worker.ops_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let ready = worker.wait_ready_status(200, Duration::from_secs(30));
    assert_eq!(
        ready,
        json!({"ready": true, "checks": {"temporal": "ok", "store": "ok", "provider": "ok",
               "worker": "polling"}})
    );
    let (code, out) = probe(&worker, "/readyz");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""ready":true"#), "{out}");
    assert_eq!(probe(&worker, "/healthz"), (Some(0), "ok\n".to_string()));
    assert_eq!(worker.ops_get("/nothing-here").0, 404);
    let (status, _) = http(&worker.ops_endpoint(), "POST", "/metrics", &[], b"x").unwrap();
    assert_eq!(status, 405);

    // During: the provision settles for 2 s, watched by the observer.
    let caller = {
        let task_queue = worker.task_queue.clone();
        std::thread::spawn(move || {
            rigs::run_python_caller(
                &task_queue,
                &json!([provision_call("ops-a", json!(["sleep", "3301"]))]),
            )
        })
    };
    wait_metrics(&worker, Duration::from_secs(30), |t| {
        metric(t, "compute_executions_in_flight", &[("provider", "local")]) == 1.0
    });
    let calls = caller.join().unwrap();
    assert_eq!(
        calls[0]["signals"][0]["signal"], "compute-provisioned",
        "{calls:?}"
    );

    // After: one provision succeeded, counted once, with its duration and its callback.
    let text = wait_metrics(&worker, Duration::from_secs(10), |t| {
        metric(t, "compute_executions_in_flight", &[("provider", "local")]) == 0.0
            && metric(
                t,
                "compute_callback_deliveries_total",
                &[("outcome", "delivered")],
            ) >= 1.0
    });
    let ops = [("provider", "local"), ("operation", "provision")];
    let succeeded = [ops[0], ops[1], ("outcome", "succeeded")];
    assert_eq!(
        metric(&text, "compute_operations_total", &succeeded),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "compute_operation_duration_seconds_count", &ops),
        1.0
    );
    assert!(metric(&text, "compute_operation_duration_seconds_sum", &ops) >= 2.0);
    let provision_ok = [
        ("provider", "local"),
        ("call", "provision"),
        ("outcome", "ok"),
    ];
    assert_eq!(
        metric(&text, "compute_provider_calls_total", &provision_ok),
        1.0
    );
    assert!(
        metric(
            &text,
            "compute_provider_calls_total",
            &[("call", "observe"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            "compute_callback_delivery_seconds_count",
            &[("kind", "temporal")]
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            "compute_store_queries_total",
            &[("store", "sqlite"), ("outcome", "ok")]
        ) > 3.0
    );
    // The SDK's own metrics are on the same port.
    assert!(
        text.lines().any(|l| l.starts_with("temporal_")),
        "no temporal_* metric:\n{text}"
    );

    // A workload that crashes: counted under its error code.
    let calls = worker.python_calls(json!([provision_call(
        "ops-b",
        json!(["sh", "-c", "exit 3"])
    )]));
    assert_eq!(
        calls[0]["signals"][0]["signal"], "compute-failed",
        "{calls:?}"
    );
    let failed = [ops[0], ops[1], ("outcome", "WORKLOAD_FAILED")];
    let text = wait_metrics(&worker, Duration::from_secs(10), |t| {
        metric(t, "compute_operations_total", &failed) == 1.0
    });
    assert_eq!(metric(&text, "compute_operations_total", &succeeded), 1.0);
    // Labels name no tenant or execution.
    assert!(!text.contains("ops-a") && !text.contains("ops-b"), "{text}");
}

#[test]
fn the_port_outlives_clients_that_misbehave() {
    let worker = spawn_worker("ops-hostile", WorkerOpts::default());
    let endpoint = worker.ops_endpoint();
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    // More idle connections than the port serves at once, sending nothing.
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Headers far past the limit.
    let mut big = TcpStream::connect(addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = big.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        )
        .as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // The idle ones are cut after the header timeout; a real probe is served meanwhile or
    // right after.
    let started = Instant::now();
    let (status, body) = worker.ops_get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(idle);
    assert_eq!(worker.ops_get("/readyz").0, 200);
}

#[test]
fn readyz_follows_the_store_going_away_and_coming_back() {
    let pg = rigs::own_postgres();
    let local = tempfile::tempdir().unwrap();
    let task_queue = format!("ops-pg-{}", std::process::id());
    let worker = spawn_shared_worker(&task_queue, &pg.url, local.path(), WorkerOpts::default());
    worker.wait_ready_status(200, Duration::from_secs(30));

    pg.stop_immediately();
    let report: Value = worker.wait_ready_status(503, Duration::from_secs(30));
    assert_eq!(report["ready"], false, "{report}");
    assert_ne!(report["checks"]["store"], "ok", "{report}");
    assert_eq!(report["checks"]["temporal"], "ok", "{report}");
    assert_eq!(report["checks"]["provider"], "ok", "{report}");
    // A probe answers within its bound while the store does not.
    let started = Instant::now();
    assert_eq!(worker.ops_get("/readyz").0, 503);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(worker.ops_get("/healthz").0, 200, "alive, only not ready");
    let (code, out) = probe(&worker, "/readyz");
    assert_eq!(code, Some(1), "the probe fails while not ready: {out}");
    assert!(out.contains(r#""ready":false"#), "{out}");

    pg.start();
    worker.wait_ready_status(200, Duration::from_secs(60));
    // Counted on the port as queries like any other.
    let text = worker.metrics();
    assert!(
        metric(
            &text,
            "compute_store_queries_total",
            &[("store", "postgres"), ("outcome", "ok")]
        ) >= 1.0,
        "{text}"
    );
    drop(worker);
    stop_local_workloads(local.path());
}
