-- ratchet 2026-12-01-000003_ratchet_saga_log: when the saga reached `done`, `stuck` or `abandoned`.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS time_finished TIMESTAMPTZ;
