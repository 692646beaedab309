//! ratchet's saga log on PostgreSQL, through diesel and diesel-async.
//!
//! # Big theory statement
//!
//! steno persists a saga as a DAG plus a log of node events, through the `SecStore` trait. This crate is that
//! store, in the shape of Omicron's (`saga`, `saga_node_event`), plus two tables of its own that make the
//! engine's guarantees checkable with SQL:
//!
//! - `saga_commit_record (saga_id, node_name)`: written in the same transaction as a database node's writes.
//!   Its primary key makes a second commit of the same node impossible; its `receipt` is what the node's
//!   post-commit phase and its compensation are computed from.
//! - `saga_compensation_record (saga_id, node_name)`: written in the same transaction as the compensation.
//!   Its primary key makes a second compensation impossible.
//!
//! Invariants this crate maintains:
//! 1. `record_event` and `saga_update` land or are fenced: they retry until the write commits, or until they
//!    find that another executor owns the saga ([`owner`]). They are idempotent.
//! 2. Every write an executor makes for a saga is conditional on that executor owning it at its generation.
//! 3. Every steno event type round-trips through `saga_node_event`, `undo_failed` included ([`event`]).
//! 4. A saga steno calls `done` whose log holds an `undo_failed` event is recorded `stuck`, in the same
//!    transaction ([`sec_store`]).
//! 5. Schema migrations are embedded ([`pool::run_migrations`]) and exported as plain SQL
//!    ([`pool::MIGRATIONS_SQL`]); either way the engine checks the schema before any use
//!    ([`schema_check::missing`]).
//! 6. Every operator action that changes who drives a saga (adoption, retry-unwind) bumps its generation in
//!    the same statement or transaction ([`ops`]), so the executor that drove it before is fenced out.
//!
//! The SQL stays inside what CockroachDB also runs: no advisory locks on a saga's path (the one advisory lock
//! serializes the PostgreSQL-only migration harness), no LISTEN/NOTIFY. The saga log is Omicron's `saga` and
//! `saga_node_event` tables, whose states are Omicron's enum types (`saga_state`, plus ratchet's `stuck`;
//! `saga_abandon_reason`).

pub mod cockroachdb;
pub mod dag;
mod error;
pub mod event;
mod fence;
pub mod ops;
pub mod owner;
pub mod pool;
pub mod records;
mod retry;
pub mod saga;
mod schema;
pub mod schema_check;
pub mod sec_store;
pub mod transaction;

pub use error::{DbError, is_transient_diesel, message_is_transient};
pub use event::EventRow;
pub use fence::{Fence, Liveness};
pub use ops::{EscapedWrites, Refusal, StuckDiagnosis, stuck_diagnosis};
pub use owner::SagaOwner;
pub use pool::{
    DbConnection, DbPool, MIGRATIONS_SQL, PoolConfig, SAGA_LOG_MIGRATIONS, connect_pool,
    run_migrations, session_manager,
};
pub use retry::{RetryPolicy, retry_transient};
pub use saga::{AbandonReason, SagaHistory, SagaRow, SagaState};
pub use sec_store::{PgSecStore, SagaLogHandle, SagaRegistration};
