-- Per-project registry credentials, for the image watcher's lookups of that
-- project's images. The password is sealed with the daemon's secret key (as
-- git credentials are); the API shows the registry and username only.
CREATE TABLE project_registry_credentials (
    project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    registry   TEXT NOT NULL,
    username   TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, registry)
);
