//! Postgres implementation of the execution store, for several workers sharing one database.
//!
//! Behaviour is the SQLite store's (same rules from [`super`], same schema, same results); what
//! differs is how concurrent writers are kept apart, because here they may be different
//! processes on different hosts:
//!
//! - **Beginning an execution** locks the tenant's row (`SELECT ... FOR UPDATE`) before reading
//!   the tenant's generation and latest execution, so two workers can never both decide that a
//!   request is new: the second waits, then sees the first one's execution and attaches to it.
//!   A tenant seen for the first time gets its row from `INSERT ... ON CONFLICT DO NOTHING`
//!   first, so there is always a row to lock (concurrent first inserts wait for each other).
//! - **Transitions and notes** lock the execution's row, so the state machine is checked
//!   against the latest state and history rows of one execution are written one writer at a
//!   time, in the order their `seq` (an identity column) records.
//! - The tenant is updated only `WHERE last_execution_id = <this execution>`; under Postgres'
//!   read-committed rules that condition is re-checked on the newest row version, so an older
//!   execution finishing while a newer one begins can never overwrite the newer one's state.
//! - Locks are always taken execution first, then tenant (beginning takes only the tenant's),
//!   so writers cannot deadlock; should Postgres still report a serialization failure or a
//!   deadlock, the whole operation is retried here a few times before it is reported
//!   (as transient, see [`StoreError::from_sqlx`]).
//! - Timestamps come from the database's clock, taken once the locks are held, so the history
//!   of an execution written by workers on different hosts is in order in time as well as in
//!   `seq` (and never goes backwards, even if the server's clock does).
//!
//! Postgres text and `jsonb` cannot hold the NUL character, which SQLite stores happily: free
//! text (history notes, error messages inside JSON documents) has NUL replaced by U+FFFD, so
//! that recording a failure never fails because of what the failure said.

use std::{borrow::Cow, future::Future, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::{
    PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};

use super::{
    BeginOutcome, CancelRequest, DeliveryAttempt, ExecutionRecord, ExecutionStore, NewExecution,
    PruneCounts, Result, StoreError, TenantRecord, Transition, TransitionOutcome,
    rows::{self, Columns, timestamp_text as ts},
    rules::{self, Begin},
};
use crate::contract::{
    AttemptRecord, CallbackDelivery, ExecutionState, HistoryEntry, InterventionMark, TenantState,
};

/// How often an operation that lost a serialization race or a deadlock is tried in all.
const ATTEMPTS: u32 = 5;

/// The Postgres store (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS]`, or
/// `postgresql://...`).
///
/// Any number of workers may share the database; each holds its own pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// The columns of an execution. Every timestamp column is read as epoch milliseconds under its
/// own name (exact: every stored value has whole milliseconds, and the workspace's sqlx has no
/// chrono support); timestamp parameters are bound as text and cast with `::timestamptz`.
macro_rules! execution_columns {
    () => {
        "SELECT e.execution_id, e.tenant_id, e.operation, e.state, e.idempotency_key,
                e.spec_hash, e.request, e.resource_ids, e.progress, e.error, e.timeout_ms,
                e.attempt, e.cancel_requested,
                (extract(epoch FROM e.created_at) * 1000)::bigint AS created_at,
                (extract(epoch FROM e.updated_at) * 1000)::bigint AS updated_at,
                (extract(epoch FROM e.started_at) * 1000)::bigint AS started_at,
                (extract(epoch FROM e.finished_at) * 1000)::bigint AS finished_at"
    };
}

/// An execution's history as one JSON array, oldest first: read in the same statement (so the
/// same snapshot) as the execution itself, and without one query per execution when listing.
macro_rules! history_column {
    () => {
        ", (SELECT COALESCE(json_agg(json_build_object(
                  'state', h.state, 'message', h.message,
                  'at', (extract(epoch FROM h.at) * 1000)::bigint) ORDER BY h.seq), '[]'::json)
             FROM execution_history h WHERE h.execution_id = e.execution_id) AS history"
    };
}

/// A tenant's columns, with its executions that are not final as a JSON array, oldest first.
macro_rules! tenant_select {
    () => {
        "SELECT t.tenant_id, t.state, t.spec, t.resource_ids, t.last_execution_id, t.generation,
                t.revision, t.intervention,
                (SELECT COALESCE(json_agg(a.execution_id ORDER BY a.seq), '[]'::json)
                   FROM executions a
                  WHERE a.tenant_id = t.tenant_id
                    AND a.state IN ('pending', 'running', 'timed_out')) AS active_execution_ids,
                (extract(epoch FROM t.updated_at) * 1000)::bigint AS updated_at
         FROM tenants t"
    };
}

