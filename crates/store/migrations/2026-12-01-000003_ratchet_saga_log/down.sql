DROP TABLE saga_compensation_record;
DROP TABLE saga_commit_record;
ALTER TABLE saga DROP CONSTRAINT stuck_requires_reason;
ALTER TABLE saga DROP COLUMN time_stuck;
ALTER TABLE saga DROP COLUMN stuck_reason;
ALTER TABLE saga DROP COLUMN stuck_node;
ALTER TABLE saga DROP COLUMN time_finished;
ALTER TABLE saga DROP COLUMN definition_version;
