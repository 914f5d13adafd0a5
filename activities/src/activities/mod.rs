//! The activities: the contract's eight public ones, and the internal ones the tracker and
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

use serde::Serialize;
use serde_json::Value;
use temporalio_client::{
    UntypedSignal, WorkflowExecutionInfo, WorkflowHandle, WorkflowIdReusePolicy,
    WorkflowSignalOptions, WorkflowStartOptions, errors::WorkflowInteractionError,
    errors::WorkflowStartError,
};
use temporalio_common::{
    UntypedWorkflow,
    data_converters::{PayloadConverter, RawValue},
    search_attributes::SearchAttributes,
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, field::Empty};

mod audit;
mod definitions;
mod deliver;
mod lifecycle;
mod observer;
mod start;
mod watch;

use self::audit::Attempt;
pub use self::lifecycle::list_tenant_page;
use crate::{
    callback::{Callbacks, Verdict},
    contract::{
        AttemptOutcome, AttemptRecord, CallbackTarget, ComputeCallback, ComputeSpec, DeliveryState,
        ExecutionHandle, ExecutionState, ExecutionStatus, Metadata, Operation, ResourceIds,
        TemporalCallback, TenantCompute, TenantPage, TenantState, now,
    },
    error::{ComputeError, ErrorCode},
    input,
    messages::{
        AttachCallback, DeliverInput, DeliveryOutcome, HeartbeatInput, HeartbeatOutcome,
        InterventionInput, TENANT_ID_KEY, TrackerInput, WatchInput,
    },
    names,
    provider::{ComputeProvider, CurrentState, Observation, OperationContext},
    store::{
        self, DeliveryAttempt, ExecutionRecord, ExecutionStore, NewExecution, StoreError,
        TenantRecord, Transition,
    },
    validate,
};

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
    /// Where deliveries and the observer's executions in flight are counted (the store and
    /// the provider count their own calls when the worker wraps them).
    pub metrics: crate::metrics::Metrics,
}

impl Default for ActivitySettings {
    fn default() -> Self {
        ActivitySettings {
            task_queue: names::DEFAULT_TASK_QUEUE.to_string(),
            default_timeout: Duration::from_secs(600),
            progress_report_interval: Duration::from_secs(5),
            tracker_max_history_events: 0,
            release: CancellationToken::new(),
            metrics: crate::metrics::Metrics::default(),
        }
    }
}

/// The activities, sharing one store and one provider (cheap to clone: the observer's tasks
/// hold a clone each).
#[derive(Clone)]
pub struct ComputeActivities {
    store: Arc<dyn ExecutionStore>,
    provider: Arc<dyn ComputeProvider>,
    settings: ActivitySettings,
    callbacks: Arc<Callbacks>,
    cancel_bell: Arc<lifecycle::CancelBell>,
    observing: Option<Arc<observer::Observing>>,
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

/// What a long step (a watch, a revert settling) reports that it is alive to: the activity it
/// runs in, which heartbeats and can be cancelled by the server, or the worker's observer,
/// which holds no activity and answers to the worker's release alone.
#[derive(Clone, Copy)]
pub(super) enum Pulse<'a> {
    /// Inside an activity.
    Activity(&'a ActivityContext),
    /// In the worker's observer.
    Observer,
}

impl Pulse<'_> {
    /// One heartbeat (nothing in the observer). A heartbeat that fails is not the step
    /// failing: the next one is due soon.
    async fn beat(self, details: String) {
        if let Pulse::Activity(ctx) = self {
            let _ = ctx.record_heartbeat(details).await;
        }
    }

    fn is_cancelled(self) -> bool {
        matches!(self, Pulse::Activity(ctx) if ctx.is_cancelled())
    }

    /// Resolves when the server cancels the activity; never in the observer.
    async fn cancelled(self) {
        match self {
            Pulse::Activity(ctx) => ctx.cancelled().await,
            Pulse::Observer => std::future::pending().await,
        }
    }
}

fn op_span(operation: &str, tenant_id: &str) -> Span {
    tracing::info_span!("compute", tenant_id = %tenant_id, operation = %operation, execution_id = Empty)
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
            cancel_bell: Arc::default(),
            observing: None,
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
}
