-- ratchet 2026-12-08-000006_omicron_readable_log: true for every saga ratchet drives (set on create and in the
-- statement that claims a saga); FALSE for the rows Nexus's store writes. Nexus's recovery listing adds
-- `AND NOT driven_by_ratchet`.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS driven_by_ratchet BOOL NOT NULL DEFAULT false;
