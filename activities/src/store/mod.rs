//! The execution store: tenants, executions, every state transition, and the audit trail of
//! every activity attempt.
//!
//! One trait, [`ExecutionStore`], with one implementation per database: SQLite (embedded, one
//! worker or several on one host) and Postgres (several workers on several hosts sharing one
//! database); [`connect`] picks one by the URL's scheme. The rules every backend shares (how an
//! execution id is derived, when a request attaches to an execution, which transitions are
//! allowed and what each does to the execution and its tenant) are plain functions in
//! [`rules`], and rows decode into records in one place too, so backends only store and load.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    contract::{
        AttemptRecord, CallbackDelivery, ComputeSpec, DeliveryState, ExecutionState,
        ExecutionStatus, InterventionMark, Operation, Progress, ResourceIds, TenantCompute,
        TenantState,
    },
    error::{ComputeError, ErrorCode},
};

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
pub mod conformance;
pub mod metered;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
pub mod rules;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use rules::{
    attaches_to_latest, derive_execution_id, spec_hash, tenant_state_after, tenant_state_on_begin,
};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The database could not be reached, was busy or timed out: worth retrying.
    #[error("the execution store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// Anything else the database said: a bug or a schema mismatch.
    #[error("the execution store failed: {0}")]
    Database(#[source] sqlx::Error),
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// Migrations could not run.
    #[error("the execution store's migrations failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored row did not decode.
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database URL names no backend this build has.
    #[error(
        "unsupported database URL (expected sqlite://PATH, sqlite::memory: or \
         postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE): {0}"
    )]
    UnsupportedUrl(String),
    /// The URL names a store this worker was built without.
    #[error(
        "the {0} store is not compiled into this worker: build it with the cargo feature `{0}`"
    )]
    NotCompiled(&'static str),
    /// No such execution.
    #[error("execution {0} does not exist")]
    ExecutionNotFound(String),
    /// The store's rules refuse the request (an update of a tenant that has no compute):
    /// nothing was recorded.
    #[error("{}", .0.message)]
    Refused(Box<ComputeError>),
}

impl StoreError {
    /// Classifies a driver error at the source: connection trouble, pool timeouts, a busy or
    /// locked database and a lost race (serialization failure, deadlock, lock wait timed out)
    /// are transient; the rest is not.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => {
                // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6), possibly extended codes.
                // Postgres: class 08 (connection), 40 (serialization, deadlock), 53 (out of
                // resources), 57P (server shutting down), 55P03 (`lock_timeout` expired: another
                // worker held the row for too long).
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                let sqlite_busy = code
                    .parse::<i64>()
                    .map(|c| matches!(c & 0xff, 5 | 6))
                    .unwrap_or(false);
                sqlite_busy
                    || ["08", "40", "53", "57P", "55P03"]
                        .iter()
                        .any(|p| code.starts_with(p))
            }
            _ => false,
        };
        if transient {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }

    /// The classified error an activity returns.
    pub fn to_compute_error(&self) -> ComputeError {
        match self {
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            StoreError::Unavailable(_) => ComputeError::new(
                ErrorCode::StoreUnavailable,
                "the execution store is unavailable",
            )
            .with_root_cause(self),
            StoreError::ExecutionNotFound(id) => ComputeError::new(
                ErrorCode::NotFound,
                format!("execution {id} does not exist"),
            ),
            StoreError::NotCompiled(_) => ComputeError::invalid(self.to_string()),
            StoreError::Refused(e) => (**e).clone(),
            _ => ComputeError::internal("the execution store failed").with_root_cause(self),
        }
    }
}

