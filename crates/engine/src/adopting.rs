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
//! default: diesel's [`SAGA_LOG_MIGRATIONS`](ratchet_store::pool::SAGA_LOG_MIGRATIONS)), or copy the SQL
//! ([`MIGRATIONS_SQL`](ratchet_store::pool::MIGRATIONS_SQL), the same files) into your own schema tooling,
//! each file in its own transaction, in order, and turn `run_migrations` off. The engine then checks at start
//! that everything it needs is there and names what is missing
//! ([`EngineError::SchemaMissing`](crate::EngineError::SchemaMissing): `column saga.time_stuck`, `value stuck
//! of type saga_state`, `column saga.saga_state of type saga_state`, …). `docs/COCKROACHDB.md` says how each
//! statement reads on CockroachDB.
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
//! type changes: they run under ratchet's [`Ratchet<S>`](crate::Ratchet) saga type, whose context is
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
//! them: keep both registered for one release.
//!
//! A saga that nests others (Nexus's instance-create nests a disk-attach per disk) nests them as typed
//! sagas: [`SagaBuilder::subsaga`](crate::SagaBuilder::subsaga) with the child's parameters, `subsaga Child`
//! in the parent's `declare_saga_nodes!` list; a later node reads the child's output by the subsaga's name.
//! Inside, every node has a path (`attach_disk_0/attach_disk`) that keys its commit and compensation records,
//! so two instances of one child never share a record, and exactly-once, inline compensation, fencing and
//! recovery hold there as everywhere. A last stage may be parallel: the saga's output is then an object of
//! that stage's outputs by node name.
//!
//! # 6. Start, and wire the operations
//!
//! [`EngineBuilder::start`](crate::EngineBuilder::start) applies (or checks) the schema, starts steno's
//! executor, and recovers this executor's unfinished sagas of the definitions it registers (others are left
//! alone and reported). Everything the `ratchet` CLI does for operators is a library call returning
//! serializable types, for Nexus's internal API and omdb: list with filters
//! ([`ratchet_store::saga::list_sagas_where`]), history ([`ratchet_store::saga::saga_history`]), stuck
//! diagnosis ([`ratchet_store::ops::stuck_diagnosis`]), [`Engine::retry_unwind`](crate::Engine::retry_unwind),
//! [`Engine::abandon`](crate::Engine::abandon) (recorded as Omicron records an omdb abandonment: reason
//! `omdb`, the operator's words as the comment), [`Engine::adopt`](crate::Engine::adopt); and the counters
//! ([`Engine::counters`](crate::Engine::counters)).
//!
//! # What stays different from Nexus's stack
//!
//! - Connections: ratchet's pool is bb8 over diesel-async's `AsyncPgConnection`; Nexus's is
//!   `async-bb8-diesel` over diesel's synchronous `PgConnection`. A host keeps two pools (both on the same
//!   database) until one of them moves; a node's SQL written with diesel's query builder ports between them
//!   unchanged, its `.execute_async(&conn)` calls become diesel-async's `.execute(&mut conn)`.
//! - Database: ratchet is tested on PostgreSQL; `docs/COCKROACHDB.md` lists every construct whose behaviour
//!   differs on CockroachDB and what ratchet would do there.
//! - Schema names: Nexus qualifies its tables as `omicron.public.saga`; ratchet's SQL names them unqualified,
//!   in the connection's current schema.
