//! Completing callers that are not Temporal workflows: Step Functions task tokens
//! ([`step_functions`], cargo feature `step-functions`) and Restate awakeables ([`restate`],
//! cargo feature `restate`). (Temporal signals go through the activity's own client, in
//! `activities.rs`.)
//!
//! Each call is one attempt. Its answer is decided here, where the target's reply is known:
//! [`Verdict::Delivered`], [`Verdict::Undeliverable`] when the target says it never will
//! accept it (a used or expired token, a malformed awakeable id), or a retriable
//! [`ComputeError`] for everything worth another try (throttling, 5xx, no connection). The
//! delivery activity turns that error into a retried activity attempt, so every attempt is
//! recorded and visible.

use crate::{
    contract::{CallbackTarget, ComputeCallback, ExecutionState},
    error::{ComputeError, ErrorCode},
};

#[cfg(feature = "restate")]
pub mod restate;
#[cfg(feature = "step-functions")]
pub mod step_functions;

/// Step Functions' limits: `error` up to 256 characters, `cause` up to 32,768.
pub const SFN_ERROR_LIMIT: usize = 256;
/// See [`SFN_ERROR_LIMIT`].
pub const SFN_CAUSE_LIMIT: usize = 32_768;
pub use crate::contract::MAX_TASK_TOKEN_LEN;

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
#[derive(Default)]
pub struct Callbacks {
    #[cfg(feature = "step-functions")]
    sfn: step_functions::StepFunctions,
    /// No Restate ingress by default: Restate targets are refused.
    #[cfg(feature = "restate")]
    restate: restate::Restate,
    /// Namespaces a `temporal` target may name besides the worker's own (an absent namespace
    /// is the worker's own).
    namespaces: Vec<String>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Callbacks");
        #[cfg(feature = "restate")]
        d.field("restate", &self.restate);
        d.field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

/// The refusal of a target whose sink this worker was built without.
#[allow(dead_code)]
fn not_compiled(field: &str, what: &str, feature: &str) -> ComputeError {
    ComputeError::invalid(format!(
        "{field}: this worker is built without {what} callbacks (cargo feature `{feature}`)"
    ))
}

/// Checks the configured Restate ingress URLs (`--restate-ingress-url`) at start.
pub fn check_ingress_urls(urls: &[String]) -> Result<(), ComputeError> {
    #[cfg(feature = "restate")]
    return restate::parse_ingress_urls(urls).map(|_| ());
    #[cfg(not(feature = "restate"))]
    if urls.is_empty() {
        Ok(())
    } else {
        Err(not_compiled("--restate-ingress-url", "Restate", "restate"))
    }
}

impl Callbacks {
    /// Senders for the configured Restate ingresses (see [`check_ingress_urls`]); the Step
    /// Functions client is built on first use.
    pub fn new(restate_ingress: &[String]) -> Result<Self, ComputeError> {
        check_ingress_urls(restate_ingress)?;
        Ok(Callbacks {
            #[cfg(feature = "step-functions")]
            sfn: step_functions::StepFunctions::default(),
            #[cfg(feature = "restate")]
            restate: restate::Restate::new(restate_ingress)?,
            namespaces: Vec::new(),
        })
    }

    /// Lets `temporal` targets name these namespaces: the worker's own and those in
    /// `--callback-namespaces`. Without it only targets that name no namespace (the worker's
    /// own) are accepted.
    pub fn with_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.namespaces = namespaces.into_iter().collect();
        self
    }

    /// Uses this Step Functions client (tests).
    #[cfg(feature = "step-functions")]
    pub fn with_sfn_client(self, client: aws_sdk_sfn::Client) -> Self {
        Callbacks {
            sfn: step_functions::StepFunctions::with_client(client),
            ..self
        }
    }

