//! The worker's operations port (`--metrics-address`): every test worker serves one on a port
//! the kernel picks, which its log names; requests to it, and the Prometheus text it serves,
//! read as numbers.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TestWorker, http};

/// The message the worker logs once its operations port listens (with `address`).
const SERVING: &str = "Serving /metrics, /healthz and /readyz.";

impl TestWorker {
    /// `http://ADDRESS` of the worker's operations port, from its (latest) log line.
    pub fn ops_endpoint(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains(SERVING))
            .unwrap_or_else(|| panic!("the worker serves no operations port:\n{log}"));
        let v: Value = serde_json::from_str(line).expect("a JSON log line");
        format!("http://{}", v["address"].as_str().expect("its address"))
    }

    /// GET `path` on the operations port: (status, body).
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        http(&self.ops_endpoint(), "GET", path, &[], b"").expect("the operations port answers")
    }

    /// `/metrics`, as text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.ops_get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Checks `/metrics` after a provision that succeeded and an update that failed with `code`
    /// and was reverted: each operation counted once under its outcome, the revert called.
    pub fn assert_counted_failed_update(&self, provider: &str, code: &str) {
        let text = self.metrics();
        let ended = |operation: &str, outcome: &str| {
            metric(
                &text,
                "compute_operations_total",
                &[
                    ("provider", provider),
                    ("operation", operation),
                    ("outcome", outcome),
                ],
            )
        };
        assert_eq!(ended("provision", "succeeded"), 1.0, "{text}");
        assert_eq!(ended("update", code), 1.0, "{text}");
        let reverts = [
            ("provider", provider),
            ("call", "revert"),
            ("outcome", "ok"),
        ];
        assert!(
            metric(&text, "compute_provider_calls_total", &reverts) >= 1.0,
            "{text}"
        );
    }

    /// Polls `/readyz` until its status is `want` (`within`); its last body.
    pub fn wait_ready_status(&self, want: u16, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.ops_get("/readyz");
            if status == want {
                return serde_json::from_str(&body).expect("/readyz answers JSON");
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {status} (wanted {want}) for {within:?}: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The sum of every sample of `name` whose labels include all of `labels` (0 when none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
