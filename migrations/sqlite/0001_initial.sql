-- Times are unix seconds (INTEGER here, BIGINT in postgres) so both backends
-- share every query.

CREATE TABLE nodes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL UNIQUE,
    last_seen_at INTEGER,
    created_at   INTEGER NOT NULL
);

CREATE TABLE projects (
    id                         INTEGER PRIMARY KEY AUTOINCREMENT,
    name                       TEXT NOT NULL UNIQUE,
    project_type               TEXT NOT NULL
        CHECK (project_type IN ('deployment', 'compose', 'image', 'tunnel', 'domain_only')),
    git_source                 TEXT NOT NULL CHECK (git_source IN ('hosted', 'external')),
    git_url                    TEXT,
    git_branch                 TEXT NOT NULL DEFAULT 'main',
    compose_file_path          TEXT NOT NULL DEFAULT 'docker-compose.yml',
    expose_service             TEXT,
    expose_port                INTEGER,
    auto_deploy_enabled        INTEGER NOT NULL DEFAULT 0,
    last_tracked_commit_sha    TEXT NOT NULL DEFAULT '',
    last_tracked_image_digests TEXT NOT NULL DEFAULT '{}',
    pinned_node_id             INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    push_token_hash            TEXT,
    created_at                 INTEGER NOT NULL,
    updated_at                 INTEGER NOT NULL
);

-- Git credentials, sealed with the daemon's secret key; never returned.
CREATE TABLE project_credentials (
    project_id INTEGER PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('https', 'ssh')),
    username   TEXT,
    sealed     TEXT NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE admin_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE deployments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id      INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    source          TEXT NOT NULL CHECK (source IN ('manual', 'auto-poll', 'auto-push', 'auto-image')),
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    target_commit   TEXT,
    target_digests  TEXT,
    reason          TEXT NOT NULL,
    error           TEXT,
    trigger_count   INTEGER NOT NULL DEFAULT 1,
    policy_name     TEXT NOT NULL,
    policy_version  TEXT NOT NULL,
    policy_sha256   TEXT NOT NULL,
    node_id         INTEGER REFERENCES nodes (id) ON DELETE SET NULL,
    log_tail        TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX deployments_by_project ON deployments (project_id, id);
CREATE INDEX deployments_by_status ON deployments (status);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    project_id INTEGER,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