/// Result alias of the store layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A tenant as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    /// The tenant.
    pub tenant_id: String,
    /// Its state.
    pub state: TenantState,
    /// The last good spec: the one the last successful provision or update applied (none
    /// before the first and after a delete). A failed or cancelled operation never changes it.
    pub spec: Option<ComputeSpec>,
    /// The resources that run now (those that run `spec`, once a failed update is reverted).
    pub resource_ids: ResourceIds,
    /// The most recent execution.
    pub last_execution_id: Option<String>,
    /// Bumped by every new (or re-opened) execution.
    pub generation: i64,
    /// Bumped each time a spec is applied successfully.
    pub revision: i64,
    /// Set by a non-retriable failure until the next success or an operator clears it.
    pub intervention: Option<InterventionMark>,
    /// Executions not final yet, oldest first.
    pub active_execution_ids: Vec<String>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TenantRecord {
    /// Whether the tenant has compute an update can change: a last good spec, or a
    /// provision (or an update after one) under way.
    pub fn has_compute(&self) -> bool {
        match self.state {
            TenantState::Deleted | TenantState::Absent => false,
            TenantState::Provisioning | TenantState::Updating => true,
            _ => self.spec.is_some(),
        }
    }

    /// The tenant as `GetTenantCompute` answers.
    pub fn to_compute(&self) -> TenantCompute {
        TenantCompute {
            tenant_id: self.tenant_id.clone(),
            state: self.state,
            spec: self.spec.clone(),
            resource_ids: self.resource_ids.clone(),
            revision: u64::try_from(self.revision).unwrap_or(0),
            last_execution_id: self.last_execution_id.clone(),
            active_execution_ids: self.active_execution_ids.clone(),
            requires_intervention: self.intervention.clone(),
            updated_at: Some(self.updated_at),
        }
    }
}

/// An operator's request to cancel a running execution, kept until its tracker has undone
/// what the execution did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was asked.
    pub at: DateTime<Utc>,
}

/// One execution with what is needed to resume it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    /// The status callers see.
    pub status: ExecutionStatus,
    /// The validated request (references only, never secret values).
    pub request: Value,
    /// Hash of the spec the execution was asked for.
    pub spec_hash: String,
    /// Set while an operator's cancel waits for the tracker to undo the execution.
    pub cancel_requested: Option<CancelRequest>,
}

impl ExecutionRecord {
    /// The spec the execution applies (provision / update), as validated and recorded.
    pub fn spec(&self) -> Option<ComputeSpec> {
        self.request
            .get("spec")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
    }
}

/// A request to record a new execution.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    /// The tenant.
    pub tenant_id: String,
    /// The operation.
    pub operation: Operation,
    /// The caller's key, if any.
    pub idempotency_key: Option<String>,
    /// Hash of the desired spec (see [`spec_hash`]).
    pub spec_hash: String,
    /// The desired spec (provision / update).
    pub spec: Option<ComputeSpec>,
    /// The validated request.
    pub request: Value,
    /// The operation's timeout.
    pub timeout: Duration,
    /// The provider that carries the execution out ([`ComputeProvider::name`]), so that
    /// `sweep --apply` can tell a store this provider has used from a wrong `--database` (see
    /// [`ExecutionStore::knows_provider`]). `None` records no provider: such an execution (and
    /// every one recorded before executions had a provider) counts for any provider.
    ///
    /// [`ComputeProvider::name`]: crate::provider::ComputeProvider::name
    pub provider: Option<String>,
}

/// What one [`ExecutionStore::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    /// Rows of the audit trail (`activity_attempts`) whose attempt finished before the cutoff.
    pub attempts: u64,
    /// Callback deliveries (`callback_deliveries`) last attempted before the cutoff.
    pub deliveries: u64,
}

/// How many rows one pruning statement deletes at most: each batch is its own short
/// transaction, so pruning a huge table never holds a lock for long (other writers get in
/// between batches). Smaller in tests, so that the conformance suite crosses batches cheaply.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const PRUNE_BATCH: i64 = if cfg!(test) { 100 } else { 1000 };

