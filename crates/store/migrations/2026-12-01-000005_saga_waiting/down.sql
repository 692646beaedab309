DROP TABLE saga_waiting;
