//! The error table of the Kubernetes API: what each answer of the API server (and each
//! failure of the client) means for an operation, decided where the error arises.

use std::time::Duration;

use super::naming::PROVIDER;
use crate::{
    error::{ComputeError, ErrorCode, PartialResult, Result},
    provider::kit,
};

/// Maps a Kubernetes API error onto the error table, where it arises.
pub fn classify(what: &str, err: &kube::Error) -> ComputeError {
    match err {
        kube::Error::Api(status) => classify_status(
            what,
            status.code,
            &status.reason,
            &status.message,
            status.details.as_ref(),
        ),
        kube::Error::Auth(e) => ComputeError::new(
            ErrorCode::PermissionDenied,
            format!("{what}: the worker could not authenticate to Kubernetes"),
        )
        .with_provider(PROVIDER, Some("AuthError"))
        .with_root_cause(e),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_) => ComputeError::new(
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API could not be reached"),
        )
        .with_provider(PROVIDER, Some("ConnectionError"))
        .with_root_cause(err),
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => ComputeError::new(
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API sent a response that could not be read"),
        )
        .with_provider(PROVIDER, Some("ResponseError"))
        .with_root_cause(err),
        other => ComputeError::internal(format!("{what}: unexpected Kubernetes client error"))
            .with_provider(PROVIDER, None)
            .with_root_cause(other),
    }
}

