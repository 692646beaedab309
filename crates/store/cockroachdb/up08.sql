-- ratchet 2026-12-01-000003_ratchet_saga_log: one row per database or external node whose commit happened.
CREATE TABLE IF NOT EXISTS saga_commit_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    receipt JSONB NOT NULL,
    time_committed TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    CONSTRAINT saga_commit_record_pkey PRIMARY KEY (saga_id, node_name)
);
