//! The activities: the contract's five, and the internal ones the tracker and
//! `TenantComputeWorkflow` use.
//!
//! Every public activity takes raw JSON and validates it itself (see [`crate::validate`]).
//! Every provider and store error is classified where it arises and turned into an
//! `ApplicationFailure` here, explicitly: never through `?` on an untyped error, which the SDK
//! would make retryable with no type.
//!
//! Every attempt of every activity runs through [`ComputeActivities::audited`], which records
//! it in the store's audit trail (attempt number, outcome, latency, the provider's request id
//! where known): Temporal's history keeps only an activity's last attempt.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_client::{
    UntypedSignal, WorkflowExecutionInfo, WorkflowHandle, WorkflowIdReusePolicy,
    WorkflowSignalOptions, WorkflowStartOptions, errors::WorkflowInteractionError,
    errors::WorkflowStartError,
};
use temporalio_common::{
    UntypedWorkflow,
    data_converters::{PayloadConverter, RawValue},
    search_attributes::{SearchAttributeKey, SearchAttributes},
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, field::Empty};

use crate::{
    callback::{Callbacks, Verdict},
    contract::{
        AttemptOutcome, AttemptRecord, CallbackTarget, ComputeCallback, ComputeSpec, DeliveryState,
        ExecutionHandle, ExecutionState, ExecutionStatus, Metadata, Operation, Progress,
        TemporalCallback, TenantState, now,
    },
    error::{ComputeError, ErrorCode},
    input, names,
    provider::{ComputeProvider, CurrentState, Observation, OperationContext},
    store::{
        self, DeliveryAttempt, ExecutionRecord, ExecutionStore, NewExecution, StoreError,
        Transition,
    },
    validate,
};

/// The `TenantId` keyword search attribute.
pub const TENANT_ID_KEY: SearchAttributeKey<String> =
    SearchAttributeKey::keyword(names::TENANT_ID_SEARCH_ATTRIBUTE);

/// The least pause after an observation failed with a retriable error.
const OBSERVE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How long recording an attempt in the audit trail may take before it is given up (with a
/// warning): the audit trail never holds up, let alone fails, the activity it records.
const AUDIT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most attempts `GetComputeExecution` returns (the latest ones), so that a long
/// execution's trail never outgrows a payload; the store keeps them all.
pub const MAX_ATTEMPTS_IN_STATUS: usize = 500;

/// Settings of the activities.
#[derive(Debug, Clone)]
pub struct ActivitySettings {
    /// The task queue trackers run on (the worker's own).
    pub task_queue: String,
    /// Timeout of an operation whose request gives none.
    pub default_timeout: Duration,
    /// How often a watch reports progress back to its tracker at most.
    pub progress_report_interval: Duration,
    /// How many history events a tracker run may grow to before it continues as new (0: the
    /// tracker's default).
    pub tracker_max_history_events: u32,
    /// Cancelled when the worker shuts down: in-flight watches end at once with a retriable
    /// failure, so their trackers resume them on another worker.
    pub release: CancellationToken,
}

impl Default for ActivitySettings {
    fn default() -> Self {
        ActivitySettings {
            task_queue: names::DEFAULT_TASK_QUEUE.to_string(),
            default_timeout: Duration::from_secs(600),
            progress_report_interval: Duration::from_secs(5),
            tracker_max_history_events: 0,
            release: CancellationToken::new(),
        }
    }
}

/// Input of the tracker workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackerInput {
    /// The execution tracked.
    pub execution_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its operation.
    pub operation: Operation,
    /// When it times out, counted from the tracker's start.
    pub timeout_ms: u64,
    /// How many history events a run may grow to before it continues as new (0: the
    /// tracker's default).
    #[serde(default)]
    pub max_history_events: u32,
    /// What an earlier run of the same tracker handed over when it continued as new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<Value>,
}

impl TrackerInput {
    /// Validates a tracker's raw input (anyone who can start a workflow can start one).
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: TrackerInput = input::decode_as(raw, "input")?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        validate::check_tenant_id("tenantId", &input.tenant_id)?;
        Ok(input)
    }
}

/// The `attach-callback` signal: one more caller to tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachCallback {
    /// The caller's target; absent for a caller that only polls.
    #[serde(default)]
    pub target: Option<CallbackTarget>,
}

impl AttachCallback {
    /// Validates the signal's raw payload: `{"target": <callback target> | null}`. Anyone who
    /// can signal a workflow in the namespace can send one, so it is checked like a request.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let v = input::decode(raw, "signal attach-callback")?;
        let Value::Object(map) = &v else {
            return Err(ComputeError::invalid(
                "signal attach-callback: must be an object {\"target\": ...}",
            ));
        };
        // `target` must be there (null for a caller that only polls): an object without it
        // is not an attach-callback at all.
        let target = match map.get("target") {
            None => {
                return Err(ComputeError::invalid(
                    "signal attach-callback: target is required (null for none)",
                ));
            }
            Some(Value::Null) => None,
            Some(t) => Some(validate::callback_target(t)?),
        };
        Ok(AttachCallback { target })
    }
}

