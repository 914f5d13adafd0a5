//! The rules of the execution store, as pure functions every backend follows: how an execution
//! id is derived, when a request attaches to an existing execution and what a new one writes,
//! which transitions are allowed and what each does to the execution and to its tenant.
//!
//! A backend loads what a rule asks for, inside its own transaction and under its own locks,
//! and writes what the rule decided; it decides nothing itself.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{ExecutionRecord, NewExecution, TenantRecord, Transition};
use crate::{
    contract::{
        ComputeSpec, ExecutionState, HistoryEntry, InterventionMark, Operation, Progress,
        ResourceIds, TenantState,
    },
    error::{Classification, ComputeError, ErrorCode},
};

fn hex(bytes: &[u8], n: usize) -> String {
    bytes
        .iter()
        .take(n / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stable hash of a spec (canonical JSON: maps are sorted).
pub fn spec_hash(spec: Option<&ComputeSpec>) -> String {
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    hex(&Sha256::digest(&json), 32)
}

/// The execution id of a request.
///
/// With an idempotency key: tenant + operation + key, whatever happened since. Without one:
/// tenant + operation + spec hash + the tenant's generation, so repeating a request attaches
/// to it while it is the tenant's latest, and the same spec after anything else in between
/// (a delete, another update) is a new execution.
pub fn derive_execution_id(
    tenant_id: &str,
    operation: Operation,
    idempotency_key: Option<&str>,
    spec_hash: &str,
    generation: i64,
) -> String {
    let mut h = Sha256::new();
    for part in [tenant_id, operation.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match idempotency_key {
        Some(key) => {
            h.update(b"key\0");
            h.update(key.as_bytes());
        }
        None => {
            h.update(b"spec\0");
            h.update(spec_hash.as_bytes());
            h.update([0]);
            h.update(generation.to_string().as_bytes());
        }
    }
    format!(
        "{tenant_id}-{}-{}",
        operation.as_str(),
        hex(&h.finalize(), 16)
    )
}

/// Whether an unkeyed request is the tenant's latest execution again: same operation, same
/// spec, no key. Re-sent while it runs (or after it succeeded) it attaches; re-sent after it
/// failed or was cancelled it re-opens it ([`begin`]).
pub fn attaches_to_latest(latest: &ExecutionRecord, new: &NewExecution) -> bool {
    new.idempotency_key.is_none()
        && latest.status.idempotency_key.is_none()
        && latest.status.operation == new.operation
        && latest.spec_hash == new.spec_hash
}

/// Whether an execution in `state` is re-opened, rather than attached to, by its request.
pub fn reopens(state: ExecutionState) -> bool {
    matches!(state, ExecutionState::Failed | ExecutionState::Cancelled)
}

/// The tenant's state when an operation starts.
pub fn tenant_state_on_begin(operation: Operation) -> TenantState {
    match operation {
        Operation::Provision => TenantState::Provisioning,
        Operation::Update => TenantState::Updating,
        Operation::Delete => TenantState::Deleting,
    }
}

/// The tenant's state after its latest execution enters `state`, if it changes (the default
/// rule; an activity that put the tenant back on its last good spec says so with a
/// [`TenantOutcome`](super::TenantOutcome)).
pub fn tenant_state_after(
    operation: Operation,
    state: ExecutionState,
    error: Option<&ComputeError>,
) -> Option<TenantState> {
    match state {
        ExecutionState::Succeeded => Some(match operation {
            Operation::Provision | Operation::Update => TenantState::Running,
            Operation::Delete => TenantState::Deleted,
        }),
        ExecutionState::Failed | ExecutionState::Cancelled => {
            Some(if error.is_some_and(needs_operator) {
                TenantState::RequiresManualIntervention
            } else {
                TenantState::Failed
            })
        }
        ExecutionState::Pending | ExecutionState::Running | ExecutionState::TimedOut => None,
    }
}

/// Whether a failure leaves something automation cannot clean up: its class says so, or
/// putting the tenant back failed.
pub fn needs_operator(error: &ComputeError) -> bool {
    error.classification == Classification::RequiresManualIntervention
        || error.rollback_error.is_some()
}

/// Whether a failure marks its tenant for manual intervention: every non-retriable failure
/// but an operator's own cancel (unless undoing it failed).
pub fn marks_tenant(error: &ComputeError) -> bool {
    needs_operator(error) || (!error.retriable && error.code != ErrorCode::Cancelled)
}

/// The execution a request may attach to, for the backend to load (if it exists) before
/// [`begin`] decides: the one its idempotency key names, or else the tenant's latest.
pub fn begin_candidate(new: &NewExecution, tenant: Option<&TenantRecord>) -> Option<String> {
    match &new.idempotency_key {
        // A keyed id ignores the generation.
        Some(key) => Some(derive_execution_id(
            &new.tenant_id,
            new.operation,
            Some(key),
            &new.spec_hash,
            0,
        )),
        None => tenant.and_then(|t| t.last_execution_id.clone()),
    }
}

/// What [`ExecutionStore::begin_execution`](super::ExecutionStore::begin_execution) does with
/// a request.
// One lives for the length of a call: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// The request is one already recorded: return this execution and write nothing.
    Attach(ExecutionRecord),
    /// The request is new: record it as this says.
    Start(StartExecution),
    /// The request is one that ended in failure (or was cancelled): run it again under the
    /// same id, as this says.
    Reopen(ReopenExecution),
    /// The request cannot be carried out (an update of a tenant with no compute): record
    /// nothing, fail with this.
    Refuse(ComputeError),
}

/// A failed or cancelled execution run again.
#[derive(Debug, Clone, PartialEq)]
pub struct ReopenExecution {
    /// The execution, as it ended.
    pub record: ExecutionRecord,
    /// Its attempt from now on.
    pub attempt: u32,
    /// The tenant's generation from now on (it becomes the tenant's latest execution again).
    pub generation: i64,
    /// The tenant's state from now on.
    pub tenant_state: TenantState,
    /// The history note of the new attempt.
    pub note: String,
}

/// A new execution, and what it makes of its tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct StartExecution {
    /// The derived id (see [`derive_execution_id`]).
    pub execution_id: String,
    /// The state the execution starts in, and its first history entry's.
    pub state: ExecutionState,
    /// The tenant's generation from now on (it becomes the tenant's latest execution).
    pub generation: i64,
    /// The tenant's state from now on.
    pub tenant_state: TenantState,
}

/// Decides a request given the tenant (`None` for one never seen) and the execution
/// [`begin_candidate`] named, as loaded (`None` when there is none).
///
/// A keyed request is the execution its key named; an unkeyed one is the tenant's latest
/// when [`attaches_to_latest`] says so. Such a request attaches, or re-opens the execution
/// when it failed or was cancelled ([`reopens`]). Otherwise the request starts a new
/// execution of the tenant's next generation, except an update of a tenant with no compute
/// ([`TenantRecord::has_compute`]), which is refused with `NOT_FOUND` on every provider.
pub fn begin(
    new: &NewExecution,
    tenant: Option<&TenantRecord>,
    candidate: Option<ExecutionRecord>,
) -> Begin {
    let same = match new.idempotency_key {
        Some(_) => candidate,
        None => candidate.filter(|latest| attaches_to_latest(latest, new)),
    };
    let generation = tenant.map_or(0, |t| t.generation) + 1;
    if let Some(record) = same {
        if !reopens(record.status.state) {
            return Begin::Attach(record);
        }
        let attempt = record.status.attempt.saturating_add(1);
        let note = format!(
            "attempt {attempt}: the same request again after the execution ended {}",
            record.status.state
        );
        return Begin::Reopen(ReopenExecution {
            record,
            attempt,
            generation,
            tenant_state: tenant_state_on_begin(new.operation),
            note,
        });
    }
    if new.operation == Operation::Update && !tenant.is_some_and(TenantRecord::has_compute) {
        return Begin::Refuse(ComputeError::new(
            ErrorCode::NotFound,
            format!(
                "tenant {} has no compute to update: provision it first",
                new.tenant_id
            ),
        ));
    }
    Begin::Start(StartExecution {
        execution_id: derive_execution_id(
            &new.tenant_id,
            new.operation,
            new.idempotency_key.as_deref(),
            &new.spec_hash,
            generation,
        ),
        state: ExecutionState::Pending,
        generation,
        tenant_state: tenant_state_on_begin(new.operation),
    })
}

/// A transition the state machine allows, waiting for the time it happens (see
/// [`AllowedTransition::at`]): a backend may read its clock only once it knows the transition
/// goes ahead.
#[derive(Debug, Clone, Copy)]
pub struct AllowedTransition<'a> {
    current: &'a ExecutionRecord,
    transition: &'a Transition,
}

