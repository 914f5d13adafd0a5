//! The input of `TenantComputeWorkflow` and its declared policy, validated without I/O.

use std::{collections::BTreeMap, time::Duration};

use compute_contract::{
    ComputeError, ErrorCode,
    error::{
        Classification, DEFAULT_BACKOFF_COEFFICIENT, DEFAULT_INITIAL_INTERVAL,
        DEFAULT_MAXIMUM_INTERVAL, non_retryable_codes,
    },
    types::Operation,
    validate::parse_duration,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_common::RetryPolicy;

/// What to do when an operation ends with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Run the operation again (a new execution), up to `maxAttempts`; for `TIMEOUT`, keep
    /// waiting for the same execution.
    Retry,
    /// Undo, then fail: a failed update is put back on the tenant's last good spec (the
    /// worker does that itself on every failure, so this only fails), a failed provision of a
    /// new tenant has its compute deleted.
    Rollback,
    /// Mark the tenant `requires_manual_intervention`, then fail.
    Abort,
}

/// The caller's declared retry and error-handling policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Attempts in all (activity attempts, and operation attempts after a failed callback).
    pub max_attempts: u32,
    /// First retry delay.
    pub initial_interval: Duration,
    /// Growth factor.
    pub backoff_coefficient: f64,
    /// Longest delay.
    pub maximum_interval: Duration,
    /// How long to wait for the callback before polling the store.
    pub callback_timeout: Duration,
    /// Per-code handling; codes not listed retry when retriable and fail otherwise.
    pub on_error: BTreeMap<String, OnError>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 3,
            initial_interval: DEFAULT_INITIAL_INTERVAL,
            backoff_coefficient: DEFAULT_BACKOFF_COEFFICIENT,
            maximum_interval: DEFAULT_MAXIMUM_INTERVAL,
            callback_timeout: Duration::from_secs(300),
            on_error: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// The action for a code: the declared one, or retry for retriable codes and none (fail)
    /// for the rest.
    pub fn action(&self, code: ErrorCode) -> Option<OnError> {
        self.on_error
            .get(code.as_str())
            .copied()
            .or((code.classification() == Classification::Retriable).then_some(OnError::Retry))
    }

    /// The activity retry policy: this policy's backoff, the table's non-retryable codes.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::builder()
            .initial_interval(self.initial_interval)
            .backoff_coefficient(self.backoff_coefficient)
            .maximum_interval(self.maximum_interval)
            .maximum_attempts(self.max_attempts)
            .non_retryable_error_types(non_retryable_codes())
            .build()
    }

    /// The delay before operation attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self
            .backoff_coefficient
            .powi(attempt.saturating_sub(1) as i32);
        self.initial_interval
            .mul_f64(factor.min(1e6))
            .min(self.maximum_interval)
    }
}

/// The validated input of `TenantComputeWorkflow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantComputeInput {
    /// The operation.
    pub operation: Operation,
    /// The request, passed to the activity as is (the activity validates it).
    pub request: Value,
    /// The policy.
    pub policy: Policy,
}

fn invalid(msg: impl Into<String>) -> ComputeError {
    ComputeError::invalid(msg)
}

