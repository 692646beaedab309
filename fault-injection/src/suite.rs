//! What the harness needs to know about a saga: how to set up a world for it, its parameters, and how to
//! check the world at rest.

use crate::HarnessError;
use crate::fault::Fault;
use diesel_migrations::EmbeddedMigrations;
use ratchet_engine::{EngineBuilder, SagaDef};
use ratchet_store::DbConnection;
use std::future::Future;

/// A saga under test. Implement this (a few lines for a small saga; see the crate docs) and hand it to
/// [`crate::Matrix`].
pub trait SagaSuite: Send + Sync + 'static {
    /// The saga definition.
    type Saga: SagaDef;
    /// Whatever one cell's world holds besides the database: simulated services, seeded ids.
    type Fixture: Send + Sync + 'static;

    /// The row label of this saga in the matrix.
    fn label(&self) -> String;

    /// The migrations of the saga's own tables (the saga log's are always applied).
    fn migrations(&self) -> Vec<&'static EmbeddedMigrations>;

    /// Sets up one cell's world on a fresh, migrated database at `url`.
    fn fixture(
        &self,
        url: &str,
    ) -> impl Future<Output = Result<Self::Fixture, HarnessError>> + Send;

    /// Registers the saga (and its context) with an engine.
    fn register(&self, builder: EngineBuilder, fixture: &Self::Fixture) -> EngineBuilder;

    /// The saga's parameters in this world.
    fn params(&self, fixture: &Self::Fixture) -> <Self::Saga as SagaDef>::Params;

    /// Every invariant violation at rest (empty when nothing leaked).
    fn violations(
        &self,
        fixture: &Self::Fixture,
        conn: &mut DbConnection,
    ) -> impl Future<Output = Result<Vec<String>, HarnessError>> + Send;

    /// Problems with the saga's resources given how it ended: after a success, exactly the resources asked
    /// for; after an unwind, none of them.
    fn check_outcome(
        &self,
        fixture: &Self::Fixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> impl Future<Output = Result<Vec<String>, HarnessError>> + Send {
        let _ = (fixture, conn, succeeded);
        async { Ok(Vec::new()) }
    }

    /// Makes the service drop its response to `node`'s next call (after applying it). Returns false when
    /// `node` calls no service.
    fn lose_response(&self, fixture: &Self::Fixture, node: &str) -> bool {
        let _ = (fixture, node);
        false
    }

    /// Makes the service apply `node`'s next call and drop its response, then refuse every retry. Returns
    /// false when `node` calls no service.
    fn lose_response_then_refuse(&self, fixture: &Self::Fixture, node: &str) -> bool {
        let _ = (fixture, node);
        false
    }

    /// Whether the service-side fault armed for `node` (by [`SagaSuite::lose_response`] or
    /// [`SagaSuite::lose_response_then_refuse`]) was reached: a response was dropped.
    fn service_fault_fired(&self, fixture: &Self::Fixture, node: &str) -> bool {
        let _ = (fixture, node);
        false
    }

    /// For a plain steno node (a fixture written without ratchet): makes it fail right after its commit.
    /// Returns false when the node has no such knob.
    fn fail_after_commit(&self, fixture: &Self::Fixture, node: &str) -> bool {
        let _ = (fixture, node);
        false
    }

    /// What a child process needs to reach this fixture's services (real-crash cells, see
    /// [`crate::real_crash`]): their addresses, as JSON. `Null` for a saga that calls no service.
    fn services_handle(&self, fixture: &Self::Fixture) -> serde_json::Value {
        let _ = fixture;
        serde_json::Value::Null
    }

    /// Registers the saga with an engine in a child process, against the services `handle` names (from
    /// [`SagaSuite::services_handle`]). Without it, the suite's real-crash cells fail saying so.
    fn register_remote(
        &self,
        builder: EngineBuilder,
        handle: &serde_json::Value,
    ) -> Result<EngineBuilder, HarnessError> {
        let _ = (builder, handle);
        Err(HarnessError::Fixture(format!(
            "suite {} cannot run in a child process (no register_remote)",
            self.label()
        )))
    }

    /// Whether the matrix runs cells for this node (all nodes by default).
    fn includes(&self, node: &str, kind: ratchet_engine::NodeKind) -> bool {
        let _ = (node, kind);
        true
    }

    /// Cells where the saga is known to be defective: the harness must detect a leak or a stuck unwind there
    /// (the legacy fixture), and fails the run if it does not.
    fn expects_detection(&self, node: &str, fault: Fault) -> bool {
        let _ = (node, fault);
        false
    }
}
