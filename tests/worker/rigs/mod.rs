//! The test rigs, one per module, each with one way of starting it: the shared Temporal dev
//! server, the worker processes, moto and the fault proxy, the Kubernetes control plane,
//! Postgres and Restate. Here: what several rigs share.

mod fault_proxy;
mod kube;
mod moto;
mod ops;
mod postgres;
mod process;
mod restate;
mod temporal;
mod worker;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};

pub use self::kube::{
    container_id, create_namespace, k8s_now, kube_client, kube_rig, mark_ready, pod_image,
};
pub use fault_proxy::{Fault, FaultProxy, fault_proxy};
pub use moto::{EcsNetwork, MotoServer, aws_authorization, ecs_client, moto_server};
pub use ops::metric;
pub use postgres::{OwnPostgres, own_postgres, postgres_database};
pub use restate::Restate;
#[allow(unused_imports)] // learned_end_at: the Kubernetes bench's
pub use temporal::{
    cli, client, learned_end_at, own_temporal_server, server_address, signals_received,
    signals_with_times, started_activity_attempts, workflow_history, workflow_show_everything,
};
pub use worker::{
    Outcome, TestWorker, WorkerOpts, alive, processes_with, query_status, run_python_caller,
    spawn_shared_worker, spawn_worker, start_and_wait, stop_local_workloads, wait_result,
    worker_log_tail,
};

/// What a worker logs when its observer starts watching an execution: the operation is in
/// flight and nothing holds an activity for it.
pub const OBSERVING: &str = "Observing the execution.";

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