/// Validates the workflow's raw input.
pub fn parse_input(input: &Value) -> Result<TenantComputeInput, ComputeError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("input must be a JSON object {operation, request, policy?}"))?;
    let operation = match obj.get("operation") {
        Some(Value::String(s)) => Operation::parse(s)
            .ok_or_else(|| invalid("operation: must be \"provision\", \"update\" or \"delete\""))?,
        Some(_) => return Err(invalid("operation: must be a string")),
        None => return Err(invalid("operation: is required")),
    };
    let request = match obj.get("request") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid("request: must be an object")),
        None => return Err(invalid("request: is required")),
    };
    let mut policy = Policy::default();
    if let Some(p) = obj.get("policy").filter(|v| !v.is_null()) {
        let p = p
            .as_object()
            .ok_or_else(|| invalid("policy: must be an object"))?;
        if let Some(v) = p.get("maxAttempts") {
            policy.max_attempts = v
                .as_u64()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    invalid("policy.maxAttempts: must be a whole number from 1 to 100")
                })? as u32;
        }
        if let Some(v) = p.get("backoffCoefficient") {
            policy.backoff_coefficient = v
                .as_f64()
                .filter(|f| (1.0..=100.0).contains(f))
                .ok_or_else(|| {
                    invalid("policy.backoffCoefficient: must be a number from 1 to 100")
                })?;
        }
        // Floors, not clamps: a value out of range is refused. A callback timeout under a
        // second would poll the store in a loop.
        for (name, slot, floor, floor_text) in [
            (
                "initialInterval",
                &mut policy.initial_interval,
                Duration::from_millis(100),
                "100ms",
            ),
            (
                "maximumInterval",
                &mut policy.maximum_interval,
                Duration::from_millis(100),
                "100ms",
            ),
            (
                "callbackTimeout",
                &mut policy.callback_timeout,
                Duration::from_secs(1),
                "1s",
            ),
        ] {
            if let Some(v) = p.get(name) {
                let field = format!("policy.{name}");
                let d = parse_duration(&field, v)?;
                if d < floor || d > Duration::from_secs(7 * 24 * 3600) {
                    return Err(invalid(format!(
                        "{field}: must be between {floor_text} and 7 days"
                    )));
                }
                *slot = d;
            }
        }
        if policy.maximum_interval < policy.initial_interval {
            return Err(invalid(
                "policy.maximumInterval: must not be below initialInterval",
            ));
        }
        if let Some(v) = p.get("onError") {
            let map = v
                .as_object()
                .ok_or_else(|| invalid("policy.onError: must be an object {CODE: action}"))?;
            for (code, action) in map {
                let code = ErrorCode::parse(code).ok_or_else(|| {
                    invalid("policy.onError: keys must be error codes (see `compute-worker retry-policy`)")
                })?;
                let action = match action.as_str() {
                    Some("retry") => OnError::Retry,
                    Some("rollback") => OnError::Rollback,
                    Some("abort") => OnError::Abort,
                    _ => {
                        return Err(invalid(format!(
                            "policy.onError.{code}: must be \"retry\", \"rollback\" or \"abort\""
                        )));
                    }
                };
                policy.on_error.insert(code.as_str().to_string(), action);
            }
        }
    }
    Ok(TenantComputeInput {
        operation,
        request,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_a_full_policy() {
        let i = parse_input(&json!({
            "operation": "update",
            "request": {"tenantId": "a"},
            "policy": {"maxAttempts": 5, "initialInterval": "2s", "backoffCoefficient": 3,
                       "maximumInterval": "1m", "callbackTimeout": "30s",
                       "onError": {"WORKLOAD_FAILED": "rollback", "TIMEOUT": "abort"}}
        }))
        .unwrap();
        assert_eq!(i.operation, Operation::Update);
        assert_eq!(i.policy.max_attempts, 5);
        assert_eq!(i.policy.callback_timeout, Duration::from_secs(30));
        assert_eq!(
            i.policy.action(ErrorCode::WorkloadFailed),
            Some(OnError::Rollback)
        );
        assert_eq!(i.policy.action(ErrorCode::Timeout), Some(OnError::Abort));
        assert_eq!(i.policy.action(ErrorCode::Throttled), Some(OnError::Retry));
        assert_eq!(i.policy.action(ErrorCode::QuotaExceeded), None);
        assert_eq!(i.policy.backoff(1), Duration::from_secs(2));
        assert_eq!(i.policy.backoff(2), Duration::from_secs(6));
        assert_eq!(i.policy.backoff(10), Duration::from_secs(60));
    }

    #[test]
    fn refuses_bad_envelopes() {
        for (input, field) in [
            (json!([]), "input"),
            (json!({"request": {}}), "operation"),
            (json!({"operation": "explode", "request": {}}), "operation"),
            (json!({"operation": "delete"}), "request"),
            (
                json!({"operation": "delete", "request": {}, "policy": {"maxAttempts": 0}}),
                "policy.maxAttempts",
            ),
            (
                json!({"operation": "delete", "request": {}, "policy": {"callbackTimeout": "x"}}),
                "policy.callbackTimeout",
            ),
            (
                json!({"operation": "delete", "request": {}, "policy": {"callbackTimeout": "500ms"}}),
                "policy.callbackTimeout",
            ),
            (
                json!({"operation": "delete", "request": {}, "policy": {"onError": {"NOPE": "retry"}}}),
                "policy.onError",
            ),
            (
                json!({"operation": "delete", "request": {}, "policy": {"onError": {"TIMEOUT": "pray"}}}),
                "policy.onError.TIMEOUT",
            ),
        ] {
            let e = parse_input(&input).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
            assert!(e.message.starts_with(field), "{input}: {}", e.message);
        }
    }
}
