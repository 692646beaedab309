-- ratchet's one addition to Omicron's saga states: `stuck`, a saga whose compensation failed for good (steno
-- records such a saga `done`; ratchet keeps it apart so that an operator finds it). A migration of its own:
-- PostgreSQL lets a transaction add an enum value but not use it before the transaction commits, so apply
-- this file in its own transaction, before the next.
ALTER TYPE saga_state ADD VALUE IF NOT EXISTS 'stuck';
