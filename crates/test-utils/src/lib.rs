//! Test utilities shared by ratchet's tests, at every floor: things a test needs and nothing else does.
//!
//! - [`testing`]: the test suite's database server (`DATABASE_URL`'s, or a private embedded cluster) and fresh
//!   databases on it, cloned from migrated templates by `ratchet-template-db`;
//! - [`omicron`]: Omicron's saga tables as Nexus has them before ratchet, and a steno store that writes them
//!   as Nexus's does, to build databases for the in-place upgrade.
//!
//! Every crate takes it as a dev-dependency only (`tests/tests/layers.rs` checks it): what production code
//! shares with the tests lives elsewhere, by layer: the template databases in `ratchet-template-db`, the
//! example saga in `ratchet-example-saga`, the fault harness's PostgreSQL wire proxy in `ratchet-wire-proxy`.

pub mod omicron;
pub mod testing;
