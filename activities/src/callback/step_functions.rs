//! Step Functions task tokens: `SendTaskSuccess` / `SendTaskFailure` / `SendTaskHeartbeat`,
//! and what each answer means (cargo feature `step-functions`).

use std::time::Duration;

use aws_sdk_sfn::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    operation::{
        send_task_failure::SendTaskFailureError, send_task_heartbeat::SendTaskHeartbeatError,
        send_task_success::SendTaskSuccessError,
    },
};
use tokio::sync::OnceCell;

use super::{Attempt, SFN_CAUSE_LIMIT, Verdict, callback_error, failure_cause, sfn_error_name};
use crate::{
    aws::{self, Answer, Fault, Generic},
    contract::{ComputeCallback, ExecutionState, StepFunctionsCallback},
    error::{ComputeError, ErrorCode},
};

/// The provider named in Step Functions' errors.
const PROVIDER: &str = "stepfunctions";

/// The Step Functions client, built from the standard AWS chain (credentials, region,
/// `AWS_ENDPOINT_URL_SFN` / `AWS_ENDPOINT_URL`) on first use, so a worker that never sees a
/// task token needs no AWS configuration.
#[derive(Default)]
pub(crate) struct StepFunctions {
    client: OnceCell<aws_sdk_sfn::Client>,
}

impl StepFunctions {
    /// Uses this client (tests).
    pub(crate) fn with_client(client: aws_sdk_sfn::Client) -> Self {
        StepFunctions {
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn sfn(&self) -> &aws_sdk_sfn::Client {
        self.client
            .get_or_init(|| async {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                // Retries are the delivery activity's: each attempt is then recorded. A hung
                // call must end, or it would hold the delivery until its activity timeout.
                let conf = aws_sdk_sfn::config::Builder::from(&sdk)
                    .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_sdk_sfn::config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_attempt_timeout(Duration::from_secs(10))
                            .operation_timeout(Duration::from_secs(20))
                            .build(),
                    )
                    .build();
                aws_sdk_sfn::Client::from_conf(conf)
            })
            .await
    }

    /// Tells the task that the execution is still running (one attempt).
    pub(crate) async fn heartbeat(&self, t: &StepFunctionsCallback) -> Attempt {
        let result = self
            .sfn()
            .await
            .send_task_heartbeat()
            .task_token(&t.task_token)
            .send()
            .await;
        sfn_verdict::<SendTaskHeartbeatError>("SendTaskHeartbeat", result.map(|_| ()))
    }

    /// Completes the task with the callback (one attempt).
    pub(crate) async fn complete(
        &self,
        t: &StepFunctionsCallback,
        cb: &ComputeCallback,
    ) -> Attempt {
        let client = self.sfn().await;
        if cb.state == ExecutionState::Succeeded {
            let output = serde_json::to_string(cb).map_err(|e| {
                ComputeError::internal("could not serialise the callback").with_root_cause(e)
            })?;
            let result = client
                .send_task_success()
                .task_token(&t.task_token)
                .output(output)
                .send()
                .await;
            sfn_verdict::<SendTaskSuccessError>("SendTaskSuccess", result.map(|_| ()))
        } else {
            let error = callback_error(cb);
            let result = client
                .send_task_failure()
                .task_token(&t.task_token)
                .error(sfn_error_name(error.code))
                .cause(failure_cause(&error, SFN_CAUSE_LIMIT))
                .send()
                .await;
            sfn_verdict::<SendTaskFailureError>("SendTaskFailure", result.map(|_| ()))
        }
    }
}

/// What Step Functions' modelled answers to a task-token call mean.
///
/// Implemented for the errors of `SendTaskSuccess`, `SendTaskFailure` and
/// `SendTaskHeartbeat`.
pub trait TaskTokenError: ProvideErrorMetadata + std::error::Error + 'static {
    /// Whether the answer means "never": the token is unknown, used or expired, or the
    /// request itself is malformed.
    fn is_final(&self) -> bool;

    /// Whether the answer is a modelled throttling (KMS's, of the state machine's key).
    fn is_throttling(&self) -> bool {
        false
    }
}

impl TaskTokenError for SendTaskSuccessError {
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::InvalidToken(_)
                | Self::TaskDoesNotExist(_)
                | Self::TaskTimedOut(_)
                | Self::InvalidOutput(_)
        ) || is_validation(self)
    }

    fn is_throttling(&self) -> bool {
        matches!(self, Self::KmsThrottlingException(_))
    }
}

impl TaskTokenError for SendTaskFailureError {
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::InvalidToken(_) | Self::TaskDoesNotExist(_) | Self::TaskTimedOut(_)
        ) || is_validation(self)
    }

    fn is_throttling(&self) -> bool {
        matches!(self, Self::KmsThrottlingException(_))
    }
}

impl TaskTokenError for SendTaskHeartbeatError {
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::InvalidToken(_) | Self::TaskDoesNotExist(_) | Self::TaskTimedOut(_)
        ) || is_validation(self)
    }
}

