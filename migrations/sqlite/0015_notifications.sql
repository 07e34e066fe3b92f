-- Outbound notifications. A target's whole config is sealed with the
-- daemon's secret key: its URL may be the token (Slack, Discord), and it
-- holds HMAC secrets, access tokens and SMTP passwords. `host` is what the
-- API shows of it. `project_id` NULL: the target hears of every project.
-- `events` is a bit set of the events it wants (see NotifyEvent).
CREATE TABLE notification_targets (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id    INTEGER REFERENCES projects (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    events        INTEGER NOT NULL,
    host          TEXT NOT NULL,
    max_attempts  INTEGER NOT NULL,
    sealed_config TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
-- One row per (event, target), written in the transaction that changes
-- the deployment, and drained by the sender: a crash loses nothing. A
-- claimed row's next_at_ms moves past the send's time limit, so another
-- replica takes it only if this one died while sending.
CREATE TABLE notification_outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id     INTEGER NOT NULL REFERENCES notification_targets (id) ON DELETE CASCADE,
    event         TEXT NOT NULL,
    project_id    INTEGER REFERENCES projects (id) ON DELETE CASCADE,
    deployment_id INTEGER,
    detail        TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    next_at_ms    INTEGER NOT NULL,
    last_error    TEXT,
    created_at    INTEGER NOT NULL,
    done_at       INTEGER
);
CREATE INDEX notification_outbox_due ON notification_outbox (state, next_at_ms);
