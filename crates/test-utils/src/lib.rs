//! Test utilities shared by ratchet's cross-crate tests (`tests/`) and its fault-injection harness
//! (`fault-injection/`): things a test needs to attack the engine with real faults, and nothing the engine
//! itself depends on.
//!
//! - [`pg_proxy`]: a TCP proxy between a PostgreSQL client and server that can drop a `COMMIT`'s reply,
//!   withhold a `COMMIT`, or stage an outage.

pub mod pg_proxy;
