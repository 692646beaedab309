DROP TABLE IF EXISTS saga_waiting;
