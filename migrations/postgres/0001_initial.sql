-- Times are unix seconds (BIGINT here, INTEGER in sqlite) so both backends
-- share every query.

CREATE TABLE nodes (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL UNIQUE,
    last_seen_at BIGINT,
    created_at   BIGINT NOT NULL
);

CREATE TABLE projects (
    id                         BIGSERIAL PRIMARY KEY,
    name                       TEXT NOT NULL UNIQUE,
    project_type               TEXT NOT NULL
        CHECK (project_type IN ('deployment', 'compose', 'image', 'tunnel', 'domain_only')),
    git_source                 TEXT NOT NULL CHECK (git_source IN ('hosted', 'external')),
    git_url                    TEXT,
    git_branch                 TEXT NOT NULL DEFAULT 'main',
    compose_file_path          TEXT NOT NULL DEFAULT 'docker-compose.yml',
    expose_service             TEXT,
    expose_port                BIGINT,
    auto_deploy_enabled        BIGINT NOT NULL DEFAULT 0,
    last_tracked_commit_sha    TEXT NOT NULL DEFAULT '',
    last_tracked_image_digests TEXT NOT NULL DEFAULT '{}',
    pinned_node_id             BIGINT REFERENCES nodes (id) ON DELETE SET NULL,
    push_token_hash            TEXT,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL
);

-- Git credentials, sealed with the daemon's secret key; never returned.
CREATE TABLE project_credentials (
    project_id BIGINT PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('https', 'ssh')),
    username   TEXT,
    sealed     TEXT NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE admin_tokens (
    id         BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE deployments (
    id              BIGSERIAL PRIMARY KEY,
    project_id      BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    source          TEXT NOT NULL CHECK (source IN ('manual', 'auto-poll', 'auto-push', 'auto-image')),
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    target_commit   TEXT,
    target_digests  TEXT,
    reason          TEXT NOT NULL,
    error           TEXT,
    trigger_count   BIGINT NOT NULL DEFAULT 1,
    policy_name     TEXT NOT NULL,
    policy_version  TEXT NOT NULL,
    policy_sha256   TEXT NOT NULL,
    node_id         BIGINT REFERENCES nodes (id) ON DELETE SET NULL,
    log_tail        TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX deployments_by_project ON deployments (project_id, id);
CREATE INDEX deployments_by_status ON deployments (status);

CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    project_id BIGINT,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
