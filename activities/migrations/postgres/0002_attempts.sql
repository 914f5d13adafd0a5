-- The audit trail: one row per attempt of every activity, written when the attempt ends
-- (Temporal's history keeps only an activity's last attempt). Rows are never updated.
-- execution_id and tenant_id are NULL until the activity knew them (a refused request has
-- neither); there is no foreign key, so a look-up of an unknown execution is recorded too.
-- outcome is 'ok' or an error code; message is the ComputeError's (never a secret value).
-- started_at / finished_at come from the worker's clock (the attempt starts before any
-- database call); latency_ms from its monotonic clock.
CREATE TABLE activity_attempts (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id        TEXT,
    tenant_id           TEXT,
    activity_type       TEXT NOT NULL,
    activity_id         TEXT NOT NULL,
    workflow_id         TEXT,
    run_id              TEXT,
    attempt             INTEGER NOT NULL,
    started_at          TIMESTAMPTZ NOT NULL,
    finished_at         TIMESTAMPTZ NOT NULL,
    latency_ms          BIGINT NOT NULL,
    outcome             TEXT NOT NULL,
    retriable           BOOLEAN NOT NULL,
    provider            TEXT,
    provider_code       TEXT,
    provider_request_id TEXT,
    message             TEXT
);
CREATE INDEX activity_attempts_by_execution ON activity_attempts (execution_id, seq);
CREATE INDEX activity_attempts_by_tenant ON activity_attempts (tenant_id, seq);