macro_rules! tenant_columns {
    () => {
        concat!(tenant_select!(), " WHERE t.tenant_id = $1")
    };
}

fn from_ms(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} ms out of range")))
}

/// Free text as Postgres can store it (see the module's documentation).
fn scrub_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn scrub(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(scrub_text(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrub_text(&k).into_owned(), scrub(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A value as a `jsonb` parameter.
fn doc<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v)
        .map(scrub)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_doc<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn col<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name).map_err(StoreError::from_sqlx)
}

/// Timestamps are epoch milliseconds, documents `jsonb`, integers `bigint` (the queries cast
/// `integer` columns).
impl Columns for PgRow {
    super::rows::plain_columns!();
    fn timestamp(&self, column: &str) -> Result<DateTime<Utc>> {
        from_ms(self.integer(column)?)
    }
    fn opt_timestamp(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        col::<Option<i64>>(self, column)?.map(from_ms).transpose()
    }
    fn document<T: DeserializeOwned>(&self, column: &str) -> Result<T> {
        from_doc(col(self, column)?)
    }
    fn opt_document<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>> {
        col::<Option<Value>>(self, column)?
            .map(from_doc)
            .transpose()
    }
}

/// True for the errors Postgres asks the client to retry: serialization failure and deadlock.
fn lost_race(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}

/// Runs a whole transaction again when it lost a race, a few times, with a short growing pause.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e) if n < ATTEMPTS && lost_race(&e) => {
                tracing::debug!(error = %e, attempt = n, "Retrying an execution-store transaction.");
                tokio::time::sleep(Duration::from_millis(10 * u64::from(n))).await;
                n += 1;
            }
            result => return result,
        }
    }
}

impl PostgresStore {
    /// Connects (a pool of up to 8 connections) and runs the migrations in
    /// `migrations/postgres` (several workers starting at once is fine: sqlx serialises them with
    /// an advisory lock).
    ///
    /// Every session gets `lock_timeout = 10s`, so a worker stuck behind another one's row lock
    /// gives up with a transient error, and `idle_in_transaction_session_timeout = 60s`, so a
    /// worker that hangs mid-transaction cannot hold a tenant's row forever.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(StoreError::Database)?;
        let options = if options.get_application_name().is_none() {
            options.application_name("compute-worker")
        } else {
            options
        };
        let options = options.options([
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "60s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(1800)))
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
            .await
            .map_err(StoreError::from_sqlx)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// The database's clock, to the millisecond, never before the execution's last history
    /// entry.
    async fn clock(conn: &mut PgConnection, execution_id: Option<&str>) -> Result<DateTime<Utc>> {
        let ms: i64 = sqlx::query_scalar(
            "SELECT (extract(epoch FROM GREATEST(
                        date_trunc('milliseconds', clock_timestamp()),
                        (SELECT max(at) FROM execution_history WHERE execution_id = $1)
                    )) * 1000)::bigint",
        )
        .bind(execution_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        from_ms(ms)
    }

