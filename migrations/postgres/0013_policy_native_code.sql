-- A stored policy's native code, per engine (the hash of the compiler, its
-- target and settings), written by the replica that accepted the policy so
-- the others load it instead of compiling it. Native code runs as native
-- code: `mac` is an HMAC-SHA256 under a key derived from the replicas'
-- shared secret key, checked with the engine and the policy before a byte
-- of `code` is used. A row that fails the check is ignored (and replaced).
CREATE TABLE policy_native_code (
    sha256      TEXT NOT NULL REFERENCES policies (sha256),
    -- hex sha256 of the engine's compatibility hash.
    engine_hash TEXT NOT NULL,
    code        BYTEA NOT NULL,
    mac         BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (sha256, engine_hash)
);
