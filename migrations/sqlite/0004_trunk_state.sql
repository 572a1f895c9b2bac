-- Trunk state shared by the fleet (issue 10). A cloud-PBX trunk is
-- registered by one node at a time: the row names it and expires unless
-- renewed, so another node takes over when it dies. Health is per node
-- (each node pings the PBXs it sends to).
CREATE TABLE trunk_registrations (
    trunk      TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE trunk_health (
    trunk      TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    up         INTEGER NOT NULL, -- 1 up, 0 down
    since      INTEGER NOT NULL,
    detail     TEXT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (trunk, node_id)
);
