-- ratchet 2026-12-01-000003_ratchet_saga_log: a stuck saga says why. Compared as text, as in the PostgreSQL
-- migration (there the CHECK must not need `stuck` committed in its own transaction).
ALTER TABLE saga ADD CONSTRAINT IF NOT EXISTS stuck_requires_reason
    CHECK (saga_state::TEXT != 'stuck' OR stuck_reason IS NOT NULL);