/// Runs `batch` (one `DELETE` of at most [`PRUNE_BATCH`] rows, returning how many went) until
/// a batch comes back short; the total. The rule both backends prune by: each keeps only its
/// SQL.
// A closure returning a future, not an `AsyncFnMut`: the stores' futures must be `Send`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn delete_in_batches<F>(mut batch: impl FnMut(i64) -> F) -> Result<u64>
where
    F: Future<Output = Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = batch(PRUNE_BATCH).await?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// What [`ExecutionStore::begin_execution`] found or made.
#[derive(Debug, Clone, PartialEq)]
pub struct BeginOutcome {
    /// The execution.
    pub record: ExecutionRecord,
    /// False when the request attached to an existing execution.
    pub created: bool,
    /// True when the request re-opened its execution after a terminal failure (a new
    /// attempt under the same id).
    pub reopened: bool,
    /// The tenant as it was before this request (current state for an update or delete).
    pub previous_tenant: Option<TenantRecord>,
}

/// A change to an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The execution.
    pub execution_id: String,
    /// The state to enter (or keep, to add a note).
    pub state: ExecutionState,
    /// New resource ids, if they changed.
    pub resource_ids: Option<ResourceIds>,
    /// The error (failure, or a failed attempt while pending).
    pub error: Option<ComputeError>,
    /// Progress while running.
    pub progress: Option<Progress>,
    /// A note for the history.
    pub message: Option<String>,
    /// What the tenant is after this (final) transition, when the activity knows better than
    /// the default rule: a failed update put back on its last good spec runs again.
    pub tenant: Option<TenantOutcome>,
}

/// What a tenant is after its execution ended, as the activity that ended it decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantOutcome {
    /// The tenant's state.
    pub state: TenantState,
    /// The resources that run now.
    pub resource_ids: ResourceIds,
}

impl Transition {
    /// A bare transition to `state`.
    pub fn to(execution_id: &str, state: ExecutionState) -> Self {
        Transition {
            execution_id: execution_id.to_string(),
            state,
            resource_ids: None,
            error: None,
            progress: None,
            message: None,
            tenant: None,
        }
    }
}

/// One attempt to deliver a callback, as [`ExecutionStore::record_delivery`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryAttempt {
    /// The execution the callback reports.
    pub execution_id: String,
    /// The target, log-safe (`CallbackTarget::describe`).
    pub target: String,
    /// The target's kind.
    pub kind: String,
    /// The state reported.
    pub state: ExecutionState,
    /// The callback's sequence number.
    pub sequence: u32,
    /// What the attempt achieved.
    pub outcome: DeliveryState,
    /// The attempt's error, or why the target will never accept it.
    pub error: Option<String>,
    /// When the attempt was made.
    pub at: DateTime<Utc>,
}

/// What [`ExecutionStore::transition`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionOutcome {
    /// The execution after the call.
    pub record: ExecutionRecord,
    /// False when the transition was not allowed from the current state (for example a late
    /// `running` after `succeeded`) and nothing changed: activities run at least once, so a
    /// repeated transition must be harmless.
    pub applied: bool,
}

