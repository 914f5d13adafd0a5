//! Stored rows as both backends share them: the decoding of a row into a record, from columns
//! a backend reads in its own encoding ([`Columns`]), and the statements that write the audit
//! trail and the callback deliveries, which are the same SQL on both.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;

use super::{ExecutionRecord, Result, StoreError, TenantRecord};
use crate::contract::{
    AttemptOutcome, AttemptRecord, CallbackDelivery, DeliveryState, ExecutionState,
    ExecutionStatus, HistoryEntry, Operation, TenantState,
};

/// The plain reads of a [`Columns`] impl, the same for every backend: the backend's `col`
/// (`sqlx::Row::try_get` with the driver error classified).
macro_rules! plain_columns {
    () => {
        fn text(&self, column: &str) -> Result<String> {
            col(self, column)
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>> {
            col(self, column)
        }
        fn integer(&self, column: &str) -> Result<i64> {
            col(self, column)
        }
        fn flag(&self, column: &str) -> Result<bool> {
            col(self, column)
        }
    };
}
pub(super) use plain_columns;

/// The columns of one stored row, by name, as neutral values: each backend says how its
/// database holds text, integers, flags, timestamps and JSON documents; the decoders here say
/// which column is which.
///
/// A required column that is NULL, or holds the wrong type, is the backend's error (as its
/// driver reports it); a value that does not parse is [`StoreError::Corrupt`].
pub(super) trait Columns {
    /// A text column.
    fn text(&self, column: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    /// An integer column.
    fn integer(&self, column: &str) -> Result<i64>;
    /// A boolean column.
    fn flag(&self, column: &str) -> Result<bool>;
    /// A timestamp column.
    fn timestamp(&self, column: &str) -> Result<DateTime<Utc>>;
    /// A nullable timestamp column.
    fn opt_timestamp(&self, column: &str) -> Result<Option<DateTime<Utc>>>;
    /// A JSON document column.
    fn document<T: DeserializeOwned>(&self, column: &str) -> Result<T>;
    /// A nullable JSON document column.
    fn opt_document<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>>;
}

/// A timestamp as text, fixed-width RFC 3339 to the millisecond: what SQLite stores (so text
/// order is time order) and what Postgres is given to cast, exact either way.
pub(super) fn timestamp_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parsed<T>(parse: fn(&str) -> Option<T>, what: &str, value: &str) -> Result<T> {
    parse(value).ok_or_else(|| StoreError::Corrupt(format!("{what} {value:?}")))
}

fn count(what: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A count that cannot be negative: a negative one (a clock that went backwards) is zero.
fn non_negative(value: i64) -> u64 {
    value.max(0) as u64
}

/// One history entry.
pub(super) fn history_entry(
    state: &str,
    message: Option<String>,
    at: DateTime<Utc>,
) -> Result<HistoryEntry> {
    Ok(HistoryEntry {
        state: parsed(ExecutionState::parse, "state", state)?,
        at,
        message,
    })
}

/// One `executions` row, with the execution's history (loaded by the backend as it likes).
pub(super) fn execution(row: &impl Columns, history: Vec<HistoryEntry>) -> Result<ExecutionRecord> {
    let created_at = row.timestamp("created_at")?;
    let finished_at = row.opt_timestamp("finished_at")?;
    let status = ExecutionStatus {
        execution_id: row.text("execution_id")?,
        tenant_id: row.text("tenant_id")?,
        operation: parsed(Operation::parse, "operation", &row.text("operation")?)?,
        state: parsed(ExecutionState::parse, "state", &row.text("state")?)?,
        attempt: count("attempt", row.integer("attempt")?)?,
        idempotency_key: row.opt_text("idempotency_key")?,
        progress: row.opt_document("progress")?,
        resource_ids: row.document("resource_ids")?,
        error: row.opt_document("error")?,
        history,
        created_at,
        updated_at: row.timestamp("updated_at")?,
        started_at: row.opt_timestamp("started_at")?,
        finished_at,
        duration_ms: finished_at.map(|f| non_negative((f - created_at).num_milliseconds())),
        timeout_ms: non_negative(row.integer("timeout_ms")?),
        attempts: Vec::new(),
        callbacks: Vec::new(),
    };
    Ok(ExecutionRecord {
        status,
        request: row.document("request")?,
        spec_hash: row.text("spec_hash")?,
        cancel_requested: row.opt_document("cancel_requested")?,
    })
}

/// One `tenants` row.
pub(super) fn tenant(row: &impl Columns) -> Result<TenantRecord> {
    Ok(TenantRecord {
        tenant_id: row.text("tenant_id")?,
        state: parsed(TenantState::parse, "tenant state", &row.text("state")?)?,
        spec: row.opt_document("spec")?,
        resource_ids: row.document("resource_ids")?,
        last_execution_id: row.opt_text("last_execution_id")?,
        generation: row.integer("generation")?,
        revision: row.integer("revision")?,
        intervention: row.opt_document("intervention")?,
        active_execution_ids: row.document("active_execution_ids")?,
        updated_at: row.timestamp("updated_at")?,
    })
}

/// One `activity_attempts` row.
pub(super) fn attempt(row: &impl Columns) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        execution_id: row.opt_text("execution_id")?,
        tenant_id: row.opt_text("tenant_id")?,
        activity_type: row.text("activity_type")?,
        activity_id: row.text("activity_id")?,
        workflow_id: row.opt_text("workflow_id")?,
        run_id: row.opt_text("run_id")?,
        attempt: count("attempt number", row.integer("attempt")?)?,
        started_at: row.timestamp("started_at")?,
        finished_at: row.timestamp("finished_at")?,
        latency_ms: non_negative(row.integer("latency_ms")?),
        outcome: parsed(
            AttemptOutcome::parse,
            "attempt outcome",
            &row.text("outcome")?,
        )?,
        retriable: row.flag("retriable")?,
        provider: row.opt_text("provider")?,
        provider_code: row.opt_text("provider_code")?,
        provider_request_id: row.opt_text("provider_request_id")?,
        message: row.opt_text("message")?,
    })
}

