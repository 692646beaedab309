//! Test utilities shared by ratchet's cross-crate tests (`tests/`) and its fault-injection harness
//! (`fault-injection/`): things a test needs to attack the engine with real faults, and nothing the engine
//! itself depends on.
//!
//! - [`example`]: a complete example saga and its tables (the one `ratchet demo` runs, and the engine's own
//!   tests use);
//! - [`testing`]: fresh databases cloned from migrated templates, on a private PostgreSQL (or
//!   `DATABASE_URL`'s server);
//! - [`omicron`]: Omicron's saga tables as Nexus has them before ratchet, and a steno store that writes them
//!   as Nexus's does, to build databases for the in-place upgrade;
//! - [`pg_proxy`]: a TCP proxy between a PostgreSQL client and server that can drop a `COMMIT`'s reply,
//!   withhold a `COMMIT`, or stage an outage.
//!
//! No production crate depends on it: the library crates (`ratchet-store`, `ratchet-engine`) take it as a
//! dev-dependency only; the harness, the benchmark and the CLI (the top floors) use its template databases.

pub mod example;
pub mod omicron;
pub mod pg_proxy;
pub mod testing;
