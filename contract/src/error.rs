//! The one error table every provider maps onto, and its conversion to Temporal failures.
//!
//! Each code has exactly one classification. An activity failure is an `ApplicationFailure`
//! whose `type` is the code and whose `non_retryable` flag follows the classification, so a
//! caller in any language can write its `RetryPolicy` from [`retry_policy_document`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::error::ApplicationFailure;

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Trying again may succeed.
    Retriable,
    /// Trying again with the same input fails the same way.
    NonRetriable,
    /// Automation cannot recover; an operator must look (the tenant is marked).
    RequiresManualIntervention,
}

macro_rules! error_codes {
    ($($variant:ident => $name:literal, $class:ident, $doc:literal;)*) => {
        /// Every error code, shared by all providers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        pub enum ErrorCode {
            $(#[doc = $doc] #[serde(rename = $name)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire name, used as the `ApplicationFailure` type.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// The code's one classification.
            pub fn classification(self) -> Classification {
                match self { $(ErrorCode::$variant => Classification::$class,)* }
            }

            /// What the code means.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    ProviderTemporarilyUnavailable => "PROVIDER_TEMPORARILY_UNAVAILABLE", Retriable,
        "The provider's API failed or could not be reached; it is expected to recover.";
    Throttled => "THROTTLED", Retriable,
        "The provider asked us to slow down; retry after the delay it gave.";
    Timeout => "TIMEOUT", Retriable,
        "The operation did not finish within its timeout; the provider may still complete it.";
    InsufficientCapacity => "INSUFFICIENT_CAPACITY", Retriable,
        "The provider has no capacity to place the workload right now.";
    Conflict => "CONFLICT", Retriable,
        "A concurrent change to the same resource got there first.";
    StoreUnavailable => "STORE_UNAVAILABLE", Retriable,
        "The execution store could not be reached or was busy.";
    InvalidConfiguration => "INVALID_CONFIGURATION", NonRetriable,
        "The request or the worker's configuration is invalid; nothing was changed.";
    QuotaExceeded => "QUOTA_EXCEEDED", NonRetriable,
        "A provider limit or quota would be exceeded.";
    NotFound => "NOT_FOUND", NonRetriable,
        "The execution, tenant or resource does not exist.";
    PermissionDenied => "PERMISSION_DENIED", NonRetriable,
        "The worker's credentials are not allowed to do this.";
    WorkloadFailed => "WORKLOAD_FAILED", NonRetriable,
        "The workload started but exited or crashed before it became healthy.";
    Cancelled => "CANCELLED", NonRetriable,
        "The operation was cancelled.";
    Internal => "INTERNAL", NonRetriable,
        "A bug or an unexpected state inside the worker.";
    PartialFailure => "PARTIAL_FAILURE", RequiresManualIntervention,
        "Some resources were created and others failed; `partial` lists both.";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parts of a partially completed operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartialResult {
    /// What was created.
    #[serde(default)]
    pub succeeded: Vec<String>,
    /// What failed.
    #[serde(default)]
    pub failed: Vec<String>,
}

/// A classified error: the `details` of every failure, and `error` in callbacks and status.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
#[error("{code}: {message}")]
pub struct ComputeError {
    /// The code from the table.
    pub code: ErrorCode,
    /// What happened, for a person. Never carries a secret or a refused input value.
    pub message: String,
    /// The underlying cause, where one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<String>,
    /// The code's classification.
    pub classification: Classification,
    /// `classification == retriable`.
    pub retriable: bool,
    /// The provider that raised it (`local`, `ecs`, `kubernetes`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's own error name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    /// The provider's id of the failed request, where it gave one (AWS `x-amzn-RequestId`):
    /// what the provider's support asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_request_id: Option<String>,
    /// Some parts created, some failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialResult>,
    /// How long the provider asked us to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// A workload's exit code (`WORKLOAD_FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last lines a workload wrote to stderr (`WORKLOAD_FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// The execution the error belongs to, once one was recorded: a failed start activity
    /// names it, so a caller can read it or retry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// The tenant was put back on its last good spec after this failure (a failed or
    /// cancelled update, a cancelled provision undone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    /// Why putting the tenant back failed (the tenant is then marked for manual
    /// intervention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_error: Option<String>,
}

impl ComputeError {
    /// A new error with the code's classification.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let classification = code.classification();
        ComputeError {
            code,
            message: message.into(),
            root_cause: None,
            classification,
            retriable: classification == Classification::Retriable,
            provider: None,
            provider_code: None,
            provider_request_id: None,
            partial: None,
            retry_after_ms: None,
            exit_code: None,
            stderr_tail: None,
            execution_id: None,
            rolled_back: false,
            rollback_error: None,
        }
    }

    /// `INVALID_CONFIGURATION` with a message naming the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfiguration, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Sets the root cause.
    pub fn with_root_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.root_cause = Some(cause.to_string());
        self
    }

    /// Sets the provider and its own error name.
    pub fn with_provider(mut self, provider: &str, provider_code: Option<&str>) -> Self {
        self.provider = Some(provider.to_string());
        self.provider_code = provider_code.map(str::to_string);
        self
    }

    /// Sets the provider's id of the failed request, when it gave one.
    pub fn with_provider_request_id(mut self, request_id: Option<&str>) -> Self {
        if let Some(id) = request_id {
            self.provider_request_id = Some(id.to_string());
        }
        self
    }

    /// Names the provider when the error does not already.
    pub fn with_provider_default(mut self, provider: &str) -> Self {
        if self.provider.is_none() {
            self.provider = Some(provider.to_string());
        }
        self
    }

    /// Lists what was created and what failed.
    pub fn with_partial(mut self, partial: PartialResult) -> Self {
        self.partial = Some(partial);
        self
    }

    /// Names the execution, unless the error already names one.
    pub fn with_execution_id(mut self, execution_id: &str) -> Self {
        if self.execution_id.is_none() {
            self.execution_id = Some(execution_id.to_string());
        }
        self
    }

    /// Sets the delay the provider asked for.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after_ms = Some(delay.as_millis() as u64);
        self
    }

    /// Converts into an `ApplicationFailure` (also used to fail workflows).
    pub fn into_application_failure(self) -> ApplicationFailure {
        let retry_after = self.retry_after_ms.map(Duration::from_millis);
        let builder = ApplicationFailure::builder(self.message.clone())
            .type_name(self.code.as_str().to_string())
            .non_retryable(!self.retriable)
            .maybe_next_retry_delay(retry_after);
        builder.details(self).build()
    }

    /// Logs the error at the level its classification calls for: retriable at warn, the rest
    /// at error (they need an operator or a caller's fix).
    pub fn log(&self, what: &str) {
        if self.retriable {
            tracing::warn!(code = %self.code, error = %self.message, root_cause = ?self.root_cause, "{what} failed; it will be retried.");
        } else {
            tracing::error!(code = %self.code, error = %self.message, root_cause = ?self.root_cause, "{what} failed permanently.");
        }
    }
}