/// The store every activity and the tracker use.
#[async_trait]
pub trait ExecutionStore: Send + Sync + 'static {
    /// Finds the execution this request maps to, or records a new `pending` one (with its
    /// first history row and the tenant's new state), atomically.
    async fn begin_execution(&self, new: NewExecution) -> Result<BeginOutcome>;

    /// One execution with its history.
    async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>>;

    /// A tenant's executions, oldest first.
    async fn list_executions(&self, tenant_id: &str) -> Result<Vec<ExecutionRecord>>;

    /// Applies a transition (see [`ExecutionState::can_become`]) and what it does to the tenant.
    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome>;

    /// One tenant.
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>>;

    /// Tenants ordered by id: at most `limit`, after `after`, only in `state` if given.
    async fn list_tenants(
        &self,
        state: Option<TenantState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>>;

    /// Marks a tenant for manual intervention (a policy's `abort`): sets `mark` and, if
    /// given, forces its state, with a note in the history of the mark's execution.
    async fn mark_tenant(
        &self,
        tenant_id: &str,
        mark: InterventionMark,
        state: Option<TenantState>,
    ) -> Result<()>;

    /// Clears a tenant's manual-intervention mark (an operator's `tenant clear`), with a note
    /// in the history of the execution that set it. A tenant that stood in
    /// `requires_manual_intervention` goes back to `running` when it has a last good spec
    /// and to `failed` otherwise. `None` for an unknown tenant; a tenant with no mark is
    /// returned unchanged.
    async fn clear_intervention(&self, tenant_id: &str, note: &str)
    -> Result<Option<TenantRecord>>;

    /// Records an operator's request to cancel an execution that is not final (with a note
    /// in its history); `applied` is false when the execution is final or a cancel was
    /// already requested.
    async fn request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> Result<TransitionOutcome>;

    /// Appends one attempt of an activity to the audit trail (table `activity_attempts`).
    async fn record_attempt(&self, attempt: AttemptRecord) -> Result<()>;

    /// The audit trail of one execution: every recorded attempt of every activity about it,
    /// in the order they started.
    async fn list_attempts(&self, execution_id: &str) -> Result<Vec<AttemptRecord>>;

    /// Counts one attempt to deliver a callback and records its outcome (table
    /// `callback_deliveries`, one row per execution, target and reported state). A delivery
    /// once `delivered` stays so.
    async fn record_delivery(&self, attempt: DeliveryAttempt) -> Result<()>;

    /// Every callback delivery of one execution, in the order they were first tried.
    async fn list_deliveries(&self, execution_id: &str) -> Result<Vec<CallbackDelivery>>;

    /// Retention: deletes the audit trail's attempts that finished before `older_than` and the
    /// callback deliveries last attempted before it, in batches of a bounded size (so a huge
    /// table is never locked for long), and says how many rows went. Executions, their
    /// history and tenants are kept.
    ///
    /// The default keeps everything (a store without an audit trail, a test double); both
    /// backends here prune.
    async fn prune(&self, older_than: DateTime<Utc>) -> Result<PruneCounts> {
        let _ = older_than;
        Ok(PruneCounts::default())
    }

    /// Whether the store has recorded an execution for `provider` (as
    /// [`NewExecution::provider`]), counting executions that recorded no provider (all of those
    /// from before executions had one) as any provider's. False for an empty store: what a
    /// wrong `--database` looks like, before `sweep --apply` removes every tenant's resources.
    ///
    /// The default says no (a store that cannot tell is not trusted to sweep against).
    async fn knows_provider(&self, provider: &str) -> Result<bool> {
        let _ = provider;
        Ok(false)
    }

    /// Observation leases (see [`crate::observer`]): `observer` is alive until `until_ms`
    /// (milliseconds since the epoch). One row per worker, whatever it watches: keeping
    /// thousands of executions costs one write per renewal.
    async fn observer_alive(&self, observer: &str, until_ms: i64) -> Result<()>;

    /// `observer` is gone (its worker stops): what it watched is taken over at once.
    async fn observer_gone(&self, observer: &str) -> Result<()>;

    /// Puts an execution under observation by `observer`, unless another observer that is
    /// alive at `now_ms` has it. True when `observer` has it now.
    async fn claim_observation(
        &self,
        execution_id: &str,
        observer: &str,
        now_ms: i64,
    ) -> Result<bool>;

    /// Takes over at most `limit` executions under observation whose observer is gone at
    /// `now_ms`, and returns their ids.
    async fn claim_orphans(&self, observer: &str, now_ms: i64, limit: u32) -> Result<Vec<String>>;

    /// Ends the observation of an execution by `observer` (its tracker was told the final
    /// state); does nothing if another observer took it over.
    async fn end_observation(&self, execution_id: &str, observer: &str) -> Result<()>;

    /// The executions `observer` watches (their ids).
    async fn observed_by(&self, observer: &str) -> Result<Vec<String>>;

    /// One round trip to the database (the worker's readiness probe).
    async fn ping(&self) -> Result<()>;
}

