//! Restate awakeables: resolve or reject through a configured ingress, and what each answer
//! means (cargo feature `restate`).

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::{Attempt, Verdict, callback_error, truncate_chars};
use crate::{
    contract::{ComputeCallback, ExecutionState, RestateCallback},
    error::{ComputeError, ErrorCode},
};

/// How long one Restate ingress call may take.
const RESTATE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest reject reason sent to Restate (one line).
const RESTATE_REASON_LIMIT: usize = 1024;

/// The HTTP client and the configured ingresses: a target may only name one of them.
#[derive(Debug)]
pub(crate) struct Restate {
    http: reqwest::Client,
    ingress: Vec<Url>,
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

fn http_client() -> Result<reqwest::Client, ComputeError> {
    reqwest::Client::builder()
        .timeout(RESTATE_TIMEOUT)
        // A redirect would send the callback to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ComputeError::internal("could not build the HTTP client").with_root_cause(e))
}

impl Default for Restate {
    fn default() -> Self {
        Restate {
            http: http_client().unwrap_or_default(),
            ingress: Vec::new(),
        }
    }
}

impl Restate {
    /// A sender for the configured ingresses (checked here: see [`parse_ingress_urls`]).
    pub(crate) fn new(urls: &[String]) -> Result<Self, ComputeError> {
        Ok(Restate {
            http: http_client()?,
            ingress: parse_ingress_urls(urls)?,
        })
    }

    /// The configured ingress a target names (the first one when it names none).
    pub(crate) fn ingress_for(&self, r: &RestateCallback) -> Result<&Url, ComputeError> {
        let Some(requested) = &r.ingress_url else {
            return self.ingress.first().ok_or_else(|| {
                ComputeError::invalid(
                    "callback.restate: this worker has no Restate ingress configured \
                     (--restate-ingress-url / RESTATE_INGRESS_URL)",
                )
            });
        };
        let url = Url::parse(requested).map_err(|e| {
            ComputeError::invalid(format!("callback.restate.ingressUrl: not a URL: {e}"))
        })?;
        self.ingress
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

    /// Resolves or rejects the awakeable with the callback (one attempt).
    pub(crate) async fn complete(&self, r: &RestateCallback, cb: &ComputeCallback) -> Attempt {
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

/// The Restate reject reason: one line, `<CODE>: <message>`.
pub fn reject_reason(error: &ComputeError) -> String {
    format!("{}: {}", error.code.as_str(), error.message)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(RESTATE_REASON_LIMIT)
        .collect()
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
}
