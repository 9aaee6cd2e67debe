-- Registry details: tags, and the last boot and crash each device reported (from its visor events).
CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
ALTER TABLE devices ADD COLUMN last_boot_at BIGINT;
ALTER TABLE devices ADD COLUMN last_boot TEXT;
ALTER TABLE devices ADD COLUMN last_crash_at BIGINT;
ALTER TABLE devices ADD COLUMN last_crash TEXT;
