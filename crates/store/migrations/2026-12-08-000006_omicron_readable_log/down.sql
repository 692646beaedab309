DROP TABLE IF EXISTS saga_undo_failure;
ALTER TABLE saga DROP COLUMN IF EXISTS driven_by_ratchet;
