-- The policy every replica runs. `policies` keeps each accepted component
-- by sha256 with the operator config last given to it (a swap back to it
-- brings that config). `active_policy` is one row: the policy running now,
-- its config, and the one before it for rollback. A swap rewrites that row
-- in one transaction; each replica loads the component from here by sha256.
CREATE TABLE policies (
    sha256     TEXT PRIMARY KEY,
    wasm       BYTEA NOT NULL,
    -- '' when none was given.
    config     TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE active_policy (
    id              BIGINT PRIMARY KEY CHECK (id = 1),
    sha256          TEXT NOT NULL REFERENCES policies (sha256),
    config          TEXT NOT NULL,
    previous_sha256 TEXT REFERENCES policies (sha256),
    previous_config TEXT,
    changed_at      BIGINT NOT NULL
);
