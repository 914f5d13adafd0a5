//! Callers in other languages, end to end against the real worker: the TypeScript workflow
//! of `examples/typescript` (the Temporal TypeScript SDK from npm) provisions, hears the
//! signal, reads `GetComputeExecution` and deletes, all by name.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::rigs::{WorkerOpts, alive, processes_with, server_address, spawn_worker};

#[test]
fn a_typescript_workflow_provisions_hears_the_signal_reads_and_deletes() {
    let worker = spawn_worker("ts-caller", WorkerOpts::default());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/typescript");
    let marker = "3310.7";
    let out = Command::new("node")
        .arg(example.join("lib/run.js"))
        .args(["--task-queue", &format!("{}-ts", worker.task_queue)])
        .args(["--compute-task-queue", &worker.task_queue])
        .args(["--tenant", "ts-caller"])
        .args([
            "--spec",
            &format!(r#"{{"command": ["sleep", "{marker}"]}}"#),
        ])
        .env("TEMPORAL_ADDRESS", server_address())
        .current_dir(&example)
        .output()
        .expect("node (install-tools.sh --test-rig builds examples/typescript)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the TypeScript caller failed:\n{stdout}\n{stderr}"
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}\n{stderr}"));

    let provisioned = &result["provisioned"];
    assert_eq!(provisioned["tenantId"], "ts-caller", "{result}");
    let signal = &result["provisionSignal"];
    assert_eq!(signal["signal"], "compute-provisioned", "{result}");
    assert_eq!(
        signal["callback"]["executionId"],
        provisioned["executionId"]
    );
    assert_eq!(signal["callback"]["state"], "succeeded");
    let status = &result["status"];
    assert_eq!(status["executionId"], provisioned["executionId"]);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(status["resourceIds"]["pid"].as_u64().is_some(), "{status}");
    let deleted = &result["deleteSignal"];
    assert_eq!(deleted["signal"], "compute-deleted", "{result}");
    assert_eq!(deleted["callback"]["state"], "succeeded", "{result}");
    // The workload it provisioned is gone with the delete.
    let pid = status["resourceIds"]["pid"].as_u64().unwrap();
    assert!(!alive(pid) && processes_with(marker).is_empty());
}
