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
//!    find that another executor owns the saga ([`SagaOwner`], `owner.rs`). They are idempotent.
//! 2. Every write an executor makes for a saga is conditional on that executor owning it at its generation.
//! 3. Every steno event type round-trips through `saga_node_event`, `undo_failed` included ([`EventRow`]).
//! 4. A saga steno calls `done` whose log holds an `undo_failed` event is recorded `stuck`, in the same
//!    transaction ([`PgSecStore`]).
//! 5. Schema migrations are embedded ([`run_migrations`]) and exported as plain SQL
//!    ([`MIGRATIONS_SQL`]); either way the engine checks the schema before any use
//!    ([`missing_schema`]).
//! 6. Every operator action that changes who drives a saga (adoption, retry-unwind) bumps its generation in
//!    the same statement or transaction ([`adopt_sagas`], [`take_for_retry_unwind`]), so the executor that
//!    drove it before is fenced out.
//!
//! The SQL stays inside what CockroachDB also runs: no advisory locks on a saga's path (the one advisory lock
//! serializes the PostgreSQL-only migration harness), no LISTEN/NOTIFY. The saga log is Omicron's `saga` and
//! `saga_node_event` tables, whose states are Omicron's enum types (`saga_state`, plus ratchet's `stuck`;
//! `saga_abandon_reason`).

#![warn(unreachable_pub)]
mod backend;
mod cockroachdb;
mod dag;
mod error;
mod event;
mod fence;
mod operator;
mod owner;
mod pool;
mod records;
mod retry;
mod saga;
mod saga_log;
mod schema;
mod schema_check;
mod transaction;

#[cfg(feature = "async-bb8-diesel")]
pub use backend::SyncPgConnection;
pub use backend::{NodeCheckout, NodeConnection, NodePool, Statement, get_result, statement};
pub use cockroachdb::COCKROACHDB_SCHEMA_SQL;
pub use dag::{
    DagNode, DagNodeKind, NODE_ARGS_KEY, PATH_SEPARATOR, PersistedDag, action_names, node_args,
    node_paths, saga_params,
};
pub use error::{DbError, is_transient_diesel, message_is_transient};
pub use event::{EventRow, SAGA_ERROR_FIELD, saga_error_of, undo_error_message, uuid_of};
pub use fence::{Fence, Liveness};
pub use operator::{
    EscapedWrites, FailedNode, FailedUndo, RecoveryScope, Refusal, StuckDiagnosis,
    UncompensatedCommit, abandon_saga, adopt_sagas, claim_unfinished, stuck_diagnosis,
    take_for_retry_unwind, unfinished_among, unfinished_by_name, unfinished_not_named,
};
pub use owner::{SagaOwner, is_owner, lock_if_owner};
pub use pool::{
    DbConnection, DbPool, MIGRATIONS_SQL, PoolConfig, PooledConnection, SAGA_LOG_MIGRATIONS,
    SessionLimits, connect_pool, create_database_if_missing, database_exists, establish,
    run_migrations, session_manager, terminate_sessions,
};
pub use records::{
    CommitRecord, CompensationRecord, ESCAPED_WRITES, FencedWrite, NODE_TX_SETTING, OwnerCheck,
    RecordKind, Recorded, commit_receipt, count_start, delete_event, insert_compensation_record,
    insert_events, node_tx_token, probe_record, record_commit_if_owner, recorded, set_node_tx,
};
pub use retry::{RetryPolicy, retry_transient};
pub use saga::{
    AbandonReason, EFFECTIVE_STATE_SQL, NEXUS_RECOVERY_PREDICATE, SagaEnd, SagaFilter, SagaHistory,
    SagaPage, SagaRow, SagaState, count_by_state, count_unfinished_by_executor, get_saga,
    list_sagas, list_sagas_where, list_unfinished, load_logs, note_waiting, saga_endings,
    saga_history, state_condition_sql, unfinished_after, waiting_note,
};
pub use saga_log::{PgSecStore, SagaLogHandle, SagaRegistration};
pub use schema_check::{migrations_applied, missing_schema};
pub use transaction::{
    begin_read_only_transaction_then, begin_transaction, begin_transaction_then,
    commit_transaction, in_transaction, rollback_transaction, transaction_depth,
};
