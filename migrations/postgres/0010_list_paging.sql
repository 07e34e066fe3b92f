-- Keyset pages of one project's events (WHERE project_id = ? AND id < ?
-- ORDER BY id DESC); the other lists page on primary keys and the
-- deployments_by_project index.
CREATE INDEX events_by_project ON events (project_id, id);
