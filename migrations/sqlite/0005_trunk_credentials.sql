-- Outbound trunks' credentials for the PBX's challenges, kept in the
-- database rather than in the trunk file (`trunkgate trunk
-- set-credentials`). The password is needed in clear to answer a digest
-- challenge in a realm only the PBX names; the CLI never prints it.
CREATE TABLE trunk_credentials (
    trunk      TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    password   TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
