-- The benchmark's 5-step chain: each step is one transaction inserting one row (value = step). The DBOS peer
-- (peers/dbos) runs the same workflow on the same table.
CREATE TABLE IF NOT EXISTS bench_chain_step (
    saga_id UUID NOT NULL,
    step INT4 NOT NULL,
    value INT8 NOT NULL,
    PRIMARY KEY (saga_id, step)
);
