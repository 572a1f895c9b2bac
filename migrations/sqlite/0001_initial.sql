-- trunkgate schema, SQLite flavour. Times are Unix seconds (UTC) in INTEGER
-- columns so both backends share every query.

CREATE TABLE plans (
    name              TEXT PRIMARY KEY,
    max_users         INTEGER NULL CHECK (max_users IS NULL OR max_users >= 0),
    max_cps           INTEGER NULL CHECK (max_cps IS NULL OR max_cps >= 0),
    included_channels INTEGER NOT NULL DEFAULT 0 CHECK (included_channels >= 0),
    updated_at        INTEGER NOT NULL
);

INSERT INTO plans (name, max_users, max_cps, included_channels, updated_at) VALUES
    ('free', 5, 5, 0, 0),
    ('demo', 50, 10, 2, 0);

CREATE TABLE portals (
    id                   TEXT PRIMARY KEY,
    domain               TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('active', 'blocked', 'deleting', 'deleted')),
    block_reason         TEXT NULL CHECK (block_reason IS NULL OR block_reason IN ('violation', 'inactivity', 'incompatible_data', 'manual')),
    allow_extranet_calls INTEGER NOT NULL DEFAULT 0,
    max_cps_override     INTEGER NULL,
    max_call_duration_s  INTEGER NOT NULL DEFAULT 3600,
    created_at           INTEGER NOT NULL,
    last_activity_at     INTEGER NULL,
    deleting_since       INTEGER NULL,
    deleted_at           INTEGER NULL,
    version              INTEGER NOT NULL DEFAULT 0,
    CHECK ((status = 'blocked') = (block_reason IS NOT NULL))
);

-- A domain belongs to at most one live portal; a purged portal frees it.
CREATE UNIQUE INDEX portals_live_domain ON portals (domain) WHERE status <> 'deleted';

CREATE TABLE licences (
    portal_id   TEXT PRIMARY KEY REFERENCES portals (id),
    plan        TEXT NOT NULL REFERENCES plans (name),
    valid_from  INTEGER NULL,
    valid_until INTEGER NULL,
    on_expiry   TEXT NOT NULL CHECK (on_expiry IN ('block', 'downgrade_free')),
    grace_days  INTEGER NOT NULL CHECK (grace_days BETWEEN 0 AND 15),
    updated_at  INTEGER NOT NULL,
    CHECK (valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from)
);

CREATE TABLE extensions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    portal_id   TEXT NOT NULL REFERENCES portals (id),
    channels    INTEGER NOT NULL CHECK (channels > 0),
    valid_from  INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    CHECK (valid_until > valid_from)
);
CREATE INDEX extensions_portal ON extensions (portal_id, valid_until);

-- Passwords are never stored: only the digest-ready HA1 values
-- (RFC 2617 MD5 and RFC 7616/8760 SHA-256) for the portal's realm.
CREATE TABLE users (
    portal_id      TEXT NOT NULL REFERENCES portals (id),
    username       TEXT NOT NULL,
    realm          TEXT NOT NULL,
    ha1_md5        TEXT NOT NULL,
    ha1_sha256     TEXT NOT NULL,
    extranet       INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    static_contact TEXT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (portal_id, username)
);

-- One row per call in progress anywhere in the fleet; its node renews it.
CREATE TABLE call_leases (
    call_id     TEXT PRIMARY KEY,
    portal_id   TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX call_leases_portal ON call_leases (portal_id, expires_at);
CREATE INDEX call_leases_node ON call_leases (node_id);

CREATE TABLE call_records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id     TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    portal_id   TEXT NULL,
    trunk       TEXT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    caller      TEXT NULL,
    callee      TEXT NULL,
    target_user TEXT NULL,
    started_at  INTEGER NOT NULL,
    answered_at INTEGER NULL,
    ended_at    INTEGER NULL,
    outcome     TEXT NOT NULL,
    sip_status  INTEGER NULL,
    reason      TEXT NULL
);
CREATE INDEX call_records_portal_time ON call_records (portal_id, started_at);
CREATE INDEX call_records_time ON call_records (started_at);

-- Bumped by every licence-relevant write so nodes notice changes cheaply
-- (polled on SQLite; PostgreSQL also sends NOTIFY trunkgate_changes).
CREATE TABLE change_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO change_counter (id, version) VALUES (1, 0);