    /// One execution with its history.
    async fn load_execution(
        conn: &mut PgConnection,
        execution_id: &str,
    ) -> Result<Option<ExecutionRecord>> {
        let row = sqlx::query(concat!(
            execution_columns!(),
            history_column!(),
            " FROM executions e WHERE e.execution_id = $1"
        ))
        .bind(execution_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        row.map(|row| Self::decode_execution(&row, true))
            .transpose()
    }

    /// One execution without its history, its row locked until the transaction ends. The
    /// values are the newest committed ones (a locking read waits for, then re-reads, a row
    /// another transaction is changing).
    async fn lock_execution(
        conn: &mut PgConnection,
        execution_id: &str,
    ) -> Result<Option<ExecutionRecord>> {
        let row = sqlx::query(concat!(
            execution_columns!(),
            " FROM executions e WHERE e.execution_id = $1 FOR UPDATE"
        ))
        .bind(execution_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        row.map(|row| Self::decode_execution(&row, false))
            .transpose()
    }

    fn decode_history(history: Value) -> Result<Vec<HistoryEntry>> {
        let Value::Array(entries) = history else {
            return Err(StoreError::Corrupt(format!("history {history}")));
        };
        entries
            .iter()
            .map(|h| {
                let at = h["at"]
                    .as_i64()
                    .ok_or_else(|| StoreError::Corrupt(format!("history entry {h}")))?;
                rows::history_entry(
                    h["state"].as_str().unwrap_or_default(),
                    h["message"].as_str().map(str::to_string),
                    from_ms(at)?,
                )
            })
            .collect()
    }

    fn decode_execution(row: &PgRow, with_history: bool) -> Result<ExecutionRecord> {
        let history = if with_history {
            Self::decode_history(col(row, "history")?)?
        } else {
            Vec::new()
        };
        rows::execution(row, history)
    }

    /// One tenant; with `lock`, its row stays locked until the transaction ends.
    async fn load_tenant(
        conn: &mut PgConnection,
        tenant_id: &str,
        lock: bool,
    ) -> Result<Option<TenantRecord>> {
        let sql = if lock {
            concat!(tenant_columns!(), " FOR UPDATE")
        } else {
            tenant_columns!()
        };
        let row = sqlx::query(sql)
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        row.as_ref().map(rows::tenant).transpose()
    }

    /// Runs a `DELETE` of at most `$2` rows older than `$1` until a batch comes back short.
    /// Each batch is its own short transaction, and skips rows another transaction has
    /// locked (a delivery being retried right now), so pruning neither holds locks for long
    /// nor waits for anyone's.
    async fn delete_in_batches(&self, sql: &str, cutoff: &str) -> Result<u64> {
        super::delete_in_batches(|limit| async move {
            sqlx::query(sql)
                .bind(cutoff)
                .bind(limit)
                .execute(&self.pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(StoreError::from_sqlx)
        })
        .await
    }

    async fn add_history(
        conn: &mut PgConnection,
        execution_id: &str,
        state: ExecutionState,
        message: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO execution_history (execution_id, state, message, at)
             VALUES ($1, $2, $3, $4::timestamptz)",
        )
        .bind(execution_id)
        .bind(state.as_str())
        .bind(message.map(scrub_text))
        .bind(ts(at))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn try_begin(&self, new: &NewExecution) -> Result<BeginOutcome> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        // A row to lock even for a tenant seen for the first time. A concurrent first insert of
        // the same tenant waits for ours to commit or roll back, then does nothing.
        let placeholder = sqlx::query(
            "INSERT INTO tenants (tenant_id, state, created_at, updated_at)
             VALUES ($1, $2, date_trunc('milliseconds', clock_timestamp()),
                     date_trunc('milliseconds', clock_timestamp()))
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&new.tenant_id)
        .bind(rules::tenant_state_on_begin(new.operation).as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?
        .rows_affected()
            == 1;
        // From here on no other worker can begin an execution of this tenant until we commit.
        let locked = Self::load_tenant(&mut tx, &new.tenant_id, true).await?;
        // A placeholder is not a tenant the caller knew: report none, as SQLite does.
        let tenant = if placeholder { None } else { locked };
        let candidate = match rules::begin_candidate(new, tenant.as_ref()) {
            Some(id) => Self::load_execution(&mut tx, &id).await?,
            None => None,
        };
        let start = match rules::begin(new, tenant.as_ref(), candidate) {
            Begin::Attach(record) => {
                // Nothing was written (an existing execution means the tenant's row existed, so
                // there is no placeholder either).
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                return Ok(BeginOutcome {
                    record,
                    created: false,
                    reopened: false,
                    previous_tenant: tenant,
                });
            }
            Begin::Refuse(e) => {
                // Rolling back removes a placeholder row too.
                tx.rollback().await.map_err(StoreError::from_sqlx)?;
                return Err(StoreError::Refused(Box::new(e)));
            }
            Begin::Reopen(reopen) => {
                let id = reopen.record.status.execution_id.clone();
                // Execution after tenant here: no transition holds the execution's row while
                // waiting for the tenant's (transitions lock the tenant only by updating it,
                // after the execution), so the order cannot deadlock for long; a lost race is
                // retried whole.
                Self::lock_execution(&mut tx, &id).await?;
                let at = Self::clock(&mut tx, Some(&id)).await?;
                sqlx::query(
                    "UPDATE executions SET state = 'pending', attempt = $1, error = NULL,
                       progress = NULL, finished_at = NULL, cancel_requested = NULL,
                       updated_at = $2::timestamptz WHERE execution_id = $3",
                )
                .bind(i64::from(reopen.attempt))
                .bind(ts(at))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                sqlx::query(
                    "UPDATE tenants SET state = $1, last_execution_id = $2, generation = $3,
                       updated_at = $4::timestamptz WHERE tenant_id = $5",
                )
                .bind(reopen.tenant_state.as_str())
                .bind(&id)
                .bind(reopen.generation)
                .bind(ts(at))
                .bind(&new.tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                Self::add_history(
                    &mut tx,
                    &id,
                    ExecutionState::Pending,
                    Some(&reopen.note),
                    at,
                )
                .await?;
                let record = Self::load_execution(&mut tx, &id)
                    .await?
                    .ok_or_else(|| StoreError::ExecutionNotFound(id.clone()))?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                return Ok(BeginOutcome {
                    record,
                    created: false,
                    reopened: true,
                    previous_tenant: tenant,
                });
            }
            Begin::Start(start) => start,
        };

        let at = Self::clock(&mut tx, None).await?;
        sqlx::query(
            "UPDATE tenants SET state = $2, last_execution_id = $3,
               generation = $4, updated_at = $5::timestamptz
             WHERE tenant_id = $1",
        )
        .bind(&new.tenant_id)
        .bind(start.tenant_state.as_str())
        .bind(&start.execution_id)
        .bind(start.generation)
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        sqlx::query(
            "INSERT INTO executions (execution_id, tenant_id, operation, state, idempotency_key,
               spec_hash, request, timeout_ms, created_at, updated_at, provider)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::timestamptz, $9::timestamptz, $10)",
        )
        .bind(&start.execution_id)
        .bind(&new.tenant_id)
        .bind(new.operation.as_str())
        .bind(start.state.as_str())
        .bind(&new.idempotency_key)
        .bind(&new.spec_hash)
        .bind(doc(&new.request)?)
        .bind(new.timeout.as_millis() as i64)
        .bind(ts(at))
        .bind(new.provider.as_deref().map(scrub_text))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        Self::add_history(&mut tx, &start.execution_id, start.state, None, at).await?;
        let record = Self::load_execution(&mut tx, &start.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(start.execution_id.clone()))?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(BeginOutcome {
            record,
            created: true,
            reopened: false,
            previous_tenant: tenant,
        })
    }

    async fn try_transition(&self, t: &Transition) -> Result<TransitionOutcome> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        let current = Self::lock_execution(&mut tx, &t.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(t.execution_id.clone()))?;
        let Some(allowed) = rules::transition(&current, t) else {
            let record = Self::load_execution(&mut tx, &t.execution_id)
                .await?
                .ok_or_else(|| StoreError::ExecutionNotFound(t.execution_id.clone()))?;
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(TransitionOutcome {
                record,
                applied: false,
            });
        };
        let change = allowed.at(Self::clock(&mut tx, Some(&t.execution_id)).await?);
        sqlx::query(
            "UPDATE executions SET state = $1, resource_ids = $2, error = $3, progress = $4,
               started_at = $5::timestamptz, finished_at = $6::timestamptz,
               updated_at = $7::timestamptz
             WHERE execution_id = $8",
        )
        .bind(change.state.as_str())
        .bind(doc(&change.resource_ids)?)
        .bind(change.error.as_ref().map(doc).transpose()?)
        .bind(change.progress.as_ref().map(doc).transpose()?)
        .bind(change.started_at.map(ts))
        .bind(change.finished_at.map(ts))
        .bind(ts(change.updated_at))
        .bind(&t.execution_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        if let Some(entry) = &change.history {
            Self::add_history(
                &mut tx,
                &t.execution_id,
                entry.state,
                entry.message.as_deref(),
                entry.at,
            )
            .await?;
        }
        if let Some(tenant) = change.tenant.clone() {
            // `last_execution_id` is re-checked on the newest row version (waiting for a
            // concurrent begin to commit), so an execution a newer one has replaced never
            // writes, even while another worker is beginning that newer one. The spec and the
            // mark are computed in SQL for the same reason.
            let (set_spec, spec) = match tenant.spec {
                rules::Change::Keep => (false, None),
                rules::Change::Set(spec) => (true, Some(doc(&spec)?)),
                rules::Change::Clear => (true, None),
            };
            let (set_mark, mark) = match tenant.intervention {
                rules::Change::Keep => (false, None),
                rules::Change::Set(mark) => (true, Some(doc(&mark)?)),
                rules::Change::Clear => (true, None),
            };
            sqlx::query(
                "UPDATE tenants SET state = $1, resource_ids = $2, updated_at = $3::timestamptz,
                   spec = CASE WHEN $6 THEN $7 ELSE spec END,
                   revision = revision + $8,
                   intervention = CASE WHEN $9 THEN $10 ELSE intervention END
                 WHERE tenant_id = $4 AND last_execution_id = $5",
            )
            .bind(tenant.state.as_str())
            .bind(doc(&tenant.resource_ids)?)
            .bind(ts(change.updated_at))
            .bind(&current.status.tenant_id)
            .bind(&t.execution_id)
            .bind(set_spec)
            .bind(spec)
            .bind(i64::from(tenant.bump_revision))
            .bind(set_mark)
            .bind(mark)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        }
        let record = Self::load_execution(&mut tx, &t.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(t.execution_id.clone()))?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(TransitionOutcome {
            record,
            applied: change.applied,
        })
    }

    async fn try_mark_tenant(
        &self,
        tenant_id: &str,
        mark: &InterventionMark,
        state: Option<TenantState>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        // The execution's lock orders the note among its transitions (and keeps the lock order
        // execution, then tenant, that transitions use).
        let current = Self::lock_execution(&mut tx, &mark.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(mark.execution_id.clone()))?;
        let at = Self::clock(&mut tx, Some(&mark.execution_id)).await?;
        sqlx::query(
            "UPDATE tenants SET state = COALESCE($1, state), intervention = $2,
               updated_at = $3::timestamptz WHERE tenant_id = $4",
        )
        .bind(state.map(TenantState::as_str))
        .bind(doc(mark)?)
        .bind(ts(at))
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        let note = rules::mark_note(mark);
        Self::add_history(
            &mut tx,
            &mark.execution_id,
            current.status.state,
            Some(&note),
            at,
        )
        .await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn try_clear_intervention(
        &self,
        tenant_id: &str,
        note: &str,
    ) -> Result<Option<TenantRecord>> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        // Unlocked first, to learn the mark's execution; then execution, then tenant, the
        // order transitions lock in, and the mark read again under the lock.
        let Some(seen) = Self::load_tenant(&mut tx, tenant_id, false).await? else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(None);
        };
        let Some(seen_mark) = seen.intervention else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(Some(seen));
        };
        let execution = Self::lock_execution(&mut tx, &seen_mark.execution_id).await?;
        let Some(tenant) = Self::load_tenant(&mut tx, tenant_id, true).await? else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(None);
        };
        if tenant.intervention.is_none() {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(Some(tenant));
        }
        let at = Self::clock(&mut tx, Some(&seen_mark.execution_id)).await?;
        sqlx::query(
            "UPDATE tenants SET state = $1, intervention = NULL, updated_at = $2::timestamptz
             WHERE tenant_id = $3",
        )
        .bind(rules::state_after_clear(&tenant).as_str())
        .bind(ts(at))
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        if let Some(execution) = execution {
            Self::add_history(
                &mut tx,
                &seen_mark.execution_id,
                execution.status.state,
                Some(note),
                at,
            )
            .await?;
        }
        let tenant = Self::load_tenant(&mut tx, tenant_id, false).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(tenant)
    }

    async fn try_request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> Result<TransitionOutcome> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        let current = Self::lock_execution(&mut tx, execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.to_string()))?;
        let applied = !current.status.state.is_final() && current.cancel_requested.is_none();
        if applied {
            let at = Self::clock(&mut tx, Some(execution_id)).await?;
            let request = CancelRequest {
                reason: reason.map(str::to_string),
                at,
            };
            sqlx::query(
                "UPDATE executions SET cancel_requested = $1, updated_at = $2::timestamptz
                 WHERE execution_id = $3",
            )
            .bind(doc(&request)?)
            .bind(ts(at))
            .bind(execution_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            let note = rules::cancel_note(reason);
            Self::add_history(&mut tx, execution_id, current.status.state, Some(&note), at).await?;
        }
        let record = Self::load_execution(&mut tx, execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.to_string()))?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(TransitionOutcome { record, applied })
    }
}

