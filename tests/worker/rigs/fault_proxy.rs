//! The fault rig: a fault-injecting HTTP proxy (tests/python/fault_proxy.py) in front of one
//! moto server, with per-target counters of what it forwarded and what it faulted.

use std::{path::Path, process::Command};

use serde_json::Value;

use super::{
    http,
    process::{ServerProcess, start_local_server},
};

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
