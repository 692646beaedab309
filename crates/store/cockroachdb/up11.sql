-- ratchet 2026-12-01-000005_saga_waiting: why an unfinished saga is waiting (an unknown COMMIT outcome).
CREATE TABLE IF NOT EXISTS saga_waiting (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    time_waiting TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    CONSTRAINT saga_waiting_pkey PRIMARY KEY (saga_id, node_name)
);