/// One `callback_deliveries` row.
pub(super) fn delivery(row: &impl Columns) -> Result<CallbackDelivery> {
    Ok(CallbackDelivery {
        target: row.text("target")?,
        kind: row.text("kind")?,
        state: parsed(ExecutionState::parse, "delivery state", &row.text("state")?)?,
        sequence: count("delivery sequence", row.integer("sequence")?)?,
        attempts: count("delivery attempts", row.integer("attempts")?)?,
        outcome: parsed(
            DeliveryState::parse,
            "delivery outcome",
            &row.text("outcome")?,
        )?,
        last_error: row.opt_text("last_error")?,
        first_attempt_at: row.timestamp("first_attempt_at")?,
        last_attempt_at: row.timestamp("last_attempt_at")?,
    })
}

/// The insert of [`ExecutionStore::record_attempt`](super::ExecutionStore::record_attempt),
/// parameters in the table's column order; `$ts` follows each timestamp parameter (Postgres
/// casts text with `::timestamptz`, SQLite stores the text as it is). SQLite understands `$N`
/// placeholders too.
macro_rules! record_attempt_sql {
    ($ts:literal) => {
        concat!(
            "INSERT INTO activity_attempts (execution_id, tenant_id, activity_type, activity_id, \
               workflow_id, run_id, attempt, started_at, finished_at, latency_ms, outcome, \
               retriable, provider, provider_code, provider_request_id, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8",
            $ts,
            ", $9",
            $ts,
            ", $10, $11, $12, $13, $14, $15, $16)"
        )
    };
}
pub(super) use record_attempt_sql;