/// The table from the API server's status (HTTP code, reason, message) to our codes.
pub fn classify_status(
    what: &str,
    code: u16,
    reason: &str,
    message: &str,
    details: Option<&kube::core::response::StatusDetails>,
) -> ComputeError {
    let kind = details.map(|d| d.kind.as_str()).unwrap_or_default();
    let (ours, text) = match code {
        409 => (
            ErrorCode::Conflict,
            format!("{what}: a concurrent change got there first: {message}"),
        ),
        422 | 400 => {
            let causes: Vec<String> = details
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| match c.field.as_str() {
                            "" => c.message.clone(),
                            f => format!("{f}: {}", c.message),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let text = if causes.is_empty() {
                format!("{what}: Kubernetes refused the object: {message}")
            } else {
                format!(
                    "{what}: Kubernetes refused the object: {}",
                    causes.join("; ")
                )
            };
            (ErrorCode::InvalidConfiguration, text)
        }
        403 if message.contains("exceeded quota") || message.contains("quota") => (
            ErrorCode::QuotaExceeded,
            format!("{what}: a Kubernetes resource quota would be exceeded: {message}"),
        ),
        401 | 403 => (
            ErrorCode::PermissionDenied,
            format!("{what}: the worker's Kubernetes identity may not do this: {message}"),
        ),
        404 if kind == "namespaces" => (
            ErrorCode::InvalidConfiguration,
            format!("{what}: the namespace does not exist (--k8s-namespace): {message}"),
        ),
        404 => (ErrorCode::NotFound, format!("{what}: {message}")),
        429 => (
            ErrorCode::Throttled,
            format!("{what}: the Kubernetes API is throttling requests"),
        ),
        500..=599 => (
            ErrorCode::ProviderTemporarilyUnavailable,
            format!("{what}: the Kubernetes API failed (HTTP {code} {reason})"),
        ),
        _ => (
            ErrorCode::Internal,
            format!("{what}: unexpected Kubernetes API error (HTTP {code} {reason}): {message}"),
        ),
    };
    // kube makes up a reason with spaces ("Failed to parse error data") when the body was not
    // a Status, as from a proxy: the HTTP code is the better name then.
    let provider_code = if reason.is_empty() || reason.contains(' ') {
        format!("HTTP{code}")
    } else {
        reason.to_string()
    };
    let mut e = ComputeError::new(ours, text).with_provider(PROVIDER, Some(&provider_code));
    if matches!(
        ours,
        ErrorCode::Throttled | ErrorCode::ProviderTemporarilyUnavailable
    ) {
        let seconds = details.map(|d| d.retry_after_seconds).unwrap_or(0);
        if seconds > 0 {
            e = e.with_retry_after(Duration::from_secs(seconds.into()));
        } else if ours == ErrorCode::Throttled {
            e = e.with_retry_after(Duration::from_secs(1));
        }
    }
    if !message.is_empty() {
        e = e.with_root_cause(message);
    }
    e
}

/// What a failed Service step (its apply, or the delete of a stale one) means once the
/// Deployment beside it was applied: the operation is partly done, and `partial` says which
/// part. `err` is the step's error as [`classify`] made it under `what`.
///
/// A failure that may pass (a 5xx, throttling, a lost connection) keeps its code and stays
/// retriable: a retry renders the same Deployment, whose server-side apply is a no-op, so
/// only the Service is really applied again. Any other failure becomes `PARTIAL_FAILURE`,
/// which an operator must look at.
pub(super) fn service_failed_after_deployment(
    ns: &str,
    name: &str,
    what: &str,
    err: ComputeError,
) -> ComputeError {
    let reason = err
        .message
        .strip_prefix(what)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(&err.message)
        .to_string();
    let partial = PartialResult {
        succeeded: vec![format!("deployment {ns}/{name}")],
        failed: vec![format!("service {ns}/{name}: {reason}")],
    };
    if err.retriable {
        return err.with_partial(partial);
    }
    let mut e = ComputeError::new(
        ErrorCode::PartialFailure,
        format!("the Deployment {ns}/{name} was applied but its Service was not: {reason}"),
    )
    .with_provider(PROVIDER, err.provider_code.as_deref())
    .with_provider_request_id(err.provider_request_id.as_deref())
    .with_partial(partial);
    e.root_cause = err.root_cause;
    e
}

/// Treats "already gone" as success: deleting is idempotent.
pub(super) fn ok_if_gone<T>(result: std::result::Result<T, kube::Error>, what: &str) -> Result<()> {
    kit::ok_if_gone(result.map_err(|e| match &e {
        // Any 404 is gone, a missing namespace's too: it holds nothing. The table calls that
        // one a configuration error, which a delete must not fail on.
        kube::Error::Api(s) if s.code == 404 => {
            ComputeError::new(ErrorCode::NotFound, what).with_provider(PROVIDER, Some("NotFound"))
        }
        _ => classify(what, &e),
    }))
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::{
        Client,
        client::Body,
        core::response::{Status, StatusDetails},
    };
    use serde_json::json;

    use super::super::{
        KubernetesConfig, KubernetesProvider,
        test_support::{DEPLOYMENT, Exchange, api_status, mock_provider, op, spec},
    };
    use super::*;
    use crate::{contract::Operation, provider::ComputeProvider};

    /// The error table, request by request: each API answer and the code it must become.
    #[tokio::test]
    async fn api_errors_map_onto_the_error_table() {
        let cases = [
            (
                api_status(409, "Conflict", "the object has been modified", json!({})),
                ErrorCode::Conflict,
                "Conflict",
            ),
            (
                api_status(
                    409,
                    "AlreadyExists",
                    "deployments \"tenant-acme\" already exists",
                    json!({}),
                ),
                ErrorCode::Conflict,
                "AlreadyExists",
            ),
            (
                api_status(
                    422,
                    "Invalid",
                    "Deployment.apps \"tenant-acme\" is invalid",
                    json!({"causes": [{"reason": "FieldValueInvalid",
                        "message": "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain",
                        "field": "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.name"}]}),
                ),
                ErrorCode::InvalidConfiguration,
                "Invalid",
            ),
            (
                api_status(
                    403,
                    "Forbidden",
                    "deployments.apps is forbidden: User \"x\" cannot patch",
                    json!({}),
                ),
                ErrorCode::PermissionDenied,
                "Forbidden",
            ),
            (
                api_status(
                    403,
                    "Forbidden",
                    "deployments.apps \"tenant-acme\" is forbidden: exceeded quota: compute, requested: pods=3, used: pods=10, limited: pods=10",
                    json!({}),
                ),
                ErrorCode::QuotaExceeded,
                "Forbidden",
            ),
            (
                api_status(
                    404,
                    "NotFound",
                    "namespaces \"nope\" not found",
                    json!({"name": "nope", "kind": "namespaces"}),
                ),
                ErrorCode::InvalidConfiguration,
                "NotFound",
            ),
            (
                api_status(
                    429,
                    "TooManyRequests",
                    "too many requests",
                    json!({"retryAfterSeconds": 7}),
                ),
                ErrorCode::Throttled,
                "TooManyRequests",
            ),
            (
                api_status(
                    500,
                    "InternalError",
                    "etcdserver: request timed out",
                    json!({}),
                ),
                ErrorCode::ProviderTemporarilyUnavailable,
                "InternalError",
            ),
            (
                api_status(
                    503,
                    "ServiceUnavailable",
                    "the server is shutting down",
                    json!({"retryAfterSeconds": 3}),
                ),
                ErrorCode::ProviderTemporarilyUnavailable,
                "ServiceUnavailable",
            ),
            (
                json!("<html>bad gateway</html>"),
                ErrorCode::ProviderTemporarilyUnavailable,
                "HTTP502",
            ),
        ];
        for (body, want, provider_code) in cases {
            let status = body["code"].as_u64().unwrap_or(502) as u16;
            let (provider, server) = mock_provider(vec![Exchange {
                method: Method::PATCH,
                path: DEPLOYMENT,
                status,
                body: body.clone(),
            }]);
            let err = provider
                .provision(&op(Operation::Provision), &spec())
                .await
                .unwrap_err();
            server.await.unwrap();
            assert_eq!(err.code, want, "{body}: {err}");
            assert_eq!(err.provider.as_deref(), Some("kubernetes"));
            assert_eq!(err.provider_code.as_deref(), Some(provider_code), "{body}");
            assert_eq!(
                err.retriable,
                want.classification() == crate::error::Classification::Retriable
            );
            match status {
                422 => assert!(
                    err.message.contains(
                        "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.name"
                    ),
                    "{}",
                    err.message
                ),
                429 => assert_eq!(err.retry_after_ms, Some(7000)),
                503 => assert_eq!(err.retry_after_ms, Some(3000)),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_connection_failure_is_retriable() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        let provider = KubernetesProvider::with_client(
            Client::new(service, "default"),
            KubernetesConfig::default(),
        );
        let err = provider
            .provision(&op(Operation::Provision), &spec())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ProviderTemporarilyUnavailable, "{err}");
        assert!(err.retriable);
    }

    /// A Service that fails beside an applied Deployment: both parts are named, a passing
    /// failure stays retriable (with its delay), any other needs an operator.
    #[test]
    fn a_service_failure_beside_an_applied_deployment_names_both_parts() {
        let what = "applying the Service";
        let unavailable = classify_status(
            what,
            503,
            "ServiceUnavailable",
            "the server is shutting down",
            Some(&StatusDetails {
                name: "tenant-acme".into(),
                group: String::new(),
                kind: "services".into(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: 3,
            }),
        );
        let e = service_failed_after_deployment("default", "tenant-acme", what, unavailable);
        assert_eq!(e.code, ErrorCode::ProviderTemporarilyUnavailable);
        assert!(e.retriable);
        assert_eq!(e.retry_after_ms, Some(3000));
        let partial = e.partial.unwrap();
        assert_eq!(partial.succeeded, ["deployment default/tenant-acme"]);
        assert_eq!(
            partial.failed,
            [
                "service default/tenant-acme: the Kubernetes API failed (HTTP 503 ServiceUnavailable)"
            ]
        );

        let forbidden = classify_status(
            what,
            403,
            "Forbidden",
            "services is forbidden: User \"x\" cannot patch",
            None,
        );
        let e = service_failed_after_deployment("default", "tenant-acme", what, forbidden);
        assert_eq!(e.code, ErrorCode::PartialFailure);
        assert_eq!(
            e.classification,
            crate::error::Classification::RequiresManualIntervention
        );
        assert!(!e.retriable);
        assert_eq!(e.provider.as_deref(), Some("kubernetes"));
        assert_eq!(e.provider_code.as_deref(), Some("Forbidden"));
        assert!(e.root_cause.unwrap().contains("cannot patch"));
        let partial = e.partial.unwrap();
        assert_eq!(partial.succeeded, ["deployment default/tenant-acme"]);
        assert_eq!(partial.failed.len(), 1);
        assert!(
            partial.failed[0].starts_with(
                "service default/tenant-acme: the worker's Kubernetes identity may not do this"
            ),
            "{partial:?}"
        );
    }

    #[test]
    fn any_404_is_gone_and_nothing_else_is() {
        let api = |code: u16, kind: &str| {
            Err::<(), _>(kube::Error::Api(
                Status::failure("not there", "NotFound")
                    .with_code(code)
                    .with_details(StatusDetails {
                        name: "tenant-acme".into(),
                        group: String::new(),
                        kind: kind.into(),
                        uid: String::new(),
                        causes: Vec::new(),
                        retry_after_seconds: 0,
                    })
                    .boxed(),
            ))
        };
        assert!(ok_if_gone(Ok::<_, kube::Error>(1), "deleting").is_ok());
        assert!(ok_if_gone(api(404, "services"), "deleting").is_ok());
        // The table calls a missing namespace a configuration error; for a delete it is gone.
        assert_eq!(
            classify("x", &api(404, "namespaces").unwrap_err()).code,
            ErrorCode::InvalidConfiguration
        );
        assert!(ok_if_gone(api(404, "namespaces"), "deleting").is_ok());
        let e = ok_if_gone(api(409, "services"), "deleting").unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }
}
