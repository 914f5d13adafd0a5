//! What every AWS backend (the ECS provider, the Step Functions sink) reads from an SDK
//! error the same way: the HTTP status, the error's code and message, AWS's request id, and
//! the failures that belong to AWS rather than to the operation (throttling, server faults,
//! timeouts, an endpoint that cannot be reached). Each backend matches its operations'
//! modelled error variants itself; this module only knows what every AWS service shares.

use aws_smithy_runtime_api::client::{orchestrator::HttpResponse, result::SdkError};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::{ComputeError, ErrorCode};

/// An error answer of an AWS service.
pub(crate) struct Answer<'a, E> {
    /// The operation's error: its modelled variants say more than `code` can.
    pub(crate) error: &'a E,
    /// The error's name, as the wire or the modelled shape gives it.
    pub(crate) code: String,
    /// The error's message; empty when there is none.
    pub(crate) message: String,
    /// The answer's HTTP status.
    pub(crate) status: u16,
}

/// An SDK error, sorted by what the caller can do about it.
pub(crate) enum Fault<'a, E> {
    /// The service answered with an error.
    Answered(Answer<'a, E>),
    /// There was no answer to act on: the call timed out, never reached the service, or got
    /// a response that could not be read. Worth retrying, always.
    Unanswered(Box<ComputeError>),
    /// The SDK could not build the request.
    NotBuilt,
    /// A kind of SDK error this code does not know yet.
    Unknown,
}

/// Sorts `err`, a failure of `what` (an operation) at `service` (its display name) whose
/// errors name `provider`.
pub(crate) fn fault<'a, E>(
    service: &str,
    provider: &str,
    what: &str,
    err: &'a SdkError<E, HttpResponse>,
) -> Fault<'a, E>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    let unavailable = |m: String| ComputeError::new(ErrorCode::ProviderTemporarilyUnavailable, m);
    match err {
        SdkError::ServiceError(se) => {
            let (code, message) = code_and_message(se.err());
            Fault::Answered(Answer {
                error: se.err(),
                code,
                message,
                status: se.raw().status().as_u16(),
            })
        }
        SdkError::TimeoutError(_) => Fault::Unanswered(Box::new(
            unavailable(format!("{what}: {service} did not answer in time"))
                .with_provider(provider, Some("TimeoutError")),
        )),
        SdkError::DispatchFailure(e) => Fault::Unanswered(Box::new(
            unavailable(format!("{what}: {service} could not be reached"))
                .with_provider(provider, Some("DispatchFailure"))
                .with_root_cause(format!("{e:?}")),
        )),
        SdkError::ResponseError(e) => Fault::Unanswered(Box::new(
            unavailable(format!(
                "{what}: {service} sent a response that could not be read"
            ))
            .with_provider(provider, Some("ResponseError"))
            .with_root_cause(format!("{:?}", e.raw().status())),
        )),
        SdkError::ConstructionFailure(_) => Fault::NotBuilt,
        _ => Fault::Unknown,
    }
}

/// AWS's request id of the call, when a response carried one.
pub(crate) fn request_id<E>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    // What aws-types' `RequestId` reads; that trait is only reachable through one service's
    // SDK, and this module serves more than one.
    let headers = err.raw_response()?.headers();
    headers
        .get("x-amzn-requestid")
        .or(headers.get("x-amz-request-id"))
}

/// An error's name and message.
fn code_and_message<E: ProvideErrorMetadata + std::error::Error>(err: &E) -> (String, String) {
    // A modelled error built without wire metadata has no `code()`; its Display starts with
    // the modelled shape's name, which is the same name.
    let display = err.to_string();
    let (shape, detail) = display.split_once(':').unwrap_or((display.as_str(), ""));
    (
        err.code().unwrap_or(shape.trim()).to_string(),
        err.message().unwrap_or(detail.trim()).to_string(),
    )
}

/// A failure that is AWS's, not the operation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generic {
    /// Too many requests: retry later.
    Throttled,
    /// AWS failed: retry.
    Unavailable,
}

/// The failure a code names when AWS's front end answers it for any operation. The SDKs
/// model none of these per operation: they arrive as `Unhandled` with this code, so a
/// string is all there is to match.
pub(crate) fn generic_code(code: &str) -> Option<Generic> {
    // `Throttling` (query protocol), `ThrottlingException` (JSON), `ThrottledException`,
    // `RequestThrottled`, `KmsThrottlingException`, ...; EC2 says `RequestLimitExceeded`.
    if code.contains("Throttl")
        || matches!(code, "TooManyRequestsException" | "RequestLimitExceeded")
    {
        Some(Generic::Throttled)
    } else if matches!(
        code,
        "ServiceUnavailableException" | "ServiceUnavailable" | "InternalFailure" | "InternalError"
    ) {
        Some(Generic::Unavailable)
    } else {
        None
    }
}

/// The failure an HTTP status names, whatever the code.
pub(crate) fn generic_status(status: u16) -> Option<Generic> {
    match status {
        500.. => Some(Generic::Unavailable),
        429 => Some(Generic::Throttled),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By the code, else by the status (as the Step Functions sink asks).
    fn generic(code: &str, status: u16) -> Option<Generic> {
        generic_code(code).or_else(|| generic_status(status))
    }

    #[test]
    fn generic_failures_by_code_then_status() {
        for code in [
            "ThrottlingException",
            "Throttling",
            "ThrottledException",
            "RequestThrottled",
            "KmsThrottlingException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
        ] {
            assert_eq!(generic(code, 400), Some(Generic::Throttled), "{code}");
        }
        for code in ["ServiceUnavailableException", "InternalFailure"] {
            assert_eq!(generic(code, 400), Some(Generic::Unavailable), "{code}");
        }
        assert_eq!(
            generic("ThrottlingException", 503),
            Some(Generic::Throttled)
        );
        assert_eq!(generic("Weird", 502), Some(Generic::Unavailable));
        assert_eq!(generic("Weird", 429), Some(Generic::Throttled));
        assert_eq!(generic("Weird", 400), None);
        assert_eq!(generic_code("AccessDeniedException"), None);
    }
}
