-- A fleet's channel allowances (decision 0006): the channels of a portal
-- that one node may admit calls on without asking the database again.
-- The grants of a portal, summed over its unexpired rows, never exceed its
-- channels; a node renews its rows with its leases, and a node that dies
-- loses them when they expire.
CREATE TABLE channel_allowances (
    portal_id  TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    granted    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (portal_id, node_id)
);
CREATE INDEX channel_allowances_node ON channel_allowances (node_id);
