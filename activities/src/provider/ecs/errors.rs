//! The ECS error table: what each ECS failure means in our error codes, decided where the
//! failure is understood. Modelled errors are matched by their SDK variants; names that come
//! as strings (DescribeServices failures, codes the SDK does not model) go by name and HTTP
//! status. Also the errors of stopped tasks, and the redaction of responses for the debug log.

use std::time::Duration;

use aws_sdk_ecs::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    operation::{
        create_service::CreateServiceError, delete_service::DeleteServiceError,
        deregister_task_definition::DeregisterTaskDefinitionError,
        describe_services::DescribeServicesError,
        describe_task_definition::DescribeTaskDefinitionError, list_services::ListServicesError,
        list_task_definitions::ListTaskDefinitionsError, list_tasks::ListTasksError,
        register_task_definition::RegisterTaskDefinitionError, update_service::UpdateServiceError,
    },
};

use super::PROVIDER;
use crate::{
    aws::{self, Fault, Generic},
    error::{ComputeError, ErrorCode},
};

/// A row of the error table: what an ECS failure means, however it was recognised.
///
/// `pub` only because the public [`classify`] names it through [`EcsError`]; this module is
/// private and neither is re-exported, so nothing outside the crate can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Too many requests.
    Throttled,
    /// ECS failed on its side (the code names how).
    Failed,
    /// A `ClientException`: a bad request, unless it is ECS's concurrency limit.
    Client,
    /// The configured cluster does not exist.
    ClusterNotFound,
    /// ECS refused the request as malformed or unsupported.
    Refused,
    /// An ECS limit would be exceeded.
    Quota,
    /// The worker's credentials may not do this.
    Denied,
    /// What the request names does not exist (any more).
    NotFound,
    /// A concurrent change got there first.
    Conflict,
    /// No capacity to place the tasks.
    NoCapacity,
    /// An unknown error answered with a 5xx status.
    HttpFailed,
    /// Anything else.
    Unexpected,
}

/// The error of an ECS (or EC2) call: where the SDK models it, its row of the table.
///
/// `pub` for the same reason as [`Kind`], and as unreachable from outside the crate.
pub trait EcsError: ProvideErrorMetadata + std::error::Error + 'static {
    /// The row of a modelled variant; `None` for `Unhandled` and for a variant the table has
    /// no row for, which go by name and status.
    fn kind(&self) -> Option<Kind> {
        None
    }
}

/// Implements [`EcsError`] for operation error enums from their modelled variants.
macro_rules! modelled {
    ($($error:ty { $($variant:ident => $kind:ident),* $(,)? })+) => {$(
        impl EcsError for $error {
            fn kind(&self) -> Option<Kind> {
                match self {
                    // Every ECS operation models these four.
                    Self::AccessDeniedException(_) => Some(Kind::Denied),
                    Self::ClientException(_) => Some(Kind::Client),
                    Self::InvalidParameterException(_) => Some(Kind::Refused),
                    Self::ServerException(_) => Some(Kind::Failed),
                    $(Self::$variant(_) => Some(Kind::$kind),)*
                    _ => None,
                }
            }
        }
    )+};
}

// `NamespaceNotFoundException` (CreateService, UpdateService: Service Connect, which the
// worker does not configure) has no row: it goes by status, as any unknown error.
modelled! {
    CreateServiceError {
        ClusterNotFoundException => ClusterNotFound,
        PlatformTaskDefinitionIncompatibilityException => Refused,
        PlatformUnknownException => Refused,
        UnsupportedFeatureException => Refused,
    }
    UpdateServiceError {
        ClusterNotFoundException => ClusterNotFound,
        PlatformTaskDefinitionIncompatibilityException => Refused,
        PlatformUnknownException => Refused,
        UnsupportedFeatureException => Refused,
        ServiceNotActiveException => NotFound,
        ServiceNotFoundException => NotFound,
    }
    DeleteServiceError {
        ClusterNotFoundException => ClusterNotFound,
        ServiceNotFoundException => NotFound,
    }
    DescribeServicesError { ClusterNotFoundException => ClusterNotFound }
    ListServicesError { ClusterNotFoundException => ClusterNotFound }
    ListTasksError {
        ClusterNotFoundException => ClusterNotFound,
        ServiceNotFoundException => NotFound,
    }
    RegisterTaskDefinitionError { LimitExceededException => Quota }
    DescribeTaskDefinitionError {}
    ListTaskDefinitionsError {}
    DeregisterTaskDefinitionError {}
}

