-- How many times a node (or its compensation) of a saga was started by an executor that recovered the saga.
-- Under `panic = "abort"` a node that panics deterministically kills its process every time it starts, and the
-- next process recovers the saga and starts it again: a crash loop. Counting those starts durably lets the
-- engine give up on such a node after a limit (`EngineConfig::start_limit`) instead of crashing forever: the
-- forward node fails, a compensation makes the saga stuck. Written only for sagas an executor recovered, never
-- on a new saga's path.
CREATE TABLE IF NOT EXISTS saga_node_start (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    /* 'forward' or 'compensation' */
    phase TEXT NOT NULL CHECK (phase IN ('forward', 'compensation')),
    starts INT NOT NULL,
    time_last_start TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (saga_id, node_name, phase)
);
