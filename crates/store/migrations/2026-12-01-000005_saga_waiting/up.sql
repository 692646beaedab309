-- Why an unfinished saga is waiting: a node of it waits for an unknown COMMIT outcome to be resolved (see the
-- engine's `commit_outcome.rs`). Written by the executor as soon as it can reach the database, deleted when the
-- outcome is resolved, so that an operator's `ratchet sagas show` (another process) can say why the saga
-- neither fails nor goes on. A table of its own, not columns of `saga`: the transaction whose outcome is
-- unknown may still hold its share lock on the saga's row.
CREATE TABLE IF NOT EXISTS saga_waiting (
    saga_id UUID NOT NULL,
    node_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    time_waiting TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    PRIMARY KEY (saga_id, node_name)
);
