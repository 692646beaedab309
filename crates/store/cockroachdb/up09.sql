-- ratchet 2026-12-01-000003_ratchet_saga_log: one row per compensation that happened.
CREATE TABLE IF NOT EXISTS saga_compensation_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    /* whether there was a commit to undo: false when the forward never committed */
    had_commit BOOLEAN NOT NULL,
    time_compensated TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    CONSTRAINT saga_compensation_record_pkey PRIMARY KEY (saga_id, node_name)
);
