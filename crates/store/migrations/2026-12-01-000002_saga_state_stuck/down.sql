-- PostgreSQL cannot drop an enum value: `stuck` stays (no row uses it once ratchet's tables are gone).
SELECT 1;
