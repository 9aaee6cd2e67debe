-- Over-the-air updates. Portable between SQLite and PostgreSQL like the other migrations.
-- Layer bytes are not in the database: they live in the object store under their SHA-256
-- (content-addressed); the database keeps the envelope (a few hundred bytes, hex) and metadata.

-- Ed25519 public keys allowed to sign an account's bundles. Revoked keys stay listed.
CREATE TABLE signer_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    public_key TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    UNIQUE (account_id, public_key)
);

CREATE TABLE bundles (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    app_name TEXT NOT NULL,
    app_version TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    envelope TEXT NOT NULL,
    total_size BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    signer_key_id TEXT NOT NULL REFERENCES signer_keys(id),
    UNIQUE (account_id, app_name, sequence)
);

-- One row per component, in manifest order (`idx` is the component index on the wire).
CREATE TABLE bundle_layers (
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    idx BIGINT NOT NULL,
    component TEXT NOT NULL,
    target TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (bundle_id, idx)
);

-- The bundle each device should run, and how it was targeted ('device' or 'tag:NAME').
CREATE TABLE deployments (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    via TEXT NOT NULL,
    deployed_at BIGINT NOT NULL
);

-- The last update status each device reported.
CREATE TABLE device_updates (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    state TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    installed BIGINT NOT NULL,
    progress BIGINT NOT NULL,
    total BIGINT NOT NULL,
    reason TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Update history per device: state changes reported by the device and server notes (offers,
-- deployments).
CREATE TABLE update_events (
    device_id TEXT NOT NULL REFERENCES devices(id),
    at BIGINT NOT NULL,
    state TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX update_events_by_device ON update_events (device_id, at);