/// How long the row of an observer that stopped renewing is kept (an hour).
const OBSERVER_ROW_KEPT_MS: i64 = 3_600_000;

#[async_trait]
impl ExecutionStore for PostgresStore {
    async fn begin_execution(&self, new: NewExecution) -> Result<BeginOutcome> {
        retrying(|| self.try_begin(&new)).await
    }

    async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_execution(&mut conn, execution_id).await
    }

    async fn list_executions(&self, tenant_id: &str) -> Result<Vec<ExecutionRecord>> {
        // One statement, so one consistent snapshot of the executions and their histories.
        let rows = sqlx::query(concat!(
            execution_columns!(),
            history_column!(),
            " FROM executions e WHERE e.tenant_id = $1 ORDER BY e.seq"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|row| Self::decode_execution(row, true))
            .collect()
    }

    async fn transition(&self, transition: Transition) -> Result<TransitionOutcome> {
        retrying(|| self.try_transition(&transition)).await
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_tenant(&mut conn, tenant_id, false).await
    }

    async fn list_tenants(
        &self,
        state: Option<TenantState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>> {
        let found = sqlx::query(concat!(
            tenant_select!(),
            " WHERE ($1::text IS NULL OR t.state = $1) AND ($2::text IS NULL OR t.tenant_id > $2)
              ORDER BY t.tenant_id LIMIT $3"
        ))
        .bind(state.map(TenantState::as_str))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        found.iter().map(rows::tenant).collect()
    }

    async fn mark_tenant(
        &self,
        tenant_id: &str,
        mark: InterventionMark,
        state: Option<TenantState>,
    ) -> Result<()> {
        retrying(|| self.try_mark_tenant(tenant_id, &mark, state)).await
    }

    async fn clear_intervention(
        &self,
        tenant_id: &str,
        note: &str,
    ) -> Result<Option<TenantRecord>> {
        retrying(|| self.try_clear_intervention(tenant_id, note)).await
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> Result<TransitionOutcome> {
        retrying(|| self.try_request_cancel(execution_id, reason)).await
    }

    async fn record_attempt(&self, a: AttemptRecord) -> Result<()> {
        // One insert that locks nothing: no race to lose, so no retry.
        let text = |s: &Option<String>| s.as_deref().map(|s| scrub_text(s).into_owned());
        sqlx::query(rows::record_attempt_sql!("::timestamptz"))
            .bind(text(&a.execution_id))
            .bind(text(&a.tenant_id))
            .bind(scrub_text(&a.activity_type))
            .bind(scrub_text(&a.activity_id))
            .bind(text(&a.workflow_id))
            .bind(text(&a.run_id))
            .bind(i32::try_from(a.attempt).unwrap_or(i32::MAX))
            .bind(ts(a.started_at))
            .bind(ts(a.finished_at))
            .bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
            .bind(a.outcome.as_str())
            .bind(a.retriable)
            .bind(text(&a.provider))
            .bind(text(&a.provider_code))
            .bind(text(&a.provider_request_id))
            .bind(text(&a.message))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn list_attempts(&self, execution_id: &str) -> Result<Vec<AttemptRecord>> {
        let found = sqlx::query(
            "SELECT execution_id, tenant_id, activity_type, activity_id, workflow_id, run_id,
                    attempt::bigint AS attempt, latency_ms, outcome, retriable, provider,
                    provider_code, provider_request_id, message,
                    (extract(epoch FROM started_at) * 1000)::bigint AS started_at,
                    (extract(epoch FROM finished_at) * 1000)::bigint AS finished_at
             FROM activity_attempts a WHERE execution_id = $1 ORDER BY a.started_at, a.seq",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        found.iter().map(rows::attempt).collect()
    }

    async fn record_delivery(&self, a: DeliveryAttempt) -> Result<()> {
        // One upsert on one row: the row lock serialises concurrent attempts, no retry needed.
        let text = |s: &Option<String>| s.as_deref().map(|s| scrub_text(s).into_owned());
        sqlx::query(rows::record_delivery_sql!("::timestamptz"))
            .bind(scrub_text(&a.execution_id))
            .bind(scrub_text(&a.target))
            .bind(&a.kind)
            .bind(a.state.as_str())
            .bind(i32::try_from(a.sequence).unwrap_or(i32::MAX))
            .bind(a.outcome.as_str())
            .bind(text(&a.error))
            .bind(ts(a.at))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn list_deliveries(&self, execution_id: &str) -> Result<Vec<CallbackDelivery>> {
        let found = sqlx::query(
            "SELECT target, kind, state, sequence::bigint AS sequence,
                    attempts::bigint AS attempts, outcome, last_error,
                    (extract(epoch FROM first_attempt_at) * 1000)::bigint AS first_attempt_at,
                    (extract(epoch FROM last_attempt_at) * 1000)::bigint AS last_attempt_at
             FROM callback_deliveries d WHERE execution_id = $1
             ORDER BY d.first_attempt_at, d.target, d.state",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        found.iter().map(rows::delivery).collect()
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<PruneCounts> {
        let cutoff = ts(older_than);
        // `FOR UPDATE` re-checks the age on a row's newest version (a delivery attempted again
        // meanwhile no longer qualifies) and `SKIP LOCKED` leaves one being written right now
        // to the next prune.
        let attempts = self
            .delete_in_batches(
                "DELETE FROM activity_attempts WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM activity_attempts WHERE finished_at < $1::timestamptz
                   LIMIT $2 FOR UPDATE SKIP LOCKED))",
                &cutoff,
            )
            .await?;
        let deliveries = self
            .delete_in_batches(
                "DELETE FROM callback_deliveries WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM callback_deliveries WHERE last_attempt_at < $1::timestamptz
                   LIMIT $2 FOR UPDATE SKIP LOCKED))",
                &cutoff,
            )
            .await?;
        Ok(PruneCounts {
            attempts,
            deliveries,
        })
    }

    async fn knows_provider(&self, provider: &str) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM executions WHERE provider = $1 OR provider IS NULL)",
        )
        .bind(scrub_text(provider))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)
    }

    async fn observer_alive(&self, observer: &str, until_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO observers (observer, alive_until) VALUES ($1, $2)
             ON CONFLICT (observer) DO UPDATE SET alive_until = excluded.alive_until",
        )
        .bind(observer)
        .bind(until_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        // Workers killed long ago: their rows say nothing a missing row does not.
        sqlx::query("DELETE FROM observers WHERE alive_until < $1")
            .bind(until_ms.saturating_sub(OBSERVER_ROW_KEPT_MS))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn observer_gone(&self, observer: &str) -> Result<()> {
        sqlx::query("DELETE FROM observers WHERE observer = $1")
            .bind(observer)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn claim_observation(
        &self,
        execution_id: &str,
        observer: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE executions SET observing = 1, observer = $2
             WHERE execution_id = $1 AND (observing = 0 OR observer IS NULL OR observer = $2
               OR NOT EXISTS (SELECT 1 FROM observers o
                              WHERE o.observer = executions.observer AND o.alive_until >= $3))",
        )
        .bind(execution_id)
        .bind(observer)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_orphans(&self, observer: &str, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        // Picked in a CTE, which Postgres runs once (an `IN (SELECT ... LIMIT)` may be run
        // again per row, taking more than `limit`); rows another worker is taking over right
        // now are skipped, not waited for, and checked again when updated.
        sqlx::query_scalar(
            "WITH picked AS (
               SELECT e.execution_id FROM executions e
               LEFT JOIN observers o ON o.observer = e.observer
               WHERE e.observing = 1 AND e.observer IS DISTINCT FROM $1
                 AND (o.observer IS NULL OR o.alive_until < $2)
               LIMIT $3
               FOR UPDATE OF e SKIP LOCKED)
             UPDATE executions SET observer = $1
             FROM picked
             WHERE executions.execution_id = picked.execution_id
               AND executions.observing = 1 AND executions.observer IS DISTINCT FROM $1
             RETURNING executions.execution_id",
        )
        .bind(observer)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)
    }

    async fn end_observation(&self, execution_id: &str, observer: &str) -> Result<()> {
        sqlx::query(
            "UPDATE executions SET observing = 0 WHERE execution_id = $1 AND observer = $2",
        )
        .bind(execution_id)
        .bind(observer)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn observed_by(&self, observer: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT execution_id FROM executions WHERE observing = 1 AND observer = $1",
        )
        .bind(observer)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::from_sqlx)
    }
}

