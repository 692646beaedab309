-- What lets Nexus's plain steno executor and ratchet share one saga log, and one executor id, without either
-- reading a row it cannot parse or taking a saga that is the other's.
--
-- `driven_by_ratchet`: true for every saga ratchet drives: set when ratchet creates a saga, and in the
-- statement with which it claims one (recovery, adoption, retry-unwind), a saga plain steno created included.
-- Rows Nexus's store writes name no such column and get FALSE. Nexus's recovery listing adds
-- `AND NOT driven_by_ratchet`; ratchet's takes only its own (see the adoption guide). A saga's name cannot tell
-- them apart: in the release that moves a saga to ratchet, both executors register its name.
ALTER TABLE saga ADD COLUMN IF NOT EXISTS driven_by_ratchet BOOLEAN NOT NULL DEFAULT FALSE;

-- A node's failed undo, with its error, kept out of `saga_node_event` when the engine writes an Omicron-readable
-- log (`EngineConfig::omicron_readable_log`): Omicron's event reader refuses every `undo_failed` row. ratchet's
-- readers (recovery's log, a saga's history, the stuck check, retry-unwind) read this table as the node's
-- `undo_failed` event.
CREATE TABLE IF NOT EXISTS saga_undo_failure (
    saga_id UUID NOT NULL,
    node_id BIGINT NOT NULL,
    /* steno's UndoActionError, serialized (what an `undo_failed` event's data holds) */
    data JSONB NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    PRIMARY KEY (saga_id, node_id)
);
