-- The audit trail: one row per attempt of every activity, written when the attempt ends
-- (Temporal's history keeps only an activity's last attempt). Rows are never updated.
-- execution_id and tenant_id are NULL until the activity knew them (a refused request has
-- neither); there is no foreign key, so a look-up of an unknown execution is recorded too.
-- outcome is 'ok' or an error code; message is the ComputeError's (never a secret value).
CREATE TABLE activity_attempts (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id        TEXT,
    tenant_id           TEXT,
    activity_type       TEXT NOT NULL,
    activity_id         TEXT NOT NULL,
    workflow_id         TEXT,
    run_id              TEXT,
    attempt             INTEGER NOT NULL,
    started_at          TEXT NOT NULL,
    finished_at         TEXT NOT NULL,
    latency_ms          INTEGER NOT NULL,
    outcome             TEXT NOT NULL,
    retriable           INTEGER NOT NULL,
    provider            TEXT,
    provider_code       TEXT,
    provider_request_id TEXT,
    message             TEXT
);
CREATE INDEX activity_attempts_by_execution ON activity_attempts (execution_id, seq);
CREATE INDEX activity_attempts_by_tenant ON activity_attempts (tenant_id, seq);
