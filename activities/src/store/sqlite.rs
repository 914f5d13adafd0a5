//! SQLite implementation of the execution store (the embedded default).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{
    BeginOutcome, CancelRequest, DeliveryAttempt, ExecutionRecord, ExecutionStore, NewExecution,
    PruneCounts, Result, StoreError, TenantRecord, Transition, TransitionOutcome,
    rows::{self, Columns, timestamp_text as ts},
    rules::{self, Begin},
};
use crate::contract::{
    AttemptRecord, CallbackDelivery, ExecutionState, HistoryEntry, InterventionMark, TenantState,
    now,
};

/// A tenant's columns, with its executions that are not final as a JSON array, oldest first.
macro_rules! tenant_columns {
    () => {
        "SELECT t.*, (SELECT json_group_array(a.execution_id) FROM
                        (SELECT execution_id FROM executions
                          WHERE tenant_id = t.tenant_id
                            AND state IN ('pending', 'running', 'timed_out')
                          ORDER BY seq) a) AS active_execution_ids
         FROM tenants t"
    };
}

/// The SQLite store: a file (`sqlite://PATH`) or memory (`sqlite::memory:`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn col<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name).map_err(StoreError::from_sqlx)
}

/// Timestamps are RFC 3339 text, documents JSON text.
impl Columns for SqliteRow {
    super::rows::plain_columns!();
    fn timestamp(&self, column: &str) -> Result<DateTime<Utc>> {
        parse_ts(&self.text(column)?)
    }
    fn opt_timestamp(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_text(column)?.map(|s| parse_ts(&s)).transpose()
    }
    fn document<T: DeserializeOwned>(&self, column: &str) -> Result<T> {
        from_json(&self.text(column)?)
    }
    fn opt_document<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>> {
        self.opt_text(column)?.map(|s| from_json(&s)).transpose()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let options = if in_memory {
            options
        } else {
            // In WAL mode NORMAL still survives a crash of the worker (the guarantee the fault
            // suite checks); only a power loss may drop the last commits. FULL would fsync
            // every commit, the start path's largest cost on an instant provider.
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        // An in-memory database exists per connection: keep exactly one.
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 4 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
            .await
            .map_err(StoreError::from_sqlx)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    async fn load_execution(
        conn: &mut SqliteConnection,
        execution_id: &str,
    ) -> Result<Option<ExecutionRecord>> {
        let row = sqlx::query("SELECT * FROM executions WHERE execution_id = ?")
            .bind(execution_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let history = Self::load_history(conn, execution_id).await?;
                Ok(Some(rows::execution(&row, history)?))
            }
        }
    }

    async fn load_history(
        conn: &mut SqliteConnection,
        execution_id: &str,
    ) -> Result<Vec<HistoryEntry>> {
        let found = sqlx::query(
            "SELECT state, message, at FROM execution_history WHERE execution_id = ? ORDER BY seq",
        )
        .bind(execution_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        found
            .iter()
            .map(|r| {
                rows::history_entry(
                    &r.text("state")?,
                    r.opt_text("message")?,
                    r.timestamp("at")?,
                )
            })
            .collect()
    }

    async fn load_tenant(
        conn: &mut SqliteConnection,
        tenant_id: &str,
    ) -> Result<Option<TenantRecord>> {
        let row = sqlx::query(concat!(tenant_columns!(), " WHERE t.tenant_id = ?"))
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn load_cancel_outcome(
        conn: &mut SqliteConnection,
        execution_id: &str,
        applied: bool,
    ) -> Result<TransitionOutcome> {
        let record = Self::load_execution(conn, execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.to_string()))?;
        Ok(TransitionOutcome { record, applied })
    }

    /// Runs a `DELETE ... LIMIT ?2` of rows older than `?1` until a batch comes back short:
    /// each batch is its own transaction, so other writers get the lock in between.
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
        conn: &mut SqliteConnection,
        execution_id: &str,
        state: ExecutionState,
        message: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO execution_history (execution_id, state, message, at) VALUES (?, ?, ?, ?)",
        )
        .bind(execution_id)
        .bind(state.as_str())
        .bind(message)
        .bind(ts(at))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }
}

/// How long the row of an observer that stopped renewing is kept (an hour).
const OBSERVER_ROW_KEPT_MS: i64 = 3_600_000;

