-- Git host webhooks. HMAC verification needs the secret itself, so it is
-- kept sealed with the daemon's secret key (as git credentials are), never
-- hashed. One secret per project; rotating replaces the row.
CREATE TABLE webhook_secrets (
    project_id BIGINT PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    sealed     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Delivery ids seen per project, kept until they expire (24 h), so a
-- replayed delivery is recognised and ignored.
CREATE TABLE webhook_deliveries (
    project_id  BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (project_id, delivery_id)
);
CREATE INDEX webhook_deliveries_by_expiry ON webhook_deliveries (expires_at);
