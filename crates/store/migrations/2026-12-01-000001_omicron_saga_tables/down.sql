-- Nothing: these are Omicron's own tables and types, which this migration creates only where they do not
-- exist (on Nexus's database it did nothing). Reverting ratchet must never drop a host's saga log; drop them
-- by hand on a database that only ratchet used.
SELECT 1;
