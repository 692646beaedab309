DROP TABLE example_ledger; DROP TABLE example_widget; DROP TABLE example_account;
