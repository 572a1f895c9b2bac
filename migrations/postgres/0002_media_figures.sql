-- Media figures of anchored calls (issue 8), as JSON: live on the lease
-- (refreshed every few seconds by the node relaying the call), final on
-- the call record.
ALTER TABLE call_leases ADD COLUMN media TEXT NULL;
ALTER TABLE call_records ADD COLUMN media TEXT NULL;