/// Maps an SDK error onto the error table, where it arises, with AWS's request id when the
/// response carried one.
pub fn classify<E: EcsError>(
    what: &str,
    err: &SdkError<E, HttpResponse>,
    cluster: &str,
) -> ComputeError {
    let error = match aws::fault("ECS", PROVIDER, what, err) {
        Fault::Answered(a) => match a.error.kind() {
            Some(kind) => entry(what, kind, &a.code, &a.message, a.status, cluster),
            None => classify_code(what, &a.code, &a.message, a.status, cluster),
        },
        Fault::Unanswered(e) => *e,
        Fault::NotBuilt => {
            ComputeError::internal(format!("{what}: the request could not be built"))
                .with_provider(PROVIDER, Some("ConstructionFailure"))
        }
        Fault::Unknown => ComputeError::new(
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: unexpected SDK error"),
        )
        .with_provider(PROVIDER, None),
    };
    error.with_provider_request_id(aws::request_id(err))
}

/// The table from ECS's error names (and HTTP status) to our codes, for names that come as
/// strings: DescribeServices failures, and answers the SDK does not model for the operation.
pub fn classify_code(
    what: &str,
    code: &str,
    message: &str,
    status: u16,
    cluster: &str,
) -> ComputeError {
    let kind = match aws::generic_code(code) {
        Some(Generic::Throttled) => Kind::Throttled,
        Some(Generic::Unavailable) => Kind::Failed,
        None => named(code).unwrap_or_else(|| {
            if code.starts_with("RESOURCE:") {
                Kind::NoCapacity
            } else {
                match aws::generic_status(status) {
                    Some(Generic::Unavailable) => Kind::HttpFailed,
                    Some(Generic::Throttled) => Kind::Throttled,
                    None => Kind::Unexpected,
                }
            }
        }),
    };
    entry(what, kind, code, message, status, cluster)
}

/// The row of an error by its name.
fn named(code: &str) -> Option<Kind> {
    Some(match code {
        // ECS's own errors, as the SDK models them: by name only where they come as strings.
        "ServerException" => Kind::Failed,
        "ClientException" => Kind::Client,
        "ClusterNotFoundException" => Kind::ClusterNotFound,
        "InvalidParameterException"
        | "PlatformUnknownException"
        | "PlatformTaskDefinitionIncompatibilityException"
        | "UnsupportedFeatureException" => Kind::Refused,
        "LimitExceededException" => Kind::Quota,
        "AccessDeniedException" => Kind::Denied,
        "ServiceNotFoundException" | "ServiceNotActiveException" | "TaskSetNotFoundException" => {
            Kind::NotFound
        }
        "ConflictException" | "ResourceInUseException" | "UpdateInProgressException" => {
            Kind::Conflict
        }
        // AWS's front end (credentials, quotas), which no ECS operation models.
        "ServiceQuotaExceededException" => Kind::Quota,
        "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => Kind::Denied,
        _ => return None,
    })
}