/// Checks `transition` against the execution as it is: allowed when the state machine allows
/// the move ([`ExecutionState::can_become`]) or the state stays (a note, progress). `None`
/// when it is refused: the execution and its tenant stay as they are (activities run at least
/// once, so a late or repeated transition must be harmless).
pub fn transition<'a>(
    current: &'a ExecutionRecord,
    transition: &'a Transition,
) -> Option<AllowedTransition<'a>> {
    let from = current.status.state;
    (from == transition.state || from.can_become(transition.state)).then_some(AllowedTransition {
        current,
        transition,
    })
}

/// Everything an allowed transition writes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionChange {
    /// The execution's state.
    pub state: ExecutionState,
    /// The execution's resources: the transition's, or those it had.
    pub resource_ids: ResourceIds,
    /// The execution's error: the transition's; otherwise none once succeeded, else the one it
    /// had (a failed attempt while pending stays visible until something replaces it).
    pub error: Option<ComputeError>,
    /// The execution's progress: none once final, else the transition's or the one it had.
    pub progress: Option<Progress>,
    /// When the execution started running (set once, by the first `running`).
    pub started_at: Option<DateTime<Utc>>,
    /// When the execution finished (set once, by the first final state).
    pub finished_at: Option<DateTime<Utc>>,
    /// The execution's (and, with [`tenant`](Self::tenant), the tenant's) `updated_at`.
    pub updated_at: DateTime<Utc>,
    /// The history entry to append. A call that keeps the state appends one only when it has
    /// something to say (a failed attempt), so repeated progress updates do not flood the
    /// history.
    pub history: Option<HistoryEntry>,
    /// What the tenant becomes, when the new state says something about it.
    pub tenant: Option<TenantChange>,
    /// What [`TransitionOutcome::applied`](super::TransitionOutcome::applied) reports: false
    /// for a call that keeps the state and brings nothing (no note, progress or error).
    pub applied: bool,
}