/// The backend a database URL names (`sqlite`, `postgres`), as metrics label it.
pub fn backend_of(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        "postgres"
    } else {
        "unknown"
    }
}

/// Opens the store a database URL names and runs its migrations: `sqlite:...` for SQLite,
/// `postgres://...` or `postgresql://...` for Postgres.
pub async fn connect(url: &str) -> Result<Arc<dyn ExecutionStore>> {
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(sqlite::SqliteStore::connect(url).await?));
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::NotCompiled("sqlite"));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresStore::connect(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::NotCompiled("postgres"));
    }
    Err(StoreError::UnsupportedUrl(redact_url(url)))
}

/// How often [`prune_periodically`] prunes, when the worker runs it.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// The cutoff of a retention period ending `now`: `now - retention`, or the earliest time
/// there is when `retention` reaches further back (nothing is that old, so nothing goes).
pub fn retention_cutoff(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Retention for the worker to spawn: [`ExecutionStore::prune`]s what is older than
/// `retention` at once and then every `every`, for ever. A failed prune is logged and tried
/// again next time (nothing is lost by pruning late).
pub async fn prune_periodically(
    store: Arc<dyn ExecutionStore>,
    retention: Duration,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let cutoff = retention_cutoff(Utc::now(), retention);
        match store.prune(cutoff).await {
            Ok(counts) => tracing::info!(
                attempts = counts.attempts,
                deliveries = counts.deliveries,
                cutoff = %cutoff,
                "Pruned the audit trail and the callback deliveries."
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "Pruning the audit trail failed; trying again at the next interval."
            ),
        }
    }
}