/// The error of a row.
fn entry(
    what: &str,
    kind: Kind,
    code: &str,
    message: &str,
    status: u16,
    cluster: &str,
) -> ComputeError {
    let (ours, text) = match kind {
        Kind::Throttled => (
            ErrorCode::Throttled,
            format!("{what}: ECS is throttling requests"),
        ),
        Kind::Failed => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: ECS failed ({code})"),
        ),
        // ECS answers concurrent RegisterTaskDefinition calls of one family with a plain
        // ClientException: it is load, not a bad request.
        Kind::Client if is_concurrency_limit(message) => (
            ErrorCode::Throttled,
            format!("{what}: ECS is throttling concurrent changes: {message}"),
        ),
        Kind::ClusterNotFound => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: the ECS cluster {cluster:?} does not exist (--ecs-cluster)"),
        ),
        Kind::Client | Kind::Refused => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: ECS refused the request: {message}"),
        ),
        Kind::Quota => (
            ErrorCode::QuotaExceeded,
            format!("{what}: an ECS limit would be exceeded: {message}"),
        ),
        Kind::Denied => (
            ErrorCode::PermissionDenied,
            format!("{what}: the worker's AWS credentials may not do this"),
        ),
        Kind::NotFound => (ErrorCode::NotFound, format!("{what}: {message}")),
        Kind::Conflict => (
            ErrorCode::Conflict,
            format!("{what}: a concurrent change got there first: {message}"),
        ),
        Kind::NoCapacity => (
            ErrorCode::InsufficientCapacity,
            format!("{what}: ECS has no capacity to place the tasks ({code})"),
        ),
        Kind::HttpFailed => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: ECS answered HTTP {status}"),
        ),
        Kind::Unexpected => (
            ErrorCode::Internal,
            format!("{what}: unexpected ECS error {code}: {message}"),
        ),
    };
    let mut e = ComputeError::new(ours, text).with_provider(PROVIDER, Some(code));
    if ours == ErrorCode::Throttled {
        e = e.with_retry_after(Duration::from_secs(2));
    }
    if !message.is_empty() {
        e = e.with_root_cause(message);
    }
    e
}

/// Whether a `ClientException`'s message is ECS's "Too many concurrent attempts ...".
fn is_concurrency_limit(message: &str) -> bool {
    message.starts_with("Too many concurrent attempts")
}

/// Whether DescribeTaskDefinition failed because the family does not exist yet: ECS says so
/// with a `ClientException` (and says "too many concurrent attempts" with one too).
pub(super) fn is_missing_family(err: &SdkError<DescribeTaskDefinitionError, HttpResponse>) -> bool {
    match err.as_service_error() {
        Some(DescribeTaskDefinitionError::ClientException(e)) => {
            !is_concurrency_limit(e.message().unwrap_or_default())
        }
        _ => false,
    }
}

/// The error for a task that stopped while the deployment rolled out.
pub fn stopped_task_error(reason: &str) -> ComputeError {
    let (code, provider_code) = if reason.contains("CannotPullContainer") {
        (ErrorCode::InvalidConfiguration, "CannotPullContainerError")
    } else if reason.contains("RESOURCE:") || reason.contains("no container instance") {
        (ErrorCode::InsufficientCapacity, "TaskPlacementFailed")
    } else {
        (ErrorCode::WorkloadFailed, "TaskStopped")
    };
    ComputeError::new(code, format!("a task of the deployment stopped: {reason}"))
        .with_provider(PROVIDER, Some(provider_code))
}

