-- Honest history: every source that fed a deployment (a JSON list, first
-- source first), and identical consecutive failures before the node folded
-- into one row with a repeat count and the time the last one was seen.
ALTER TABLE deployments ADD COLUMN sources TEXT NOT NULL DEFAULT '[]';
ALTER TABLE deployments ADD COLUMN repeat_count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE deployments ADD COLUMN last_seen_at BIGINT NOT NULL DEFAULT 0;
UPDATE deployments SET sources = '["' || source || '"]', last_seen_at = updated_at;
-- The project's tracked state before a queued deployment's first trigger:
-- restored when that deployment fails before reaching its node, so the
-- change is tried again.
ALTER TABLE deployments ADD COLUMN prior_commit TEXT;
ALTER TABLE deployments ADD COLUMN prior_digests TEXT;