#[async_trait]
impl ExecutionStore for SqliteStore {
    async fn begin_execution(&self, new: NewExecution) -> Result<BeginOutcome> {
        // IMMEDIATE takes the write lock up front, so two workers cannot both read "absent"
        // and both insert.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let tenant = Self::load_tenant(&mut tx, &new.tenant_id).await?;
        let candidate = match rules::begin_candidate(&new, tenant.as_ref()) {
            Some(id) => Self::load_execution(&mut tx, &id).await?,
            None => None,
        };
        let start = match rules::begin(&new, tenant.as_ref(), candidate) {
            Begin::Attach(record) => {
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                return Ok(BeginOutcome {
                    record,
                    created: false,
                    reopened: false,
                    previous_tenant: tenant,
                });
            }
            Begin::Refuse(e) => {
                tx.rollback().await.map_err(StoreError::from_sqlx)?;
                return Err(StoreError::Refused(Box::new(e)));
            }
            Begin::Reopen(reopen) => {
                let id = reopen.record.status.execution_id.clone();
                let at = now();
                sqlx::query(
                    "UPDATE executions SET state = 'pending', attempt = ?, error = NULL,
                       progress = NULL, finished_at = NULL, cancel_requested = NULL,
                       updated_at = ? WHERE execution_id = ?",
                )
                .bind(i64::from(reopen.attempt))
                .bind(ts(at))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                sqlx::query(
                    "UPDATE tenants SET state = ?, last_execution_id = ?, generation = ?,
                       updated_at = ? WHERE tenant_id = ?",
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

        let at = now();
        sqlx::query(
            "INSERT INTO tenants (tenant_id, state, last_execution_id, generation, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (tenant_id) DO UPDATE SET
               state = excluded.state,
               last_execution_id = excluded.last_execution_id,
               generation = excluded.generation,
               updated_at = excluded.updated_at",
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
        )
        .bind(&start.execution_id)
        .bind(&new.tenant_id)
        .bind(new.operation.as_str())
        .bind(start.state.as_str())
        .bind(&new.idempotency_key)
        .bind(&new.spec_hash)
        .bind(to_json(&new.request)?)
        .bind(new.timeout.as_millis() as i64)
        .bind(ts(at))
        .bind(&new.provider)
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

    async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_execution(&mut conn, execution_id).await
    }

    async fn list_executions(&self, tenant_id: &str) -> Result<Vec<ExecutionRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        let found = sqlx::query("SELECT * FROM executions WHERE tenant_id = ? ORDER BY seq")
            .bind(tenant_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        let mut out = Vec::with_capacity(found.len());
        for row in &found {
            let history = Self::load_history(&mut conn, &row.text("execution_id")?).await?;
            out.push(rows::execution(row, history)?);
        }
        Ok(out)
    }

    async fn transition(&self, t: Transition) -> Result<TransitionOutcome> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let current = Self::load_execution(&mut tx, &t.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(t.execution_id.clone()))?;
        let Some(allowed) = rules::transition(&current, &t) else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(TransitionOutcome {
                record: current,
                applied: false,
            });
        };
        let change = allowed.at(now());
        sqlx::query(
            "UPDATE executions SET state = ?, resource_ids = ?, error = ?, progress = ?,
               started_at = ?, finished_at = ?, updated_at = ? WHERE execution_id = ?",
        )
        .bind(change.state.as_str())
        .bind(to_json(&change.resource_ids)?)
        .bind(change.error.as_ref().map(to_json).transpose()?)
        .bind(change.progress.as_ref().map(to_json).transpose()?)
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
        if let Some(change_tenant) = change.tenant.clone() {
            // Only the tenant's latest execution speaks for it (see `TenantChange`).
            if let Some(tenant) = Self::load_tenant(&mut tx, &current.status.tenant_id).await?
                && tenant.last_execution_id.as_deref() == Some(t.execution_id.as_str())
            {
                let spec = change_tenant.spec.apply(tenant.spec);
                let intervention = change_tenant.intervention.apply(tenant.intervention);
                sqlx::query(
                    "UPDATE tenants SET state = ?, resource_ids = ?, spec = ?, revision = ?,
                       intervention = ?, updated_at = ? WHERE tenant_id = ?",
                )
                .bind(change_tenant.state.as_str())
                .bind(to_json(&change_tenant.resource_ids)?)
                .bind(spec.as_ref().map(to_json).transpose()?)
                .bind(tenant.revision + i64::from(change_tenant.bump_revision))
                .bind(intervention.as_ref().map(to_json).transpose()?)
                .bind(ts(change.updated_at))
                .bind(&current.status.tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
            }
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

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_tenant(&mut conn, tenant_id).await
    }

    async fn list_tenants(
        &self,
        state: Option<TenantState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>> {
        let found = sqlx::query(concat!(
            tenant_columns!(),
            " WHERE (?1 IS NULL OR t.state = ?1) AND (?2 IS NULL OR t.tenant_id > ?2)
              ORDER BY t.tenant_id LIMIT ?3"
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let current = Self::load_execution(&mut tx, &mark.execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(mark.execution_id.clone()))?;
        let at = now();
        sqlx::query(
            "UPDATE tenants SET state = COALESCE(?, state), intervention = ?, updated_at = ?
             WHERE tenant_id = ?",
        )
        .bind(state.map(TenantState::as_str))
        .bind(to_json(&mark)?)
        .bind(ts(at))
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        let note = rules::mark_note(&mark);
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

    async fn clear_intervention(
        &self,
        tenant_id: &str,
        note: &str,
    ) -> Result<Option<TenantRecord>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let Some(tenant) = Self::load_tenant(&mut tx, tenant_id).await? else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(None);
        };
        let Some(mark) = tenant.intervention.clone() else {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(Some(tenant));
        };
        let at = now();
        sqlx::query(
            "UPDATE tenants SET state = ?, intervention = NULL, updated_at = ? WHERE tenant_id = ?",
        )
        .bind(rules::state_after_clear(&tenant).as_str())
        .bind(ts(at))
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        if let Some(execution) = Self::load_execution(&mut tx, &mark.execution_id).await? {
            Self::add_history(
                &mut tx,
                &mark.execution_id,
                execution.status.state,
                Some(note),
                at,
            )
            .await?;
        }
        let tenant = Self::load_tenant(&mut tx, tenant_id).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(tenant)
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        reason: Option<&str>,
    ) -> Result<TransitionOutcome> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let current = Self::load_execution(&mut tx, execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.to_string()))?;
        if current.status.state.is_final() || current.cancel_requested.is_some() {
            let outcome = TransitionOutcome {
                record: current,
                applied: false,
            };
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(outcome);
        }
        let at = now();
        let request = CancelRequest {
            reason: reason.map(str::to_string),
            at,
        };
        sqlx::query(
            "UPDATE executions SET cancel_requested = ?, updated_at = ? WHERE execution_id = ?",
        )
        .bind(to_json(&request)?)
        .bind(ts(at))
        .bind(execution_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        let note = rules::cancel_note(reason);
        Self::add_history(&mut tx, execution_id, current.status.state, Some(&note), at).await?;
        let outcome = Self::load_cancel_outcome(&mut tx, execution_id, true).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(outcome)
    }

    async fn record_attempt(&self, a: AttemptRecord) -> Result<()> {
        sqlx::query(rows::record_attempt_sql!(""))
            .bind(&a.execution_id)
            .bind(&a.tenant_id)
            .bind(&a.activity_type)
            .bind(&a.activity_id)
            .bind(&a.workflow_id)
            .bind(&a.run_id)
            .bind(i64::from(a.attempt))
            .bind(ts(a.started_at))
            .bind(ts(a.finished_at))
            .bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
            .bind(a.outcome.as_str())
            .bind(a.retriable)
            .bind(&a.provider)
            .bind(&a.provider_code)
            .bind(&a.provider_request_id)
            .bind(&a.message)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn list_attempts(&self, execution_id: &str) -> Result<Vec<AttemptRecord>> {
        let found = sqlx::query(
            "SELECT * FROM activity_attempts WHERE execution_id = ? ORDER BY started_at, seq",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        found.iter().map(rows::attempt).collect()
    }

    async fn record_delivery(&self, a: DeliveryAttempt) -> Result<()> {
        sqlx::query(rows::record_delivery_sql!(""))
            .bind(&a.execution_id)
            .bind(&a.target)
            .bind(&a.kind)
            .bind(a.state.as_str())
            .bind(i64::from(a.sequence))
            .bind(a.outcome.as_str())
            .bind(&a.error)
            .bind(ts(a.at))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn list_deliveries(&self, execution_id: &str) -> Result<Vec<CallbackDelivery>> {
        let found = sqlx::query(
            "SELECT * FROM callback_deliveries WHERE execution_id = ?
             ORDER BY first_attempt_at, target, state",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        found.iter().map(rows::delivery).collect()
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<PruneCounts> {
        // Timestamps are fixed-width RFC 3339 text, so text order is time order.
        let cutoff = ts(older_than);
        let attempts = self
            .delete_in_batches(
                "DELETE FROM activity_attempts WHERE seq IN
                   (SELECT seq FROM activity_attempts WHERE finished_at < ?1 LIMIT ?2)",
                &cutoff,
            )
            .await?;
        let deliveries = self
            .delete_in_batches(
                "DELETE FROM callback_deliveries WHERE rowid IN
                   (SELECT rowid FROM callback_deliveries WHERE last_attempt_at < ?1 LIMIT ?2)",
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
            "SELECT EXISTS (SELECT 1 FROM executions WHERE provider = ?1 OR provider IS NULL)",
        )
        .bind(provider)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)
    }

    async fn observer_alive(&self, observer: &str, until_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO observers (observer, alive_until) VALUES (?1, ?2)
             ON CONFLICT (observer) DO UPDATE SET alive_until = excluded.alive_until",
        )
        .bind(observer)
        .bind(until_ms)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        // Workers killed long ago: their rows say nothing a missing row does not.
        sqlx::query("DELETE FROM observers WHERE alive_until < ?1")
            .bind(until_ms.saturating_sub(OBSERVER_ROW_KEPT_MS))
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn observer_gone(&self, observer: &str) -> Result<()> {
        sqlx::query("DELETE FROM observers WHERE observer = ?1")
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
            "UPDATE executions SET observing = 1, observer = ?2
             WHERE execution_id = ?1 AND (observing = 0 OR observer IS NULL OR observer = ?2
               OR NOT EXISTS (SELECT 1 FROM observers o
                              WHERE o.observer = executions.observer AND o.alive_until >= ?3))",
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
        // One statement: SQLite runs one writer at a time, so two workers never take the same
        // orphan.
        sqlx::query_scalar(
            "UPDATE executions SET observer = ?1
             WHERE execution_id IN (
               SELECT e.execution_id FROM executions e
               LEFT JOIN observers o ON o.observer = e.observer
               WHERE e.observing = 1 AND e.observer IS NOT ?1
                 AND (o.observer IS NULL OR o.alive_until < ?2)
               LIMIT ?3)
             AND observing = 1 AND observer IS NOT ?1
             RETURNING execution_id",
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
            "UPDATE executions SET observing = 0 WHERE execution_id = ?1 AND observer = ?2",
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
            "SELECT execution_id FROM executions WHERE observing = 1 AND observer = ?1",
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
    use std::path::Path;

    use super::*;

    #[tokio::test]
    async fn a_store_from_before_executions_had_a_provider_knows_every_provider() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        // The schema as it was before (migrations 1 to 3), with an execution of that time.
        let old_migrations = dir.path().join("migrations");
        std::fs::create_dir(&old_migrations).unwrap();
        let current = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for name in [
            "0001_executions.sql",
            "0002_attempts.sql",
            "0003_callback_deliveries.sql",
        ] {
            std::fs::copy(current.join(name), old_migrations.join(name)).unwrap();
        }
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let at = "2024-01-01T00:00:00.000Z";
        sqlx::query(
            "INSERT INTO tenants (tenant_id, state, last_execution_id, generation, created_at,
               updated_at) VALUES ('old', 'active', 'old-1', 1, ?1, ?1)",
        )
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO executions (execution_id, tenant_id, operation, state, spec_hash,
               request, timeout_ms, created_at, updated_at)
             VALUES ('old-1', 'old', 'provision', 'succeeded', 'h', '{}', 1000, ?1, ?1)",
        )
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqliteStore::connect(&url).await.unwrap();
        assert!(store.get_execution("old-1").await.unwrap().is_some());
        for provider in ["local", "ecs", "kubernetes"] {
            assert!(store.knows_provider(provider).await.unwrap(), "{provider}");
        }
    }

    #[tokio::test]
    async fn conformance_in_memory() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        super::super::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn conformance_on_a_file_with_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        super::super::conformance::run_all(&store).await;
        // A second pool on the same file, as a second worker would have.
        let other = SqliteStore::connect(&url).await.unwrap();
        super::super::conformance::concurrent_begins(&store, &other).await;
        super::super::conformance::concurrent_writers(&store, &other).await;
    }
}
