//! Completing callers that are not Temporal workflows: Step Functions task tokens and
//! Restate awakeables. (Temporal signals go through the activity's own client, in
//! `activities.rs`.)
//!
//! Each call is one attempt. Its answer is decided here, where the target's reply is known:
//! [`Verdict::Delivered`], [`Verdict::Undeliverable`] when the target says it never will
//! accept it (a used or expired token, a malformed awakeable id), or a retriable
//! [`ComputeError`] for everything worth another try (throttling, 5xx, no connection). The
//! delivery activity turns that error into a retried activity attempt, so every attempt is
//! recorded and visible.

use std::time::Duration;

use aws_sdk_sfn::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    operation::{
        send_task_failure::SendTaskFailureError, send_task_heartbeat::SendTaskHeartbeatError,
        send_task_success::SendTaskSuccessError,
    },
};
use reqwest::{StatusCode, Url};
use tokio::sync::OnceCell;

use crate::{
    contract::{
        CallbackTarget, ComputeCallback, ExecutionState, RestateCallback, StepFunctionsCallback,
    },
    error::{ComputeError, ErrorCode},
};

/// Step Functions' limits: `error` up to 256 characters, `cause` up to 32,768.
pub const SFN_ERROR_LIMIT: usize = 256;
/// See [`SFN_ERROR_LIMIT`].
pub const SFN_CAUSE_LIMIT: usize = 32_768;
/// The longest task token Step Functions issues.
pub const MAX_TASK_TOKEN_LEN: usize = 2048;
/// How long one Restate ingress call may take.
const RESTATE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest reject reason sent to Restate (one line).
const RESTATE_REASON_LIMIT: usize = 1024;

/// What one delivery attempt achieved, when it was not worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target accepted the callback.
    Delivered,
    /// The target will never accept it; why.
    Undeliverable(String),
}

/// The result of one attempt: `Err` is retriable.
pub type Attempt = Result<Verdict, ComputeError>;

/// The senders for non-Temporal targets, shared by all activities of a worker.
pub struct Callbacks {
    sfn: OnceCell<aws_sdk_sfn::Client>,
    http: reqwest::Client,
    restate_ingress: Vec<Url>,
    /// Namespaces a `temporal` target may name besides the worker's own (an absent namespace
    /// is the worker's own).
    namespaces: Vec<String>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("restate_ingress", &self.restate_ingress)
            .finish_non_exhaustive()
    }
}

