-- Tenants, executions and every transition of an execution (the same model as SQLite's).
-- Timestamps are timestamptz with millisecond values; JSON documents are jsonb.
-- Several workers share one database: the store serialises writers per tenant with row locks
-- (see activities/src/store/postgres.rs), and the identity columns give one global order.
CREATE TABLE tenants (
    tenant_id         TEXT PRIMARY KEY,
    state             TEXT NOT NULL,
    spec              JSONB,
    resource_ids      JSONB NOT NULL DEFAULT '{}',
    last_execution_id TEXT,
    generation        BIGINT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE executions (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id    TEXT NOT NULL UNIQUE,
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    operation       TEXT NOT NULL,
    state           TEXT NOT NULL,
    idempotency_key TEXT,
    spec_hash       TEXT NOT NULL,
    request         JSONB NOT NULL,
    resource_ids    JSONB NOT NULL DEFAULT '{}',
    progress        JSONB,
    error           JSONB,
    timeout_ms      BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ
);
CREATE INDEX executions_by_tenant ON executions (tenant_id, seq);

CREATE TABLE execution_history (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES executions (execution_id),
    state        TEXT NOT NULL,
    message      TEXT,
    at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX execution_history_by_execution ON execution_history (execution_id, seq);
