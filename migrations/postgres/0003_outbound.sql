-- Outbound calls (issue 10): what each portal user may dial out through
-- the portal's PBX (`any`, `none`, or number patterns separated by commas)
-- and the caller number presented for them (NULL: the trunk's).
ALTER TABLE users ADD COLUMN outbound TEXT NOT NULL DEFAULT 'any';
ALTER TABLE users ADD COLUMN outbound_number TEXT NULL;
