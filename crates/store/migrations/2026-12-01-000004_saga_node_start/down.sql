DROP TABLE IF EXISTS saga_node_start;