/// A provider response for the debug log, with every environment value and secret
/// reference masked: only their names stay.
pub fn redact(debug: &str) -> String {
    const MARKERS: [&str; 4] = [
        "value: Some(\"",
        "value_from: Some(\"",
        "value: \"",
        "value_from: \"",
    ];
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some((start, len)) = MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|i| (i, m.len())))
        .min()
    {
        out.push_str(&rest[..start + len]);
        rest = &rest[start + len..];
        // Skip the string literal up to its closing quote, honouring escapes.
        let mut escaped = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map_or(rest.len(), |(j, _)| j);
        out.push_str("<redacted>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::{
        Client,
        operation::{create_service::CreateServiceError, update_service::UpdateServiceError},
        types::{
            ContainerDefinition, KeyValuePair, Secret,
            error::{
                AccessDeniedException, ClientException, ClusterNotFoundException,
                InvalidParameterException, LimitExceededException, NamespaceNotFoundException,
                PlatformUnknownException, ServerException, ServiceNotActiveException,
                ServiceNotFoundException, UnsupportedFeatureException,
            },
        },
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;
    use crate::{
        contract::Operation,
        provider::{
            ComputeProvider,
            ecs::{
                fixtures::{config, family_missing, no_service, op, registered, spec},
                provider::EcsProvider,
            },
        },
    };

    async fn provision_failing_with(
        error: impl Fn() -> CreateServiceError + Send + Sync + 'static,
    ) -> ComputeError {
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_output(registered);
        let create = mock!(Client::create_service).then_error(error);
        // A create that fails for good deregisters the revision it registered.
        let deregister = mock!(Client::deregister_task_definition).then_output(|| {
            aws_sdk_ecs::operation::deregister_task_definition::DeregisterTaskDefinitionOutput::builder()
                .build()
        });
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register, &create, &deregister]
        );
        let provider = EcsProvider::with_client(client, config());
        provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .expect_err("the create fails")
    }

    #[tokio::test]
    async fn every_modelled_create_service_error_maps_to_the_table() {
        type Case = (fn() -> CreateServiceError, ErrorCode, &'static str);
        let cases: Vec<Case> = vec![
            (
                || {
                    CreateServiceError::ServerException(
                        ServerException::builder().message("boom").build(),
                    )
                },
                ErrorCode::ProviderTemporarilyUnavailable,
                "ServerException",
            ),
            (
                || {
                    CreateServiceError::ClusterNotFoundException(
                        ClusterNotFoundException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "ClusterNotFoundException",
            ),
            (
                || {
                    CreateServiceError::InvalidParameterException(
                        InvalidParameterException::builder()
                            .message("bad cpu")
                            .build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "InvalidParameterException",
            ),
            (
                || CreateServiceError::ClientException(ClientException::builder().build()),
                ErrorCode::InvalidConfiguration,
                "ClientException",
            ),
            (
                || {
                    CreateServiceError::AccessDeniedException(
                        AccessDeniedException::builder().build(),
                    )
                },
                ErrorCode::PermissionDenied,
                "AccessDeniedException",
            ),
            (
                || {
                    CreateServiceError::PlatformUnknownException(
                        PlatformUnknownException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "PlatformUnknownException",
            ),
            (
                || {
                    CreateServiceError::UnsupportedFeatureException(
                        UnsupportedFeatureException::builder().build(),
                    )
                },
                ErrorCode::InvalidConfiguration,
                "UnsupportedFeatureException",
            ),
        ];
        for (error, code, provider_code) in cases {
            let e = provision_failing_with(error).await;
            assert_eq!(e.code, code, "{provider_code}: {e:?}");
            assert_eq!(e.provider_code.as_deref(), Some(provider_code));
            assert_eq!(e.provider.as_deref(), Some("ecs"));
            assert_eq!(
                e.retriable,
                code.classification() == crate::error::Classification::Retriable
            );
            if code == ErrorCode::InvalidConfiguration
                && provider_code == "ClusterNotFoundException"
            {
                assert!(
                    e.message.contains("\"prod\""),
                    "names the cluster: {}",
                    e.message
                );
            }
        }
    }

    #[test]
    fn unmodelled_errors_map_by_name_and_status() {
        let t = classify_code(
            "CreateService",
            "ThrottlingException",
            "Rate exceeded",
            400,
            "c",
        );
        assert_eq!(t.code, ErrorCode::Throttled);
        assert!(t.retry_after_ms.is_some());
        for (name, status, expected) in [
            ("LimitExceededException", 400, ErrorCode::QuotaExceeded),
            (
                "ServiceUnavailableException",
                503,
                ErrorCode::ProviderTemporarilyUnavailable,
            ),
            ("Weird", 502, ErrorCode::ProviderTemporarilyUnavailable),
            ("Weird", 429, ErrorCode::Throttled),
            ("ServiceNotFoundException", 400, ErrorCode::NotFound),
            ("Weird", 400, ErrorCode::Internal),
        ] {
            let e = classify_code("X", name, "", status, "c");
            assert_eq!(e.code, expected, "{name} / HTTP {status}");
        }
    }

    #[tokio::test]
    async fn raw_http_errors_are_classified() {
        for (status, body, header, expected) in [
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                "ThrottlingException",
                ErrorCode::Throttled,
            ),
            (
                503,
                r#"{"__type":"ServiceUnavailableException"}"#,
                "ServiceUnavailableException",
                ErrorCode::ProviderTemporarilyUnavailable,
            ),
        ] {
            let describe = mock!(Client::describe_services).then_http_response(move || {
                let mut r =
                    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body));
                r.headers_mut().insert("x-amzn-ErrorType", header);
                r.headers_mut().insert("x-amzn-RequestId", "req-123");
                r
            });
            let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe], |c| c
                .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled()));
            let provider = EcsProvider::with_client(client, config());
            let e = provider
                .provision(&op(Operation::Provision), &spec())
                .await
                .unwrap_err();
            assert_eq!(e.code, expected, "{e:?}");
            assert!(e.retriable);
            assert_eq!(e.provider_request_id.as_deref(), Some("req-123"));
        }
    }

    #[test]
    fn capacity_failures_are_insufficient_capacity() {
        let e = classify_code("DescribeServices", "RESOURCE:MEMORY", "", 200, "c");
        assert_eq!(e.code, ErrorCode::InsufficientCapacity);
        assert!(e.retriable);
    }

    #[tokio::test]
    async fn too_many_concurrent_attempts_is_throttling() {
        use aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionError;
        let describe = mock!(Client::describe_services).then_output(no_service);
        let describe_td = mock!(Client::describe_task_definition).then_error(family_missing);
        let register = mock!(Client::register_task_definition).then_error(|| {
            RegisterTaskDefinitionError::ClientException(
                ClientException::builder()
                    .message(
                        "Too many concurrent attempts to create a new revision of the \
                         specified family.",
                    )
                    .build(),
            )
        });
        let client = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&describe, &describe_td, &register]
        );
        let provider = EcsProvider::with_client(client, config());
        let e = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Throttled, "{e:?}");
        assert!(e.retriable);
        assert!(e.retry_after_ms.is_some());
        assert_eq!(e.provider_code.as_deref(), Some("ClientException"));
        // Any other ClientException is still the request's fault.
        let other = classify_code("RegisterTaskDefinition", "ClientException", "bad", 400, "c");
        assert_eq!(other.code, ErrorCode::InvalidConfiguration);
    }

    #[test]
    fn debug_responses_keep_names_and_mask_values() {
        let container = ContainerDefinition::builder()
            .name("app")
            .environment(
                KeyValuePair::builder()
                    .name("DB_URL")
                    .value("postgres://u:hunter2@db")
                    .build(),
            )
            .secrets(
                Secret::builder()
                    .name("TOKEN")
                    .value_from("arn:aws:ssm:x:1:parameter/t\"q")
                    .build()
                    .unwrap(),
            )
            .build();
        let shown = redact(&format!("{container:?}"));
        // The SDK already hides `environment`; references are masked here, names stay.
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("parameter/t"),
            "{shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 1, "{shown}");
        let plain = redact(r#"KeyValuePair { name: Some("A"), value: Some("s3cr\"et") }, x"#);
        assert_eq!(
            plain,
            r#"KeyValuePair { name: Some("A"), value: Some("<redacted>") }, x"#
        );
    }

    /// An error answer naming a modelled shape (`__type`) is parsed into its variant, and
    /// the variant's row applies, with the wire's code, message and request id.
    #[tokio::test]
    async fn wire_answers_parse_into_modelled_variants() {
        let describe = mock!(Client::describe_services).then_http_response(|| {
            let mut r = HttpResponse::new(
                StatusCode::try_from(400).unwrap(),
                SdkBody::from(
                    r#"{"__type":"ClusterNotFoundException","message":"Cluster not found."}"#,
                ),
            );
            r.headers_mut().insert("x-amzn-RequestId", "req-7");
            r
        });
        let client = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&describe], |c| c
            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled()));
        let err = client
            .describe_services()
            .cluster("prod")
            .services("tenant-acme")
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.as_service_error(),
                Some(DescribeServicesError::ClusterNotFoundException(_))
            ),
            "{err:?}"
        );
        let e = classify("DescribeServices", &err, "prod");
        assert_eq!(e.code, ErrorCode::InvalidConfiguration, "{e:?}");
        assert!(e.message.contains("\"prod\""), "{}", e.message);
        assert_eq!(e.provider_code.as_deref(), Some("ClusterNotFoundException"));
        assert_eq!(e.root_cause.as_deref(), Some("Cluster not found."));
        assert_eq!(e.provider_request_id.as_deref(), Some("req-7"));
    }

    /// Every modelled variant's row is the row of its name: the two ways into the table agree.
    #[test]
    fn modelled_variants_and_their_names_agree() {
        let raw = |status: u16| {
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
        };
        type Case = (fn() -> UpdateServiceError, &'static str);
        let variants: Vec<Case> = vec![
            (
                || {
                    UpdateServiceError::AccessDeniedException(
                        AccessDeniedException::builder().build(),
                    )
                },
                "AccessDeniedException",
            ),
            (
                || {
                    UpdateServiceError::ClientException(
                        ClientException::builder().message("bad").build(),
                    )
                },
                "ClientException",
            ),
            (
                || {
                    UpdateServiceError::ClientException(
                        ClientException::builder()
                            .message("Too many concurrent attempts to update the service.")
                            .build(),
                    )
                },
                "ClientException",
            ),
            (
                || {
                    UpdateServiceError::ClusterNotFoundException(
                        ClusterNotFoundException::builder().build(),
                    )
                },
                "ClusterNotFoundException",
            ),
            (
                || {
                    UpdateServiceError::InvalidParameterException(
                        InvalidParameterException::builder()
                            .message("bad cpu")
                            .build(),
                    )
                },
                "InvalidParameterException",
            ),
            (
                || {
                    UpdateServiceError::ServerException(
                        ServerException::builder().message("boom").build(),
                    )
                },
                "ServerException",
            ),
            (
                || {
                    UpdateServiceError::ServiceNotActiveException(
                        ServiceNotActiveException::builder()
                            .message("draining")
                            .build(),
                    )
                },
                "ServiceNotActiveException",
            ),
            (
                || {
                    UpdateServiceError::ServiceNotFoundException(
                        ServiceNotFoundException::builder().build(),
                    )
                },
                "ServiceNotFoundException",
            ),
            (
                || {
                    UpdateServiceError::PlatformUnknownException(
                        PlatformUnknownException::builder().build(),
                    )
                },
                "PlatformUnknownException",
            ),
            (
                || {
                    UpdateServiceError::UnsupportedFeatureException(
                        UnsupportedFeatureException::builder().build(),
                    )
                },
                "UnsupportedFeatureException",
            ),
            (
                || {
                    UpdateServiceError::NamespaceNotFoundException(
                        NamespaceNotFoundException::builder().build(),
                    )
                },
                "NamespaceNotFoundException",
            ),
        ];
        for (error, name) in variants {
            let message = error()
                .to_string()
                .split_once(": ")
                .map(|(_, m)| m.to_string())
                .unwrap_or_default();
            for status in [400, 503] {
                let by_variant = classify(
                    "UpdateService",
                    &SdkError::service_error(error(), raw(status)),
                    "prod",
                );
                let by_name = classify_code("UpdateService", name, &message, status, "prod");
                assert_eq!(by_variant, by_name, "{name} / HTTP {status}");
            }
        }
        let quota = classify(
            "RegisterTaskDefinition",
            &SdkError::service_error(
                RegisterTaskDefinitionError::LimitExceededException(
                    LimitExceededException::builder()
                        .message("too many revisions")
                        .build(),
                ),
                raw(400),
            ),
            "prod",
        );
        assert_eq!(quota.code, ErrorCode::QuotaExceeded);
        assert_eq!(
            quota.provider_code.as_deref(),
            Some("LimitExceededException")
        );
    }
}
