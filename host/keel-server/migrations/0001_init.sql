-- Portable between SQLite and PostgreSQL: the same migrations run on both.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    public_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    online BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT,
    visor_version TEXT,
    app_name TEXT,
    app_version TEXT,
    boot_count BIGINT
);

CREATE TABLE logs (
    device_id TEXT NOT NULL REFERENCES devices(id),
    seq BIGINT NOT NULL,
    kind BIGINT NOT NULL,
    level BIGINT NOT NULL,
    device_time_us BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
