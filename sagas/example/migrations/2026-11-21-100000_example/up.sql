-- Tables of the example saga (`ratchet demo`, the engine's tests): accounts, widgets and a ledger.
CREATE TABLE example_account (
    id UUID PRIMARY KEY,
    balance BIGINT NOT NULL
);

CREATE TABLE example_widget (
    id UUID PRIMARY KEY,
    account_id UUID NOT NULL,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'active'))
);

-- Deliberately not idempotent: every charge and refund appends a row. Exactly-once shows as exactly one row.
CREATE TABLE example_ledger (
    id UUID PRIMARY KEY,
    account_id UUID NOT NULL,
    widget_id UUID NOT NULL,
    amount BIGINT NOT NULL
);
