//! The one place the CLI learns which sagas exist: every command that starts an engine (demo, recover, sagas
//! retry-unwind, sagas adopt) builds it here, so that a saga registered here can be run, recovered, adopted
//! and re-driven by all of them.
//!
//! To add a saga definition: one `.register::<Saga>(context)` line in [`engine_builder`], and its tables'
//! migrations in [`saga_migrations`]. A saga created by a binary that registered it and recovered by one that
//! does not is abandoned at recovery, with the reason (DESIGN.md section 5).

use diesel_migrations::EmbeddedMigrations;
use ratchet_engine::example::{self, ProvisionWidget};
use ratchet_engine::{EngineBuilder, EngineConfig};
use std::sync::Arc;

/// An engine builder with every saga the CLI runs registered.
pub fn engine_builder(config: EngineConfig) -> EngineBuilder {
    EngineBuilder::new(config).register::<ProvisionWidget>(Arc::new(()))
}

/// The migrations of the registered sagas' own tables (the saga log's are the engine's), applied before the
/// engine starts.
pub fn saga_migrations() -> Vec<&'static EmbeddedMigrations> {
    vec![&example::MIGRATIONS]
}
