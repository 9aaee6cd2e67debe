-- App connectivity (issue 12): config values and secrets that apps fetch through their device's
-- link, and the per-account destination policy of the requests the server makes for devices.
-- Portable between SQLite and PostgreSQL like the other migrations. See src/settings.rs and
-- src/policy.rs.
CREATE TABLE settings (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    -- 'config' (readable through the API) or 'secret' (write-only through the API).
    store TEXT NOT NULL,
    -- '' for an account-wide value, else the device it belongs to.
    device_id TEXT NOT NULL,
    -- 1..=128 bytes of [A-Za-z0-9._/-].
    skey TEXT NOT NULL,
    -- config: the value's bytes, hex. secret: hex of version byte 1 || 24-byte nonce ||
    -- XChaCha20-Poly1305 ciphertext and tag (associated data: account, store, device, key).
    value TEXT NOT NULL,
    -- The value's length in bytes (of the plaintext, for secrets).
    size BIGINT NOT NULL,
    -- µs since the epoch.
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, store, device_id, skey)
);
CREATE INDEX settings_by_device ON settings (device_id);

-- Destination rules, per account, evaluated in `position` order (first match wins).
CREATE TABLE destination_rules (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    position BIGINT NOT NULL,
    -- 'allow' or 'deny'.
    action TEXT NOT NULL,
    -- A host name, '*.' + a domain, or a CIDR network (as given, normalized).
    target TEXT NOT NULL,
    -- NULL: any port / any scheme.
    port BIGINT,
    scheme TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX destination_rules_by_account ON destination_rules (account_id, position);