/// The upsert of [`ExecutionStore::record_delivery`](super::ExecutionStore::record_delivery),
/// `$ts` as in [`record_attempt_sql`]: the first attempt inserts the row, each further one
/// counts itself, and a delivery once `delivered` keeps its outcome and error.
macro_rules! record_delivery_sql {
    ($ts:literal) => {
        concat!(
            "INSERT INTO callback_deliveries (execution_id, target, kind, state, sequence, \
               attempts, outcome, last_error, first_attempt_at, last_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8",
            $ts,
            ", $8",
            $ts,
            ") \
             ON CONFLICT (execution_id, target, state) DO UPDATE SET \
               attempts = callback_deliveries.attempts + 1, \
               sequence = excluded.sequence, \
               outcome = CASE WHEN callback_deliveries.outcome = 'delivered' THEN 'delivered' \
                              ELSE excluded.outcome END, \
               last_error = CASE WHEN callback_deliveries.outcome = 'delivered' \
                                 THEN callback_deliveries.last_error ELSE excluded.last_error END, \
               last_attempt_at = excluded.last_attempt_at"
        )
    };
}
pub(super) use record_delivery_sql;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::contract::{Progress, ResourceIds};

    /// A row as a JSON object: timestamps as RFC 3339 text, documents as JSON values.
    struct Fake(BTreeMap<&'static str, Value>);

    impl Fake {
        fn new(columns: Value) -> Self {
            let Value::Object(map) = columns else {
                panic!("not an object: {columns}");
            };
            Fake(
                map.into_iter()
                    .map(|(k, v)| (&*Box::leak(k.into_boxed_str()), v))
                    .collect(),
            )
        }

        fn with(mut self, column: &'static str, value: Value) -> Self {
            self.0.insert(column, value);
            self
        }

        fn get(&self, column: &str) -> Result<&Value> {
            match self.0.get(column) {
                None | Some(Value::Null) => Err(StoreError::Corrupt(format!("{column} is NULL"))),
                Some(v) => Ok(v),
            }
        }

        fn opt<T>(&self, column: &str, read: impl Fn(&Self) -> Result<T>) -> Result<Option<T>> {
            match self.0.get(column) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => read(self).map(Some),
            }
        }
    }

    impl Columns for Fake {
        fn text(&self, column: &str) -> Result<String> {
            Ok(self.get(column)?.as_str().expect("text").to_string())
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>> {
            self.opt(column, |r| r.text(column))
        }
        fn integer(&self, column: &str) -> Result<i64> {
            Ok(self.get(column)?.as_i64().expect("integer"))
        }
        fn flag(&self, column: &str) -> Result<bool> {
            Ok(self.get(column)?.as_bool().expect("flag"))
        }
        fn timestamp(&self, column: &str) -> Result<DateTime<Utc>> {
            Ok(self.text(column)?.parse().expect("timestamp"))
        }
        fn opt_timestamp(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
            self.opt(column, |r| r.timestamp(column))
        }
        fn document<T: DeserializeOwned>(&self, column: &str) -> Result<T> {
            serde_json::from_value(self.get(column)?.clone())
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        fn opt_document<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>> {
            self.opt(column, |r| r.document(column))
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn corrupt<T: std::fmt::Debug>(decoded: Result<T>) -> String {
        match decoded {
            Err(StoreError::Corrupt(what)) => what,
            other => panic!("not corrupt: {other:?}"),
        }
    }

    fn execution_row() -> Fake {
        Fake::new(json!({
            "execution_id": "t-provision-1",
            "tenant_id": "t",
            "operation": "provision",
            "state": "succeeded",
            "idempotency_key": null,
            "spec_hash": "h",
            "request": {"tenantId": "t"},
            "resource_ids": {"pid": 7},
            "progress": null,
            "error": null,
            "timeout_ms": 60_000,
            "created_at": "2024-01-01T00:00:00.000Z",
            "updated_at": "2024-01-01T00:00:02.500Z",
            "started_at": "2024-01-01T00:00:01.000Z",
            "finished_at": "2024-01-01T00:00:02.500Z",
            "provider": "local",
            "attempt": 2,
            "cancel_requested": {"reason": "ops", "at": "2024-01-01T00:00:02.000Z"},
        }))
    }

    #[test]
    fn timestamps_are_fixed_width_text() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_007).unwrap();
        assert_eq!(timestamp_text(t), "2023-11-14T22:13:20.007Z");
        let whole = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(timestamp_text(whole), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn executions_decode_with_their_history() {
        let history = vec![history_entry("pending", None, at("2024-01-01T00:00:00Z")).unwrap()];
        let record = execution(&execution_row(), history.clone()).unwrap();
        assert_eq!(
            record,
            ExecutionRecord {
                status: ExecutionStatus {
                    execution_id: "t-provision-1".into(),
                    tenant_id: "t".into(),
                    operation: Operation::Provision,
                    state: ExecutionState::Succeeded,
                    attempt: 2,
                    idempotency_key: None,
                    progress: None,
                    resource_ids: ResourceIds {
                        pid: Some(7),
                        ..Default::default()
                    },
                    error: None,
                    history,
                    created_at: at("2024-01-01T00:00:00Z"),
                    updated_at: at("2024-01-01T00:00:02.5Z"),
                    started_at: Some(at("2024-01-01T00:00:01Z")),
                    finished_at: Some(at("2024-01-01T00:00:02.5Z")),
                    duration_ms: Some(2500),
                    timeout_ms: 60_000,
                    attempts: Vec::new(),
                    callbacks: Vec::new(),
                },
                request: json!({"tenantId": "t"}),
                spec_hash: "h".into(),
                cancel_requested: Some(super::super::CancelRequest {
                    reason: Some("ops".into()),
                    at: at("2024-01-01T00:00:02Z"),
                }),
            }
        );
    }

    #[test]
    fn unfinished_executions_have_no_duration_and_never_negative_numbers() {
        let row = execution_row()
            .with("state", json!("running"))
            .with("finished_at", Value::Null)
            .with("progress", json!({"message": "half", "ready": 1}))
            .with("idempotency_key", json!("k"))
            .with("timeout_ms", json!(-5));
        let status = execution(&row, Vec::new()).unwrap().status;
        assert_eq!((status.finished_at, status.duration_ms), (None, None));
        assert_eq!(status.timeout_ms, 0);
        assert_eq!(status.idempotency_key.as_deref(), Some("k"));
        assert_eq!(
            status.progress,
            Some(Progress {
                message: "half".into(),
                ready: Some(1),
                desired: None,
            })
        );
        // A clock that went backwards between creation and finish.
        let row = execution_row().with("finished_at", json!("2023-12-31T23:59:59.000Z"));
        assert_eq!(
            execution(&row, Vec::new()).unwrap().status.duration_ms,
            Some(0)
        );
    }

    #[test]
    fn values_that_do_not_parse_are_corrupt() {
        for (row, what) in [
            (
                execution_row().with("operation", json!("rebuild")),
                "operation \"rebuild\"",
            ),
            (
                execution_row().with("state", json!("paused")),
                "state \"paused\"",
            ),
        ] {
            assert_eq!(corrupt(execution(&row, Vec::new())), what);
        }
        assert_eq!(
            corrupt(history_entry("later", None, at("2024-01-01T00:00:00Z"))),
            "state \"later\""
        );
        let row = execution_row().with("resource_ids", json!({"pid": "seven"}));
        assert!(matches!(
            execution(&row, Vec::new()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn tenants_decode() {
        let row = Fake::new(json!({
            "tenant_id": "t",
            "state": "requires_manual_intervention",
            "spec": {"command": ["sleep"]},
            "resource_ids": {},
            "last_execution_id": "t-delete-1",
            "generation": 3,
            "revision": 2,
            "intervention": {"code": "PARTIAL_FAILURE", "message": "half",
                             "executionId": "t-update-1", "at": "2024-01-01T00:00:00Z"},
            "active_execution_ids": ["t-delete-1"],
            "updated_at": "2024-01-01T00:00:00.000Z",
        }));
        let tenant = tenant(&row).unwrap();
        assert_eq!(tenant.state, TenantState::RequiresManualIntervention);
        assert_eq!(tenant.spec.unwrap().command, ["sleep"]);
        assert_eq!(tenant.resource_ids, ResourceIds::default());
        assert_eq!(
            (tenant.last_execution_id.as_deref(), tenant.generation),
            (Some("t-delete-1"), 3)
        );
        assert_eq!(tenant.revision, 2);
        assert_eq!(tenant.intervention.unwrap().execution_id, "t-update-1");
        assert_eq!(tenant.active_execution_ids, ["t-delete-1"]);
        let row = row.with("state", json!("gone")).with("spec", Value::Null);
        assert_eq!(corrupt(super::tenant(&row)), "tenant state \"gone\"");
    }

    fn attempt_row() -> Fake {
        Fake::new(json!({
            "execution_id": "e",
            "tenant_id": null,
            "activity_type": "ProvisionCompute",
            "activity_id": "1",
            "workflow_id": "w",
            "run_id": null,
            "attempt": 2,
            "started_at": "2024-01-01T00:00:00.000Z",
            "finished_at": "2024-01-01T00:00:00.250Z",
            "latency_ms": 250,
            "outcome": "ok",
            "retriable": false,
            "provider": "local",
            "provider_code": null,
            "provider_request_id": null,
            "message": null,
        }))
    }

    #[test]
    fn attempts_decode() {
        let a = attempt(&attempt_row()).unwrap();
        assert_eq!(a.outcome, AttemptOutcome::Ok);
        assert_eq!((a.attempt, a.latency_ms), (2, 250));
        assert_eq!((a.tenant_id, a.workflow_id), (None, Some("w".into())));
        assert_eq!(a.finished_at, at("2024-01-01T00:00:00.25Z"));
        let a = attempt(&attempt_row().with("latency_ms", json!(-1))).unwrap();
        assert_eq!(a.latency_ms, 0);
        assert!(
            corrupt(attempt(&attempt_row().with("attempt", json!(-1))))
                .starts_with("attempt number: ")
        );
        assert_eq!(
            corrupt(attempt(&attempt_row().with("outcome", json!("meh")))),
            "attempt outcome \"meh\""
        );
    }

    fn delivery_row() -> Fake {
        Fake::new(json!({
            "execution_id": "e",
            "target": "http://x",
            "kind": "http",
            "state": "succeeded",
            "sequence": 3,
            "attempts": 2,
            "outcome": "delivered",
            "last_error": null,
            "first_attempt_at": "2024-01-01T00:00:00.000Z",
            "last_attempt_at": "2024-01-01T00:00:05.000Z",
        }))
    }

    #[test]
    fn deliveries_decode() {
        let d = delivery(&delivery_row()).unwrap();
        assert_eq!(d.state, ExecutionState::Succeeded);
        assert_eq!(d.outcome, DeliveryState::Delivered);
        assert_eq!((d.sequence, d.attempts), (3, 2));
        assert_eq!(d.last_attempt_at, at("2024-01-01T00:00:05Z"));
        for (row, what) in [
            (
                delivery_row().with("state", json!("x")),
                "delivery state \"x\"",
            ),
            (
                delivery_row().with("outcome", json!("y")),
                "delivery outcome \"y\"",
            ),
        ] {
            assert_eq!(corrupt(delivery(&row)), what);
        }
        for (column, what) in [
            ("sequence", "delivery sequence: "),
            ("attempts", "delivery attempts: "),
        ] {
            let row = delivery_row().with(column, json!(i64::from(u32::MAX) + 1));
            assert!(corrupt(delivery(&row)).starts_with(what), "{column}");
        }
    }

    #[test]
    fn the_shared_statements_cast_timestamps_only_where_asked() {
        assert!(record_attempt_sql!("").contains("$8, $9, $10"));
        assert!(record_attempt_sql!("::t").contains("$8::t, $9::t, $10"));
        assert!(record_delivery_sql!("").contains("$7, $8, $8)"));
        assert!(record_delivery_sql!("::t").contains("$7, $8::t, $8::t)"));
    }
}
