DROP TABLE saga_compensation_record;
DROP TABLE saga_commit_record;
DROP TABLE saga_node_event;
DROP TABLE saga;
