-- A project's labels: a JSON string map the user sets. The policy sees them
-- (e.g. to pick the sync windows a project falls under); the daemon does not
-- interpret them.
ALTER TABLE projects ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
