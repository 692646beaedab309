//! ratchet: a saga engine on steno whose nodes are split into prepare, commit and post-commit phases.
//!
//! # Big theory statement
//!
//! steno never undoes a node whose action failed, re-runs a half-finished node after a crash, and marks a
//! saga stuck (while recording it `done`) when an undo fails. So an action that commits state and *then*
//! does something fallible leaks that state when the fallible part fails (Omicron issue 10695: an attach
//! committed, a re-fetch on a second connection failed under pool exhaustion, and the unwind wedged). The rule
//! that fixes the whole class is: **no fallible work after the commit**. ratchet makes it a type.
//!
//! A [`DbNode`] has four phases:
//!
//! | phase | may | runs in |
//! |---|---|---|
//! | `prepare` | read, decide | a read-only savepoint of the node's transaction (PostgreSQL rejects writes) |
//! | `commit` | every write of the node | the same serializable transaction, on the same connection |
//! | `finish` | compute the output from the receipt | pure: no `self`, no context, no `Result`, not `async` |
//! | `compensate` | reverse the commit, given its receipt | a transaction of its own |
//!
//! A node with nothing to read before its commit implements [`CommitOnlyDbNode`] instead, which is a
//! [`DbNode`] whose prepare reads nothing ([`CallOnlyExternalNode`] is its external twin). A saga declares its
//! node types once, with [`declare_saga_nodes!`]; a node its DAG uses that the list lacks fails the saga's
//! creation.
//!
//! The engine begins and ends every transaction. [`PrepareCx`] and [`CommitTx`] can only be built by the
//! engine and borrow the one connection for one phase. A node's output is computed by `finish` from the
//! commit's receipt, never from a re-read; since `finish` is pure, the engine runs it *before* `COMMIT`, so
//! even a panicking `finish` leaves nothing committed.
//!
//! # Exactly once
//!
//! The node's transaction also writes a **commit record** (saga, node, receipt) and the node's `started` and
//! `succeeded` log events. So the node's effect, its record and its log land atomically, in one durable
//! commit, and:
//! - a crash before `COMMIT` leaves nothing: recovery runs the node again;
//! - a crash after `COMMIT` leaves a log that says `succeeded`: recovery does not run it again;
//! - any other re-run (steno's repeat injection, a log that lost its `succeeded` event) finds the commit
//!   record and returns `finish(receipt)` without committing again.
//!
//! Invariant: a commit record with no compensation record implies the node's `succeeded` event is in the log.
//!
//! A compensation runs in its own transaction, which writes a **compensation record**; a second compensation
//! finds it and does nothing. A compensation whose forward has no commit record has nothing to undo and is
//! skipped: a compensation must know whether the commit happened, or it waits forever on rows that were
//! never created.
//!
//! # A failure after the commit never leaks
//!
//! Two mechanisms were on the table: a guard node before every committing node, whose
//! undo is the compensation (Omicron's `*_UNDO` pattern), or compensating inline. ratchet compensates
//! **inline**: when anything fails after `COMMIT` (only an injected fault can: nothing fallible follows the
//! commit point), the engine runs the node's compensation from the commit record *before* it returns the
//! error to steno, and withdraws the node's `succeeded` event in the same transaction, so steno's log reads
//! `started, failed` and steno's unwind (which skips the failed node) is now correct. A crash in that window
//! leaves the log saying `succeeded`, and recovery carries the saga forward with the commit applied once.
//! Why inline: a guard node costs two more log events (two durable commits with a plain store) per committing
//! node on every happy path, to protect a window that the type system already closes; inline compensation
//! costs nothing until it is needed. With it a database node costs one durable commit on the happy path
//! (its transaction), against three for a plain steno action (started, the action, succeeded).
//!
//! # Errors and retries
//!
//! [`NodeError`] is transient (connection lost, pool timeout, serialization failure 40001, deadlock, a lock
//! or statement timeout) or permanent. Transient errors in prepare and commit are retried, the whole
//! transaction at a time, with bounded exponential backoff; compensations are retried longer. A saga is stuck
//! only when a compensation fails permanently or spends its budget; the store then records it `stuck`, with
//! the node and error.
//!
//! A saga names its own error type ([`SagaDef::Error`]: serializable, the host's, e.g. an API error with an
//! HTTP status; [`Untyped`] for none), and a node fails with it as [`NodeError::Saga`] (`?` converts it, see
//! [`SagaError`]). It is permanent. The engine records it in the failed node's `failed` event (or, for a
//! compensation, its `undo_failed` event), so the saga's [`SagaOutcome`] carries it back typed
//! ([`SagaOutcome::saga_error`], [`SagaOutcome::undo_saga_error`]) the same after a crash and recovery, and a
//! stuck saga's diagnosis keeps both ([`ratchet_store::StuckDiagnosis`]). A succeeded saga's outcome gives
//! every node's output by path, typed ([`SagaOutcome::lookup_node_output`]); any serializable type is an
//! output ([`NodeOutput`]).
//!
//! # A COMMIT whose outcome is unknown
//!
//! Only a definite refusal of a `COMMIT` (40001, 40P01, 23xxx) proves a rollback. Any other failure after the
//! `COMMIT` was sent (the connection dropped before the reply, the backend terminated, CockroachDB's 40003)
//! leaves the outcome unknown, and the node is **never failed while unknown**: the engine settles it from
//! the commit record on another connection, with an insert probe that waits out any transaction still
//! writing that record, retrying with backoff and no budget; meanwhile [`Engine::waiting`] lists the node,
//! with the reason. A record there means the commit landed (the node goes on with it, committed once); none
//! means it did not (the node runs again). A unique violation on the commit record's key means the node
//! committed before: it replays, never fails. Compensations follow the same rule with their record. See
//! `run/commit_outcome.rs`.
//!
//! # Panics
//!
//! Every user phase runs under `catch_unwind`: a panic in prepare or commit rolls the transaction back and
//! fails the node with a permanent error naming the panic; in `finish` (which runs before `COMMIT`) the same;
//! in a compensation, the saga is recorded stuck with the message; in an external call, the call's outcome is
//! unknown (it is retried by key, or compensated by key). steno runs each node in a task of its own, and an
//! uncaught panic would leave the saga hanging forever.
//!
//! With `panic = "abort"` (Omicron's release profile) nothing can be caught: a deterministic panic kills the
//! process, and every recovery starts the node again. [`EngineConfig::start_limit`] bounds that loop: in a
//! recovered saga each node start is counted durably, and past the limit the node is given up on (a forward
//! node fails and the saga unwinds; a compensation makes the saga stuck). The limit is on by default only in
//! builds with `panic = "abort"`.
//!
//! # Incarnations
//!
//! An executor id is stable across restarts (a Nexus zone's id), so fencing keyed on the id alone cannot tell
//! a new process from a hung old one. Every engine start, recovery, adoption and retry-unwind therefore takes
//! a new fencing epoch for the sagas it drives: the statement that claims them bumps their
//! `adopt_generation` ([`ratchet_store::claim_unfinished`], batched). An older incarnation of the same
//! id, still alive, is then fenced exactly like a foreign executor.
//!
//! # Bounded transactions
//!
//! Every session of the engine's pool runs with `idle_in_transaction_session_timeout`, a `lock_timeout`
//! (treated as transient) and an optional `statement_timeout` ([`ratchet_store::SessionLimits`], in
//! [`EngineConfig::pool`]). An executor frozen inside a transaction (SIGSTOP, a hung host) holds its locks
//! only until the server ends its session; an adopter waiting on them fails its statement after the lock
//! timeout and retries. The frozen executor, thawed, finds its connection gone, resolves its `COMMIT`'s
//! outcome from the database, and is fenced: it writes nothing.
//!
//! # What is a type, what is the runtime, what is convention
//!
//! Each sentence below has its attacking test, listed in `docs/CLAIMS.md`.
//!
//! - **Types** (compile-time; `tests/ui` holds the programs that must not compile): `finish` is synchronous,
//!   infallible and contextless (it cannot await, propagate an error with `?`, or take a connection: it returns
//!   the node's output, which the engine never reads as a failure); [`CommitTx`] and
//!   [`PrepareCx`] can only be made by the engine and do not outlive their phase; a node's `Plan`, `Receipt`
//!   and `Output` must be serializable (`Serialize + DeserializeOwned`): a plan or receipt type that holds a
//!   connection or a pool in a serialized field does not compile.
//! - **Runtime** (checked by the engine and PostgreSQL as the saga runs): data travels between phases only
//!   in its serialized form (the plan from prepare to commit, the receipt from commit to `finish`, to the
//!   record and to the compensation, the node's arguments from the DAG, outputs through steno's log), so a
//!   field serde skips (a `#[serde(skip)]` pool) arrives as its default and no handle rides from one phase
//!   into the next; prepare runs read-only (PostgreSQL rejects a write); the engine begins and ends every
//!   transaction, and catches transaction control a node sends through its connection on every path (the
//!   transaction carries a token: the record's write checks it on success, and before any rollback the
//!   engine reads it, so a node that ended the engine's transaction fails for that, is not retried, writes
//!   no record, and the saga's diagnosis lists it under `escaped_writes`); fencing; exactly-once records;
//!   unknown outcomes resolved; panics caught; the start limit; a node type whose output is a `Result` (data
//!   the engine would never read as a failure) is refused when its saga is registered.
//! - **Convention** (no type or check can enforce it): a node must not reach the database by any other path
//!   than the connection it is given. Ambient authority cannot be taken away: a node can reach a pool in the
//!   saga's application context ([`SagaDef::Context`], which prepare sees), in a static, or in a task it
//!   spawns, and a write through it lands outside the node's transaction, with no record and no
//!   compensation. The engine hands typed nodes no pool; the only pool it exposes is
//!   [`SagaCx::unchecked_pool`], for plain steno actions ([`NodeRegistry::unchecked_steno_action`]), which
//!   bypass every guarantee above and exist for incremental adoption and the pre-fix fixtures. External
//!   services must deduplicate on the idempotency key and keep a tombstone per compensated key (see
//!   [`ExternalNode`]). One gap in the runtime check, stated: a node that ends the engine's transaction,
//!   begins another and leaves it aborted by a failed statement is not caught (PostgreSQL answers nothing
//!   in an aborted transaction but its end).
//!
//! # Fencing
//!
//! Every transaction of an executor for a saga takes a share lock on the saga row *if* the executor still
//! owns it at its generation (see `ratchet_store::lock_if_owner`), before it commits. An executor that finds
//! itself fenced out commits nothing, compensates nothing, records nothing, and stops driving the saga
//! without unwinding it.
//!
//! Where each write is checked:
//! - a database node's commit transaction: the share lock in the statement that writes the commit record and
//!   the node's events, after the node's own writes and before `COMMIT` (one round trip for the fence, the
//!   record and the events; an adoption waits for a commit already holding the lock, and that commit is the
//!   old owner's last; a stale executor's writes before the check roll back with it);
//! - a database node's compensation transaction: the share lock, first thing in the transaction;
//! - a replay (a commit record found for a node steno re-runs): an ownership read first, since the record
//!   may be the adopter's;
//! - an external node's call and its compensating call: an ownership read before calling out, then the share
//!   lock in the transaction that records the receipt or the compensation (see the TODO-correctness in
//!   `run/external_node.rs` about the window between the read and the call);
//! - steno's own `record_event` and `saga_update`: the store's share lock ([`ratchet_store::PgSecStore`]).
//!
//! Every refused write is counted ([`Counters::fenced`]) and logged at info level with the saga id; the
//! node then parks for good (its future never resolves), so steno neither fails nor unwinds it, and the
//! engine reports the saga [`SagaOutcome::Fenced`]. [`Engine::adopt`] is how an executor takes over another's
//! sagas; `retry_unwind` and `abandon` take or end ownership the same way (see `engine/operations.rs`).
//!
//! # Sagas this binary cannot run
//!
//! A database may hold sagas of definitions this binary does not register, or of another release of one it
//! does whose DAG runs an action this one lacks: another binary's (Nexus's database is shared), or a release
//! rolling out. Neither recovery nor adoption ever abandons such a saga on its own: [`Engine::adopt`] leaves it
//! with its executor, untouched, and [`Engine::recover`] leaves this executor's own unfinished and not
//! driven; both report it with the reason ([`AdoptionReport::left_alone`], [`RecoveryReport::left_alone`]).
//! Abandoning it takes an explicit [`AdoptOptions::abandon_unknown`] (or an operator's [`Engine::abandon`]).
//! Only a saga whose definition is here but which cannot be resumed (a DAG or log that does not load, a log
//! steno refuses) is abandoned by recovery, with the reason.
//!
//! # Shutdown
//!
//! [`Engine::shutdown`] stops taking work, lets every node in flight reach its next phase boundary and stop
//! there (as a crash would, but without dying), then stops all writes. What was not at rest stays unfinished
//! in the database for the next start; see `shutdown.rs`. [`Engine::quiesce`] is the gentler step before it:
//! new sagas are refused, the running ones go on to rest, and [`Engine::quiesced`] says when none is left.
//!
//! # Recovery as Nexus runs it
//!
//! Recovery runs at start and, with [`EngineConfig::recovery_interval`], periodically (and on
//! [`Engine::trigger_recovery`]), picking up sagas Omicron reassigns to this executor. It takes only the sagas
//! ratchet drives (`saga.driven_by_ratchet`), so Nexus's plain steno executor and ratchet can share one executor
//! id; with [`EngineConfig::omicron_readable_log`] nothing ratchet writes is a row Omicron's readers refuse. See
//! `recovery.rs` and the adoption guide ([`nexus_guide`]).
//!
//! # Observability
//!
//! [`Counters`] (started, succeeded, unwound, stuck, abandoned, commits, compensations, retries, unknown
//! outcomes, panics, fenced writes), a ring of the last [`RECENT_OUTCOMES`] outcomes ([`Engine::recent_outcomes`]),
//! the nodes waiting on an unknown outcome ([`Engine::waiting`]), and an info-level `tracing` event, with the
//! saga id and node, for every commit, compensation, adoption and fenced write. An embedder that logs
//! through `slog` (Omicron) passes its logger in [`EngineConfig::log`]: steno's log and those events (commits,
//! compensations, adoptions, fenced writes, unknown outcomes, stuck sagas) then go to it, each with `event`,
//! `saga_id` and `node` keys. The library installs no `tracing` subscriber and no `slog` drain.
//!
//! # External nodes
//!
//! An [`ExternalNode`] makes one idempotent call keyed by (saga, node). Each attempt's outcome is typed:
//! applied (a receipt), refused (transient or permanent), or unknown (a lost response, a timeout, a panic).
//! The node never fails while the outcome is unknown: it retries with the same key until the answer is
//! definite; once any attempt was unknown, it compensates by key before it fails, even if later attempts
//! were refused (a refusal of a retry says nothing of an earlier attempt that may have landed). Its receipt
//! is recorded as soon as the outcome is definite, retried until the write lands.
//!
//! # Subsagas and node paths
//!
//! [`SagaBuilder::subsaga`] nests a typed saga `T` (whose context is the parent's) as one node of the parent,
//! on steno's subsaga nodes; the parent's [`declare_saga_nodes!`] list names it (`subsaga T`), which registers
//! `T`'s node types under the parent's steno saga type ([`SagaDef::register_nested`]), so that recovery can
//! run the parent. Every guarantee above holds inside: each node is keyed by its **path** (its name, or
//! `subsaga-path/name` inside a subsaga; [`PATH_SEPARATOR`]), and every record, start count, waiting note,
//! failpoint, idempotency key and derived id uses the path. So two instances of one subsaga (two disks
//! attached) never share a commit record, and a node outside any subsaga keeps the key it always had.
//! Invariant: paths are unique in a DAG (names are unique within their saga, and may not hold the separator).
//!
//! A DAG whose last stage is parallel gets a [`JOIN_NODE`] after it (steno wants one last node): the saga's
//! output is then an object of that stage's outputs, by node name.
//!
//! # A worked example
//!
//! A node that debits an account. Its commit is one `UPDATE … RETURNING`; its receipt carries everything the
//! output and the compensation need; its `finish` cannot fail, and would not compile if it tried to.
//!
//! ```
//! use diesel::sql_types::{BigInt, Uuid as SqlUuid};
//! use diesel_async::RunQueryDsl;
//! use ratchet_engine::{CommitTx, DbNode, NodeError, PrepareCx, SagaDef};
//! use serde::{Deserialize, Serialize};
//! # use ratchet_engine::SagaBuilder;
//! # struct Billing;
//! # impl SagaDef for Billing {
//! #     const NAME: &'static str = "billing";
//! #     type Params = uuid::Uuid;
//! #     type Context = ();
//! #     type Error = ratchet_engine::Untyped;
//! #     ratchet_engine::declare_saga_nodes! { db Debit }
//! #     fn build(_: &uuid::Uuid, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
//! #         dag.db("debit", Debit { amount: 5 }); Ok(())
//! #     }
//! # }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Debit { amount: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Debited { account: uuid::Uuid, amount: i64, balance: i64 }
//!
//! #[derive(diesel::QueryableByName)]
//! struct Balance { #[diesel(sql_type = BigInt)] balance: i64 }
//!
//! impl DbNode<Billing> for Debit {
//!     const NAME: &'static str = "billing.debit";
//!     type Plan = uuid::Uuid;
//!     type Receipt = Debited;
//!     type Output = i64;
//!
//!     async fn prepare(&self, cx: &mut PrepareCx<'_, Billing>) -> Result<uuid::Uuid, NodeError> {
//!         Ok(*cx.params()) // reads go through cx.conn(); writes would be rejected
//!     }
//!
//!     async fn commit(&self, tx: &mut CommitTx<'_>, account: uuid::Uuid) -> Result<Debited, NodeError> {
//!         let row: Balance = diesel::sql_query(
//!             "UPDATE account SET balance = balance - $2 WHERE id = $1 RETURNING balance",
//!         )
//!         .bind::<SqlUuid, _>(account)
//!         .bind::<BigInt, _>(self.amount)
//!         .get_result(tx.conn())
//!         .await?;
//!         Ok(Debited { account, amount: self.amount, balance: row.balance })
//!     }
//!
//!     fn finish(receipt: Debited) -> i64 {
//!         receipt.balance // the commit point has passed: pure computation only
//!     }
//!
//!     async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Debited) -> Result<(), NodeError> {
//!         diesel::sql_query("UPDATE account SET balance = balance + $2 WHERE id = $1")
//!             .bind::<SqlUuid, _>(receipt.account)
//!             .bind::<BigInt, _>(receipt.amount)
//!             .execute(tx.conn())
//!             .await?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! The `ratchet-example-saga` crate (`sagas/example`) holds a complete saga (the one `ratchet demo` runs).

