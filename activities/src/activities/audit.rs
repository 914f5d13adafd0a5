//! The audit trail: every attempt of every activity is recorded in the store with its
//! outcome, latency and what it was about ([`ComputeActivities::audited`]).

use super::*;

/// What an attempt was about, as far as the activity got to know it.
#[derive(Debug, Default)]
pub(super) struct Subject {
    tenant_id: Option<String>,
    execution_id: Option<String>,
    operation: Option<&'static str>,
}

/// One attempt of an activity while it runs: what the audit trail will record of it. The
/// activity says what the attempt is about as it learns it (the tenant once validated, the
/// execution once recorded), so that even a failed attempt is filed under its execution.
pub(super) struct Attempt {
    started: Instant,
    started_at: DateTime<Utc>,
    activity_type: String,
    activity_id: String,
    workflow_id: Option<String>,
    run_id: Option<String>,
    number: u32,
    subject: Mutex<Subject>,
}

impl Attempt {
    pub(super) fn begin(ctx: &ActivityContext) -> Self {
        let info = ctx.info();
        Attempt {
            started: Instant::now(),
            started_at: now(),
            activity_type: info.activity_type.clone(),
            activity_id: info.activity_id.clone(),
            workflow_id: info.workflow_id.clone(),
            run_id: info.workflow_run_id.clone(),
            number: info.attempt,
            subject: Mutex::new(Subject::default()),
        }
    }

    pub(super) fn subject(&self) -> std::sync::MutexGuard<'_, Subject> {
        // The subject is plain data: a panic elsewhere cannot leave it half-written.
        self.subject.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attempt is about this (validated) tenant, and this operation if any.
    pub(super) fn about_tenant(&self, tenant_id: &str, operation: Option<&'static str>) {
        let mut s = self.subject();
        s.tenant_id = Some(tenant_id.to_string());
        s.operation = operation.or(s.operation);
    }

    /// The attempt is about this execution.
    pub(super) fn about_execution(&self, execution_id: &str) {
        self.subject().execution_id = Some(execution_id.to_string());
    }

    /// The attempt is about the execution `status` describes.
    pub(super) fn about_status(&self, status: &ExecutionStatus) {
        self.about_tenant(&status.tenant_id, Some(status.operation.as_str()));
        self.about_execution(&status.execution_id);
    }

    /// The record of the attempt, ended now with `error` (or success), and what it was about.
    pub(super) fn finish(self, error: Option<&ComputeError>) -> (AttemptRecord, Subject) {
        let latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let subject = self
            .subject
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let record = AttemptRecord {
            execution_id: subject.execution_id.clone(),
            tenant_id: subject.tenant_id.clone(),
            activity_type: self.activity_type,
            activity_id: self.activity_id,
            workflow_id: self.workflow_id,
            run_id: self.run_id,
            attempt: self.number,
            started_at: self.started_at,
            finished_at: now(),
            latency_ms,
            outcome: error.map_or(AttemptOutcome::Ok, |e| AttemptOutcome::Failed(e.code)),
            retriable: error.is_some_and(|e| e.retriable),
            provider: error.and_then(|e| e.provider.clone()),
            provider_code: error.and_then(|e| e.provider_code.clone()),
            provider_request_id: error.and_then(|e| e.provider_request_id.clone()),
            // Only our own message: it never carries a secret or a refused value (the root
            // cause, a driver's or a provider's text, is not kept).
            message: error.map(|e| e.message.clone()),
        };
        (record, subject)
    }
}

