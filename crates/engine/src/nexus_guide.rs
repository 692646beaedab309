//! How to adopt ratchet in a running control plane (Nexus), one saga at a time. Documentation only.
//!
//! ratchet runs on steno and on Omicron's own saga log, so a host adopts it without stopping: sagas that
//! plain steno started finish under ratchet, and each saga moves to typed nodes when it is ready. The steps,
//! in order:
//!
//! # 1. The schema: Omicron's tables, upgraded in place
//!
//! ratchet's saga log *is* Omicron's `saga` and `saga_node_event` tables (same names, columns, types, keys and
//! constraints; `saga_state` and `saga_abandon_reason` are the same enums). Its migrations only add:
//!
//! | migration | adds |
//! |---|---|
//! | `2026-12-01-000001_omicron_saga_tables` | Omicron's tables and types, *unless they exist* (on Nexus's database it does nothing) |
//! | `2026-12-01-000002_saga_state_stuck` | the `stuck` value of `saga_state` (a compensation failed for good) |
//! | `2026-12-01-000003_ratchet_saga_log` | nullable columns of `saga` (`definition_version`, `time_finished`, `stuck_node`, `stuck_reason`, `time_stuck`) and the commit and compensation record tables |
//! | `2026-12-01-000004_saga_node_start` | the crash-loop counter table |
//! | `2026-12-01-000005_saga_waiting` | the table that says why a saga waits on an unknown `COMMIT` outcome |
//!
//! Rows Nexus's store (`CockroachDbSecStore`) writes stay valid: they name none of ratchet's columns, which are
//! NULL for them (`definition_version` NULL reads as "created by plain steno"). The one thing a Nexus still on
//! plain steno must know: `stuck` is a new `saga_state` value, which its diesel enum does not decode; only
//! sagas ratchet drives ever take it.
//!
//! Either let the engine apply the migrations ([`EngineConfig::run_migrations`](crate::EngineConfig), the
//! default: diesel's [`SAGA_LOG_MIGRATIONS`](ratchet_store::SAGA_LOG_MIGRATIONS); for a service on
//! PostgreSQL without schema tooling of its own, not for Nexus), or copy the SQL
//! ([`MIGRATIONS_SQL`](ratchet_store::MIGRATIONS_SQL), the same files) into your own schema tooling,
//! each file in its own transaction, in order, and turn `run_migrations` off. The engine then checks at start
//! that everything it needs is there and names what is missing
//! ([`EngineError::SchemaMissing`](crate::EngineError::SchemaMissing): `column saga.time_stuck`, `value stuck
//! of type saga_state`, `column saga.saga_state of type saga_state`, …). On CockroachDB (Nexus), copy
//! [`COCKROACHDB_SCHEMA_SQL`](ratchet_store::COCKROACHDB_SCHEMA_SQL) instead: the same changes
//! (the second and later migrations) in CockroachDB's dialect, one schema change per file, in
//! `crates/store/cockroachdb/`. `docs/COCKROACHDB.md` says how each statement reads on CockroachDB.
//!
//! # 2. The pool
//!
//! Hand the engine your bb8 pool of diesel-async PostgreSQL connections with
//! [`EngineBuilder::with_pool`](crate::EngineBuilder::with_pool); a URL (`EngineConfig::database_url`) stays
//! the convenient path. A database node's transaction (prepare, commit, the commit record and the node's log
//! events) holds exactly one connection from checkout to `COMMIT`; the engine never claims a second one for
//! a node, so a node cannot deadlock the pool against itself (Omicron issue 10695's second claim). Size the
//! pool for the nodes that run at once, plus the log writes between them.
//!
//! # 3. The logger and the executor id
//!
//! Pass your `slog::Logger` in [`EngineConfig::log`](crate::EngineConfig): steno's log and ratchet's events
//! (commits, compensations, adoptions, fenced writes, stuck sagas) go to it. Without one, ratchet logs through
//! `tracing`; it installs no subscriber and no drain. Give the engine the executor id Nexus's SEC uses
//! ([`EngineConfig::sec_id`](crate::EngineConfig)): recovery resumes the unfinished sagas of that id, including
//! those plain steno left in flight.
//!
//! # 4. Register the sagas you have: plain steno sagas alongside
//!
//! A saga not yet ported registers its existing steno actions as
//! [`unchecked_steno_action`](crate::NodeRegistry::unchecked_steno_action)s under a [`SagaDef`](crate::SagaDef)
//! whose `NAME` is the saga's name in the log. Its actions run as plain steno actions: **nothing makes them
//! exactly-once, and a fallible step after their commit leaks exactly as it does today**; the path exists only
//! so that the saga's in-flight and future instances keep running while it is ported. The actions' context
//! type changes: they run under ratchet's [`StenoSaga<S>`](crate::StenoSaga) saga type, whose context is
//! [`SagaCx<S>`](crate::SagaCx) (your context is [`SagaCx::context`](crate::SagaCx::context); the pool, for
//! such actions only, [`SagaCx::unchecked_pool`](crate::SagaCx::unchecked_pool)). Writing the actions generic
//! over a small trait both contexts implement lets one body serve both executors during the move. Read the
//! saga's parameters with [`steno_action_params`](crate::steno_action_params): it reads them bare (a saga plain
//! steno created) or from ratchet's envelope (a saga ratchet created, whose steno parameters also carry its
//! nodes' arguments); steno's own `saga_params` reads only the first.
//!
//! The test `omicron_upgrade.rs` of this crate does all of this: Omicron's tables, two plain steno sagas
//! written by a store that writes rows as `CockroachDbSecStore` does and left in flight (one running, one
//! unwinding), ratchet's migrations applied on start, both sagas recovered under the same executor id and
//! finished (their effects once), and a typed saga run beside them.
//!
//! # 5. Port a saga to typed nodes
//!
//! Split each action at its commit point: a [`DbNode`](crate::DbNode) (prepare reads, commit writes in the
//! engine's transaction, `finish` is pure) or an [`ExternalNode`](crate::ExternalNode) (one idempotent call by
//! key, with a compensation by key); list the saga's node types once with
//! [`declare_saga_nodes!`](crate::declare_saga_nodes) and lay them out in `build`. Bump the definition's
//! `VERSION` when the DAG's shape changes; keep node names and `NAME`s stable (they are persisted). A saga in
//! flight under its plain steno definition is finished by the unchecked actions as long as a binary registers
//! them: keep both registered for one release. An action's `NAME` is what a persisted DAG names: a node type
//! whose parameters change (moved into a subsaga, whose nodes see the child's parameters) needs a new `NAME`
//! while sagas that name the old one may be in flight, or they fail on recovery when their parameters no
//! longer decode.
//!
//! A saga that nests others (Nexus's instance-create nests a disk-attach per disk) nests them as typed
//! sagas: [`SagaBuilder::subsaga`](crate::SagaBuilder::subsaga) with the child's parameters, `subsaga Child`
//! in the parent's `declare_saga_nodes!` list; a later node reads the child's output by the subsaga's name.
//! Inside, every node has a path (`attach_disk_0/attach_disk`) that keys its commit and compensation records,
//! so two instances of one child never share a record, and exactly-once, inline compensation, fencing and
//! recovery hold there as everywhere. A last stage may be parallel: the saga's output is then an object of
//! that stage's outputs by node name.
//!
//! # 6. Map a failed saga to its API error, and read intermediate outputs
//!
//! Nexus answers a failed saga with an API error and its status (instance-start's 409, snapshot's 503), and
//! reads outputs of nodes other than the last (the created instance's id). Give the saga Nexus's error type
//! (`omicron_common::api::external::Error`, serializable), marked once with
//! `impl ratchet_engine::SagaError for Error {}` (in the crate that defines the type, or on a newtype: the
//! orphan rule allows the impl only there), and name it in the definition:
//!
//! ```ignore
//! impl SagaDef for InstanceStart {
//!     type Error = external::Error;
//!     // NAME, Params, Context, declare_saga_nodes!, build …
//! }
//! ```
//!
//! A node then returns `Result<_, NodeError<external::Error>>`; `?` converts an `external::Error` (and a diesel
//! error, transient or permanent by its kind), and a datastore call that returns another error type converts
//! it first (`.map_err(external::Error::from)?`). A typed error is permanent: the saga unwinds (a failed
//! compensation with one leaves it stuck). The error is recorded in the node's `failed` event, so the outcome
//! carries it the same whether the saga failed in this process or was recovered after a crash:
//!
//! ```ignore
//! let (_, outcome) = engine.run::<InstanceStart>(params).await?;
//! match &outcome {
//!     SagaOutcome::Succeeded { .. } => {
//!         let instance_id: Uuid = outcome.lookup_node_output("instance_record")?; // any node, by path
//!         Ok(instance_id)
//!     }
//!     SagaOutcome::Unwound { .. } | SagaOutcome::Stuck { .. } => Err(match outcome.saga_error::<InstanceStart>()? {
//!         Some(api_error) => api_error, // its status: the saga's own 409 or 503
//!         None => external::Error::internal_error(&format!("{outcome:?}")), // infrastructure, untyped
//!     }),
//!     _ => Err(external::Error::unavail("the saga did not come to rest here")),
//! }
//! ```
//!
//! A node inside a subsaga is found by its path (`attach_disk_0/attach_disk`); a subsaga shares the error type
//! of the saga nesting it. Outputs need no newtype: any serializable type (a model type, a tuple, a
//! `BTreeMap`) is a node's output. A saga left untyped (`type Error = ratchet_engine::Untyped;`, the
//! Nexus-shaped sagas of `ratchet-sagas` today) fails with messages only, as plain `NodeError`.
//!
//! # 7. Start, and wire the operations
//!
//! [`EngineBuilder::start`](crate::EngineBuilder::start) applies (or checks) the schema, starts steno's
//! executor, and recovers this executor's unfinished sagas of the definitions it registers (others are left
//! alone and reported). Everything the `ratchet` CLI does for operators is a library call returning
//! serializable types, for Nexus's internal API and omdb: list with filters
//! ([`ratchet_store::list_sagas_where`]), history ([`ratchet_store::saga_history`]), stuck
//! diagnosis ([`ratchet_store::stuck_diagnosis`], whose `failed_nodes` and `failed_undos` keep the typed errors), [`Engine::retry_unwind`](crate::Engine::retry_unwind),
//! [`Engine::abandon`](crate::Engine::abandon) (recorded as Omicron records an omdb abandonment: reason
//! `omdb`, the operator's words as the comment), [`Engine::adopt`](crate::Engine::adopt); and the counters
//! ([`Engine::counters`](crate::Engine::counters)).
//!
//! # What stays different from Nexus's stack, and what Nexus must change
//!
//! - Connections: ratchet's pool is bb8 over diesel-async's `AsyncPgConnection`, and a node's phases get a
//!   `&mut AsyncPgConnection`; Nexus's pool is a qorb pool of `async-bb8-diesel` connections (over diesel's
//!   synchronous `PgConnection`). Nexus cannot hand its pool to
//!   [`EngineBuilder::with_pool`](crate::EngineBuilder::with_pool) today: it keeps a second pool, on the same database, for ratchet
//!   ([`ratchet_store::session_manager`] builds one under ratchet's session limits). A node's SQL written
//!   with diesel's query builder ports unchanged; its `.execute_async(&*conn)` calls become diesel-async's
//!   `.execute(conn)`. Datastore functions that take Nexus's connection type must be duplicated or made
//!   generic before typed nodes can call them.
//! - Two executors, one executor id: while Nexus still runs some sagas on its own steno executor, both
//!   recover the unfinished sagas of that id, and nothing fences one from the other: Nexus's store checks no
//!   generation (its state update filters on `current_sec` alone, its event inserts on nothing). ratchet's
//!   recovery claims only the sagas whose names it registers (the others are reported, untouched). Nexus's
//!   saga-recovery task **must** skip those names too: otherwise it finds a ratchet saga it has no actions
//!   for, and marks it `abandoned` (`unrecoverable`), and that write lands. Move a saga's name from Nexus's
//!   registry to ratchet's in one release, and filter Nexus's recovery by name in the same release. After
//!   Nexus reassigns an expunged executor's sagas (`sagas_reassign_sec`), call
//!   [`Engine::adopt`](crate::Engine::adopt) or [`Engine::recover`](crate::Engine::recover) on the new owner:
//!   ratchet has no periodic recovery of its own.
//! - The `stuck` state: Omicron's `SagaState` enum does not decode it, and Nexus reads unfinished sagas in more
//!   places than recovery (which lists only `running` and `unwinding`): the fault-management analysis task
//!   lists every saga not `done`, and fails its whole listing on one `stuck` row; `sagas_reassign_sec` moves
//!   `stuck` sagas too; omdb's listing fails on them. Teach Omicron's enum (and omdb) `stuck` before ratchet
//!   runs a saga that could end there.
//! - omdb and ratchet's logs: Omicron's conversion of a `saga_node_event` row refuses every `undo_failed` row
//!   (it parses none), and ratchet writes them with the error as data; omdb also shows a ratchet saga's
//!   parameters inside ratchet's envelope (`{"params": …, "nodes": …}`). `ratchet_store::saga_history`
//!   and [`ratchet_store::stuck_diagnosis`] read both.
//! - Schema versions: Nexus applies its schema as numbered versions (`schema/crdb/<N>/up*.sql`, one schema
//!   change per file, and `dbinit.sql`), in CockroachDB's dialect, never through diesel's harness (whose
//!   migration lock is a PostgreSQL advisory lock). ratchet ships its additions in that shape,
//!   `crates/store/cockroachdb/up01.sql` …
//!   ([`COCKROACHDB_SCHEMA_SQL`](ratchet_store::COCKROACHDB_SCHEMA_SQL)): the second and later
//!   migrations, without `DO` blocks, each statement `IF NOT EXISTS` (the first is Nexus's own tables), to be
//!   added as one new Omicron schema version (`schema/crdb/<version>/up01.sql` …, plus the same changes in
//!   `dbinit.sql`). A PostgreSQL-side test checks they build what the PostgreSQL migrations build; they have
//!   not been run on a CockroachDB (the directory's README lists what to check).
//! - Action contexts: a plain steno action of Nexus takes `ActionContext<NexusSagaType>`; under ratchet it
//!   takes `ActionContext<StenoSaga<S>>` (step 4).
//! - Database: ratchet is tested on PostgreSQL; `docs/COCKROACHDB.md` lists every construct whose behaviour
//!   differs on CockroachDB and what ratchet would do there.
//! - Schema names: Nexus qualifies its tables as `omicron.public.saga`; ratchet's SQL names them unqualified,
//!   in the connection's current schema.
