-- Deploys people can trust: what a deployment actually ran, where a manual
-- redeploy came from, a cancel request, two more final statuses, its
-- streamed log, and the project settings of the health gate and rollback.
ALTER TABLE deployments DROP CONSTRAINT deployments_status_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'rolled_back', 'cancelled'));
-- What the node reported running after `up` (commit; image -> digest JSON
-- map as target_digests).
ALTER TABLE deployments ADD COLUMN ran_commit TEXT;
ALTER TABLE deployments ADD COLUMN ran_digests TEXT;
-- The deployment a manual redeploy copied its target from.
ALTER TABLE deployments ADD COLUMN from_deployment BIGINT;
-- 0 or 1: a person asked to cancel it while it ran.
ALTER TABLE deployments ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;

-- A deployment's streamed log: `received` is how many bytes of the node's
-- log were accounted for (the offset the next chunk starts at), `text` what
-- was kept of them (at most 1 MiB and one marker line).
CREATE TABLE deployment_logs (
    deployment_id BIGINT PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    received      BIGINT NOT NULL DEFAULT 0,
    text          TEXT NOT NULL DEFAULT ''
);

ALTER TABLE projects ADD COLUMN dockerfile_path TEXT NOT NULL DEFAULT 'Dockerfile';
ALTER TABLE projects ADD COLUMN health_probe_path TEXT;
ALTER TABLE projects ADD COLUMN health_timeout_seconds BIGINT NOT NULL DEFAULT 60;
ALTER TABLE projects ADD COLUMN rollback TEXT NOT NULL DEFAULT 'auto'
    CHECK (rollback IN ('off', 'notify', 'auto'));