/// Result alias for provider calls and activities.
pub type Result<T, E = ComputeError> = std::result::Result<T, E>;

/// The retry policy callers should use, with its durations as Temporal's JSON strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicyDoc {
    /// First retry delay.
    pub initial_interval: String,
    /// Growth factor between retries.
    pub backoff_coefficient: f64,
    /// Longest delay between retries.
    pub maximum_interval: String,
    /// Attempts in all, including the first.
    pub maximum_attempts: u32,
    /// Every code that must not be retried.
    pub non_retryable_error_types: Vec<String>,
}

/// One row of the error table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCodeDoc {
    /// The code.
    pub code: ErrorCode,
    /// Its classification.
    pub classification: Classification,
    /// `classification == retriable`.
    pub retriable: bool,
    /// What it means.
    pub description: String,
}

/// What `compute-worker retry-policy` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicyDocument {
    /// The error table.
    pub codes: Vec<ErrorCodeDoc>,
    /// The recommended activity retry policy.
    pub retry_policy: RetryPolicyDoc,
}

/// Recommended retry defaults for the start activities.
pub const DEFAULT_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// Recommended backoff coefficient.
pub const DEFAULT_BACKOFF_COEFFICIENT: f64 = 2.0;
/// Recommended maximum interval.
pub const DEFAULT_MAXIMUM_INTERVAL: Duration = Duration::from_secs(60);
/// Recommended maximum attempts.
pub const DEFAULT_MAXIMUM_ATTEMPTS: u32 = 10;