/// Input of the watch activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchInput {
    /// The execution.
    pub execution_id: String,
    /// The progress the tracker already knows, so the watch returns only on news.
    #[serde(default)]
    pub known_progress: Option<Progress>,
}

/// Input of the delivery activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverInput {
    /// Where to.
    pub target: CallbackTarget,
    /// What.
    pub callback: ComputeCallback,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryOutcome {
    /// The target accepted it.
    pub delivered: bool,
    /// Why not, when the target will never accept it (for example: the workflow is closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undeliverable_reason: Option<String>,
    /// The attempts it took (this one included).
    #[serde(default)]
    pub attempts: u32,
}

/// Input of the heartbeat activity: the targets that asked for heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatInput {
    /// The execution reported as running.
    pub execution_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its operation.
    pub operation: Operation,
    /// Where to.
    pub targets: Vec<CallbackTarget>,
}

/// What the heartbeat activity did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatOutcome {
    /// Targets that took the heartbeat.
    pub sent: u32,
    /// Targets that never will (the token is used or expired): stop heartbeating them.
    #[serde(default)]
    pub finished: Vec<CallbackTarget>,
}

/// Input of the intervention activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterventionInput {
    /// The tenant.
    pub tenant_id: String,
    /// The execution whose failure led here.
    pub execution_id: String,
    /// Why.
    pub reason: String,
}

/// The most callers one execution tells (the tracker drops `attach-callback` signals past
/// it), and so the most targets one heartbeat names.
pub const MAX_CALLBACK_TARGETS: usize = 100;
/// The longest reason recorded with a manual-intervention mark.
const MAX_REASON_CHARS: usize = 2000;

/// A target decoded by serde is re-validated as a request's `callback` would be: serde
/// checks only the shape, not the bounds.
fn check_target_shape(target: &CallbackTarget) -> Result<(), ComputeError> {
    let v = serde_json::to_value(target)
        .map_err(|_| ComputeError::invalid("target: is not a callback target"))?;
    validate::callback_target(&v).map(|_| ())
}

impl WatchInput {
    /// Validates the watch activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: WatchInput = input::decode_as(raw, "input")?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        Ok(input)
    }
}

impl DeliverInput {
    /// Validates the delivery activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: DeliverInput = input::decode_as(raw, "input")?;
        check_target_shape(&input.target)?;
        let cb = &input.callback;
        validate::check_execution_id("callback.executionId", &cb.execution_id)?;
        validate::check_tenant_id("callback.tenantId", &cb.tenant_id)?;
        Ok(input)
    }
}

impl HeartbeatInput {
    /// Validates the heartbeat activity's raw input (the execution id is empty before
    /// `TenantComputeWorkflow` has one).
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: HeartbeatInput = input::decode_as(raw, "input")?;
        if !input.execution_id.is_empty() {
            validate::check_execution_id("executionId", &input.execution_id)?;
        }
        if !input.tenant_id.is_empty() {
            validate::check_tenant_id("tenantId", &input.tenant_id)?;
        }
        if input.targets.len() > MAX_CALLBACK_TARGETS {
            return Err(ComputeError::invalid(format!(
                "targets: at most {MAX_CALLBACK_TARGETS} targets"
            )));
        }
        input.targets.iter().try_for_each(check_target_shape)?;
        Ok(input)
    }
}

