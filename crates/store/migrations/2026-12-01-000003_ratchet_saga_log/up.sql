-- ratchet's additions to Omicron's saga log: nullable columns of `saga` (a saga created by plain steno through
-- Omicron's store has them NULL), and the commit and compensation records that make every database node
-- exactly-once. Nothing of Omicron's is changed or dropped. Like every migration of ratchet's, applying it
-- again does nothing (a host may have applied it with its own tooling before the engine's harness runs).

/* the version of the ratchet saga definition that created the saga; NULL for a saga plain steno created */
ALTER TABLE saga ADD COLUMN IF NOT EXISTS definition_version INT;
/* when the saga reached `done`, `stuck` or `abandoned` */
ALTER TABLE saga ADD COLUMN IF NOT EXISTS time_finished TIMESTAMPTZ;
/* set when `saga_state` is 'stuck': the node whose compensation failed, why, and since when */
ALTER TABLE saga ADD COLUMN IF NOT EXISTS stuck_node TEXT;
ALTER TABLE saga ADD COLUMN IF NOT EXISTS stuck_reason TEXT;
ALTER TABLE saga ADD COLUMN IF NOT EXISTS time_stuck TIMESTAMPTZ;
-- Compared as text: a CHECK naming the enum value would need `stuck` committed in this transaction.
DO $$
BEGIN
    ALTER TABLE saga ADD CONSTRAINT stuck_requires_reason
        CHECK (saga_state::TEXT != 'stuck' OR stuck_reason IS NOT NULL);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- One row per database or external node whose commit happened: written in the node's own transaction
-- (database nodes) or as soon as the call's outcome is definite (external nodes).
CREATE TABLE IF NOT EXISTS saga_commit_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    receipt JSONB NOT NULL,
    time_committed TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    PRIMARY KEY (saga_id, node_name)
);

-- One row per compensation that happened, written in the compensation's own transaction.
CREATE TABLE IF NOT EXISTS saga_compensation_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    /* whether there was a commit to undo: false when the forward never committed */
    had_commit BOOLEAN NOT NULL,
    time_compensated TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    PRIMARY KEY (saga_id, node_name)
);