/// Every code that a retry cannot fix.
pub fn non_retryable_codes() -> Vec<String> {
    ErrorCode::ALL
        .iter()
        .filter(|c| c.classification() != Classification::Retriable)
        .map(|c| c.as_str().to_string())
        .collect()
}

/// The error table and the retry policy derived from it.
pub fn retry_policy_document() -> RetryPolicyDocument {
    RetryPolicyDocument {
        codes: ErrorCode::ALL
            .iter()
            .map(|&code| ErrorCodeDoc {
                code,
                classification: code.classification(),
                retriable: code.classification() == Classification::Retriable,
                description: code.description().to_string(),
            })
            .collect(),
        retry_policy: RetryPolicyDoc {
            initial_interval: format_duration(DEFAULT_INITIAL_INTERVAL),
            backoff_coefficient: DEFAULT_BACKOFF_COEFFICIENT,
            maximum_interval: format_duration(DEFAULT_MAXIMUM_INTERVAL),
            maximum_attempts: DEFAULT_MAXIMUM_ATTEMPTS,
            non_retryable_error_types: non_retryable_codes(),
        },
    }
}

/// Formats a duration as Temporal's JSON does (`"1.5s"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_one_class() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()));
        }
        let required = [
            "PROVIDER_TEMPORARILY_UNAVAILABLE",
            "THROTTLED",
            "TIMEOUT",
            "INSUFFICIENT_CAPACITY",
            "CONFLICT",
            "INVALID_CONFIGURATION",
            "QUOTA_EXCEEDED",
            "NOT_FOUND",
            "PERMISSION_DENIED",
            "WORKLOAD_FAILED",
            "PARTIAL_FAILURE",
            "INTERNAL",
        ];
        for name in required {
            assert!(ErrorCode::parse(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn policy_lists_exactly_the_non_retriable_codes() {
        let doc = retry_policy_document();
        let types = doc.retry_policy.non_retryable_error_types;
        assert!(types.contains(&"INVALID_CONFIGURATION".to_string()));
        assert!(types.contains(&"PARTIAL_FAILURE".to_string()));
        assert!(!types.contains(&"THROTTLED".to_string()));
        assert!(!types.contains(&"TIMEOUT".to_string()));
        assert_eq!(doc.retry_policy.initial_interval, "1s");
    }

    #[test]
    fn error_json_is_camel_case_with_class() {
        let e = ComputeError::new(ErrorCode::Throttled, "slow down")
            .with_provider("ecs", Some("ThrottlingException"))
            .with_retry_after(Duration::from_secs(2))
            .with_provider_request_id(Some("req-1"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], "THROTTLED");
        assert_eq!(v["providerRequestId"], "req-1");
        let without = serde_json::to_value(ComputeError::new(ErrorCode::Internal, "x")).unwrap();
        assert!(without.get("providerRequestId").is_none(), "{without}");
        assert_eq!(v["classification"], "retriable");
        assert_eq!(v["retriable"], true);
        assert_eq!(v["providerCode"], "ThrottlingException");
        assert_eq!(v["retryAfterMs"], 2000);
        let back: ComputeError = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
