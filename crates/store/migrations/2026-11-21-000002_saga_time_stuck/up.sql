-- When a saga became `stuck` (a compensation failed for good), so that an operator can see how long it has been
-- waiting. NULL for sagas that are not stuck, and for sagas recorded stuck before this column existed (their
-- `time_finished` is the best estimate). Cleared when `retry-unwind` re-drives the saga.
ALTER TABLE saga ADD COLUMN time_stuck TIMESTAMPTZ;