impl ComputeActivities {
    /// Runs one attempt of an activity and records it in the audit trail, whatever its
    /// outcome; every activity goes through here exactly once. The body logs its own failure
    /// (see [`fail`]); this turns it into the activity's `ApplicationFailure`.
    ///
    /// Recording never changes the activity's outcome: a store that cannot take the record
    /// within [`AUDIT_WRITE_TIMEOUT`] costs a warning, nothing more. An attempt cut short by the
    /// worker's death leaves no row; the next attempt's number shows the gap.
    pub(super) async fn audited<T>(
        &self,
        ctx: &ActivityContext,
        body: impl AsyncFnOnce(&Attempt) -> Result<T, ComputeError>,
    ) -> Result<T, ActivityError> {
        let attempt = Attempt::begin(ctx);
        let result = body(&attempt).await;
        let (record, subject) = attempt.finish(result.as_ref().err());
        let span = tracing::info_span!(
            "compute",
            tenant_id = subject.tenant_id.as_deref(),
            operation = subject.operation,
            execution_id = subject.execution_id.as_deref(),
            activity = %record.activity_type,
            attempt = record.attempt,
        );
        let (outcome, latency_ms) = (record.outcome, record.latency_ms);
        let written = tokio::time::timeout(AUDIT_WRITE_TIMEOUT, self.store.record_attempt(record))
            .instrument(span.clone())
            .await;
        span.in_scope(|| match written {
            Ok(Ok(())) => tracing::debug!(%outcome, latency_ms, "Attempt recorded."),
            Ok(Err(e)) => {
                tracing::warn!(%outcome, latency_ms, error = %e, "Could not record the attempt in the audit trail; the activity's outcome stands.")
            }
            Err(_) => {
                tracing::warn!(%outcome, latency_ms, timeout = ?AUDIT_WRITE_TIMEOUT, "The audit trail did not take the attempt in time; the activity's outcome stands.")
            }
        });
        result.map_err(|e| ActivityError::application(e.into_application_failure()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32) -> Attempt {
        Attempt {
            started: Instant::now(),
            started_at: now(),
            activity_type: names::PROVISION_ACTIVITY.into(),
            activity_id: "1".into(),
            workflow_id: Some("caller".into()),
            run_id: Some("run".into()),
            number,
            subject: Mutex::default(),
        }
    }

    #[test]
    fn a_failed_attempt_keeps_its_code_and_the_providers_facts_but_not_the_root_cause() {
        let a = attempt(2);
        a.about_tenant("acme", Some("provision"));
        a.about_execution("acme-provision-1");
        let e = ComputeError::new(ErrorCode::Throttled, "CreateService: ECS is throttling")
            .with_provider("ecs", Some("ThrottlingException"))
            .with_provider_request_id(Some("req-9"))
            .with_root_cause("raw driver text: password=hunter2");
        let (r, subject) = a.finish(Some(&e));
        assert_eq!(subject.operation, Some("provision"));
        assert_eq!(r.execution_id.as_deref(), Some("acme-provision-1"));
        assert_eq!(r.tenant_id.as_deref(), Some("acme"));
        assert_eq!((r.attempt, r.workflow_id.as_deref()), (2, Some("caller")));
        assert_eq!(r.outcome, AttemptOutcome::Failed(ErrorCode::Throttled));
        assert!(r.retriable);
        assert_eq!(r.provider_code.as_deref(), Some("ThrottlingException"));
        assert_eq!(r.provider_request_id.as_deref(), Some("req-9"));
        assert_eq!(r.message.as_deref(), Some(e.message.as_str()));
        assert!(!format!("{r:?}").contains("hunter2"));
        assert!(r.finished_at >= r.started_at);

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "THROTTLED");
        assert_eq!(json["providerRequestId"], "req-9");
        assert_eq!(serde_json::from_value::<AttemptRecord>(json).unwrap(), r);
    }

    #[test]
    fn a_successful_attempt_is_ok_and_says_only_what_it_was_about() {
        let a = attempt(1);
        a.about_execution("x-delete-1");
        let (r, _) = a.finish(None);
        assert_eq!(r.outcome, AttemptOutcome::Ok);
        assert!(!r.retriable && r.message.is_none() && r.provider.is_none());
        assert_eq!(r.tenant_id, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "ok");
        assert!(json.get("tenantId").is_none() && json.get("message").is_none());
        assert!(serde_json::from_value::<AttemptOutcome>(serde_json::json!("NOPE")).is_err());
    }
}
