//! The Restate rig: a real restate-server of one test's own (state in a temp dir, so it
//! survives a restart) and the tiny TypeScript test service (`tests/restate/`), whose handler
//! creates an awakeable and waits on it, registered with it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    http,
    process::{ServerProcess, free_port},
};

fn restate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/restate")
}

fn restate_server_bin() -> PathBuf {
    restate_dir().join("node_modules/@restatedev/restate-server-linux-x64/bin/restate-server")
}

/// A restate-server (state in a temp dir, so it survives a restart) and the test service,
/// registered; both killed on drop.
pub struct Restate {
    // Before `dir`: the processes are killed before their directory goes.
    server: Option<ServerProcess>,
    _service: ServerProcess,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub ingress: String,
    admin: String,
}

impl Restate {
    /// Starts the test service and restate-server, and registers the one with the other.
    pub fn start() -> Self {
        let bin = restate_server_bin();
        let service_js = restate_dir().join("dist/service.js");
        assert!(
            bin.exists() && service_js.exists(),
            "the Restate rig is missing ({} / {}): run scripts/install-tools.sh",
            bin.display(),
            service_js.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("restate.toml"),
            format!(
                "cluster-name = \"compute-worker-test\"\nnode-name = \"n1\"\n\
                 listen-mode = \"tcp\"\nbind-address = \"127.0.0.1:{n}\"\n\
                 advertised-address = \"http://127.0.0.1:{n}/\"\n\
                 disable-telemetry = true\ndefault-num-partitions = 2\n\
                 [admin]\nbind-address = \"127.0.0.1:{a}\"\n\
                 [ingress]\nbind-address = \"127.0.0.1:{i}\"\n",
                n = ports.0,
                a = ports.1,
                i = ports.2
            ),
        )
        .unwrap();
        let service_port = free_port();
        let service_log = dir.path().join("service.log");
        let mut cmd = Command::new("node");
        cmd.arg(&service_js).env("PORT", service_port.to_string());
        let what = "the Restate test service";
        let service = ServerProcess::spawn_logged(cmd, &service_log)
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let listening = service.wait_ready(what, Duration::from_secs(20), &service_log, || {
            std::fs::read_to_string(&service_log)
                .unwrap_or_default()
                .contains("listening")
        });
        assert!(
            listening,
            "{what} exited at start:\n{}",
            std::fs::read_to_string(&service_log).unwrap_or_default()
        );
        let mut rig = Restate {
            ingress: format!("http://127.0.0.1:{}", ports.2),
            admin: format!("http://127.0.0.1:{}", ports.1),
            dir,
            server: None,
            _service: service,
        };
        rig.start_server();
        let (status, body) = http(
            &rig.admin,
            "POST",
            "/deployments",
            &[("Content-Type", "application/json")],
            json!({"uri": format!("http://127.0.0.1:{service_port}")})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            status == 200 || status == 201,
            "registration: {status} {body}"
        );
        rig
    }

    fn server_log(&self) -> PathBuf {
        self.dir.path().join("restate.log")
    }

    /// Starts restate-server (again) on the same ports and state, and waits until healthy.
    pub fn start_server(&mut self) {
        let mut cmd = Command::new(restate_server_bin());
        cmd.arg("--config-file")
            .arg(self.dir.path().join("restate.toml"))
            .arg("--base-dir")
            .arg(self.dir.path().join("data"))
            .arg("--no-logo");
        let what = "restate-server";
        let log = self.server_log();
        let server = ServerProcess::spawn_logged(cmd, &log)
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (admin, ingress) = (self.admin.clone(), self.ingress.clone());
        let healthy = server.wait_ready(what, Duration::from_secs(30), &log, || {
            matches!(http(&admin, "GET", "/health", &[], b""), Ok((200, _)))
                && matches!(
                    http(&ingress, "GET", "/restate/health", &[], b""),
                    Ok((200, _))
                )
        });
        assert!(
            healthy,
            "{what} exited at start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.server = Some(server);
    }

    /// Stops restate-server gracefully (SIGTERM): its state stays on disk.
    pub fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.terminate(Duration::from_secs(10));
        }
        // Nothing answers on the ingress any more.
        assert!(http(&self.ingress, "GET", "/restate/health", &[], b"").is_err());
    }

    /// Invokes `Caller/<key>/wait` (it creates an awakeable and waits on it): the invocation
    /// id and the awakeable id.
    pub fn wait_handler(&self, key: &str) -> (String, String) {
        let (status, body) = http(
            &self.ingress,
            "POST",
            &format!("/Caller/{key}/wait/send"),
            &[("Content-Type", "application/json")],
            b"null",
        )
        .unwrap();
        assert!(status < 300, "{status} {body}");
        let invocation = serde_json::from_str::<Value>(&body).unwrap()["invocationId"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = http(
                &self.ingress,
                "POST",
                &format!("/Caller/{key}/awakeableId"),
                &[("Content-Type", "application/json")],
                b"null",
            )
            .unwrap();
            if let Ok(Value::String(id)) = serde_json::from_str::<Value>(&body) {
                return (invocation, id);
            }
            assert!(Instant::now() < deadline, "no awakeable id: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The handler's result (blocks until it has one).
    pub fn result(&self, invocation: &str) -> Value {
        let (status, body) = http(
            &self.ingress,
            "GET",
            &format!("/restate/invocation/{invocation}/attach"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}
