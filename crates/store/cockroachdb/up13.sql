-- ratchet 2026-12-08-000006_omicron_readable_log: a node's failed undo, with its error, kept out of
-- `saga_node_event` (whose reader in Nexus refuses every `undo_failed` row) when the engine writes an
-- Omicron-readable log.
CREATE TABLE IF NOT EXISTS saga_undo_failure (
    saga_id UUID NOT NULL,
    node_id BIGINT NOT NULL,
    /* steno's UndoActionError, serialized (what an `undo_failed` event's data holds) */
    data JSONB NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    CONSTRAINT saga_undo_failure_pkey PRIMARY KEY (saga_id, node_id)
);