#[cfg(test)]
mod tests {
    //! The conformance suite against a real Postgres: `COMPUTE_TEST_POSTGRES_URL` (default
    //! `postgres://postgres@127.0.0.1:5432/postgres`) names a database to connect to as a user
    //! who may create databases; each test creates its own database there and drops it after,
    //! also when it fails. Without a reachable Postgres these tests fail, never skip.

    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use serde_json::json;
    use sqlx::{Connection, Executor};

    use super::{super::conformance, *};
    use crate::{
        contract::Operation,
        store::{ExecutionStore, redact_url},
    };

    const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// A database of its own for one test, dropped (with any connections still open to it)
    /// when the test ends, passed or failed.
    struct TestDatabase {
        admin_url: String,
        name: String,
        url: String,
    }

    impl TestDatabase {
        async fn create() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let admin_url =
                std::env::var("COMPUTE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let name = format!(
                "compute_test_{}_{:x}_{}",
                std::process::id(),
                nanos & 0xffff_ffff_ffff,
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "Postgres at {} is unreachable ({e}). The store tests need one: start \
                         it, or point COMPUTE_TEST_POSTGRES_URL at a database whose user may \
                         create databases.",
                        redact_url(&admin_url)
                    )
                });
            admin
                .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                .await
                .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
            let _ = admin.close().await;
            let url = with_database(&admin_url, &name);
            TestDatabase {
                admin_url,
                name,
                url,
            }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            // Drop runs inside the test's runtime (possibly while a failed assertion unwinds),
            // where nothing may block on a future: drop the database from a thread of its own.
            let admin_url = self.admin_url.clone();
            let name = self.name.clone();
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    // FORCE: the test's pools may still hold connections.
                    admin
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = admin.close().await;
                    Ok::<_, String>(())
                })
            })
            .join();
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
                Err(_) => eprintln!("could not drop the test database {}", self.name),
            }
        }
    }

    /// `url` with its database replaced by `name` (user, password, host and parameters kept).
    fn with_database(url: &str, name: &str) -> String {
        let (base, params) = match url.split_once('?') {
            Some((base, params)) => (base, Some(params)),
            None => (url, None),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[authority_start..]
            .find('/')
            .map_or(base.len(), |i| authority_start + i);
        let mut out = format!("{}/{name}", &base[..path_start]);
        if let Some(params) = params {
            out.push('?');
            out.push_str(params);
        }
        out
    }

    #[test]
    fn test_urls_keep_everything_but_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5433", "x"),
            "postgres://h:5433/x"
        );
    }

    #[tokio::test]
    async fn conformance() {
        let db = TestDatabase::create().await;
        // Through the URL dispatcher, as the worker opens it.
        let store = crate::store::connect(&db.url).await.unwrap();
        conformance::run_all(store.as_ref()).await;
    }

    #[tokio::test]
    async fn conformance_with_concurrent_writers_on_two_pools() {
        let db = TestDatabase::create().await;
        // Two pools, as two worker processes would have; both run the migrations at once.
        let postgresql = db.url.replacen("postgres://", "postgresql://", 1);
        let (a, b) = futures::join!(
            PostgresStore::connect(&db.url),
            crate::store::connect(&postgresql)
        );
        let (a, b): (PostgresStore, Arc<dyn ExecutionStore>) = (a.unwrap(), b.unwrap());
        conformance::concurrent_begins(&a, b.as_ref()).await;
        conformance::concurrent_writers(&a, b.as_ref()).await;
    }

    #[tokio::test]
    async fn reconnecting_keeps_the_data_and_the_schema() {
        let db = TestDatabase::create().await;
        let id = {
            let store = PostgresStore::connect(&db.url).await.unwrap();
            let outcome = store
                .begin_execution(NewExecution {
                    tenant_id: "again".into(),
                    operation: Operation::Delete,
                    idempotency_key: Some("k".into()),
                    spec_hash: super::super::spec_hash(None),
                    spec: None,
                    request: json!({"tenantId": "again"}),
                    timeout: Duration::from_secs(5),
                    provider: Some("local".into()),
                })
                .await
                .unwrap();
            store.pool.close().await;
            outcome.record
        };
        let store = PostgresStore::connect(&db.url).await.unwrap();
        let stored = store
            .get_execution(&id.status.execution_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored, id);
    }

    #[tokio::test]
    async fn sessions_get_the_lock_timeouts() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        let (lock, idle, app): (String, String, String) = sqlx::query_as(
            "SELECT current_setting('lock_timeout'),
                    current_setting('idle_in_transaction_session_timeout'),
                    current_setting('application_name')",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!((lock.as_str(), idle.as_str()), ("10s", "1min"));
        assert_eq!(app, "compute-worker");
    }

    #[tokio::test]
    async fn the_store_never_shows_its_password() {
        let db = TestDatabase::create().await;
        // Trust authentication (the test server's) ignores a password given in the URL.
        let (url, password) = match db.url.split_once("://").and_then(|(_, rest)| {
            let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
            let userinfo = &authority[..authority.rfind('@')?];
            userinfo.split_once(':').map(|(_, p)| p.to_string())
        }) {
            Some(password) => (db.url.clone(), password),
            None => {
                let sep = if db.url.contains('?') { '&' } else { '?' };
                (format!("{}{sep}password=hunter2", db.url), "hunter2".into())
            }
        };
        let store = PostgresStore::connect(&url).await.unwrap();
        assert!(!format!("{store:?}").contains(&password), "{store:?}");
        assert!(!redact_url(&url).contains(&password));
    }

    #[tokio::test]
    async fn a_missing_server_is_a_transient_error_without_the_password() {
        // Port 1 on loopback: nothing listens there.
        let e = PostgresStore::connect("postgres://app:hunter2@127.0.0.1:1/x")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn nul_is_replaced_everywhere_in_documents() {
        let v = scrub(json!({"a\u{0}": ["x\u{0}y", 1, {"b": "\u{0}"}], "ok": "\\u0000"}));
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"b": "\u{FFFD}"}], "ok": "\\u0000"})
        );
    }
}
