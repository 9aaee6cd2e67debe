-- Crash dumps for post-mortem debugging, assembled from the visor's crash events (the crash,
-- then r0..r12, then chunks of the app's stack; see src/crash.rs). Portable between SQLite and
-- PostgreSQL like the other migrations. At most 20 per device: storing a new one deletes the
-- oldest. Times in µs (received_at: server, since the epoch; device_time_us: the device's, since
-- its boot); register values are u32 in BIGINT columns.
CREATE TABLE crashes (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    received_at BIGINT NOT NULL,
    device_time_us BIGINT NOT NULL,
    -- The crash event's log sequence number (boot << 32 | n).
    seq BIGINT NOT NULL,
    kind BIGINT NOT NULL,
    pc BIGINT NOT NULL,
    lr BIGINT NOT NULL,
    sp BIGINT NOT NULL,
    xpsr BIGINT NOT NULL,
    cfsr BIGINT NOT NULL,
    hfsr BIGINT NOT NULL,
    sfsr BIGINT NOT NULL,
    bfar BIGINT NOT NULL,
    exc_return BIGINT NOT NULL,
    -- r0..r12: NULL until the registers event came.
    r0 BIGINT, r1 BIGINT, r2 BIGINT, r3 BIGINT, r4 BIGINT, r5 BIGINT, r6 BIGINT,
    r7 BIGINT, r8 BIGINT, r9 BIGINT, r10 BIGINT, r11 BIGINT, r12 BIGINT,
    -- The app's stack from sp upwards (words little-endian, contiguous), hex; grows as chunks
    -- arrive (at most 384 bytes).
    stack TEXT NOT NULL,
    -- The app the device announced in its hello.
    app_name TEXT,
    app_version TEXT,
    UNIQUE (device_id, seq)
);
CREATE INDEX crashes_by_device ON crashes (device_id, received_at);
