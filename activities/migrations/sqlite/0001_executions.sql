-- Tenants, executions and every transition of an execution.
-- Timestamps are RFC 3339 UTC text with milliseconds, so they sort as text.
CREATE TABLE tenants (
    tenant_id         TEXT PRIMARY KEY NOT NULL,
    state             TEXT NOT NULL,
    spec              TEXT,
    resource_ids      TEXT NOT NULL DEFAULT '{}',
    last_execution_id TEXT,
    generation        INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE executions (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id    TEXT NOT NULL UNIQUE,
    tenant_id       TEXT NOT NULL REFERENCES tenants (tenant_id),
    operation       TEXT NOT NULL,
    state           TEXT NOT NULL,
    idempotency_key TEXT,
    spec_hash       TEXT NOT NULL,
    request         TEXT NOT NULL,
    resource_ids    TEXT NOT NULL DEFAULT '{}',
    progress        TEXT,
    error           TEXT,
    timeout_ms      INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);
CREATE INDEX executions_by_tenant ON executions (tenant_id, seq);

CREATE TABLE execution_history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL REFERENCES executions (execution_id),
    state        TEXT NOT NULL,
    message      TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX execution_history_by_execution ON execution_history (execution_id, seq);
