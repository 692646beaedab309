DROP TABLE saga_node_event;
DROP TABLE saga;
DROP TYPE saga_abandon_reason;
DROP TYPE saga_state;
