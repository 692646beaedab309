DROP TABLE saga_node_start;