mod engine;
mod error;
mod failpoint;
pub mod nexus_guide;
mod observe;
mod run;
mod saga;
mod shutdown;
pub mod slog_bridge;

pub use engine::operations::{
    Abandoned, AdoptOptions, AdoptedSaga, AdoptionReport, ShutdownReport, abandon,
};
pub use engine::outcome::{OutcomeLookupError, SagaOutcome};
pub use engine::quiesce::QuiesceStatus;
pub use engine::recovery::{RecoveryReport, RecoveryStatus};
pub use engine::running::PreparedSaga;
pub use engine::{DEFAULT_START_LIMIT, Engine, EngineBuilder, EngineConfig};
pub use error::{EngineError, NodeError, NodeFailure, SagaError, Untyped};
pub use failpoint::{Failpoints, FaultEffect, FaultPoint};
pub use observe::{CounterValues, Counters, RECENT_OUTCOMES, RecentOutcome, WaitingNode};
pub use run::saga_state::{SagaCx, steno_action_params};
pub use saga::builder::{
    JOIN_NODE, PATH_SEPARATOR, SUBSAGA_PARAMS_SUFFIX, SagaBuilder, Stage, TypedNodes,
};
pub use saga::definition::{NodeKind, SagaDef, StenoSaga};
pub use saga::node::{CallError, CallOnlyExternalNode, CommitOnlyDbNode, DbNode, ExternalNode};
pub use saga::output::{NodeOutput, NodeReceipt};
pub use saga::phase::{AfterCommitCx, CommitTx, ExternalCx, PrepareCx, derived_id};
pub use saga::registry::NodeRegistry;

pub use ratchet_store as store;
