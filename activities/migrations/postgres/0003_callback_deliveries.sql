-- One row per callback of an execution to one target and reported state: the delivery's
-- attempts and outcome ('pending' | 'delivered' | 'undeliverable'). target is the log-safe
-- description (a Step Functions task token appears only as a digest). A row that reached
-- 'delivered' stays delivered: a retried attempt after a recorded success only counts.
CREATE TABLE callback_deliveries (
    execution_id     TEXT NOT NULL,
    target           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    state            TEXT NOT NULL,
    sequence         INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    last_error       TEXT,
    first_attempt_at TIMESTAMPTZ NOT NULL,
    last_attempt_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, target, state)
);