/// What a transition does to the execution's tenant.
///
/// Only the tenant's latest execution speaks for the tenant: backends apply this only while
/// the execution is still the tenant's `last_execution_id`, so an older operation finishing
/// late cannot overwrite what a newer one set.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantChange {
    /// The tenant's state.
    pub state: TenantState,
    /// The tenant's resources: what runs now.
    pub resource_ids: ResourceIds,
    /// The tenant's last good spec.
    pub spec: Change<ComputeSpec>,
    /// Whether the revision goes up (a spec was applied).
    pub bump_revision: bool,
    /// The tenant's manual-intervention mark.
    pub intervention: Change<InterventionMark>,
}

/// What becomes of one of the tenant's optional values.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// It stays as it is.
    Keep,
    /// It becomes this.
    Set(T),
    /// It goes.
    Clear,
}

impl<T> Change<T> {
    /// The value to write given the one stored.
    pub fn apply(self, stored: Option<T>) -> Option<T> {
        match self {
            Change::Keep => stored,
            Change::Set(v) => Some(v),
            Change::Clear => None,
        }
    }
}

impl AllowedTransition<'_> {
    /// What the transition writes when it happens at `at`.
    pub fn at(self, at: DateTime<Utc>) -> TransitionChange {
        let (record, t) = (self.current, self.transition);
        let current = &record.status;
        let state = t.state;
        let same = current.state == state;
        let resource_ids = t
            .resource_ids
            .as_ref()
            .unwrap_or(&current.resource_ids)
            .clone();
        let error = match (&t.error, state) {
            (Some(e), _) => Some(e.clone()),
            (None, ExecutionState::Succeeded) => None,
            (None, _) => current.error.clone(),
        };
        let progress = if state.is_final() {
            None
        } else {
            t.progress.clone().or_else(|| current.progress.clone())
        };
        let started_at = current
            .started_at
            .or((state == ExecutionState::Running).then_some(at));
        let finished_at = current.finished_at.or(state.is_final().then_some(at));
        let history = (!same || t.message.is_some()).then(|| HistoryEntry {
            state,
            at,
            message: t.message.clone(),
        });
        let tenant = if same {
            None
        } else {
            tenant_change(record, state, &resource_ids, error.as_ref(), t, at)
        };
        TransitionChange {
            state,
            resource_ids,
            error,
            progress,
            started_at,
            finished_at,
            updated_at: at,
            history,
            tenant,
            applied: !same || t.message.is_some() || t.progress.is_some() || t.error.is_some(),
        }
    }
}

/// The history note of a manual-intervention mark.
pub fn mark_note(mark: &InterventionMark) -> String {
    format!(
        "tenant marked as requiring manual intervention: {}: {}",
        mark.code, mark.message
    )
}

/// The history note of an operator's cancel request.
pub fn cancel_note(reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("cancel requested: {r}"),
        None => "cancel requested".to_string(),
    }
}

/// A tenant's state once its manual-intervention mark is cleared: an operator has looked, so
/// a tenant that stood in `requires_manual_intervention` runs its last good spec if it has
/// one and is failed otherwise; any other state stays.
pub fn state_after_clear(tenant: &TenantRecord) -> TenantState {
    match tenant.state {
        TenantState::RequiresManualIntervention if tenant.spec.is_some() => TenantState::Running,
        TenantState::RequiresManualIntervention => TenantState::Failed,
        other => other,
    }
}

