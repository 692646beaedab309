ALTER TABLE saga DROP COLUMN time_stuck;
