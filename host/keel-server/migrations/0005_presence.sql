-- Online presence as leases: a device is online while `online_node` names a gateway node whose
-- lease has not run out. A node that starts deletes the rows of its previous run (same name),
-- which ends their devices' presence at once; `online_session` lets only the connection that
-- marked a device online mark it offline. The `online` column of 0001 is no longer used.
CREATE TABLE gateway_nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX gateway_nodes_name ON gateway_nodes (name);

ALTER TABLE devices ADD COLUMN online_node TEXT;
ALTER TABLE devices ADD COLUMN online_session BIGINT;
CREATE INDEX devices_online_node ON devices (online_node);

-- What the server noticed about a device (not in its log sequence space): a log sequence that
-- went back, a quota reached.
CREATE TABLE device_events (
    device_id TEXT NOT NULL REFERENCES devices(id),
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX device_events_device ON device_events (device_id, at);
