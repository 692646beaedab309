DROP TABLE IF EXISTS saga_compensation_record;
DROP TABLE IF EXISTS saga_commit_record;
ALTER TABLE saga DROP CONSTRAINT IF EXISTS stuck_requires_reason;
ALTER TABLE saga DROP COLUMN IF EXISTS time_stuck;
ALTER TABLE saga DROP COLUMN IF EXISTS stuck_reason;
ALTER TABLE saga DROP COLUMN IF EXISTS stuck_node;
ALTER TABLE saga DROP COLUMN IF EXISTS time_finished;
ALTER TABLE saga DROP COLUMN IF EXISTS definition_version;
