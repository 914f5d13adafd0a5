-- The provider that carried each execution out, so that `sweep --apply` can refuse a store
-- that has never recorded an execution for its provider (a wrong --database would otherwise
-- make every tenant's resources orphans). NULL for executions recorded before this column:
-- they count for any provider, so an existing store keeps working.
ALTER TABLE executions ADD COLUMN provider TEXT;
CREATE INDEX executions_by_provider ON executions (provider);
-- Retention deletes by age, a batch at a time: each batch finds its rows without a scan.
CREATE INDEX activity_attempts_by_finish ON activity_attempts (finished_at);
CREATE INDEX callback_deliveries_by_last_attempt ON callback_deliveries (last_attempt_at);
