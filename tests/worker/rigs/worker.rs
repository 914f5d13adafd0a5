//! The worker rig: one real worker process per test (own task queue, own SQLite file, own
//! local-provider directory) on the shared Temporal server, workflows started and awaited
//! with the Rust client, activities called from Python, and the host's processes.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use temporalio_client::{
    Client, WorkflowGetResultOptions, WorkflowQueryOptions, WorkflowStartOptions,
    errors::WorkflowGetResultError,
};
use temporalio_common::{
    UntypedWorkflow,
    data_converters::{PayloadConverter, RawValue},
    error::IncomingError,
};

use super::temporal::{server_address, started_activity_attempts};

/// One worker process.
pub struct TestWorker {
    /// Its directory (database, local provider state, log).
    pub dir: tempfile::TempDir,
    /// Its task queue.
    pub task_queue: String,
    child: Child,
    settle: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// Options of a test worker.
pub struct WorkerOpts<'a> {
    pub settle: &'a str,
    pub env: Vec<(&'a str, String)>,
    /// Extra arguments of `compute-worker run` (after the rig's own), such as
    /// `--provider ecs --ecs-cluster ...`; a restart reuses them.
    pub args: Vec<String>,
}

impl Default for WorkerOpts<'_> {
    fn default() -> Self {
        WorkerOpts {
            settle: "300ms",
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// Starts a worker (the real binary) on its own task queue and waits until it polls.
pub fn spawn_worker(name: &str, opts: WorkerOpts<'_>) -> TestWorker {
    let dir = tempfile::tempdir().unwrap();
    let task_queue = format!("{name}-{}", std::process::id());
    let settle = opts.settle.to_string();
    let env: Vec<(String, String)> = opts
        .env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let args = opts.args;
    let child = start_worker_process(
        dir.path(),
        &task_queue,
        &own_database(dir.path()),
        &dir.path().join("local"),
        &settle,
        &env,
        &args,
    );
    let worker = TestWorker {
        dir,
        task_queue,
        child,
        settle,
        env,
        args,
    };
    worker.wait_started(1);
    worker
}

/// Starts a worker on a given task queue, store URL and local-provider directory (several
/// workers sharing one queue, one Postgres and one host) and waits until it polls. Its log is
/// in its own directory. Not for [`TestWorker::crash_and_restart`] (that restarts on SQLite).
pub fn spawn_shared_worker(
    task_queue: &str,
    database: &str,
    local_dir: &Path,
    opts: WorkerOpts<'_>,
) -> TestWorker {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = opts
        .env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let child = start_worker_process(
        dir.path(),
        task_queue,
        database,
        local_dir,
        opts.settle,
        &env,
        &opts.args,
    );
    let worker = TestWorker {
        dir,
        task_queue: task_queue.to_string(),
        child,
        settle: opts.settle.to_string(),
        env,
        args: opts.args,
    };
    worker.wait_started(1);
    worker
}

/// The SQLite store of a worker of its own, in its directory.
fn own_database(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("store.db").display())
}

/// `compute-worker run`, logging to `worker.log` in `dir`.
fn start_worker_process(
    dir: &Path,
    task_queue: &str,
    database: &str,
    local_dir: &Path,
    settle: &str,
    env: &[(String, String)],
    args: &[String],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("worker.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("run")
        .args(["--task-queue", task_queue])
        .args(["--database", database])
        .arg("--local-state-dir")
        .arg(local_dir)
        .args(["--local-settle", settle, "--local-stop-grace", "2s"])
        .args(["--log-format", "json"])
        // Every test worker serves its operations port, on a port the kernel picks.
        .args(
            (!args.iter().any(|a| a == "--metrics-address"))
                .then_some(["--metrics-address", "127.0.0.1:0"])
                .into_iter()
                .flatten(),
        )
        .args(args)
        .env("TEMPORAL_ADDRESS", server_address())
        .env(
            "RUST_LOG",
            "debug,h2=info,tonic=info,hyper=info,tower=info,sqlx=info",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start compute-worker")
}

impl TestWorker {
    fn wait_started(&self, times: usize) {
        self.wait_for_log("Worker started.", times, Duration::from_secs(60));
    }

    /// Waits until the worker's log holds `line` at least `times` times; fails the test
    /// (with the log) after `within`.
    pub fn wait_for_log(&self, line: &str, times: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log().matches(line).count() < times {
            assert!(
                Instant::now() < deadline,
                "the worker did not log {line:?} {times} time(s) within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the (exited) worker again on its task queue, SQLite store, local-provider
    /// directory and environment, and waits until it polls.
    fn start_again(&mut self) {
        let started = self.log().matches("Worker started.").count();
        let dir = self.dir.path();
        self.child = start_worker_process(
            dir,
            &self.task_queue,
            &own_database(dir),
            &dir.join("local"),
            &self.settle,
            &self.env,
            &self.args,
        );
        self.wait_started(started + 1);
    }

    /// Kills the worker with SIGKILL (no shutdown at all) and starts a new one on the same
    /// task queue, database and local-provider directory, as a restarted host would.
    pub fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.start_again();
    }

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// The worker's store URL (tests open it to check tenants).
    pub fn database_url(&self) -> String {
        own_database(self.dir.path())
    }

    /// The local provider's directory.
    pub fn local_dir(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    /// Starts a `TenantComputeWorkflow` and waits for its outcome.
    pub async fn run_tenant_workflow(&self, client: &Client, id: &str, input: Value) -> Outcome {
        start_and_wait(client, &self.task_queue, "TenantComputeWorkflow", id, input).await
    }

    /// Calls activities from a Python workflow (the `temporalio` SDK), by name.
    pub fn python_calls(&self, calls: Value) -> Vec<Value> {
        run_python_caller(&self.task_queue, &calls)
    }

    /// [`python_calls`](Self::python_calls) on a thread of its own, so the test can act (play
    /// the kubelet) while the Python caller waits for its signal.
    pub fn python_calls_in_background(&self, calls: Value) -> std::thread::JoinHandle<Vec<Value>> {
        let task_queue = self.task_queue.clone();
        std::thread::spawn(move || run_python_caller(&task_queue, &calls))
    }

    // The fault suite's (tests/worker/faults.rs).

    /// Waits up to `within` for the worker process to exit by itself (a crash point fired);
    /// whether it did.
    pub fn wait_exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts the worker again (same task queue, SQLite store, local-provider directory and
    /// environment) after it exited, and waits until it polls.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again();
    }

    /// kill -9, no restart.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop, as an orchestrator does).
    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// The worker's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workloads outlive the worker by design: stop what this test left behind.
        stop_local_workloads(&self.local_dir());
    }
}

/// The last `lines` lines the worker itself logged (not the SDK's debug chatter).
pub fn worker_log_tail(text: &str, lines: usize) -> String {
    let own: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("\"target\":\"compute")
                || l.contains("\"level\":\"WARN\"")
                || l.contains("\"level\":\"ERROR\"")
        })
        .collect();
    own[own.len().saturating_sub(lines)..].join("\n")
}

/// How a workflow ended.
#[derive(Debug)]
pub enum Outcome {
    /// Its result.
    Completed(Value),
    /// Its failure.
    Failed {
        /// The ApplicationFailure type (the error code).
        code: Option<String>,
        /// Whether it was non-retryable.
        non_retryable: bool,
        /// The ComputeError.
        details: Option<Value>,
    },
}

impl Outcome {
    /// The result, or a panic describing the failure.
    pub fn completed(self) -> Value {
        match self {
            Outcome::Completed(v) => v,
            other => panic!("expected completion, got {other:?}"),
        }
    }

    /// The failure's (code, non_retryable, details), or a panic.
    pub fn failed(self) -> (String, bool, Value) {
        match self {
            Outcome::Failed {
                code,
                non_retryable,
                details,
            } => (
                code.unwrap_or_default(),
                non_retryable,
                details.unwrap_or(Value::Null),
            ),
            other => panic!("expected failure, got {other:?}"),
        }
    }

    /// A refusal of workflow `id`: `INVALID_CONFIGURATION`, non-retryable, after exactly one
    /// attempt of `activity` whatever its policy allowed; the refusal's message.
    pub fn refused_once(self, id: &str, activity: &str) -> String {
        let (code, non_retryable, details) = self.failed();
        assert_eq!(code, "INVALID_CONFIGURATION", "{id}: {details}");
        assert!(non_retryable, "{id}: {details}");
        assert_eq!(details["retriable"], false, "{id}");
        assert_eq!(started_activity_attempts(id, activity), [1], "{id}");
        details["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: no message in {details}"))
            .to_string()
    }
}

/// Starts a workflow by type name and waits for its outcome.
pub async fn start_and_wait(
    client: &Client,
    task_queue: &str,
    workflow_type: &str,
    id: &str,
    input: Value,
) -> Outcome {
    let conv = PayloadConverter::serde_json();
    let handle = client
        .start_workflow(
            UntypedWorkflow::new(workflow_type),
            RawValue::from_value(&input, &conv),
            WorkflowStartOptions::new(task_queue, id)
                .execution_timeout(Duration::from_secs(120))
                .build(),
        )
        .await
        .expect("start workflow");
    match handle.get_result(WorkflowGetResultOptions::default()).await {
        Ok(raw) => Outcome::Completed(raw.to_value::<Value>(&conv)),
        Err(WorkflowGetResultError::Failed(f)) => match *f {
            IncomingError::Application(app) => Outcome::Failed {
                code: app.type_name().map(str::to_string),
                non_retryable: app.is_non_retryable(),
                details: app.details::<Value>().ok().flatten(),
            },
            other => panic!("workflow {id} failed without an application failure: {other:?}"),
        },
        Err(e) => panic!("workflow {id} did not complete: {e}"),
    }
}

/// Queries a workflow's `status` with the Rust client.
pub async fn query_status(client: &Client, workflow_id: &str) -> Value {
    use temporalio_client::UntypedQuery;
    let handle = client.get_workflow_handle::<UntypedWorkflow>(workflow_id);
    let conv = PayloadConverter::serde_json();
    let raw: RawValue = handle
        .query(
            UntypedQuery::new("status"),
            RawValue::from_value(&Value::Null, &conv),
            WorkflowQueryOptions::default(),
        )
        .await
        .expect("query status");
    raw.to_value::<Value>(&conv)
}

/// Waits for a workflow (started elsewhere) to complete and returns its result.
pub async fn wait_result(client: &Client, workflow_id: &str) -> Value {
    let conv = PayloadConverter::serde_json();
    let handle = client.get_workflow_handle::<UntypedWorkflow>(workflow_id);
    let raw = tokio::time::timeout(
        Duration::from_secs(60),
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .expect("the workflow did not finish within 60 s")
    .expect("workflow result");
    raw.to_value::<Value>(&conv)
}

/// Runs the Python caller (tests/python/call_activities.py) against the shared server.
pub fn run_python_caller(task_queue: &str, calls: &Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/call_activities.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(server_address())
        .arg(task_queue)
        .arg(calls.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python caller failed ({}; is `temporalio` installed?):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python caller output")
}

/// Live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Field 22 of `/proc/<pid>/stat` (the process's start time), if it runs.
fn start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn glob_process_records(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("process.json")).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect()
}

/// Stops (SIGKILL to its process group) every workload recorded in a local-provider
/// directory whose recorded process still runs: for workers sharing a directory of the test's
/// own, which their `Drop` does not clean.
pub fn stop_local_workloads(dir: &Path) {
    for rec in glob_process_records(dir) {
        // Only the recorded process itself: its pid may have been reused since.
        let start = rec.get("processStartTime").and_then(Value::as_u64);
        if let Some(pid) = rec.get("pid").and_then(Value::as_i64)
            && start.is_some()
            && start_time(pid as u64) == start
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