/// Parses the configured Restate ingress URLs (`http` or `https`, no query or fragment).
pub fn parse_ingress_urls(urls: &[String]) -> Result<Vec<Url>, ComputeError> {
    urls.iter()
        .map(|u| {
            let url = Url::parse(u.trim()).map_err(|e| {
                ComputeError::invalid(format!("--restate-ingress-url {u:?} is not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.query().is_some()
                || url.fragment().is_some()
                || !url.username().is_empty()
            {
                return Err(ComputeError::invalid(format!(
                    "--restate-ingress-url {u:?} must be an http(s) URL with a host and no \
                     credentials, query or fragment"
                )));
            }
            Ok(url)
        })
        .collect()
}

/// Two URLs name the same ingress: same scheme, host, port and path (a trailing `/` aside).
fn same_ingress(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

impl Default for Callbacks {
    /// No Restate ingress: Restate targets are refused.
    fn default() -> Self {
        Callbacks {
            sfn: OnceCell::new(),
            http: http_client().unwrap_or_default(),
            restate_ingress: Vec::new(),
            namespaces: Vec::new(),
        }
    }
}

fn http_client() -> Result<reqwest::Client, ComputeError> {
    reqwest::Client::builder()
        .timeout(RESTATE_TIMEOUT)
        // A redirect would send the callback to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ComputeError::internal("could not build the HTTP client").with_root_cause(e))
}

impl Callbacks {
    /// Senders for the configured Restate ingresses; the Step Functions client is built from
    /// the standard AWS chain (credentials, region, `AWS_ENDPOINT_URL_SFN` /
    /// `AWS_ENDPOINT_URL`) on first use, so a worker that never sees a task token needs no
    /// AWS configuration.
    pub fn new(restate_ingress: &[String]) -> Result<Self, ComputeError> {
        Ok(Callbacks {
            sfn: OnceCell::new(),
            http: http_client()?,
            restate_ingress: parse_ingress_urls(restate_ingress)?,
            namespaces: Vec::new(),
        })
    }

    /// Lets `temporal` targets name these namespaces: the worker's own and those in
    /// `--callback-namespaces`. Without it only targets that name no namespace (the worker's
    /// own) are accepted.
    pub fn with_namespaces(self, namespaces: impl IntoIterator<Item = String>) -> Self {
        Callbacks {
            namespaces: namespaces.into_iter().collect(),
            ..self
        }
    }

    /// Uses this Step Functions client (tests).
    pub fn with_sfn_client(self, client: aws_sdk_sfn::Client) -> Self {
        Callbacks {
            sfn: OnceCell::new_with(Some(client)),
            ..self
        }
    }

    async fn sfn(&self) -> &aws_sdk_sfn::Client {
        self.sfn
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

    /// Checks what validation of the request's shape cannot: a Restate target must name a
    /// configured ingress (so a request cannot make the worker call an arbitrary URL), and
    /// some ingress must be configured at all; a Temporal target may name only an allowed
    /// namespace.
    pub fn check_target(&self, target: &CallbackTarget) -> Result<(), ComputeError> {
        match target {
            CallbackTarget::Restate(r) => self.ingress_for(r).map(|_| ()),
            CallbackTarget::Temporal(t) => match &t.namespace {
                Some(n) if !self.namespaces.contains(n) => Err(ComputeError::invalid(
                    "callback.temporal.namespace: not this worker's namespace nor one of its \
                     --callback-namespaces",
                )),
                _ => Ok(()),
            },
            CallbackTarget::StepFunctions(_) => Ok(()),
        }
    }

    fn ingress_for(&self, r: &RestateCallback) -> Result<&Url, ComputeError> {
        let Some(requested) = &r.ingress_url else {
            return self.restate_ingress.first().ok_or_else(|| {
                ComputeError::invalid(
                    "callback.restate: this worker has no Restate ingress configured \
                     (--restate-ingress-url / RESTATE_INGRESS_URL)",
                )
            });
        };
        let url = Url::parse(requested).map_err(|e| {
            ComputeError::invalid(format!("callback.restate.ingressUrl: not a URL: {e}"))
        })?;
        self.restate_ingress
            .iter()
            .find(|c| same_ingress(c, &url))
            .ok_or_else(|| {
                ComputeError::invalid(format!(
                    "callback.restate.ingressUrl: {} is not one of this worker's configured \
                     Restate ingresses",
                    url.origin().ascii_serialization()
                ))
            })
    }

    /// Delivers `callback` to a Step Functions or Restate target (one attempt).
    pub async fn deliver(&self, target: &CallbackTarget, callback: &ComputeCallback) -> Attempt {
        match target {
            CallbackTarget::StepFunctions(t) => self.complete_task(t, callback).await,
            CallbackTarget::Restate(r) => self.complete_awakeable(r, callback).await,
            CallbackTarget::Temporal(_) => Err(ComputeError::internal(
                "a Temporal target is signalled by the activity, not here",
            )),
        }
    }

    /// Tells a Step Functions task that the execution is still running (one attempt).
    /// Targets without a heartbeat are left alone.
    pub async fn heartbeat(&self, target: &CallbackTarget) -> Attempt {
        let CallbackTarget::StepFunctions(t) = target else {
            return Ok(Verdict::Delivered);
        };
        let result = self
            .sfn()
            .await
            .send_task_heartbeat()
            .task_token(&t.task_token)
            .send()
            .await;
        sfn_verdict::<SendTaskHeartbeatError>("SendTaskHeartbeat", result.map(|_| ()))
    }

    async fn complete_task(&self, t: &StepFunctionsCallback, cb: &ComputeCallback) -> Attempt {
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

    async fn complete_awakeable(&self, r: &RestateCallback, cb: &ComputeCallback) -> Attempt {
        let ingress = self.ingress_for(r)?;
        let base = ingress.as_str().trim_end_matches('/');
        let request = if cb.state == ExecutionState::Succeeded {
            let body = serde_json::to_vec(cb).map_err(|e| {
                ComputeError::internal("could not serialise the callback").with_root_cause(e)
            })?;
            self.http
                .post(format!(
                    "{base}/restate/awakeables/{}/resolve",
                    r.awakeable_id
                ))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        } else {
            self.http
                .post(format!(
                    "{base}/restate/awakeables/{}/reject",
                    r.awakeable_id
                ))
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(reject_reason(&callback_error(cb)))
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                restate_verdict(status, &body)
            }
            Err(e) => Err(ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                if e.is_timeout() {
                    "the Restate ingress did not answer in time"
                } else {
                    "the Restate ingress could not be reached"
                },
            )
            .with_provider("restate", None)
            .with_root_cause(e.without_url())),
        }
    }
}

/// The error a failure callback reports: the execution's own, or one for its state.
pub fn callback_error(cb: &ComputeCallback) -> ComputeError {
    cb.error.clone().unwrap_or_else(|| {
        let code = match cb.state {
            ExecutionState::TimedOut => ErrorCode::Timeout,
            ExecutionState::Cancelled => ErrorCode::Cancelled,
            _ => ErrorCode::Internal,
        };
        ComputeError::new(code, format!("the execution ended {}", cb.state))
    })
}

/// The `error` of `SendTaskFailure`: `Compute.<CODE>`, what a state machine's `Catch` matches.
pub fn sfn_error_name(code: ErrorCode) -> String {
    format!("Compute.{}", code.as_str())
}

/// The Restate reject reason: one line, `<CODE>: <message>`.
pub fn reject_reason(error: &ComputeError) -> String {
    format!("{}: {}", error.code.as_str(), error.message)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(RESTATE_REASON_LIMIT)
        .collect()
}

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The `ComputeError` as JSON within `limit` characters, still valid JSON: the free-text
/// fields are shortened first, then the partial-result lists dropped, and as a last resort
/// only the code and a shortened message remain.
pub fn failure_cause(error: &ComputeError, limit: usize) -> String {
    let fits = |s: &String| s.chars().count() <= limit;
    let full = serde_json::to_string(error).unwrap_or_default();
    if fits(&full) {
        return full;
    }
    let mut e = error.clone();
    let mut budget = limit / 2;
    while budget >= 16 {
        e.message = truncate_chars(&error.message, budget);
        e.root_cause = error
            .root_cause
            .as_deref()
            .map(|r| truncate_chars(r, budget));
        e.stderr_tail = error
            .stderr_tail
            .as_deref()
            .map(|r| truncate_chars(r, budget));
        let s = serde_json::to_string(&e).unwrap_or_default();
        if fits(&s) {
            return s;
        }
        if e.partial.is_some() {
            e.partial = None;
            continue;
        }
        budget /= 2;
    }
    serde_json::json!({
        "code": error.code.as_str(),
        "message": truncate_chars(&error.message, limit.saturating_sub(64).min(200)),
        "truncated": true,
    })
    .to_string()
}

/// Step Functions' answers that mean "never": the token is unknown, used or expired, or the
/// request itself is malformed.
const SFN_FINAL: [&str; 5] = [
    "InvalidToken",
    "TaskDoesNotExist",
    "TaskTimedOut",
    "InvalidOutput",
    "ValidationException",
];

/// Classifies one Step Functions call where its answer is known.
pub fn sfn_verdict<E>(what: &str, result: Result<(), SdkError<E, HttpResponse>>) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let err = match result {
        Ok(()) => return Ok(Verdict::Delivered),
        Err(e) => e,
    };
    let unavailable = |m: String| ComputeError::new(ErrorCode::ProviderTemporarilyUnavailable, m);
    let error = match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se
                .err()
                .code()
                .map(str::to_string)
                .unwrap_or_else(|| modelled_name(se.err()));
            let message = se.err().message().unwrap_or_default().to_string();
            if SFN_FINAL.contains(&code.as_str()) {
                return Ok(Verdict::Undeliverable(format!(
                    "Step Functions refused {what}: {code}{}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({message})")
                    }
                )));
            }
            let throttled = status == 429
                || code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "KmsThrottlingException";
            let e = if throttled {
                ComputeError::new(
                    ErrorCode::Throttled,
                    format!("{what}: Step Functions is throttling"),
                )
            } else if status >= 500 {
                unavailable(format!("{what}: Step Functions failed ({status})"))
            } else {
                // Credentials, permissions, KMS: an operator can fix these before the token
                // expires, and an expired token ends the retries with TaskTimedOut.
                unavailable(format!(
                    "{what}: Step Functions refused the worker's request ({code}); retrying \
                     until it is fixed or the task times out"
                ))
            };
            e.with_provider("stepfunctions", Some(&code))
                .with_root_cause(message)
        }
        SdkError::TimeoutError(_) => {
            unavailable(format!("{what}: Step Functions did not answer in time"))
                .with_provider("stepfunctions", Some("TimeoutError"))
        }
        SdkError::DispatchFailure(e) => {
            unavailable(format!("{what}: Step Functions could not be reached"))
                .with_provider("stepfunctions", Some("DispatchFailure"))
                .with_root_cause(format!("{e:?}"))
        }
        SdkError::ResponseError(e) => unavailable(format!(
            "{what}: Step Functions sent a response that could not be read"
        ))
        .with_provider("stepfunctions", Some("ResponseError"))
        .with_root_cause(format!("{:?}", e.raw().status())),
        _ => unavailable(format!("{what}: the request to Step Functions failed"))
            .with_provider("stepfunctions", None)
            .with_root_cause(format!("{err:?}")),
    };
    Err(error.with_provider_request_id(aws_sdk_sfn::operation::RequestId::request_id(&err)))
}