/// What an execution entering `state` does to its tenant (see [`TenantChange`]).
fn tenant_change(
    record: &ExecutionRecord,
    state: ExecutionState,
    resource_ids: &ResourceIds,
    error: Option<&ComputeError>,
    t: &Transition,
    at: DateTime<Utc>,
) -> Option<TenantChange> {
    let operation = record.status.operation;
    let default_state = tenant_state_after(operation, state, error)?;
    if state == ExecutionState::Succeeded {
        let applied = operation != Operation::Delete;
        return Some(TenantChange {
            state: default_state,
            resource_ids: if applied {
                resource_ids.clone()
            } else {
                ResourceIds::default()
            },
            spec: match record.spec() {
                Some(spec) if applied => Change::Set(spec),
                _ if applied => Change::Keep,
                _ => Change::Clear,
            },
            bump_revision: applied,
            intervention: Change::Clear,
        });
    }
    // Failed or cancelled: the spec stays the last good one.
    let (tenant_state, tenant_ids) = match &t.tenant {
        // Putting the tenant back failed: whatever the activity thought, an operator looks, at
        // whatever the failed attempt left.
        Some(_) if error.is_some_and(|e| e.rollback_error.is_some()) => (
            TenantState::RequiresManualIntervention,
            resource_ids.clone(),
        ),
        // Put back, the tenant runs what the activity says; a failure of the class that
        // needs an operator (a partial failure) still needs one.
        Some(outcome) if error.is_some_and(needs_operator) => (
            TenantState::RequiresManualIntervention,
            outcome.resource_ids.clone(),
        ),
        Some(outcome) => (outcome.state, outcome.resource_ids.clone()),
        None => (default_state, resource_ids.clone()),
    };
    let intervention = match error {
        Some(e) if marks_tenant(e) => Change::Set(InterventionMark {
            code: e.code,
            message: match &e.rollback_error {
                Some(r) => format!("{}; putting the tenant back failed: {r}", e.message),
                None => e.message.clone(),
            },
            execution_id: record.status.execution_id.clone(),
            at,
        }),
        _ => Change::Keep,
    };
    Some(TenantChange {
        state: tenant_state,
        resource_ids: tenant_ids,
        spec: Change::Keep,
        bump_revision: false,
        intervention,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{contract::ExecutionStatus, store::TenantOutcome};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn request(operation: Operation, key: Option<&str>, spec: &str) -> NewExecution {
        NewExecution {
            tenant_id: "t".into(),
            operation,
            idempotency_key: key.map(str::to_string),
            spec_hash: spec.into(),
            spec: (operation != Operation::Delete).then(|| ComputeSpec {
                command: vec![spec.into()],
                ..Default::default()
            }),
            request: json!({"tenantId": "t"}),
            timeout: Duration::from_secs(60),
            provider: Some("local".into()),
        }
    }

    fn tenant(generation: i64, last: Option<&str>) -> TenantRecord {
        TenantRecord {
            tenant_id: "t".into(),
            state: TenantState::Running,
            spec: Some(ComputeSpec::default()),
            resource_ids: ResourceIds::default(),
            last_execution_id: last.map(str::to_string),
            generation,
            revision: 1,
            intervention: None,
            active_execution_ids: Vec::new(),
            updated_at: at(0),
        }
    }

    fn status(operation: Operation, state: ExecutionState) -> ExecutionStatus {
        ExecutionStatus {
            execution_id: "e".into(),
            tenant_id: "t".into(),
            operation,
            state,
            attempt: 1,
            idempotency_key: None,
            progress: None,
            resource_ids: ResourceIds::default(),
            error: None,
            history: Vec::new(),
            created_at: at(0),
            updated_at: at(0),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            timeout_ms: 60_000,
            attempts: Vec::new(),
            callbacks: Vec::new(),
        }
    }

    fn execution(
        operation: Operation,
        key: Option<&str>,
        spec: &str,
        state: ExecutionState,
    ) -> ExecutionRecord {
        let mut status = status(operation, state);
        status.idempotency_key = key.map(str::to_string);
        ExecutionRecord {
            status,
            request: json!({}),
            spec_hash: spec.into(),
            cancel_requested: None,
        }
    }

    fn rec(status: &ExecutionStatus) -> ExecutionRecord {
        ExecutionRecord {
            status: status.clone(),
            request: json!({}),
            spec_hash: "h".into(),
            cancel_requested: None,
        }
    }

    fn ids(pid: u32) -> ResourceIds {
        ResourceIds {
            pid: Some(pid),
            ..Default::default()
        }
    }

    fn progress(message: &str) -> Progress {
        Progress {
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn execution_ids_are_deterministic_and_distinct() {
        let a = derive_execution_id("t", Operation::Provision, Some("k"), "h1", 1);
        assert_eq!(
            a,
            derive_execution_id("t", Operation::Provision, Some("k"), "h2", 9)
        );
        assert_ne!(
            a,
            derive_execution_id("t", Operation::Update, Some("k"), "h1", 1)
        );
        assert_ne!(
            a,
            derive_execution_id("u", Operation::Provision, Some("k"), "h1", 1)
        );
        let b = derive_execution_id("t", Operation::Provision, None, "h1", 1);
        assert_eq!(
            b,
            derive_execution_id("t", Operation::Provision, None, "h1", 1)
        );
        assert_ne!(
            b,
            derive_execution_id("t", Operation::Provision, None, "h1", 2)
        );
        assert_ne!(
            b,
            derive_execution_id("t", Operation::Provision, None, "h2", 1)
        );
        assert!(b.starts_with("t-provision-") && b.len() == "t-provision-".len() + 16);
    }

    #[test]
    fn spec_hash_ignores_nothing_that_matters() {
        let mut s = ComputeSpec {
            command: vec!["sleep".into()],
            ..Default::default()
        };
        let h1 = spec_hash(Some(&s));
        s.args = vec!["1".into()];
        assert_ne!(h1, spec_hash(Some(&s)));
        assert_ne!(spec_hash(None), h1);
    }

    #[test]
    fn tenant_states_follow_operations() {
        let manual = ComputeError::new(ErrorCode::PartialFailure, "x");
        let plain = ComputeError::new(ErrorCode::WorkloadFailed, "x");
        use ExecutionState::*;
        use Operation::*;
        for (operation, state, error, expected) in [
            (Provision, Succeeded, None, Some(TenantState::Running)),
            (Update, Succeeded, None, Some(TenantState::Running)),
            (Delete, Succeeded, None, Some(TenantState::Deleted)),
            (Update, Failed, Some(&plain), Some(TenantState::Failed)),
            (Provision, Cancelled, None, Some(TenantState::Failed)),
            (
                Update,
                Failed,
                Some(&manual),
                Some(TenantState::RequiresManualIntervention),
            ),
            (
                Delete,
                Cancelled,
                Some(&manual),
                Some(TenantState::RequiresManualIntervention),
            ),
            (Provision, TimedOut, None, None),
            (Provision, Running, None, None),
            (Delete, Pending, Some(&manual), None),
        ] {
            assert_eq!(
                tenant_state_after(operation, state, error),
                expected,
                "{operation:?} {state:?} {error:?}"
            );
        }
        assert_eq!(tenant_state_on_begin(Provision), TenantState::Provisioning);
        assert_eq!(tenant_state_on_begin(Update), TenantState::Updating);
        assert_eq!(tenant_state_on_begin(Delete), TenantState::Deleting);
    }

    #[test]
    fn the_candidate_is_the_keyed_execution_or_the_tenants_latest() {
        let keyed = request(Operation::Update, Some("k"), "h");
        let keyed_id = derive_execution_id("t", Operation::Update, Some("k"), "h", 0);
        assert_eq!(begin_candidate(&keyed, None), Some(keyed_id.clone()));
        assert_eq!(
            begin_candidate(&keyed, Some(&tenant(4, Some("latest")))),
            Some(keyed_id)
        );
        let unkeyed = request(Operation::Update, None, "h");
        assert_eq!(begin_candidate(&unkeyed, None), None);
        assert_eq!(begin_candidate(&unkeyed, Some(&tenant(0, None))), None);
        assert_eq!(
            begin_candidate(&unkeyed, Some(&tenant(4, Some("latest")))),
            Some("latest".into())
        );
    }

    #[test]
    fn a_request_attaches_to_or_reopens_only_the_same_request() {
        use ExecutionState::*;
        use Operation::*;
        #[derive(Debug, PartialEq)]
        enum Decided {
            Attach,
            Reopen,
            Start,
        }
        // (request: operation, key, spec; candidate: operation, key, spec, state; decided)
        for (new, candidate, expected) in [
            // Unkeyed: the tenant's latest, if it is the same request; re-opened if it failed.
            (
                (Update, None, "h"),
                (Update, None, "h", Pending),
                Decided::Attach,
            ),
            (
                (Update, None, "h"),
                (Update, None, "h", Running),
                Decided::Attach,
            ),
            (
                (Update, None, "h"),
                (Update, None, "h", Succeeded),
                Decided::Attach,
            ),
            (
                (Update, None, "h"),
                (Update, None, "h", TimedOut),
                Decided::Attach,
            ),
            (
                (Update, None, "h"),
                (Update, None, "h", Failed),
                Decided::Reopen,
            ),
            (
                (Update, None, "h"),
                (Update, None, "h", Cancelled),
                Decided::Reopen,
            ),
            (
                (Update, None, "h"),
                (Update, None, "other", Running),
                Decided::Start,
            ),
            (
                (Update, None, "h"),
                (Provision, None, "h", Running),
                Decided::Start,
            ),
            (
                (Update, None, "h"),
                (Update, Some("k"), "h", Running),
                Decided::Start,
            ),
            // Keyed: whatever the key named; re-opened if it failed.
            (
                (Update, Some("k"), "h"),
                (Update, Some("k"), "h", Failed),
                Decided::Reopen,
            ),
            (
                (Update, Some("k"), "h"),
                (Update, Some("k"), "other", Running),
                Decided::Attach,
            ),
        ] {
            let new = request(new.0, new.1, new.2);
            let candidate = execution(candidate.0, candidate.1, candidate.2, candidate.3);
            let decided = begin(&new, Some(&tenant(3, Some("e"))), Some(candidate.clone()));
            let kind = match &decided {
                Begin::Attach(r) => {
                    assert_eq!(r, &candidate);
                    Decided::Attach
                }
                Begin::Reopen(r) => {
                    assert_eq!(r.record, candidate);
                    assert_eq!((r.attempt, r.generation), (2, 4));
                    Decided::Reopen
                }
                Begin::Start(_) => Decided::Start,
                Begin::Refuse(e) => panic!("refused: {e}"),
            };
            assert_eq!(kind, expected, "{new:?} {candidate:?}");
        }
    }

    #[test]
    fn an_update_of_a_tenant_without_compute_is_refused() {
        let update = request(Operation::Update, None, "h");
        let mut gone = tenant(3, Some("e"));
        gone.state = TenantState::Deleted;
        let mut failed_provision = tenant(1, Some("e"));
        failed_provision.state = TenantState::Failed;
        failed_provision.spec = None;
        let mut provisioning = failed_provision.clone();
        provisioning.state = TenantState::Provisioning;
        for (tenant, refused) in [
            (None, true),
            (Some(gone), true),
            (Some(failed_provision), true),
            (Some(provisioning), false),
            (Some(tenant(2, Some("e"))), false),
        ] {
            let decided = begin(&update, tenant.as_ref(), None);
            match decided {
                Begin::Refuse(e) => {
                    assert!(refused, "{tenant:?}");
                    assert_eq!(e.code, ErrorCode::NotFound);
                }
                Begin::Start(_) => assert!(!refused, "{tenant:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_new_execution_is_the_tenants_next_generation() {
        for (new, tenant, generation) in [
            (request(Operation::Provision, None, "h"), None, 1),
            (
                request(Operation::Update, None, "h"),
                Some(tenant(3, Some("e"))),
                4,
            ),
            (
                request(Operation::Delete, Some("k"), "h"),
                Some(tenant(7, None)),
                8,
            ),
        ] {
            let Begin::Start(start) = begin(&new, tenant.as_ref(), None) else {
                panic!("{new:?} attached to nothing");
            };
            assert_eq!(
                start,
                StartExecution {
                    execution_id: derive_execution_id(
                        "t",
                        new.operation,
                        new.idempotency_key.as_deref(),
                        "h",
                        generation,
                    ),
                    state: ExecutionState::Pending,
                    generation,
                    tenant_state: tenant_state_on_begin(new.operation),
                }
            );
        }
    }

    #[test]
    fn the_state_machine_decides_which_transitions_go_ahead() {
        use ExecutionState::*;
        let all = [Pending, Running, Succeeded, Failed, Cancelled, TimedOut];
        for from in all {
            for to in all {
                let current = status(Operation::Provision, from);
                let t = Transition::to("e", to);
                assert_eq!(
                    transition(&rec(&current), &t).is_some(),
                    from == to || from.can_become(to),
                    "{from:?} -> {to:?}"
                );
            }
        }
        let current = status(Operation::Provision, Succeeded);
        assert!(transition(&rec(&current), &Transition::to("e", Running)).is_none());
        assert!(transition(&rec(&current), &Transition::to("e", Succeeded)).is_some());
    }

    #[test]
    fn transitions_keep_replace_or_clear_what_the_execution_holds() {
        use ExecutionState::*;
        let old_error = ComputeError::new(ErrorCode::WorkloadFailed, "old");
        let new_error = ComputeError::new(ErrorCode::WorkloadFailed, "new");
        // (from, to, transition brings ids / error / progress, expected ids / error / progress)
        for (from, to, brings, expected) in [
            (
                Pending,
                Running,
                (None, None, None),
                (Some(1), Some("old"), Some("old")),
            ),
            (
                Pending,
                Running,
                (Some(2), Some(&new_error), Some("new")),
                (Some(2), Some("new"), Some("new")),
            ),
            (
                Running,
                Succeeded,
                (None, None, Some("new")),
                (Some(1), None, None),
            ),
            (
                Running,
                Succeeded,
                (None, Some(&new_error), None),
                (Some(1), Some("new"), None),
            ),
            (
                Running,
                Failed,
                (None, None, None),
                (Some(1), Some("old"), None),
            ),
            (
                TimedOut,
                Cancelled,
                (Some(3), Some(&new_error), None),
                (Some(3), Some("new"), None),
            ),
            (
                Running,
                TimedOut,
                (None, None, None),
                (Some(1), Some("old"), Some("old")),
            ),
        ] {
            let mut current = status(Operation::Update, from);
            current.resource_ids = ids(1);
            current.error = Some(old_error.clone());
            current.progress = Some(progress("old"));
            let t = Transition {
                resource_ids: brings.0.map(ids),
                error: brings.1.cloned(),
                progress: brings.2.map(progress),
                ..Transition::to("e", to)
            };
            let change = transition(&rec(&current), &t).unwrap().at(at(5));
            let case = format!("{from:?} -> {to:?} with {brings:?}");
            assert_eq!(change.state, to, "{case}");
            assert_eq!(change.resource_ids, expected.0.map(ids).unwrap(), "{case}");
            assert_eq!(
                change.error.map(|e| e.message),
                expected.1.map(str::to_string),
                "{case}"
            );
            assert_eq!(change.progress, expected.2.map(progress), "{case}");
            assert_eq!(change.updated_at, at(5), "{case}");
        }
    }

    #[test]
    fn start_and_finish_times_are_set_once() {
        use ExecutionState::*;
        // (from, to, already started, already finished, expected started, expected finished)
        for (from, to, started, finished, expected) in [
            (Pending, Running, None, None, (Some(9), None)),
            (Running, Running, Some(1), None, (Some(1), None)),
            (Pending, Failed, None, None, (None, Some(9))),
            (Running, Succeeded, Some(1), None, (Some(1), Some(9))),
            (Running, TimedOut, Some(1), None, (Some(1), None)),
            (Succeeded, Succeeded, Some(1), Some(2), (Some(1), Some(2))),
        ] {
            let mut current = status(Operation::Provision, from);
            current.started_at = started.map(at);
            current.finished_at = finished.map(at);
            let change = transition(&rec(&current), &Transition::to("e", to))
                .unwrap()
                .at(at(9));
            assert_eq!(
                (change.started_at, change.finished_at),
                (expected.0.map(at), expected.1.map(at)),
                "{from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn only_news_is_history_and_only_news_is_applied() {
        use ExecutionState::*;
        let error = ComputeError::new(ErrorCode::WorkloadFailed, "attempt failed");
        // (from, to, message, progress, error, history appended, applied)
        for (from, to, message, with_progress, with_error, history, applied) in [
            (Pending, Running, None, false, false, true, true),
            (Pending, Running, Some("go"), false, false, true, true),
            (Pending, Pending, None, false, false, false, false),
            (Pending, Pending, Some("retrying"), false, true, true, true),
            (Running, Running, None, true, false, false, true),
            (Running, Running, None, false, true, false, true),
            (Succeeded, Succeeded, None, false, false, false, false),
        ] {
            let current = status(Operation::Provision, from);
            let t = Transition {
                message: message.map(str::to_string),
                progress: with_progress.then(|| progress("half")),
                error: with_error.then(|| error.clone()),
                ..Transition::to("e", to)
            };
            let change = transition(&rec(&current), &t).unwrap().at(at(3));
            let case = format!("{from:?} -> {to:?} {message:?} {with_progress} {with_error}");
            assert_eq!(
                change.history,
                history.then(|| HistoryEntry {
                    state: to,
                    at: at(3),
                    message: message.map(str::to_string),
                }),
                "{case}"
            );
            assert_eq!(change.applied, applied, "{case}");
        }
    }

    #[test]
    fn a_new_state_speaks_for_the_tenant() {
        use ExecutionState::*;
        use Operation::*;
        let manual = ComputeError::new(ErrorCode::PartialFailure, "x");
        // (operation, from, to, earlier error, transition's error, tenant state, tenant ids)
        for (operation, from, to, earlier, error, expected) in [
            (
                Provision,
                Running,
                Succeeded,
                None,
                None,
                Some((TenantState::Running, Some(2))),
            ),
            (
                Update,
                TimedOut,
                Succeeded,
                None,
                None,
                Some((TenantState::Running, Some(2))),
            ),
            (
                Delete,
                Running,
                Succeeded,
                None,
                None,
                Some((TenantState::Deleted, None)),
            ),
            (
                Delete,
                Running,
                Failed,
                None,
                None,
                Some((TenantState::Failed, Some(2))),
            ),
            (
                Provision,
                Running,
                Failed,
                None,
                Some(&manual),
                Some((TenantState::RequiresManualIntervention, Some(2))),
            ),
            // A failed attempt recorded earlier still says how the execution ended.
            (
                Update,
                Pending,
                Cancelled,
                Some(&manual),
                None,
                Some((TenantState::RequiresManualIntervention, Some(2))),
            ),
            (Provision, Pending, Running, None, None, None),
            (Provision, Running, TimedOut, None, None, None),
            // Keeping the state says nothing new about the tenant.
            (Provision, Succeeded, Succeeded, None, None, None),
            (Delete, Failed, Failed, None, Some(&manual), None),
        ] {
            let mut current = status(operation, from);
            current.resource_ids = ids(1);
            current.error = earlier.cloned();
            let t = Transition {
                resource_ids: Some(ids(2)),
                error: error.cloned(),
                ..Transition::to("e", to)
            };
            let change = transition(&rec(&current), &t).unwrap().at(at(1));
            assert_eq!(
                change.tenant.map(|c| (c.state, c.resource_ids)),
                expected.map(|(state, pid)| (state, pid.map(ids).unwrap_or_default())),
                "{operation:?} {from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn failures_mark_the_tenant_unless_retriable_or_an_operators_cancel() {
        let mut reverted = ComputeError::new(ErrorCode::WorkloadFailed, "exit 1");
        assert!(marks_tenant(&reverted) && !needs_operator(&reverted));
        reverted.rolled_back = true;
        assert!(
            marks_tenant(&reverted),
            "a reverted failure is still news for an operator"
        );
        let cancel = ComputeError::new(ErrorCode::Cancelled, "by ops");
        assert!(!marks_tenant(&cancel));
        let mut failed_undo = cancel.clone();
        failed_undo.rollback_error = Some("boom".into());
        assert!(marks_tenant(&failed_undo) && needs_operator(&failed_undo));
        assert!(!marks_tenant(&ComputeError::new(
            ErrorCode::InsufficientCapacity,
            "x"
        )));
        assert!(needs_operator(&ComputeError::new(
            ErrorCode::PartialFailure,
            "x"
        )));
    }

    #[test]
    fn a_success_applies_its_spec_and_clears_the_mark() {
        let mut current = status(Operation::Update, ExecutionState::Running);
        current.resource_ids = ids(4);
        let mut record = rec(&current);
        record.request = json!({"tenantId": "t", "spec": {"command": ["sleep"], "args": ["9"]}});
        let change = transition(&record, &Transition::to("e", ExecutionState::Succeeded))
            .unwrap()
            .at(at(2));
        let tenant = change.tenant.unwrap();
        assert_eq!(tenant.state, TenantState::Running);
        assert!(tenant.bump_revision);
        assert!(matches!(tenant.spec, Change::Set(ref s) if s.args == ["9"]));
        assert_eq!(tenant.intervention, Change::Clear);
        // A failure put back by the activity keeps the spec and says what runs.
        let t = Transition {
            error: Some(ComputeError::new(ErrorCode::WorkloadFailed, "exit 1")),
            tenant: Some(TenantOutcome {
                state: TenantState::Running,
                resource_ids: ids(3),
            }),
            ..Transition::to("e", ExecutionState::Failed)
        };
        let tenant = transition(&record, &t).unwrap().at(at(2)).tenant.unwrap();
        assert_eq!(
            (tenant.state, tenant.resource_ids),
            (TenantState::Running, ids(3))
        );
        assert_eq!(tenant.spec, Change::Keep);
        assert!(!tenant.bump_revision);
        assert!(matches!(tenant.intervention, Change::Set(ref m) if m.execution_id == "e"));
        // A partial failure put back: an operator looks, at what runs now (the revert's).
        let t = Transition {
            error: Some(ComputeError::new(ErrorCode::PartialFailure, "half")),
            resource_ids: Some(ids(8)),
            tenant: Some(TenantOutcome {
                state: TenantState::Running,
                resource_ids: ids(3),
            }),
            ..Transition::to("e", ExecutionState::Failed)
        };
        let tenant = transition(&record, &t).unwrap().at(at(2)).tenant.unwrap();
        assert_eq!(
            (tenant.state, tenant.resource_ids),
            (TenantState::RequiresManualIntervention, ids(3))
        );
        // A failed revert: what the failed attempt left.
        let mut broken = ComputeError::new(ErrorCode::WorkloadFailed, "exit 1");
        broken.rollback_error = Some("boom".into());
        let t = Transition {
            error: Some(broken),
            ..t
        };
        let tenant = transition(&record, &t).unwrap().at(at(2)).tenant.unwrap();
        assert_eq!(
            (tenant.state, tenant.resource_ids),
            (TenantState::RequiresManualIntervention, ids(8))
        );
    }
}
