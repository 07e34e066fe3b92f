-- The decision log: every policy call the daemon makes, with its input (the
-- call as JSON), its output (the answer as JSON, or {"failed": "..."} when
-- the policy trapped or ran out of budget) and the policy that answered.
-- No foreign keys: the log outlives deleted projects and deployments, and a
-- decision about a project deleted meanwhile is still written.
CREATE TABLE decision_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    call_name      TEXT NOT NULL,
    project_id     INTEGER,
    -- The deployment this decision made (written in the deployment's own
    -- transaction); NULL for the decisions that deployed nothing.
    deployment_id  INTEGER,
    input          TEXT NOT NULL,
    output         TEXT NOT NULL,
    policy_name    TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    policy_sha256  TEXT NOT NULL,
    -- The contract version the policy implements ('0.1.0', '0.2.0'): the
    -- host asks every policy in the newest version's terms and adapts.
    policy_wit_version TEXT NOT NULL
);
CREATE INDEX decision_log_by_project ON decision_log (project_id, id);
CREATE INDEX decision_log_by_deployment ON decision_log (deployment_id);
CREATE INDEX decision_log_by_time ON decision_log (at);