/// A database URL fit for logs and error messages: the password in the userinfo and the
/// values of `password=` and `sslpassword=` query parameters (any case, percent-encoded or
/// not, as the driver reads them) are replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let (authority, after) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let mut out = url[..authority_start].to_string();
    // The userinfo ends at the authority's last '@' (a password may itself contain '@').
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            out.push_str(userinfo.split_once(':').map_or(userinfo, |(user, _)| user));
            if userinfo.contains(':') {
                out.push_str(":***");
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match after.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret_parameter(key) => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Whether a query key, as written (the driver percent-decodes keys), names a password.
fn is_secret_parameter(key: &str) -> bool {
    let key = percent_decode(key);
    key.eq_ignore_ascii_case(b"password") || key.eq_ignore_ascii_case(b"sslpassword")
}

/// A query component with its `%XX` escapes and `+` decoded; a malformed escape stays as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = s
            .get(i + 1..i + 3)
            .filter(|h| bytes[i] == b'%' && h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            (
                "postgres://app:s3cr%40t@db:5432/compute",
                "postgres://app:***@db:5432/compute",
            ),
            (
                "postgres://a:b@c@db/x?sslmode=require",
                "postgres://a:***@db/x?sslmode=require",
            ),
            ("postgresql://app@db/compute", "postgresql://app@db/compute"),
            ("postgres://db/x?user=a@b", "postgres://db/x?user=a@b"),
            ("sqlite://data/store.db", "sqlite://data/store.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            (
                "postgres://db/x?password=hunter2",
                "postgres://db/x?password=***",
            ),
            (
                "postgres://app:pw@db/x?sslmode=verify-full&PassWord=a%26b&sslrootcert=/ca.pem",
                "postgres://app:***@db/x?sslmode=verify-full&PassWord=***&sslrootcert=/ca.pem",
            ),
            (
                "postgresql://db/x?sslpassword=k3y&SSLPASSWORD=k3y2#frag",
                "postgresql://db/x?sslpassword=***&SSLPASSWORD=***#frag",
            ),
            // The driver decodes keys: an encoded name is still the password.
            (
                "postgres://db/x?pass%77ord=hunter2&%73slpassword=k",
                "postgres://db/x?pass%77ord=***&%73slpassword=***",
            ),
            // Other parameters, and ones merely containing the word, are kept.
            (
                "postgres://db/x?user=app&application_name=password&passwords=2&password",
                "postgres://db/x?user=app&application_name=password&passwords=2&password",
            ),
            ("postgres://db?password=x", "postgres://db?password=***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%41+%4"), b"aA %4");
        assert_eq!(percent_decode("%zz%"), b"%zz%");
        assert_eq!(percent_decode("%+1"), b"% 1");
        assert_eq!(percent_decode("é%C3%A9"), "éé".as_bytes());
    }

    #[tokio::test]
    async fn unsupported_urls_do_not_show_passwords() {
        for url in [
            "mysql://app:hunter2@db/x",
            "mysql://db/x?password=hunter2",
            "db.example:5432/x?sslpassword=hunter2",
        ] {
            let e = connect(url).await.err().unwrap();
            assert!(matches!(e, StoreError::UnsupportedUrl(_)));
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
        }
    }

    /// A minimal build names the store it left out and the feature that builds it.
    #[tokio::test]
    async fn a_store_left_out_of_the_build_is_refused_with_its_feature() {
        let left_out: &[(&str, &str)] = &[
            #[cfg(not(feature = "sqlite"))]
            ("sqlite::memory:", "sqlite"),
            #[cfg(not(feature = "postgres"))]
            ("postgres://app:hunter2@db/x", "postgres"),
        ];
        for &(url, feature) in left_out {
            let e = connect(url).await.err().unwrap();
            assert!(
                matches!(e, StoreError::NotCompiled(f) if f == feature),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("cargo feature `{feature}`"))
            );
            assert!(!e.to_string().contains("hunter2"));
            assert_eq!(e.to_compute_error().code, ErrorCode::InvalidConfiguration);
        }
    }

    #[test]
    fn retention_cutoffs_never_overflow() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(
            retention_cutoff(now, Duration::from_secs(30 * 86_400)),
            DateTime::from_timestamp(1_700_000_000 - 30 * 86_400, 0).unwrap()
        );
        assert_eq!(retention_cutoff(now, Duration::ZERO), now);
        assert_eq!(
            retention_cutoff(now, Duration::MAX),
            DateTime::<Utc>::MIN_UTC
        );
        assert_eq!(
            retention_cutoff(now, Duration::from_secs(400_000 * 365 * 86_400)),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[tokio::test]
    async fn the_periodic_pruner_prunes_at_once() {
        let store = connect("sqlite::memory:").await.unwrap();
        let finished_at = DateTime::from_timestamp(1_000_000_000, 0).unwrap();
        let old = AttemptRecord {
            execution_id: Some("e".into()),
            tenant_id: None,
            activity_type: "GetComputeExecution".into(),
            activity_id: "1".into(),
            workflow_id: None,
            run_id: None,
            attempt: 1,
            started_at: finished_at,
            finished_at,
            latency_ms: 0,
            outcome: crate::contract::AttemptOutcome::Ok,
            retriable: false,
            provider: None,
            provider_code: None,
            provider_request_id: None,
            message: None,
        };
        let recent = AttemptRecord {
            attempt: 2,
            started_at: crate::contract::now(),
            finished_at: crate::contract::now(),
            ..old.clone()
        };
        store.record_attempt(old).await.unwrap();
        store.record_attempt(recent.clone()).await.unwrap();
        let pruner = tokio::spawn(prune_periodically(
            store.clone(),
            Duration::from_secs(30 * 86_400),
            PRUNE_INTERVAL,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.list_attempts("e").await.unwrap().len() > 1 {
            assert!(std::time::Instant::now() < deadline, "nothing was pruned");
            tokio::task::yield_now().await;
        }
        pruner.abort();
        assert_eq!(store.list_attempts("e").await.unwrap(), [recent]);
    }
}
