-- ratchet 2026-12-01-000002_saga_state_stuck: the `stuck` state (a compensation failed for good).
ALTER TYPE saga_state ADD VALUE IF NOT EXISTS 'stuck';
