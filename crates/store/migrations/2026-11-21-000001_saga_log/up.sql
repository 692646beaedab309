-- ratchet's saga log, in the style of Omicron's `saga` and `saga_node_event` tables (schema/crdb/dbinit.sql),
-- plus the commit and compensation records that make every database node exactly-once.
--
-- Kept inside the SQL subset CockroachDB also runs: TEXT with CHECK instead of a Postgres ENUM, no
-- Postgres-only functions.

CREATE TABLE saga (
    /* immutable */
    id UUID PRIMARY KEY,
    creator UUID NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    name TEXT NOT NULL,
    /* the steno DAG, including the saga's parameters */
    saga_dag JSONB NOT NULL,
    /* the version of the saga definition that created this saga */
    definition_version INT NOT NULL,
    /* mutable */
    saga_state TEXT NOT NULL
        CHECK (saga_state IN ('running', 'unwinding', 'done', 'stuck', 'abandoned')),
    /* the executor (SEC) driving this saga, and its fencing generation */
    current_sec UUID,
    adopt_generation BIGINT NOT NULL,
    adopt_time TIMESTAMPTZ NOT NULL,
    time_finished TIMESTAMPTZ,
    /* set when saga_state = 'stuck': the node whose compensation failed and why */
    stuck_node TEXT,
    stuck_reason TEXT,
    /* set when saga_state = 'abandoned' */
    abandon_reason TEXT,
    CONSTRAINT stuck_requires_reason CHECK (saga_state != 'stuck' OR stuck_reason IS NOT NULL),
    CONSTRAINT abandoned_requires_reason CHECK (saga_state != 'abandoned' OR abandon_reason IS NOT NULL)
);

-- Recovery lists the unfinished sagas of one executor.
CREATE INDEX lookup_saga_by_sec ON saga (current_sec, id)
    WHERE saga_state IN ('running', 'unwinding');

CREATE TABLE saga_node_event (
    saga_id UUID NOT NULL,
    node_id BIGINT NOT NULL,
    event_type TEXT NOT NULL
        CHECK (event_type IN ('started', 'succeeded', 'failed', 'undo_started', 'undo_finished', 'undo_failed')),
    /* the output for 'succeeded', the error for 'failed' and 'undo_failed' */
    data JSONB,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    PRIMARY KEY (saga_id, node_id, event_type)
);

-- One row per database or external node whose commit happened: written in the node's own transaction
-- (database nodes) or as soon as the call's outcome is definite (external nodes).
CREATE TABLE saga_commit_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    receipt JSONB NOT NULL,
    time_committed TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    PRIMARY KEY (saga_id, node_name)
);

-- One row per compensation that happened, written in the compensation's own transaction.
CREATE TABLE saga_compensation_record (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    /* whether there was a commit to undo: false when the forward never committed */
    had_commit BOOLEAN NOT NULL,
    time_compensated TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    adopt_generation BIGINT NOT NULL,
    PRIMARY KEY (saga_id, node_name)
);