/// Whether the answer is AWS's generic `ValidationException` (a malformed request). The
/// SDK models it for none of the task-token calls: it arrives as `Unhandled` with this code.
fn is_validation(err: &impl ProvideErrorMetadata) -> bool {
    err.code() == Some("ValidationException")
}

/// Classifies one Step Functions call where its answer is known.
pub fn sfn_verdict<E: TaskTokenError>(
    what: &str,
    result: Result<(), SdkError<E, HttpResponse>>,
) -> Attempt {
    let err = match result {
        Ok(()) => return Ok(Verdict::Delivered),
        Err(e) => e,
    };
    let unavailable = |m: String| ComputeError::new(ErrorCode::ProviderTemporarilyUnavailable, m);
    let error = match aws::fault("Step Functions", PROVIDER, what, &err) {
        Fault::Answered(Answer {
            error,
            code,
            message,
            status,
        }) => {
            if error.is_final() {
                return Ok(Verdict::Undeliverable(format!(
                    "Step Functions refused {what}: {code}{}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({message})")
                    }
                )));
            }
            let generic = if error.is_throttling() {
                Some(Generic::Throttled)
            } else {
                aws::generic_code(&code).or_else(|| aws::generic_status(status))
            };
            let e = match generic {
                Some(Generic::Throttled) => ComputeError::new(
                    ErrorCode::Throttled,
                    format!("{what}: Step Functions is throttling"),
                ),
                Some(Generic::Unavailable) => {
                    unavailable(format!("{what}: Step Functions failed ({status})"))
                }
                // Credentials, permissions, KMS: an operator can fix these before the token
                // expires, and an expired token ends the retries with TaskTimedOut.
                None => unavailable(format!(
                    "{what}: Step Functions refused the worker's request ({code}); retrying \
                     until it is fixed or the task times out"
                )),
            };
            e.with_provider(PROVIDER, Some(&code))
                .with_root_cause(message)
        }
        Fault::Unanswered(e) => *e,
        Fault::NotBuilt | Fault::Unknown => {
            unavailable(format!("{what}: the request to Step Functions failed"))
                .with_provider(PROVIDER, None)
                .with_root_cause(format!("{err:?}"))
        }
    };
    Err(error.with_provider_request_id(aws::request_id(&err)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{CallbackTarget, Callbacks, SFN_ERROR_LIMIT};
    use crate::contract::{Operation, ResourceIds};
    use aws_sdk_sfn::{Client, operation::send_task_success::SendTaskSuccessOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::body::SdkBody;

    fn callback(state: ExecutionState, error: Option<ComputeError>) -> ComputeCallback {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        ComputeCallback {
            execution_id: "acme-provision-0123".into(),
            tenant_id: "acme".into(),
            operation: Operation::Provision,
            state,
            attempt: 1,
            resource_ids: ResourceIds::default(),
            error,
            started_at: at,
            finished_at: at,
            duration_ms: 0,
            sequence: 1,
        }
    }

    fn sfn_target() -> CallbackTarget {
        CallbackTarget::StepFunctions(StepFunctionsCallback {
            task_token: "AAAAKgAAAAIAAAAAAAAAAQ==".into(),
            heartbeat_seconds: None,
        })
    }

    /// A Step Functions error answer as the JSON protocol sends it.
    fn error_response(status: u16, code: &str) -> HttpResponse {
        let mut r = HttpResponse::new(
            status.try_into().unwrap(),
            SdkBody::from(format!(r#"{{"__type":"{code}","message":"said {code}"}}"#)),
        );
        r.headers_mut().insert("x-amzn-RequestId", "req-42");
        r
    }

    fn callbacks(client: Client) -> Callbacks {
        Callbacks::new(&[]).unwrap().with_sfn_client(client)
    }

    #[tokio::test]
    async fn step_functions_answers_are_mapped() {
        let succeeded = callback(ExecutionState::Succeeded, None);
        for (status, code, expected) in [
            (400, "InvalidToken", Ok("InvalidToken")),
            (400, "TaskDoesNotExist", Ok("TaskDoesNotExist")),
            (400, "TaskTimedOut", Ok("TaskTimedOut")),
            (400, "InvalidOutput", Ok("InvalidOutput")),
            (400, "ThrottlingException", Err(ErrorCode::Throttled)),
            (429, "TooManyRequestsException", Err(ErrorCode::Throttled)),
            (
                500,
                "InternalFailure",
                Err(ErrorCode::ProviderTemporarilyUnavailable),
            ),
            (
                503,
                "ServiceUnavailable",
                Err(ErrorCode::ProviderTemporarilyUnavailable),
            ),
            (
                400,
                "AccessDeniedException",
                Err(ErrorCode::ProviderTemporarilyUnavailable),
            ),
        ] {
            let rule = mock!(Client::send_task_success)
                .then_http_response(move || error_response(status, code));
            let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule], |c| c
                .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()));
            let got = callbacks(client).deliver(&sfn_target(), &succeeded).await;
            match (got, expected) {
                (Ok(Verdict::Undeliverable(reason)), Ok(name)) => {
                    assert!(reason.contains(name), "{code}: {reason}");
                    assert!(reason.contains("SendTaskSuccess"), "{reason}");
                }
                (Err(e), Err(want)) => {
                    assert_eq!(e.code, want, "{code}: {e:?}");
                    assert!(e.retriable, "{code}");
                    assert_eq!(e.provider_code.as_deref(), Some(code));
                    assert_eq!(e.provider_request_id.as_deref(), Some("req-42"));
                }
                (got, want) => panic!("{code}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn success_sends_the_callback_as_output() {
        let rule = mock!(Client::send_task_success)
            .match_requests(|r| {
                let output: serde_json::Value =
                    serde_json::from_str(r.output().unwrap_or_default()).unwrap();
                r.task_token() == Some("AAAAKgAAAAIAAAAAAAAAAQ==")
                    && output["executionId"] == "acme-provision-0123"
                    && output["state"] == "succeeded"
            })
            .then_output(|| SendTaskSuccessOutput::builder().build());
        let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule]);
        let got = callbacks(client)
            .deliver(&sfn_target(), &callback(ExecutionState::Succeeded, None))
            .await;
        assert_eq!(got, Ok(Verdict::Delivered));
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn failure_names_the_code_and_carries_the_error() {
        let error = ComputeError::new(ErrorCode::QuotaExceeded, "the cluster is full")
            .with_provider("ecs", Some("LimitExceededException"));
        let rule = mock!(Client::send_task_failure)
            .match_requests(|r| {
                let cause: serde_json::Value =
                    serde_json::from_str(r.cause().unwrap_or_default()).unwrap();
                r.error() == Some("Compute.QUOTA_EXCEEDED")
                    && cause["code"] == "QUOTA_EXCEEDED"
                    && cause["providerCode"] == "LimitExceededException"
            })
            .then_output(|| {
                aws_sdk_sfn::operation::send_task_failure::SendTaskFailureOutput::builder().build()
            });
        let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule]);
        let cbs = callbacks(client);
        let got = cbs
            .deliver(
                &sfn_target(),
                &callback(ExecutionState::Failed, Some(error)),
            )
            .await;
        assert_eq!(got, Ok(Verdict::Delivered));
        // A timed-out execution without an error of its own reports TIMEOUT.
        assert_eq!(
            callback_error(&callback(ExecutionState::TimedOut, None)).code,
            ErrorCode::Timeout
        );
    }

    #[tokio::test]
    async fn heartbeats_are_classified_the_same_way() {
        let rule = mock!(Client::send_task_heartbeat)
            .then_http_response(|| error_response(400, "TaskTimedOut"));
        let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule], |c| c
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()));
        let got = callbacks(client).heartbeat(&sfn_target()).await;
        assert!(
            matches!(&got, Ok(Verdict::Undeliverable(r)) if r.contains("SendTaskHeartbeat: TaskTimedOut")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn unmodelled_and_kms_answers_are_mapped() {
        let failed = callback(
            ExecutionState::Failed,
            Some(ComputeError::new(ErrorCode::WorkloadFailed, "exited 1")),
        );
        // ValidationException is AWS's generic answer, unmodelled for these calls.
        let rule = mock!(Client::send_task_failure)
            .then_http_response(|| error_response(400, "ValidationException"));
        let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule], |c| c
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()));
        let got = callbacks(client).deliver(&sfn_target(), &failed).await;
        assert!(
            matches!(&got, Ok(Verdict::Undeliverable(r)) if r.contains("SendTaskFailure: ValidationException")),
            "{got:?}"
        );
        let rule = mock!(Client::send_task_failure)
            .then_http_response(|| error_response(400, "KmsThrottlingException"));
        let client = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, [&rule], |c| c
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled()));
        let e = callbacks(client)
            .deliver(&sfn_target(), &failed)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Throttled, "{e:?}");
        assert_eq!(e.provider_code.as_deref(), Some("KmsThrottlingException"));
        assert_eq!(e.provider_request_id.as_deref(), Some("req-42"));
    }

    #[test]
    fn causes_fit_the_limit_and_stay_json() {
        let mut e = ComputeError::new(ErrorCode::WorkloadFailed, "x".repeat(50_000))
            .with_root_cause("y".repeat(50_000));
        e.stderr_tail = Some("z\"\\\n".repeat(10_000));
        for limit in [SFN_CAUSE_LIMIT, 1000, 100] {
            let cause = failure_cause(&e, limit);
            assert!(cause.chars().count() <= limit, "{limit}: {}", cause.len());
            let v: serde_json::Value = serde_json::from_str(&cause).unwrap();
            assert_eq!(v["code"], "WORKLOAD_FAILED", "{limit}");
        }
        let small = ComputeError::new(ErrorCode::Timeout, "late");
        assert_eq!(
            failure_cause(&small, SFN_CAUSE_LIMIT),
            serde_json::to_string(&small).unwrap()
        );
        assert!(sfn_error_name(ErrorCode::InvalidConfiguration).len() <= SFN_ERROR_LIMIT);
    }
}
