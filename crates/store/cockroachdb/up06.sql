-- ratchet 2026-12-01-000003_ratchet_saga_log: set when `saga_state` is 'stuck': since when.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS time_stuck TIMESTAMPTZ;
