-- The tenant lifecycle. A tenant's spec is now its last good spec (it changes only when an
-- operation succeeds), counted by revision, and a non-retriable failure leaves a
-- manual-intervention mark ({code, message, executionId, at}) until the next success or an
-- operator's `tenant clear`. An execution counts its attempts (re-sending a request after a
-- terminal failure re-opens the same execution) and keeps an operator's cancel request
-- ({reason, at}) until its tracker has undone what it did.
ALTER TABLE tenants ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN intervention TEXT;
ALTER TABLE executions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE executions ADD COLUMN cancel_requested TEXT;
-- 'active' was renamed 'running'; what ran before had its spec applied once at least.
UPDATE tenants SET state = 'running', revision = 1 WHERE state = 'active';
CREATE INDEX tenants_by_state ON tenants (state, tenant_id);
CREATE INDEX executions_by_tenant_state ON executions (tenant_id, state);