/// A modelled error built without wire metadata has no `code()`; its Display starts with
/// the shape's name.
fn modelled_name<E: std::error::Error>(err: &E) -> String {
    let display = err.to_string();
    display
        .split_once(':')
        .map_or(display.as_str(), |(shape, _)| shape)
        .trim()
        .to_string()
}

/// Classifies a Restate ingress answer: 2xx accepted (the ingress says 202 also for a
/// duplicate or late completion: the first one wins); 400 is a malformed id, final; 401, 403
/// (an auth proxy an operator can fix), 408, 429 and 5xx are retried; other 4xx are final.
pub fn restate_verdict(status: StatusCode, body: &str) -> Attempt {
    let detail = truncate_chars(body.trim(), 300);
    if status.is_success() {
        return Ok(Verdict::Delivered);
    }
    let code = status.as_u16();
    if status.is_server_error() || matches!(code, 401 | 403 | 408 | 429) {
        let error_code = if code == 429 {
            ErrorCode::Throttled
        } else {
            ErrorCode::ProviderTemporarilyUnavailable
        };
        return Err(ComputeError::new(
            error_code,
            format!("the Restate ingress answered {status}"),
        )
        .with_provider("restate", Some(&code.to_string()))
        .with_root_cause(detail));
    }
    Ok(Verdict::Undeliverable(format!(
        "the Restate ingress refused the completion ({status}): {detail}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn restate_answers_are_mapped() {
        for (status, delivered) in [(200, true), (202, true), (400, false), (404, false)] {
            let got = restate_verdict(StatusCode::from_u16(status).unwrap(), "body");
            if delivered {
                assert_eq!(got, Ok(Verdict::Delivered));
            } else {
                assert!(matches!(got, Ok(Verdict::Undeliverable(_))), "{status}");
            }
        }
        for (status, code) in [
            (500, ErrorCode::ProviderTemporarilyUnavailable),
            (503, ErrorCode::ProviderTemporarilyUnavailable),
            (401, ErrorCode::ProviderTemporarilyUnavailable),
            (429, ErrorCode::Throttled),
        ] {
            let e = restate_verdict(StatusCode::from_u16(status).unwrap(), "").unwrap_err();
            assert_eq!(e.code, code, "{status}");
            assert!(e.retriable);
        }
        let reason = reject_reason(&ComputeError::new(ErrorCode::QuotaExceeded, "full\nreally"));
        assert_eq!(reason, "QUOTA_EXCEEDED: full really");
    }

    #[test]
    fn only_configured_ingresses_are_called() {
        let cbs = Callbacks::new(&[
            "http://127.0.0.1:8080".into(),
            "https://restate.internal/ingress/".into(),
        ])
        .unwrap();
        let target = |url: Option<&str>| {
            CallbackTarget::Restate(RestateCallback {
                awakeable_id: "sign_1abc".into(),
                ingress_url: url.map(str::to_string),
            })
        };
        for ok in [
            None,
            Some("http://127.0.0.1:8080/"),
            Some("https://RESTATE.internal:443/ingress"),
        ] {
            assert!(cbs.check_target(&target(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            "http://127.0.0.1:8081",
            "https://127.0.0.1:8080",
            "http://169.254.169.254/latest",
            "https://restate.internal/other",
            "not a url",
        ] {
            let e = cbs.check_target(&target(Some(bad))).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{bad}");
        }
        let none = Callbacks::new(&[]).unwrap();
        assert!(none.check_target(&target(None)).is_err());
        assert!(none.check_target(&sfn_target()).is_ok());
        for bad in ["ftp://x", "http://u:p@x", "http://x/?q=1", "x"] {
            assert!(Callbacks::new(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
