-- The web UI's sign-in sessions. The browser's cookie holds a random token;
-- only its sha256 is kept here, so a copy of the database signs no one in.
-- `csrf` is the token every form of that session must carry.
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
