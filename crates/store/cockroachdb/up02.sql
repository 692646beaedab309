-- ratchet 2026-12-01-000003_ratchet_saga_log: the version of the saga definition that created the saga (NULL
-- for a saga plain steno created). INT4, not INT: CockroachDB's INT is 64 bits, the column is PostgreSQL's INT.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS definition_version INT4;
