//! The worker's own Prometheus metrics: what operations, provider calls, callback deliveries
//! and store queries did. Labels are low-cardinality by construction (a provider, an
//! operation, a call name, a callback kind, a store, an error code from the table or `ok`):
//! never a tenant, an execution or a target, so a hostile caller cannot grow the series.
//!
//! Everything is recorded where it is known exactly once: an operation's outcome where the
//! store applies its final transition ([`crate::store::metered`]), a provider call around the
//! provider ([`crate::provider::metered`]), a delivery where its attempt is recorded.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};

use crate::{
    contract::{ExecutionState, ExecutionStatus},
    error::ComputeError,
};

/// Seconds, from a few milliseconds (a local call, a signal) to an hour (a slow rollout).
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// The outcome label of a call that answered.
pub const OK: &str = "ok";

/// The worker's metrics, registered in a registry of their own.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    provider: &'static str,
    operations: IntCounterVec,
    operation_seconds: HistogramVec,
    in_flight: IntGaugeVec,
    provider_calls: IntCounterVec,
    provider_call_seconds: HistogramVec,
    deliveries: IntCounterVec,
    delivery_seconds: HistogramVec,
    store_queries: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// `metric` (made with this module's fixed names and labels, so never an error), registered.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a metric's name and labels are valid by construction");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once in its own registry");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
    registered(registry, HistogramVec::new(opts, labels))
}

impl Metrics {
    /// Fresh metrics of a worker running `provider`.
    pub fn new(provider: &'static str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let in_flight = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "compute_executions_in_flight",
                    "Executions this worker's observer is watching now.",
                ),
                &["provider"],
            ),
        );
        in_flight.with_label_values(&[provider]).set(0);
        Metrics {
            provider,
            operations: counter(
                r,
                "compute_operations_total",
                "Operations that reached a final state, by outcome (succeeded, cancelled, or the error code).",
                &["provider", "operation", "outcome"],
            ),
            operation_seconds: histogram(
                r,
                "compute_operation_duration_seconds",
                "From the request to the final state.",
                &["provider", "operation"],
            ),
            in_flight,
            provider_calls: counter(
                r,
                "compute_provider_calls_total",
                "Calls to the provider, by outcome (ok or the error code).",
                &["provider", "call", "outcome"],
            ),
            provider_call_seconds: histogram(
                r,
                "compute_provider_call_duration_seconds",
                "How long a provider call took (an observe includes the provider's wait for a change).",
                &["provider", "call"],
            ),
            deliveries: counter(
                r,
                "compute_callback_deliveries_total",
                "Callback delivery attempts, by outcome (delivered, undeliverable, pending: to be retried).",
                &["kind", "outcome"],
            ),
            delivery_seconds: histogram(
                r,
                "compute_callback_delivery_seconds",
                "From the final state to the target accepting its callback.",
                &["kind"],
            ),
            store_queries: counter(
                r,
                "compute_store_queries_total",
                "Execution store calls, by outcome (ok or the error code).",
                &["store", "outcome"],
            ),
            registry,
        }
    }

    /// An execution's final state, once (where the store applied it).
    pub fn operation_ended(&self, status: &ExecutionStatus) {
        let outcome = match (&status.state, &status.error) {
            (ExecutionState::Succeeded, _) => "succeeded",
            (_, Some(e)) => e.code.as_str(),
            (state, None) => state.as_str(),
        };
        let operation = status.operation.as_str();
        self.operations
            .with_label_values(&[self.provider, operation, outcome])
            .inc();
        let took = match status.duration_ms {
            Some(ms) => ms as f64 / 1000.0,
            None => status
                .finished_at
                .map(|f| (f - status.created_at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
        };
        self.operation_seconds
            .with_label_values(&[self.provider, operation])
            .observe(took);
    }

    /// How many executions the observer watches now.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight
            .with_label_values(&[self.provider])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One provider call and what it gave.
    pub fn provider_call(&self, call: &str, took: Duration, error: Option<&ComputeError>) {
        let outcome = error.map_or(OK, |e| e.code.as_str());
        self.provider_calls
            .with_label_values(&[self.provider, call, outcome])
            .inc();
        self.provider_call_seconds
            .with_label_values(&[self.provider, call])
            .observe(took.as_secs_f64());
    }

    /// One delivery attempt; `since_final` when the target accepted it.
    pub fn delivery(&self, kind: &str, outcome: &str, since_final: Option<Duration>) {
        self.deliveries.with_label_values(&[kind, outcome]).inc();
        if let Some(took) = since_final {
            self.delivery_seconds
                .with_label_values(&[kind])
                .observe(took.as_secs_f64());
        }
    }

    /// One store call and its outcome.
    pub fn store_query(&self, store: &str, outcome: &str) {
        self.store_queries
            .with_label_values(&[store, outcome])
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    /// Metrics nobody serves (tests, tools): recorded and dropped.
    fn default() -> Self {
        Metrics::new("none")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{contract::ResourceIds, error::ErrorCode};
    use chrono::Utc;

    fn status(state: ExecutionState, error: Option<ComputeError>) -> ExecutionStatus {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "executionId": "e", "tenantId": "t", "operation": "provision",
            "state": state, "resourceIds": ResourceIds::default(), "error": error,
            "createdAt": now, "updatedAt": now, "finishedAt": now, "durationMs": 1500,
            "timeoutMs": 1000,
        }))
        .unwrap()
    }

    #[test]
    fn outcomes_are_codes_and_labels_never_name_a_tenant() {
        let m = Metrics::new("local");
        m.operation_ended(&status(ExecutionState::Succeeded, None));
        m.operation_ended(&status(
            ExecutionState::Failed,
            Some(ComputeError::new(ErrorCode::WorkloadFailed, "x")),
        ));
        m.provider_call("provision", Duration::from_millis(3), None);
        m.delivery("temporal", "delivered", Some(Duration::from_millis(20)));
        m.store_query("sqlite", OK);
        let text = m.render();
        assert!(text.contains(
            r#"compute_operations_total{operation="provision",outcome="succeeded",provider="local"} 1"#
        ), "{text}");
        assert!(text.contains(r#"outcome="WORKLOAD_FAILED""#), "{text}");
        assert!(text.contains(
            r#"compute_operation_duration_seconds_sum{operation="provision",provider="local"} 3"#
        ), "{text}");
        assert!(text.contains(r#"compute_executions_in_flight{provider="local"} 0"#));
        assert!(text.contains(r#"compute_callback_delivery_seconds_count{kind="temporal"} 1"#));
        assert!(!text.contains("tenant"), "{text}");
    }
}
