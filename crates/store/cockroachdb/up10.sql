-- ratchet 2026-12-01-000004_saga_node_start: how many times a recovered saga's node (or its compensation) was
-- started, so that a node crashing its process every time it starts is given up on. The CHECK is named as
-- PostgreSQL names the PostgreSQL migration's unnamed one (CockroachDB would name it `check_phase`); `starts`
-- is INT4 (CockroachDB's INT is 64 bits, the column is PostgreSQL's INT).
CREATE TABLE IF NOT EXISTS saga_node_start (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    /* 'forward' or 'compensation' */
    phase TEXT NOT NULL CONSTRAINT saga_node_start_phase_check CHECK (phase IN ('forward', 'compensation')),
    starts INT4 NOT NULL,
    time_last_start TIMESTAMPTZ NOT NULL,
    CONSTRAINT saga_node_start_pkey PRIMARY KEY (saga_id, node_name, phase)
);