    /// Checks what validation of the request's shape cannot: a Restate target must name a
    /// configured ingress (so a request cannot make the worker call an arbitrary URL), and
    /// some ingress must be configured at all; a Temporal target may name only an allowed
    /// namespace; a sink this worker was built without is refused.
    pub fn check_target(&self, target: &CallbackTarget) -> Result<(), ComputeError> {
        match target {
            #[cfg(feature = "restate")]
            CallbackTarget::Restate(r) => self.restate.ingress_for(r).map(|_| ()),
            #[cfg(not(feature = "restate"))]
            CallbackTarget::Restate(_) => {
                Err(not_compiled("callback.restate", "Restate", "restate"))
            }
            CallbackTarget::Temporal(t) => match &t.namespace {
                Some(n) if !self.namespaces.contains(n) => Err(ComputeError::invalid(
                    "callback.temporal.namespace: not this worker's namespace nor one of its \
                     --callback-namespaces",
                )),
                _ => Ok(()),
            },
            #[cfg(feature = "step-functions")]
            CallbackTarget::StepFunctions(_) => Ok(()),
            #[cfg(not(feature = "step-functions"))]
            CallbackTarget::StepFunctions(_) => Err(not_compiled(
                "callback.stepFunctions",
                "Step Functions",
                "step-functions",
            )),
        }
    }

    /// Delivers `callback` to a Step Functions or Restate target (one attempt).
    #[cfg_attr(
        not(any(feature = "step-functions", feature = "restate")),
        allow(unused_variables)
    )]
    pub async fn deliver(&self, target: &CallbackTarget, callback: &ComputeCallback) -> Attempt {
        match target {
            #[cfg(feature = "step-functions")]
            CallbackTarget::StepFunctions(t) => self.sfn.complete(t, callback).await,
            #[cfg(feature = "restate")]
            CallbackTarget::Restate(r) => self.restate.complete(r, callback).await,
            CallbackTarget::Temporal(_) => Err(ComputeError::internal(
                "a Temporal target is signalled by the activity, not here",
            )),
            // Refused by `check_target` before the execution began.
            #[allow(unreachable_patterns)]
            _ => Ok(Verdict::Undeliverable(
                "this worker is built without this kind of callback".into(),
            )),
        }
    }

    /// Tells a Step Functions task that the execution is still running (one attempt).
    /// Targets without a heartbeat are left alone.
    pub async fn heartbeat(&self, target: &CallbackTarget) -> Attempt {
        match target {
            #[cfg(feature = "step-functions")]
            CallbackTarget::StepFunctions(t) => self.sfn.heartbeat(t).await,
            _ => Ok(Verdict::Delivered),
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

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
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

#[cfg(all(test, feature = "restate", feature = "step-functions"))]
mod tests {
    use super::*;
    use crate::contract::{RestateCallback, StepFunctionsCallback};

    fn sfn_target() -> CallbackTarget {
        CallbackTarget::StepFunctions(StepFunctionsCallback {
            task_token: "AAAAKgAAAAIAAAAAAAAAAQ==".into(),
            heartbeat_seconds: None,
        })
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

#[cfg(test)]
mod left_out {
    use super::*;

    /// A minimal build refuses the sinks it was built without, at the request (nothing is
    /// started) and at start-up (a configured ingress), naming the feature.
    #[test]
    fn sinks_left_out_of_the_build_are_refused_with_their_feature() {
        let callbacks = Callbacks::default();
        #[cfg(not(feature = "step-functions"))]
        {
            let target = CallbackTarget::StepFunctions(crate::contract::StepFunctionsCallback {
                task_token: "AAAA".into(),
                heartbeat_seconds: None,
            });
            let e = callbacks.check_target(&target).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfiguration);
            assert!(e.message.contains("`step-functions`"), "{}", e.message);
        }
        #[cfg(not(feature = "restate"))]
        {
            let target = CallbackTarget::Restate(crate::contract::RestateCallback {
                awakeable_id: "sign_1abc".into(),
                ingress_url: None,
            });
            let e = callbacks.check_target(&target).unwrap_err();
            assert!(e.message.contains("`restate`"), "{}", e.message);
            let e = Callbacks::new(&["http://127.0.0.1:8080".into()]).unwrap_err();
            assert!(e.message.contains("`restate`"), "{}", e.message);
        }
        assert!(check_ingress_urls(&[]).is_ok());
        let _ = callbacks;
    }
}
