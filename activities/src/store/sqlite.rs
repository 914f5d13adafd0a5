//! SQLite implementation of the execution store (the embedded default).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};

use super::{
    BeginOutcome, DeliveryAttempt, ExecutionRecord, ExecutionStore, NewExecution, PruneCounts,
    Result, StoreError, TenantRecord, Transition, TransitionOutcome, attaches_to_latest,
    derive_execution_id, tenant_state_after, tenant_state_on_begin,
};
use crate::contract::{
    AttemptOutcome, AttemptRecord, CallbackDelivery, ExecutionState, ExecutionStatus, HistoryEntry,
    Operation, TenantState, now,
};

/// The SQLite store: a file (`sqlite://PATH`) or memory (`sqlite::memory:`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
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
            options.journal_mode(SqliteJournalMode::Wal)
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
                Ok(Some(Self::decode_execution(&row, history)?))
            }
        }
    }

    async fn load_history(
        conn: &mut SqliteConnection,
        execution_id: &str,
    ) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT state, message, at FROM execution_history WHERE execution_id = ? ORDER BY seq",
        )
        .bind(execution_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|r| {
                let state: String = col(r, "state")?;
                Ok(HistoryEntry {
                    state: ExecutionState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
                    at: parse_ts(&col::<String>(r, "at")?)?,
                    message: col(r, "message")?,
                })
            })
            .collect()
    }

    fn decode_execution(row: &SqliteRow, history: Vec<HistoryEntry>) -> Result<ExecutionRecord> {
        let op: String = col(row, "operation")?;
        let state: String = col(row, "state")?;
        let opt_ts = |name: &str| -> Result<Option<DateTime<Utc>>> {
            col::<Option<String>>(row, name)?
                .map(|s| parse_ts(&s))
                .transpose()
        };
        let created_at = parse_ts(&col::<String>(row, "created_at")?)?;
        let finished_at = opt_ts("finished_at")?;
        let status = ExecutionStatus {
            execution_id: col(row, "execution_id")?,
            tenant_id: col(row, "tenant_id")?,
            operation: Operation::parse(&op)
                .ok_or_else(|| StoreError::Corrupt(format!("operation {op:?}")))?,
            state: ExecutionState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
            idempotency_key: col(row, "idempotency_key")?,
            progress: col::<Option<String>>(row, "progress")?
                .map(|s| from_json(&s))
                .transpose()?,
            resource_ids: from_json(&col::<String>(row, "resource_ids")?)?,
            error: col::<Option<String>>(row, "error")?
                .map(|s| from_json(&s))
                .transpose()?,
            history,
            created_at,
            updated_at: parse_ts(&col::<String>(row, "updated_at")?)?,
            started_at: opt_ts("started_at")?,
            finished_at,
            duration_ms: finished_at.map(|f| (f - created_at).num_milliseconds().max(0) as u64),
            timeout_ms: col::<i64>(row, "timeout_ms")?.max(0) as u64,
            attempts: Vec::new(),
            callbacks: Vec::new(),
        };
        Ok(ExecutionRecord {
            status,
            request: from_json(&col::<String>(row, "request")?)?,
            spec_hash: col(row, "spec_hash")?,
        })
    }

    fn decode_attempt(row: &SqliteRow) -> Result<AttemptRecord> {
        let outcome: String = col(row, "outcome")?;
        Ok(AttemptRecord {
            execution_id: col(row, "execution_id")?,
            tenant_id: col(row, "tenant_id")?,
            activity_type: col(row, "activity_type")?,
            activity_id: col(row, "activity_id")?,
            workflow_id: col(row, "workflow_id")?,
            run_id: col(row, "run_id")?,
            attempt: u32::try_from(col::<i64>(row, "attempt")?)
                .map_err(|e| StoreError::Corrupt(format!("attempt number: {e}")))?,
            started_at: parse_ts(&col::<String>(row, "started_at")?)?,
            finished_at: parse_ts(&col::<String>(row, "finished_at")?)?,
            latency_ms: col::<i64>(row, "latency_ms")?.max(0) as u64,
            outcome: AttemptOutcome::parse(&outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("attempt outcome {outcome:?}")))?,
            retriable: col(row, "retriable")?,
            provider: col(row, "provider")?,
            provider_code: col(row, "provider_code")?,
            provider_request_id: col(row, "provider_request_id")?,
            message: col(row, "message")?,
        })
    }

    async fn load_tenant(
        conn: &mut SqliteConnection,
        tenant_id: &str,
    ) -> Result<Option<TenantRecord>> {
        let row = sqlx::query("SELECT * FROM tenants WHERE tenant_id = ?")
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        row.map(|row| {
            let state: String = col(&row, "state")?;
            Ok(TenantRecord {
                tenant_id: col(&row, "tenant_id")?,
                state: TenantState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("tenant state {state:?}")))?,
                spec: col::<Option<String>>(&row, "spec")?
                    .map(|s| from_json(&s))
                    .transpose()?,
                resource_ids: from_json(&col::<String>(&row, "resource_ids")?)?,
                last_execution_id: col(&row, "last_execution_id")?,
                generation: col(&row, "generation")?,
                updated_at: parse_ts(&col::<String>(&row, "updated_at")?)?,
            })
        })
        .transpose()
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
        let generation = tenant.as_ref().map_or(0, |t| t.generation);

        let existing = match &new.idempotency_key {
            Some(key) => {
                let id = derive_execution_id(
                    &new.tenant_id,
                    new.operation,
                    Some(key),
                    &new.spec_hash,
                    0,
                );
                Self::load_execution(&mut tx, &id).await?
            }
            None => match tenant.as_ref().and_then(|t| t.last_execution_id.clone()) {
                Some(last) => Self::load_execution(&mut tx, &last)
                    .await?
                    .filter(|latest| attaches_to_latest(latest, &new)),
                None => None,
            },
        };
        if let Some(record) = existing {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(BeginOutcome {
                record,
                created: false,
                previous_tenant: tenant,
            });
        }

        let next_generation = generation + 1;
        let execution_id = derive_execution_id(
            &new.tenant_id,
            new.operation,
            new.idempotency_key.as_deref(),
            &new.spec_hash,
            next_generation,
        );
        let at = now();
        let tenant_state = tenant_state_on_begin(new.operation);
        let spec_json = new.spec.as_ref().map(to_json).transpose()?;
        sqlx::query(
            "INSERT INTO tenants (tenant_id, state, spec, last_execution_id, generation, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (tenant_id) DO UPDATE SET
               state = excluded.state,
               spec = COALESCE(excluded.spec, tenants.spec),
               last_execution_id = excluded.last_execution_id,
               generation = excluded.generation,
               updated_at = excluded.updated_at",
        )
        .bind(&new.tenant_id)
        .bind(tenant_state.as_str())
        .bind(spec_json)
        .bind(&execution_id)
        .bind(next_generation)
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        sqlx::query(
            "INSERT INTO executions (execution_id, tenant_id, operation, state, idempotency_key,
               spec_hash, request, timeout_ms, created_at, updated_at, provider)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
        )
        .bind(&execution_id)
        .bind(&new.tenant_id)
        .bind(new.operation.as_str())
        .bind(ExecutionState::Pending.as_str())
        .bind(&new.idempotency_key)
        .bind(&new.spec_hash)
        .bind(to_json(&new.request)?)
        .bind(new.timeout.as_millis() as i64)
        .bind(ts(at))
        .bind(&new.provider)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        Self::add_history(&mut tx, &execution_id, ExecutionState::Pending, None, at).await?;
        let record = Self::load_execution(&mut tx, &execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.clone()))?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(BeginOutcome {
            record,
            created: true,
            previous_tenant: tenant,
        })
    }

    async fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_execution(&mut conn, execution_id).await
    }

    async fn list_executions(&self, tenant_id: &str) -> Result<Vec<ExecutionRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        let rows = sqlx::query("SELECT * FROM executions WHERE tenant_id = ? ORDER BY seq")
            .bind(tenant_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = col(row, "execution_id")?;
            let history = Self::load_history(&mut conn, &id).await?;
            out.push(Self::decode_execution(row, history)?);
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
        let from = current.status.state;
        let same = from == t.state;
        if !same && !from.can_become(t.state) {
            tx.commit().await.map_err(StoreError::from_sqlx)?;
            return Ok(TransitionOutcome {
                record: current,
                applied: false,
            });
        }
        let at = now();
        let resource_ids = match &t.resource_ids {
            Some(ids) => to_json(ids)?,
            None => to_json(&current.status.resource_ids)?,
        };
        let error = match (&t.error, t.state) {
            (Some(e), _) => Some(to_json(e)?),
            (None, ExecutionState::Succeeded) => None,
            (None, _) => current.status.error.as_ref().map(to_json).transpose()?,
        };
        let progress = if t.state.is_final() {
            None
        } else {
            match &t.progress {
                Some(p) => Some(to_json(p)?),
                None => current.status.progress.as_ref().map(to_json).transpose()?,
            }
        };
        let started_at = match (current.status.started_at, t.state) {
            (Some(s), _) => Some(ts(s)),
            (None, ExecutionState::Running) => Some(ts(at)),
            (None, _) => None,
        };
        let finished_at = match current.status.finished_at {
            Some(f) => Some(ts(f)),
            None if t.state.is_final() => Some(ts(at)),
            None => None,
        };
        sqlx::query(
            "UPDATE executions SET state = ?, resource_ids = ?, error = ?, progress = ?,
               started_at = ?, finished_at = ?, updated_at = ? WHERE execution_id = ?",
        )
        .bind(t.state.as_str())
        .bind(&resource_ids)
        .bind(error)
        .bind(progress)
        .bind(started_at)
        .bind(finished_at)
        .bind(ts(at))
        .bind(&t.execution_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        // A same-state call only adds history when it has something to say (a failed attempt),
        // so repeated progress updates do not flood the history.
        if !same || t.message.is_some() {
            Self::add_history(&mut tx, &t.execution_id, t.state, t.message.as_deref(), at).await?;
        }
        if !same
            && let Some(tenant_state) = tenant_state_after(
                current.status.operation,
                t.state,
                t.error.as_ref().or(current.status.error.as_ref()),
            )
        {
            let cleared = matches!(
                (current.status.operation, t.state),
                (Operation::Delete, ExecutionState::Succeeded)
            );
            let tenant_ids = if cleared {
                "{}".to_string()
            } else {
                resource_ids.clone()
            };
            // Only the tenant's latest execution speaks for the tenant: an older operation
            // finishing late must not overwrite what a newer one set.
            sqlx::query(
                "UPDATE tenants SET state = ?, resource_ids = ?, updated_at = ?
                 WHERE tenant_id = ? AND last_execution_id = ?",
            )
            .bind(tenant_state.as_str())
            .bind(tenant_ids)
            .bind(ts(at))
            .bind(&current.status.tenant_id)
            .bind(&t.execution_id)
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
            applied: !same || t.message.is_some() || t.progress.is_some() || t.error.is_some(),
        })
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::load_tenant(&mut conn, tenant_id).await
    }

    async fn set_tenant_state(
        &self,
        tenant_id: &str,
        state: TenantState,
        execution_id: &str,
        note: &str,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let current = Self::load_execution(&mut tx, execution_id)
            .await?
            .ok_or_else(|| StoreError::ExecutionNotFound(execution_id.to_string()))?;
        let at = now();
        sqlx::query("UPDATE tenants SET state = ?, updated_at = ? WHERE tenant_id = ?")
            .bind(state.as_str())
            .bind(ts(at))
            .bind(tenant_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        Self::add_history(&mut tx, execution_id, current.status.state, Some(note), at).await?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn record_attempt(&self, a: AttemptRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO activity_attempts (execution_id, tenant_id, activity_type, activity_id,
               workflow_id, run_id, attempt, started_at, finished_at, latency_ms, outcome,
               retriable, provider, provider_code, provider_request_id, message)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        let rows = sqlx::query(
            "SELECT * FROM activity_attempts WHERE execution_id = ? ORDER BY started_at, seq",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter().map(Self::decode_attempt).collect()
    }
    async fn record_delivery(&self, a: DeliveryAttempt) -> Result<()> {
        // SQLite understands `$N` placeholders too, so both backends share the statement.
        sqlx::query(super::RECORD_DELIVERY_SQL)
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
        let rows = sqlx::query(
            "SELECT * FROM callback_deliveries WHERE execution_id = ?
             ORDER BY first_attempt_at, target, state",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter()
            .map(|r| {
                super::decode_delivery(
                    col(r, "target")?,
                    col(r, "kind")?,
                    &col::<String>(r, "state")?,
                    col(r, "sequence")?,
                    col(r, "attempts")?,
                    &col::<String>(r, "outcome")?,
                    col(r, "last_error")?,
                    parse_ts(&col::<String>(r, "first_attempt_at")?)?,
                    parse_ts(&col::<String>(r, "last_attempt_at")?)?,
                )
            })
            .collect()
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
