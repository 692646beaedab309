-- Omicron's saga log: the `saga` and `saga_node_event` tables (and the `saga_state` and `saga_abandon_reason`
-- types) with the names, columns, types, keys and constraints Nexus's schema gives them, written for
-- PostgreSQL. On a database that already holds them (Nexus's) every statement here does nothing: ratchet's
-- own additions are the later migrations, and they only add.
--
-- Where the dialects differ (docs/COCKROACHDB.md has the whole list):
-- - CockroachDB's `CREATE TYPE IF NOT EXISTS` does not exist in PostgreSQL: a DO block creates each type
--   unless it exists.
-- - CockroachDB's `STRING(n)` is PostgreSQL's `VARCHAR(n)`.
-- - CockroachDB's `INT` is 64 bits: PostgreSQL's `BIGINT`.
-- - The tables live in the connection's current schema (Nexus qualifies them as `omicron.public`).

DO $$
BEGIN
    CREATE TYPE saga_state AS ENUM ('running', 'unwinding', 'done', 'abandoned');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- Why a saga was abandoned (set only when `saga_state` is 'abandoned').
DO $$
BEGIN
    CREATE TYPE saga_abandon_reason AS ENUM (
        /* an operator abandoned it (Omicron's omdb; ratchet's `sagas abandon` and `abandon()`) */
        'omdb',
        /* recovery could not process its persistent state */
        'unrecoverable',
        /* it was assigned to an executor that has long been expunged */
        'orphaned'
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS saga (
    /* immutable */
    id UUID PRIMARY KEY,
    creator UUID NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    name VARCHAR(128) NOT NULL,
    /* the steno DAG, including the saga's parameters */
    saga_dag JSONB NOT NULL,

    /* mutable */
    saga_state saga_state NOT NULL,
    /* the executor (SEC) driving this saga, and its fencing generation */
    current_sec UUID,
    adopt_generation BIGINT NOT NULL,
    adopt_time TIMESTAMPTZ NOT NULL,

    /* abandonment: all three set when `saga_state` is 'abandoned', none otherwise */
    abandon_time TIMESTAMPTZ,
    abandon_reason saga_abandon_reason,
    abandon_comment TEXT,

    CONSTRAINT abandoned_requires_metadata CHECK (
        saga_state != 'abandoned'
        OR (abandon_time IS NOT NULL AND abandon_reason IS NOT NULL AND abandon_comment IS NOT NULL)
    ),
    CONSTRAINT not_abandoned_requires_no_metadata CHECK (
        saga_state = 'abandoned'
        OR (abandon_time IS NULL AND abandon_reason IS NULL AND abandon_comment IS NULL)
    )
);

-- Recovery lists the unfinished sagas of one executor, paginated by id.
CREATE UNIQUE INDEX IF NOT EXISTS lookup_saga_by_sec ON saga (current_sec, id) WHERE saga_state != 'done';

CREATE TABLE IF NOT EXISTS saga_node_event (
    saga_id UUID NOT NULL,
    node_id BIGINT NOT NULL,
    /* steno's event label: started, succeeded, failed, undo_started, undo_finished, undo_failed */
    event_type VARCHAR(31) NOT NULL,
    /* the output for 'succeeded', the error for 'failed' and 'undo_failed' */
    data JSONB,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    PRIMARY KEY (saga_id, node_id, event_type)
);
