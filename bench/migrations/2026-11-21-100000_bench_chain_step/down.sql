DROP TABLE IF EXISTS bench_chain_step;
