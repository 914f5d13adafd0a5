-- Observation without an activity per execution: each worker runs one observer, which keeps
-- itself alive in `observers` (until when, in milliseconds since the epoch) and watches the
-- executions whose `observer` it is. An execution is `observing` from the moment the provider
-- took it until its tracker has been told the final state; one whose observer is gone (no
-- row, or alive_until in the past) is taken over by another worker's observer. Executions
-- from before this version are watched by their trackers' watch activity, as they were.
ALTER TABLE executions ADD COLUMN observer TEXT;
ALTER TABLE executions ADD COLUMN observing INTEGER NOT NULL DEFAULT 0;
CREATE INDEX executions_observing ON executions (observer) WHERE observing = 1;
CREATE TABLE observers (
    observer    TEXT PRIMARY KEY NOT NULL,
    alive_until BIGINT NOT NULL
);
