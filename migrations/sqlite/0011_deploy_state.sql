-- Deploys people can trust: what a deployment actually ran, where a manual
-- redeploy came from, a cancel request, two more final statuses, its
-- streamed log, and the project settings of the health gate and rollback.
--
-- SQLite cannot change a CHECK constraint in place: the deployments table
-- is rebuilt with the new statuses. No table references deployments, so
-- dropping the old one touches nothing else; its AUTOINCREMENT counter is
-- carried over, so ids of deleted deployments (which the decision log may
-- still name) are never handed out again.
CREATE TABLE deployments_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id       INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    source           TEXT NOT NULL CHECK (source IN ('manual', 'auto-poll', 'auto-push', 'auto-image')),
    status           TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'rolled_back', 'cancelled')),
    target_commit    TEXT,
    target_digests   TEXT,
    reason           TEXT NOT NULL,
    error            TEXT,
    trigger_count    INTEGER NOT NULL DEFAULT 1,
    policy_name      TEXT NOT NULL,
    policy_version   TEXT NOT NULL,
    policy_sha256    TEXT NOT NULL,
    node_id          INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    log_tail         TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    sources          TEXT NOT NULL DEFAULT '[]',
    repeat_count     INTEGER NOT NULL DEFAULT 1,
    last_seen_at     INTEGER NOT NULL DEFAULT 0,
    prior_commit     TEXT,
    prior_digests    TEXT,
    -- What the node reported running after `up` (commit; image -> digest
    -- JSON map as target_digests).
    ran_commit       TEXT,
    ran_digests      TEXT,
    -- The deployment a manual redeploy copied its target from.
    from_deployment  INTEGER,
    -- 0 or 1: a person asked to cancel it while it ran.
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
INSERT INTO deployments_new (id, project_id, source, status, target_commit, target_digests, reason, error,
    trigger_count, policy_name, policy_version, policy_sha256, node_id, log_tail, created_at, updated_at,
    finished_at, sources, repeat_count, last_seen_at, prior_commit, prior_digests)
SELECT id, project_id, source, status, target_commit, target_digests, reason, error,
    trigger_count, policy_name, policy_version, policy_sha256, node_id, log_tail, created_at, updated_at,
    finished_at, sources, repeat_count, last_seen_at, prior_commit, prior_digests
FROM deployments;
DELETE FROM sqlite_sequence WHERE name = 'deployments_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'deployments_new', seq FROM sqlite_sequence WHERE name = 'deployments';
DROP TABLE deployments;
ALTER TABLE deployments_new RENAME TO deployments;
CREATE INDEX deployments_by_project ON deployments (project_id, id);
CREATE INDEX deployments_by_status ON deployments (status);

-- A deployment's streamed log: `received` is how many bytes of the node's
-- log were accounted for (the offset the next chunk starts at), `text` what
-- was kept of them (at most 1 MiB and one marker line).
CREATE TABLE deployment_logs (
    deployment_id INTEGER PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    received      INTEGER NOT NULL DEFAULT 0,
    text          TEXT NOT NULL DEFAULT ''
);

ALTER TABLE projects ADD COLUMN dockerfile_path TEXT NOT NULL DEFAULT 'Dockerfile';
ALTER TABLE projects ADD COLUMN health_probe_path TEXT;
ALTER TABLE projects ADD COLUMN health_timeout_seconds INTEGER NOT NULL DEFAULT 60;
ALTER TABLE projects ADD COLUMN rollback TEXT NOT NULL DEFAULT 'auto'
    CHECK (rollback IN ('off', 'notify', 'auto'));