impl InterventionInput {
    /// Validates the intervention activity's raw input.
    pub fn from_raw(raw: &RawValue) -> Result<Self, ComputeError> {
        let input: InterventionInput = input::decode_as(raw, "input")?;
        validate::check_tenant_id("tenantId", &input.tenant_id)?;
        validate::check_execution_id("executionId", &input.execution_id)?;
        if input.reason.chars().count() > MAX_REASON_CHARS {
            return Err(ComputeError::invalid(format!(
                "reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(input)
    }
}

/// The request as the store keeps it: a Step Functions task token completes the caller's
/// task, so only its digest is kept (the tracker holds the token in its own state, from the
/// `attach-callback` signal).
fn store_safe_request(request: &Value) -> Value {
    let mut request = request.clone();
    if let Some(sfn) = request
        .pointer_mut("/callback/stepFunctions")
        .and_then(Value::as_object_mut)
        && let Some(Value::String(token)) = sfn.remove("taskToken")
    {
        sfn.insert(
            "taskTokenDigest".into(),
            Value::String(crate::contract::token_digest(&token)),
        );
    }
    request
}

/// The activities, sharing one store and one provider.
pub struct ComputeActivities {
    store: Arc<dyn ExecutionStore>,
    provider: Arc<dyn ComputeProvider>,
    settings: ActivitySettings,
    callbacks: Arc<Callbacks>,
}

fn store_err(e: StoreError) -> ComputeError {
    e.to_compute_error()
}

/// Logs a failure at the level its class calls for and passes it on (to
/// [`ComputeActivities::audited`], which records it and turns it into the activity's failure).
fn fail(e: ComputeError, what: &str) -> ComputeError {
    e.log(what);
    e
}

fn op_span(operation: &str, tenant_id: &str) -> Span {
    tracing::info_span!("compute", tenant_id = %tenant_id, operation = %operation, execution_id = Empty)
}

fn handle_of(record: &ExecutionRecord, attached: bool) -> ExecutionHandle {
    let s = &record.status;
    ExecutionHandle {
        execution_id: s.execution_id.clone(),
        tenant_id: s.tenant_id.clone(),
        operation: s.operation,
        state: s.state,
        resource_ids: s.resource_ids.clone(),
        tracker_workflow_id: names::tracker_workflow_id(&s.execution_id),
        attached,
        error: if s.state.is_final() {
            s.error.clone()
        } else {
            None
        },
    }
}

/// The default callback target: the workflow that called the activity.
fn default_target(ctx: &ActivityContext) -> Option<CallbackTarget> {
    let info = ctx.info();
    info.workflow_id.clone().map(|workflow_id| {
        CallbackTarget::Temporal(TemporalCallback {
            workflow_id,
            run_id: None,
            namespace: None,
        })
    })
}

/// What an attempt was about, as far as the activity got to know it.
#[derive(Debug, Default)]
struct Subject {
    tenant_id: Option<String>,
    execution_id: Option<String>,
    operation: Option<&'static str>,
}

/// One attempt of an activity while it runs: what the audit trail will record of it. The
/// activity says what the attempt is about as it learns it (the tenant once validated, the
/// execution once recorded), so that even a failed attempt is filed under its execution.
struct Attempt {
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
    fn begin(ctx: &ActivityContext) -> Self {
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

    fn subject(&self) -> std::sync::MutexGuard<'_, Subject> {
        // The subject is plain data: a panic elsewhere cannot leave it half-written.
        self.subject.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attempt is about this (validated) tenant, and this operation if any.
    fn about_tenant(&self, tenant_id: &str, operation: Option<&'static str>) {
        let mut s = self.subject();
        s.tenant_id = Some(tenant_id.to_string());
        s.operation = operation.or(s.operation);
    }

    /// The attempt is about this execution.
    fn about_execution(&self, execution_id: &str) {
        self.subject().execution_id = Some(execution_id.to_string());
    }

    /// The attempt is about the execution `status` describes.
    fn about_status(&self, status: &ExecutionStatus) {
        self.about_tenant(&status.tenant_id, Some(status.operation.as_str()));
        self.about_execution(&status.execution_id);
    }

    /// The record of the attempt, ended now with `error` (or success), and what it was about.
    fn finish(self, error: Option<&ComputeError>) -> (AttemptRecord, Subject) {
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

/// A request reduced to what the start path needs.
struct StartRequest {
    tenant_id: String,
    metadata: Metadata,
    spec: Option<ComputeSpec>,
    idempotency_key: Option<String>,
    callback: Option<CallbackTarget>,
    timeout: Option<String>,
    validated: Value,
}

impl ComputeActivities {
    /// Builds the activities over a store and a provider.
    pub fn new(
        store: Arc<dyn ExecutionStore>,
        provider: Arc<dyn ComputeProvider>,
        settings: ActivitySettings,
    ) -> Self {
        ComputeActivities {
            store,
            provider,
            settings,
            callbacks: Arc::new(Callbacks::default()),
        }
    }

    /// Uses these senders for Step Functions and Restate targets (the default has no
    /// Restate ingress configured).
    pub fn with_callbacks(self, callbacks: Callbacks) -> Self {
        ComputeActivities {
            callbacks: Arc::new(callbacks),
            ..self
        }
    }

    /// Runs one attempt of an activity and records it in the audit trail, whatever its
    /// outcome; every activity goes through here exactly once. The body logs its own failure
    /// (see [`fail`]); this turns it into the activity's `ApplicationFailure`.
    ///
    /// Recording never changes the activity's outcome: a store that cannot take the record
    /// within [`AUDIT_WRITE_TIMEOUT`] costs a warning, nothing more. An attempt cut short by the
    /// worker's death leaves no row; the next attempt's number shows the gap.
    async fn audited<T>(
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
        result.map_err(ComputeError::into_activity_error)
    }

    fn parse_start(
        &self,
        operation: Operation,
        input: &Value,
    ) -> Result<StartRequest, ComputeError> {
        let req = self.parse_start_shape(operation, input)?;
        if let Some(target) = &req.callback {
            self.callbacks.check_target(target)?;
        }
        Ok(req)
    }

    fn parse_start_shape(
        &self,
        operation: Operation,
        input: &Value,
    ) -> Result<StartRequest, ComputeError> {
        // Plain data: serializing it cannot fail.
        fn to_value<T: Serialize>(v: &T) -> Value {
            serde_json::to_value(v).unwrap_or(Value::Null)
        }
        match operation {
            Operation::Provision | Operation::Update => {
                let r = validate::compute_request(input)?;
                self.provider.validate(&r.tenant_id, &r.spec)?;
                self.provider.validate_metadata(&r.metadata)?;
                Ok(StartRequest {
                    validated: to_value(&r),
                    tenant_id: r.tenant_id,
                    metadata: r.metadata,
                    spec: Some(r.spec),
                    idempotency_key: r.idempotency_key,
                    callback: r.callback,
                    timeout: r.timeout,
                })
            }
            Operation::Delete => {
                let r = validate::delete_request(input)?;
                Ok(StartRequest {
                    validated: to_value(&r),
                    tenant_id: r.tenant_id,
                    metadata: Metadata::default(),
                    spec: None,
                    idempotency_key: r.idempotency_key,
                    callback: r.callback,
                    timeout: r.timeout,
                })
            }
        }
    }

    /// The start path shared by provision, update and delete.
    async fn start(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        operation: Operation,
        input: &RawValue,
    ) -> Result<ExecutionHandle, ComputeError> {
        // The refused input is never logged: only the field-naming message is.
        let req = input::decode(input, "input")
            .and_then(|input| self.parse_start(operation, &input))
            .map_err(|e| fail(e, "Validating the request"))?;
        attempt.about_tenant(&req.tenant_id, Some(operation.as_str()));
        let span = op_span(operation.as_str(), &req.tenant_id);
        self.start_valid(ctx, attempt, operation, req)
            .instrument(span)
            .await
    }

    async fn start_valid(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        operation: Operation,
        req: StartRequest,
    ) -> Result<ExecutionHandle, ComputeError> {
        let timeout = match &req.timeout {
            Some(t) => humantime::parse_duration(t).unwrap_or(self.settings.default_timeout),
            None => self.settings.default_timeout,
        };
        let target = req.callback.clone().or_else(|| default_target(ctx));
        let begin = self
            .store
            .begin_execution(NewExecution {
                tenant_id: req.tenant_id.clone(),
                operation,
                idempotency_key: req.idempotency_key.clone(),
                spec_hash: store::spec_hash(req.spec.as_ref()),
                spec: req.spec.clone(),
                request: store_safe_request(&req.validated),
                timeout,
                provider: Some(self.provider.name().to_string()),
            })
            .await
            .map_err(|e| fail(store_err(e), "Recording the execution"))?;
        let mut record = begin.record;
        let execution_id = record.status.execution_id.clone();
        Span::current().record("execution_id", execution_id.as_str());
        attempt.about_execution(&execution_id);
        tracing::info!(
            created = begin.created,
            state = %record.status.state,
            attempt = ctx.info().attempt,
            "Operation requested."
        );

        if record.status.state.is_final() {
            tracing::info!(state = %record.status.state, "Attached after the end: returning the final state.");
            return Ok(handle_of(&record, true));
        }

        if record.status.state == ExecutionState::Pending {
            let op = OperationContext {
                execution_id: execution_id.clone(),
                tenant_id: req.tenant_id.clone(),
                operation,
                metadata: req.metadata.clone(),
            };
            let current = begin
                .previous_tenant
                .map(|t| CurrentState {
                    spec: t.spec,
                    resource_ids: t.resource_ids,
                })
                .unwrap_or_default();
            let spec = req.spec.clone().unwrap_or_default();
            let result = match operation {
                Operation::Provision => self.provider.provision(&op, &spec).await,
                Operation::Update => self.provider.update(&op, &current, &spec).await,
                Operation::Delete => self.provider.delete(&op, &current).await,
            };
            crate::faults::crash_point(crate::faults::AFTER_PROVIDER_CALL);
            match result {
                Ok(ids) => {
                    record = self
                        .store
                        .transition(Transition {
                            resource_ids: Some(ids),
                            ..Transition::to(&execution_id, ExecutionState::Running)
                        })
                        .await
                        .map_err(|e| fail(store_err(e), "Recording the running state"))?
                        .record;
                }
                Err(e) => {
                    let e = e.with_provider_default(self.provider.name());
                    let state = if e.retriable {
                        ExecutionState::Pending
                    } else {
                        ExecutionState::Failed
                    };
                    let note = format!("attempt {} failed: {}", ctx.info().attempt, e.code);
                    if let Err(se) = self
                        .store
                        .transition(Transition {
                            error: Some(e.clone()),
                            message: Some(note),
                            ..Transition::to(&execution_id, state)
                        })
                        .await
                    {
                        // The provider's error is what the caller needs; the store's goes to
                        // the log, and a retry records it again.
                        tracing::warn!(error = %se, "Could not record the failed attempt.");
                    }
                    return Err(fail(e, "The provider call"));
                }
            }
        }

        crate::faults::crash_point(crate::faults::BEFORE_TRACKER_START);
        self.ensure_tracker(ctx, &record, target)
            .await
            .map_err(|e| fail(e, "Starting the tracker"))?;
        // The tracker may have finished in between (a late attacher): report what is true now.
        if let Ok(Some(now)) = self.store.get_execution(&execution_id).await {
            record = now;
        }
        Ok(handle_of(&record, !begin.created))
    }

    /// Starts the execution's tracker if it is not running, and adds the caller's target,
    /// atomically (signal-with-start). A closed tracker is never started again.
    async fn ensure_tracker(
        &self,
        ctx: &ActivityContext,
        record: &ExecutionRecord,
        target: Option<CallbackTarget>,
    ) -> Result<(), ComputeError> {
        let s = &record.status;
        let conv = PayloadConverter::serde_json();
        let input = TrackerInput {
            execution_id: s.execution_id.clone(),
            tenant_id: s.tenant_id.clone(),
            operation: s.operation,
            timeout_ms: s.timeout_ms,
            max_history_events: self.settings.tracker_max_history_events,
            carried: None,
        };
        let options = WorkflowStartOptions::new(
            self.settings.task_queue.clone(),
            names::tracker_workflow_id(&s.execution_id),
        )
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .search_attributes(SearchAttributes::new([
            TENANT_ID_KEY.value_set(s.tenant_id.clone())
        ]))
        .build();
        let result = ctx
            .client()
            .signal_with_start_workflow(
                UntypedWorkflow::new(names::TRACKER_WORKFLOW),
                RawValue::from_value(&input, &conv),
                UntypedSignal::new(names::SIGNAL_ATTACH_CALLBACK),
                RawValue::from_value(&AttachCallback { target }, &conv),
                options,
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // The tracker already finished: the store holds the final state.
            Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(e) => Err(ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "could not start the execution's tracker on Temporal",
            )
            .with_provider("temporal", None)
            .with_root_cause(e)),
        }
    }

    async fn get_status(&self, execution_id: &str) -> Result<ExecutionStatus, ComputeError> {
        match self.store.get_execution(execution_id).await {
            Ok(Some(r)) => Ok(r.status),
            Ok(None) => Err(ComputeError::new(
                ErrorCode::NotFound,
                format!("execution {execution_id} does not exist"),
            )),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn watch(
        &self,
        ctx: &ActivityContext,
        attempt: &Attempt,
        input: WatchInput,
    ) -> Result<ExecutionStatus, ComputeError> {
        let started = tokio::time::Instant::now();
        let mut last_progress = input.known_progress.clone();
        let release = self.settings.release.clone();
        let released = || {
            // Retriable, so the tracker's retry policy resumes the watch on another worker:
            // a shutdown must never fail a tracker.
            ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "the worker is shutting down; the watch resumes on another worker",
            )
        };
        loop {
            if release.is_cancelled() {
                return Err(released());
            }
            if ctx.is_cancelled() {
                // Cancelled by the server (the worker is going away or the tracker is gone):
                // retriable for the same reason.
                return Err(ComputeError::new(
                    ErrorCode::ProviderTemporarilyUnavailable,
                    "the watch was cancelled; it resumes on the next attempt",
                ));
            }
            let record = match self.store.get_execution(&input.execution_id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Err(ComputeError::new(
                        ErrorCode::NotFound,
                        format!("execution {} does not exist", input.execution_id),
                    ));
                }
                Err(e) => return Err(store_err(e)),
            };
            let status = record.status;
            attempt.about_status(&status);
            let span = Span::current();
            span.record("tenant_id", status.tenant_id.as_str());
            span.record("operation", status.operation.as_str());
            if status.state.is_final() {
                return Ok(status);
            }
            let op = OperationContext {
                execution_id: status.execution_id.clone(),
                tenant_id: status.tenant_id.clone(),
                operation: status.operation,
                metadata: Default::default(),
            };
            let observed = tokio::select! {
                o = self.provider.observe(&op, &status.resource_ids) => o,
                _ = release.cancelled() => return Err(released()),
            };
            let observation = match observed {
                Ok(o) => o,
                Err(e) if e.retriable => {
                    // A flaky observation is not the operation failing: keep watching; the
                    // tracker's timeout bounds how long.
                    e.log("Observing the provider");
                    let _ = ctx
                        .record_heartbeat(status.state.as_str().to_string())
                        .await;
                    // At least a short pause: a provider that waits inside `observe` has a
                    // zero interval, and a failing observation must not spin.
                    tokio::select! {
                        _ = tokio::time::sleep(self.provider.poll_interval().max(OBSERVE_ERROR_PAUSE)) => {}
                        _ = release.cancelled() => return Err(released()),
                    }
                    continue;
                }
                Err(e) => Observation::Failed(e),
            };
            let transition = match observation {
                Observation::Succeeded(ids) => Transition {
                    resource_ids: Some(ids),
                    ..Transition::to(&status.execution_id, ExecutionState::Succeeded)
                },
                Observation::Failed(e) => {
                    let e = e.with_provider_default(self.provider.name());
                    e.log("The operation");
                    Transition {
                        error: Some(e),
                        ..Transition::to(&status.execution_id, ExecutionState::Failed)
                    }
                }
                Observation::InProgress(progress) => {
                    let _ = ctx.record_heartbeat(progress.message.clone()).await;
                    if last_progress.as_ref() != Some(&progress) {
                        let updated = self
                            .store
                            .transition(Transition {
                                progress: Some(progress.clone()),
                                ..Transition::to(&status.execution_id, status.state)
                            })
                            .await
                            .map_err(store_err)?;
                        last_progress = Some(progress);
                        if started.elapsed() >= self.settings.progress_report_interval {
                            return Ok(updated.record.status);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.provider.poll_interval()) => {}
                        _ = ctx.cancelled() => {}
                        _ = release.cancelled() => return Err(released()),
                    }
                    continue;
                }
            };
            let outcome = self.store.transition(transition).await.map_err(store_err)?;
            crate::faults::crash_point(crate::faults::AFTER_TERMINAL_STATE);
            tracing::info!(state = %outcome.record.status.state, "Operation reached a final state.");
            return Ok(outcome.record.status);
        }
    }

    /// One attempt to deliver a callback, recorded in the store with its outcome.
    async fn deliver(
        &self,
        ctx: &ActivityContext,
        input: DeliverInput,
    ) -> Result<DeliveryOutcome, ComputeError> {
        let attempts = ctx.info().attempt;
        let verdict = match &input.target {
            CallbackTarget::Temporal(t) => self.signal(ctx, t, &input.callback).await,
            other => match self.callbacks.deliver(other, &input.callback).await {
                // A token is "invalid" once used: if an earlier attempt's answer was lost,
                // that attempt may be what used it.
                Ok(Verdict::Undeliverable(reason))
                    if attempts > 1 && matches!(other, CallbackTarget::StepFunctions(_)) =>
                {
                    Ok(Verdict::Undeliverable(format!(
                        "{reason}; an earlier attempt whose answer was lost may have completed \
                         the task"
                    )))
                }
                v => v,
            },
        };
        self.record_delivery(&input, &verdict).await;
        let target = input.target.describe();
        match verdict {
            Ok(Verdict::Delivered) => {
                tracing::info!(%target, state = %input.callback.state, attempts, "Callback delivered.");
                Ok(DeliveryOutcome {
                    delivered: true,
                    undeliverable_reason: None,
                    attempts,
                })
            }
            Ok(Verdict::Undeliverable(reason)) => {
                tracing::warn!(%target, %reason, attempts, "The callback target will never accept the callback; recorded as undeliverable.");
                Ok(DeliveryOutcome {
                    delivered: false,
                    undeliverable_reason: Some(reason),
                    attempts,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Counts the attempt in `callback_deliveries`. Best effort: the delivery's outcome
    /// stands whether or not the store takes the record.
    async fn record_delivery(&self, input: &DeliverInput, verdict: &Result<Verdict, ComputeError>) {
        if input.callback.execution_id.is_empty() {
            return;
        }
        let (outcome, error) = match verdict {
            Ok(Verdict::Delivered) => (DeliveryState::Delivered, None),
            Ok(Verdict::Undeliverable(r)) => (DeliveryState::Undeliverable, Some(r.clone())),
            Err(e) => (
                DeliveryState::Pending,
                Some(match &e.provider_code {
                    Some(code) => format!("{} ({code})", e.message),
                    None => e.message.clone(),
                }),
            ),
        };
        let attempt = DeliveryAttempt {
            execution_id: input.callback.execution_id.clone(),
            target: input.target.describe(),
            kind: input.target.kind().to_string(),
            state: input.callback.state,
            sequence: input.callback.sequence,
            outcome,
            error,
            at: now(),
        };
        match tokio::time::timeout(AUDIT_WRITE_TIMEOUT, self.store.record_delivery(attempt)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Could not record the delivery attempt; its outcome stands.")
            }
            Err(_) => tracing::warn!(
                "The store did not take the delivery attempt in time; its outcome stands."
            ),
        }
    }

    /// Signals a Temporal workflow (one attempt).
    async fn signal(
        &self,
        ctx: &ActivityContext,
        t: &TemporalCallback,
        cb: &ComputeCallback,
    ) -> Result<Verdict, ComputeError> {
        let client = ctx.client();
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| client.options().namespace.clone());
        let handle: WorkflowHandle<_, UntypedWorkflow> = WorkflowHandle::new(
            client,
            WorkflowExecutionInfo::builder()
                .namespace(namespace)
                .workflow_id(t.workflow_id.clone())
                .maybe_run_id(t.run_id.clone())
                .build(),
        );
        let payload = RawValue::from_value(cb, &PayloadConverter::serde_json());
        // The same request id for the same (execution, state) lets the server drop a
        // duplicate sent by a retried attempt.
        let options = WorkflowSignalOptions::builder()
            .request_id(format!("{}:{}:{}", cb.execution_id, cb.state, cb.sequence))
            .build();
        match handle
            .signal(UntypedSignal::new(cb.signal_name()), payload, options)
            .await
        {
            Ok(()) => Ok(Verdict::Delivered),
            Err(WorkflowInteractionError::NotFound(status)) => Ok(Verdict::Undeliverable(format!(
                "workflow not found or closed: {}",
                status.message()
            ))),
            Err(e) => Err(ComputeError::new(
                ErrorCode::ProviderTemporarilyUnavailable,
                "Temporal did not accept the callback signal",
            )
            .with_provider("temporal", None)
            .with_root_cause(e)),
        }
    }

    /// Sends one heartbeat to each target that asked for them. A failed heartbeat is not
    /// retried (the next one is due soon); a target that says it never will is reported.
    async fn heartbeat(&self, input: &HeartbeatInput) -> HeartbeatOutcome {
        let mut outcome = HeartbeatOutcome::default();
        for target in &input.targets {
            match self.callbacks.heartbeat(target).await {
                Ok(Verdict::Delivered) => outcome.sent += 1,
                Ok(Verdict::Undeliverable(reason)) => {
                    tracing::warn!(target = %target.describe(), %reason, "The target takes no more heartbeats.");
                    outcome.finished.push(target.clone());
                }
                Err(e) => e.log("Sending a heartbeat"),
            }
        }
        outcome
    }
}

/// The activity definitions (a module of its own because the macro generates one
/// undocumented constant per activity). Each body runs inside [`ComputeActivities::audited`].
mod definitions {
    #![allow(missing_docs)]

    use super::*;

    #[activities]
    impl ComputeActivities {
        /// `ProvisionTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
        #[activity(name = names::PROVISION_ACTIVITY)]
        pub async fn provision_tenant_compute(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionHandle, ActivityError> {
            self.audited(&ctx, async |attempt| {
                self.start(&ctx, attempt, Operation::Provision, &input)
                    .await
            })
            .await
        }

        /// `UpdateTenantCompute`: `ComputeRequest` -> `ExecutionHandle`.
        #[activity(name = names::UPDATE_ACTIVITY)]
        pub async fn update_tenant_compute(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionHandle, ActivityError> {
            self.audited(&ctx, async |attempt| {
                self.start(&ctx, attempt, Operation::Update, &input).await
            })
            .await
        }

        /// `DeleteTenantCompute`: `DeleteRequest` -> `ExecutionHandle`.
        #[activity(name = names::DELETE_ACTIVITY)]
        pub async fn delete_tenant_compute(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionHandle, ActivityError> {
            self.audited(&ctx, async |attempt| {
                self.start(&ctx, attempt, Operation::Delete, &input).await
            })
            .await
        }

        /// `GetComputeExecution`: `{executionId, includeAttempts?}` -> `ExecutionStatus`, from
        /// the store; with `includeAttempts`, the status lists the execution's attempts (the
        /// latest [`MAX_ATTEMPTS_IN_STATUS`]).
        #[activity(name = names::GET_EXECUTION_ACTIVITY)]
        pub async fn get_compute_execution(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionStatus, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let (id, include_attempts) = input::decode(&input, "input")
                    .and_then(|input| {
                        Ok((
                            validate::execution_id(&input)?,
                            validate::include_attempts(&input)?,
                        ))
                    })
                    .map_err(|e| fail(e, "Validating the request"))?;
                attempt.about_execution(&id);
                let mut status = self
                    .get_status(&id)
                    .await
                    .map_err(|e| fail(e, "Reading the execution"))?;
                attempt.about_status(&status);
                status.callbacks = self
                    .store
                    .list_deliveries(&id)
                    .await
                    .map_err(|e| fail(store_err(e), "Reading the execution's callbacks"))?;
                if include_attempts {
                    let mut attempts = self
                        .store
                        .list_attempts(&id)
                        .await
                        .map_err(|e| fail(store_err(e), "Reading the execution's attempts"))?;
                    attempts.drain(..attempts.len().saturating_sub(MAX_ATTEMPTS_IN_STATUS));
                    status.attempts = attempts;
                }
                Ok(status)
            })
            .await
        }

        /// `ListTenantComputeExecutions`: `{tenantId}` -> `[ExecutionStatus]`, oldest first.
        #[activity(name = names::LIST_EXECUTIONS_ACTIVITY)]
        pub async fn list_tenant_compute_executions(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<Vec<ExecutionStatus>, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let tenant = input::decode(&input, "input")
                    .and_then(|input| validate::tenant_only(&input))
                    .map_err(|e| fail(e, "Validating the request"))?;
                attempt.about_tenant(&tenant, None);
                self.store
                    .list_executions(&tenant)
                    .await
                    .map(|rs| rs.into_iter().map(|r| r.status).collect())
                    .map_err(|e| fail(store_err(e), "Listing executions"))
            })
            .await
        }

        /// Internal (tracker): observes the provider until the execution is final, or its
        /// progress changed and the tracker should hear of it. Heartbeats while it waits.
        #[activity(name = names::WATCH_EXECUTION_ACTIVITY)]
        pub async fn watch_compute_execution(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionStatus, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let input = WatchInput::from_raw(&input)
                    .map_err(|e| fail(e, "Validating the watch's input"))?;
                attempt.about_execution(&input.execution_id);
                let span = tracing::info_span!("watch", execution_id = %input.execution_id, tenant_id = Empty, operation = Empty);
                async {
                    self.watch(&ctx, attempt, input)
                        .await
                        .map_err(|e| fail(e, "Watching the execution"))
                }
                .instrument(span)
                .await
            })
            .await
        }

        /// Internal (tracker): records that the execution passed its timeout (unless it is
        /// already final) and returns its status.
        #[activity(name = names::MARK_TIMED_OUT_ACTIVITY)]
        pub async fn mark_compute_execution_timed_out(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<ExecutionStatus, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let execution_id = input::decode_as::<String>(&input, "input")
                    .and_then(|id| validate::check_execution_id("input", &id).map(|()| id))
                    .map_err(|e| fail(e, "Validating the input"))?;
                attempt.about_execution(&execution_id);
                let status = self
                    .get_status(&execution_id)
                    .await
                    .map_err(|e| fail(e, "Reading the execution"))?;
                attempt.about_status(&status);
                let span = op_span(status.operation.as_str(), &status.tenant_id);
                span.record("execution_id", execution_id.as_str());
                async {
                    let error = ComputeError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the operation did not finish within {}; it is still being watched and its outcome will be recorded",
                            humantime::format_duration(Duration::from_millis(status.timeout_ms))
                        ),
                    );
                    error.log("The operation");
                    self.store
                        .transition(Transition {
                            error: Some(error),
                            ..Transition::to(&execution_id, ExecutionState::TimedOut)
                        })
                        .await
                        .map(|o| o.record.status)
                        .map_err(|e| fail(store_err(e), "Recording the timeout"))
                }
                .instrument(span)
                .await
            })
            .await
        }

        /// Internal (tracker): delivers one callback to one target. Retried (by the tracker's
        /// retry policy) until the target accepts it or says it never will.
        #[activity(name = names::DELIVER_CALLBACK_ACTIVITY)]
        pub async fn deliver_compute_callback(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<DeliveryOutcome, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let input = DeliverInput::from_raw(&input)
                    .and_then(|i| self.callbacks.check_target(&i.target).map(|()| i))
                    .map_err(|e| fail(e, "Validating the delivery"))?;
                let cb = &input.callback;
                attempt.about_tenant(&cb.tenant_id, Some(cb.operation.as_str()));
                attempt.about_execution(&cb.execution_id);
                let span = op_span(cb.operation.as_str(), &cb.tenant_id);
                span.record("execution_id", cb.execution_id.as_str());
                async {
                    self.deliver(&ctx, input)
                        .await
                        .map_err(|e| fail(e, "Delivering the callback"))
                }
                .instrument(span)
                .await
            })
            .await
        }

        /// Internal (tracker, `TenantComputeWorkflow`): tells the targets that asked for
        /// heartbeats (Step Functions' `HeartbeatSeconds`) that the execution still runs.
        #[activity(name = names::HEARTBEAT_CALLBACKS_ACTIVITY)]
        pub async fn heartbeat_compute_callbacks(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<HeartbeatOutcome, ActivityError> {
            self.audited(&ctx, async |attempt| {
                let input = HeartbeatInput::from_raw(&input)
                    .and_then(|i| {
                        i.targets
                            .iter()
                            .try_for_each(|t| self.callbacks.check_target(t))
                            .map(|()| i)
                    })
                    .map_err(|e| fail(e, "Validating the heartbeat's input"))?;
                attempt.about_tenant(&input.tenant_id, Some(input.operation.as_str()));
                if !input.execution_id.is_empty() {
                    attempt.about_execution(&input.execution_id);
                }
                let span = op_span(input.operation.as_str(), &input.tenant_id);
                span.record("execution_id", input.execution_id.as_str());
                Ok(self.heartbeat(&input).instrument(span).await)
            })
            .await
        }

        /// Internal (`TenantComputeWorkflow`): validates a request's `callback` (its shape
        /// and, for Restate, that the ingress is configured here) before the operation
        /// starts; `null` when the request has none.
        #[activity(name = names::CHECK_CALLBACK_ACTIVITY)]
        pub async fn check_compute_callback(
            self: Arc<Self>,
            ctx: ActivityContext,
            request: RawValue,
        ) -> Result<Option<CallbackTarget>, ActivityError> {
            self.audited(&ctx, async |_attempt| {
                let target = input::decode(&request, "request")
                    .and_then(|request| validate::callback_of(&request))
                    .map_err(|e| fail(e, "Validating the callback"))?;
                if let Some(t) = &target {
                    self.callbacks
                        .check_target(t)
                        .map_err(|e| fail(e, "Validating the callback"))?;
                }
                Ok(target)
            })
            .await
        }

        /// Internal (`TenantComputeWorkflow`, policy `abort`): marks the tenant
        /// `requires_manual_intervention`.
        #[activity(name = names::MARK_TENANT_INTERVENTION_ACTIVITY)]
        pub async fn mark_tenant_requires_intervention(
            self: Arc<Self>,
            ctx: ActivityContext,
            input: RawValue,
        ) -> Result<(), ActivityError> {
            self.audited(&ctx, async |attempt| {
                let input = InterventionInput::from_raw(&input)
                    .map_err(|e| fail(e, "Validating the input"))?;
                attempt.about_tenant(&input.tenant_id, Some("abort"));
                attempt.about_execution(&input.execution_id);
                let span = op_span("abort", &input.tenant_id);
                span.record("execution_id", input.execution_id.as_str());
                async {
                    tracing::error!(reason = %input.reason, "Tenant marked for manual intervention.");
                    self.store
                        .set_tenant_state(
                            &input.tenant_id,
                            TenantState::RequiresManualIntervention,
                            &input.execution_id,
                            &format!(
                                "tenant marked requires_manual_intervention: {}",
                                input.reason
                            ),
                        )
                        .await
                        .map_err(|e| fail(store_err(e), "Marking the tenant"))
                }
                .instrument(span)
                .await
            })
            .await
        }
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
