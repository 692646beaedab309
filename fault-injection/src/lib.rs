//! ratchet's fault-injection harness: every saga × every node × every fault point, each run on a fresh
//! database to rest, then checked with SQL and the simulated services.
//!
//! # Big theory statement
//!
//! Omicron's saga tests inject an error *instead of* an action, so they never exercise "the action
//! committed, then failed", the window of Omicron 10695. This harness fails every node at every phase
//! boundary ([`Fault`]), the moment after `COMMIT` included, and crashes the engine there (a new engine then
//! recovers the saga from the database, as after a power cut). For each cell it checks:
//!
//! - the saga is at rest (`done`), with the outcome the fault dictates ([`Expected`]): an error before
//!   or after the commit unwinds cleanly; a crash is recovered to success; a permanent compensation failure
//!   is `stuck` until `retry-unwind`, with the fault cleared, finishes it. A crash right after `COMMIT` must
//!   end in *success with the commit applied once*, not in an unwind: the node's transaction wrote its
//!   commit record and its `succeeded` event along with its writes, so the recovering engine finds the node
//!   done and the saga goes on (a replayed node finds its commit record and does not commit again);
//!   nothing failed that calls for an unwind;
//! - the saga's own invariant checker reports nothing ([`SagaSuite::violations`]);
//! - every commit record is at most once (primary keys) and, after an unwind, compensated; no compensation
//!   after a success; no `undo_failed` unless injected;
//! - the resources are exactly those asked for after a success, and gone after an unwind
//!   ([`SagaSuite::check_outcome`]).
//!
//! With [`Matrix::pairs`] it also crosses two faults: an error right after node N's commit, then a crash of
//! the engine in the compensation of N or of a node before N, during the unwind that error caused (see
//! [`Cell`]).
//!
//! The harness has teeth: a suite can declare cells where its saga is known to be defective
//! ([`SagaSuite::expects_detection`], the legacy disk-attach); those must show a leak or a stuck unwind, and
//! a run where they do not fails.
//!
//! # Pointing it at a saga
//!
//! Implement [`SagaSuite`]: a fixture (the world the saga runs in), the parameters, and the checks at rest.
//! [`ProvisionSuite`] is a complete suite for the engine's example saga in a few dozen lines; the
//! crate's tests run it over the full matrix, and run copies of that saga with deliberately broken
//! compensations (one that does nothing, one that forgets a row, one that refunds twice), which the matrix
//! must fail:
//!
//! ```no_run
//! # use ratchet_fault_injection::{HarnessError, Matrix};
//! use ratchet_fault_injection::ProvisionSuite;
//!
//! # async fn run() -> Result<(), HarnessError> {
//! let server = ratchet_test_utils::testing::test_server().await?;
//! let report = Matrix::new().suite(ProvisionSuite).run(&server, |_, _, _| {}).await?;
//! assert!(report.failures().is_empty(), "{}", report.table());
//! # Ok(()) }
//! ```

mod cell;
mod example;
mod fault;
mod matrix;
mod nexus;
mod real_crash;
mod suite;

pub use cell::{Cell, CellResult, Status};
pub use example::{
    EXAMPLE_OPENING_BALANCE, EXAMPLE_WIDGET_NAME, EXAMPLE_WIDGET_PRICE, ProvisionSuite,
    check_example_outcome, example_violations, open_example_account,
};
pub use fault::{Expected, Fault};
pub use matrix::{Matrix, MatrixReport};
pub use nexus::{
    DiskAttachSuite, DiskDetachSuite, InstanceCreateSuite, NEXUS_SUITE_NAMES, NexusFixture,
    NexusSuite, SnapshotCreateSuite, add_nexus_suite, all_nexus_suites,
};
pub use real_crash::{ChildProgram, ChildSpec};
pub use suite::SagaSuite;

/// Why the harness itself could not run a cell (as opposed to a cell's findings).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("database: {0}")]
    Database(#[from] ratchet_store::DbError),
    #[error("engine: {0}")]
    Engine(String),
    #[error("setting up the world: {0}")]
    Fixture(String),
    #[error("{0} did not come to rest within the time limit")]
    Timeout(String),
}

impl From<ratchet_engine::EngineError> for HarnessError {
    fn from(error: ratchet_engine::EngineError) -> Self {
        HarnessError::Engine(error.to_string())
    }
}
