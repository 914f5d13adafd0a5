//! `compute-worker sweep`: the orphan sweeper against a worker's real store and the local
//! provider's real processes (the Kubernetes case is in `kubernetes.rs`).

use std::process::Command;

use compute_activities::{
    contract::{Operation, TenantState},
    store,
};
use serde_json::{Value, json};

use crate::rigs::{TestWorker, WorkerOpts, alive, client, spawn_worker};

/// Runs `compute-worker sweep --json` over a store, with the provider's arguments and
/// environment.
pub fn sweep(database: &str, args: &[String], env: &[(&str, String)]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args(["sweep", "--json", "--database", database])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run compute-worker sweep");
    assert!(
        out.status.success(),
        "sweep failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sweep printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn tenants_of(report: &Value, list: &str) -> Vec<(String, String)> {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["tenantId"].as_str().unwrap().to_string(),
                o["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn provision(worker: &TestWorker, tenant: &str, marker: &str) -> u64 {
    let client = client().await;
    let status = worker
        .run_tenant_workflow(
            &client,
            &format!("sweep-{tenant}-{}", std::process::id()),
            json!({"operation": "provision",
                   "request": {"tenantId": tenant,
                               "spec": {"command": ["sleep"], "args": [marker]}},
                   "policy": {"callbackTimeout": "20s"}}),
        )
        .await
        .completed();
    assert_eq!(status["state"], "succeeded", "{status}");
    status["resourceIds"]["pid"].as_u64().unwrap()
}

#[tokio::test]
async fn sweep_lists_orphans_by_default_and_removes_them_with_apply() {
    let worker = spawn_worker("sweep-local", WorkerOpts::default());
    let kept = provision(&worker, "kept", "3101.1").await;
    let ghost = provision(&worker, "ghost", "3101.2").await;
    let ghost_execution = {
        let s = store::connect(&worker.database_url()).await.unwrap();
        let t = s.get_tenant("ghost").await.unwrap().unwrap();
        // The store says the tenant is gone while its process still runs: what a delete that
        // died between the store and the provider, or a restored backup, leaves behind.
        let latest = s.list_executions("ghost").await.unwrap();
        let execution = latest.last().unwrap().status.execution_id.clone();
        let mark = compute_activities::contract::InterventionMark {
            code: compute_activities::ErrorCode::Internal,
            message: "test".into(),
            execution_id: execution.clone(),
            at: compute_activities::contract::now(),
        };
        s.mark_tenant(&t.tenant_id, mark, Some(TenantState::Deleted))
            .await
            .unwrap();
        execution
    };
    let local = worker.dir.path().join("local");
    let local_args = |apply: bool| {
        let mut a = vec!["--local-state-dir".to_string(), local.display().to_string()];
        if apply {
            a.push("--apply".into());
        }
        a
    };

    // A dry run lists the deleted tenant's process and touches nothing.
    let report = sweep(&worker.database_url(), &local_args(false), &[]);
    assert_eq!(report["applied"], false);
    assert_eq!(
        tenants_of(&report, "orphans"),
        [("ghost".to_string(), "tenant-deleted".to_string())],
        "{report}"
    );
    assert_eq!(report["orphans"][0]["kind"], "process");
    assert_eq!(report["orphans"][0]["id"], ghost.to_string());
    assert_eq!(report["orphans"][0]["executionId"], ghost_execution);
    assert!(alive(ghost) && alive(kept), "a dry run removes nothing");

    // Against a store that knows neither tenant, both are orphans.
    let empty = tempfile::tempdir().unwrap();
    let empty_db = format!("sqlite://{}", empty.path().join("empty.db").display());
    let report = sweep(&empty_db, &local_args(false), &[]);
    assert_eq!(
        tenants_of(&report, "orphans"),
        [
            ("ghost".to_string(), "tenant-unknown".to_string()),
            ("kept".to_string(), "tenant-unknown".to_string())
        ],
        "{report}"
    );
    assert!(alive(ghost) && alive(kept));

    // --apply removes the orphan, and only it; a second sweep finds nothing.
    let report = sweep(&worker.database_url(), &local_args(true), &[]);
    assert_eq!(report["applied"], true);
    assert_eq!(report["removals"][0]["tenantId"], "ghost", "{report}");
    assert_eq!(report["removals"][0]["removed"], true, "{report}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(ghost) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!alive(ghost), "the orphan's process is stopped");
    assert!(alive(kept), "a live tenant's process is left alone");
    let report = sweep(&worker.database_url(), &local_args(false), &[]);
    assert_eq!(report["orphans"], json!([]), "{report}");
}

/// Runs `compute-worker sweep` expecting it to fail: (stdout, stderr).
fn sweep_failing(database: &str, args: &[String]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .args(["sweep", "--json", "--database", database])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run compute-worker sweep");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "sweep succeeded:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[tokio::test]
async fn sweep_apply_refuses_a_store_that_never_recorded_the_provider() {
    let worker = spawn_worker("sweep-refuse", WorkerOpts::default());
    let pid = provision(&worker, "stranger", "3102.1").await;
    let local = vec![
        "--local-state-dir".to_string(),
        worker.local_dir().display().to_string(),
    ];
    let apply = [local.clone(), vec!["--apply".to_string()]].concat();

    // A wrong --database (here a new, empty file): every process looks orphaned. A dry run
    // may say so; --apply refuses, names the store, and removes nothing.
    let empty = tempfile::tempdir().unwrap();
    let empty_db = format!("sqlite://{}", empty.path().join("empty.db").display());
    let report = sweep(&empty_db, &local, &[]);
    assert_eq!(
        tenants_of(&report, "orphans"),
        [("stranger".to_string(), "tenant-unknown".to_string())],
        "{report}"
    );
    let (stdout, stderr) = sweep_failing(&empty_db, &apply);
    assert!(
        stderr.contains(&format!(
            "refusing to remove anything: the store {empty_db} has never recorded an \
             execution for provider local; is --database right?"
        )),
        "{stderr}"
    );
    assert!(!stdout.contains("removals"), "{stdout}");
    assert!(alive(pid), "a refused sweep removes nothing");

    // A store with executions of another provider only does not vouch for this one either.
    {
        let s = store::connect(&empty_db).await.unwrap();
        s.begin_execution(store::NewExecution {
            tenant_id: "elsewhere".into(),
            operation: Operation::Delete,
            idempotency_key: None,
            spec_hash: store::spec_hash(None),
            spec: None,
            request: json!({"tenantId": "elsewhere"}),
            timeout: std::time::Duration::from_secs(5),
            provider: Some("ecs".into()),
        })
        .await
        .unwrap();
    }
    let (_, stderr) = sweep_failing(&empty_db, &apply);
    assert!(stderr.contains("refusing to remove anything"), "{stderr}");
    assert!(alive(pid), "a refused sweep removes nothing");

    // The worker's own store recorded the provider: --apply goes ahead (and finds the live
    // tenant no orphan).
    let report = sweep(&worker.database_url(), &apply, &[]);
    assert_eq!(report["applied"], true, "{report}");
    assert_eq!(report["removals"], json!([]), "{report}");
    assert!(alive(pid));
}
