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
//! | `2026-12-08-000006_omicron_readable_log` | `saga.driven_by_ratchet` (which executor's saga it is) and `saga_undo_failure` (failed undos kept where Omicron's event reader never looks) |
//!
//! Rows Nexus's store (`CockroachDbSecStore`) writes stay valid: they name none of ratchet's columns, which are
//! NULL for them (`definition_version` NULL reads as "created by plain steno"), and `driven_by_ratchet` FALSE.
//! Start the engine with [`EngineConfig::omicron_readable_log`](crate::EngineConfig) on: then nothing
//! ratchet writes is a row Omicron's readers cannot parse (see "What stays different" below).
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
//! `tracing`; it installs no subscriber and no drain. A node logs as Nexus's actions log with their saga's
//! logger: `cx.log()` in prepare ([`PrepareCx::log`](crate::PrepareCx::log)), `tx.log()` in commit and
//! compensation ([`CommitTx::log`](crate::CommitTx::log)), `cx.log()` in an external call and its
//! compensation ([`ExternalCx::log`](crate::ExternalCx::log)): the host's logger with `saga_id`, `saga_name`
//! and the node's path (`node`) attached, the same after a recovery. A background-task nudge after a commit or an
//! undo (Nexus activates its reapers and the instance watcher there) goes in the node's optional
//! [`DbNode::after_commit`](crate::DbNode::after_commit) / `after_compensation` step: it sees the saga's
//! context read-only and the receipt, no connection, and runs in the process that committed, never for a
//! commit an earlier attempt or process made (a nudge is a hint the background task tolerates losing; see
//! the step's documentation for the paths that skip it). Give the engine the executor id Nexus's SEC uses
//! ([`EngineConfig::sec_id`](crate::EngineConfig)): recovery resumes the unfinished sagas of that id, including
//! those plain steno left in flight.
//!
//! # 4. Register the sagas you have: plain steno sagas alongside
//!
//! A saga not yet ported registers its existing steno actions as
//! [`unchecked_steno_action`](crate::NodeRegistry::unchecked_steno_action)s under a [`SagaDef`](crate::SagaDef)
//! whose `NAME` is the saga's name in the log (`unchecked NAME => action` in its
//! [`declare_saga_nodes!`](crate::declare_saga_nodes) list). Its actions run as plain steno actions: **nothing
//! makes them exactly-once, and a fallible step after their commit leaks exactly as it does today**; the path
//! exists only so that the saga's in-flight and future instances keep running while it is ported.
//!
//! The actions themselves do not change; only the saga type their context names does. They run under
//! ratchet's [`StenoSaga<S>`](crate::StenoSaga) saga type, whose context is [`SagaCx<S>`](crate::SagaCx),
//! which derefs to your context (`S::Context`): `sagactx.user_data().datastore()` reads as it did. steno's
//! parameters are the saga's own, so `sagactx.saga_params::<Params>()` reads them as it did, for sagas
//! ratchet creates and for those plain steno created before the upgrade (ratchet keeps its typed nodes'
//! arguments beside the DAG, where no plain action looks). Only sagas an earlier release of ratchet created
//! hold their parameters in an envelope; [`steno_action_params`](crate::steno_action_params) reads those too.
//! The pool, for such actions only, is [`SagaCx::unchecked_pool`](crate::SagaCx::unchecked_pool).
//!
//! Project-create's first action, in Nexus's shape, before and after (sketched; the body is unchanged):
//!
//! ```text
//! // before: one context type for every Nexus saga
//! type NexusActionContext = steno::ActionContext<NexusSagaType>; // ExecContextType = Arc<SagaContext>
//!
//! // after: the alias, in the saga's own module, names that saga's ratchet saga type
//! type NexusActionContext = steno::ActionContext<ratchet_engine::StenoSaga<SagaProjectCreate>>;
//! // (SagaProjectCreate: SagaDef { NAME = "project-create", Params = Params, Context = SagaContext })
//!
//! async fn spc_create_record(sagactx: NexusActionContext) -> Result<Project, ActionError> {
//!     let osagactx = sagactx.user_data();                  // derefs to SagaContext
//!     let params = sagactx.saga_params::<Params>()?;       // the saga's own parameters
//!     let opctx = op_context_for_saga_action(&sagactx, &params.serialized_authn);
//!     osagactx.datastore().project_create(&opctx, /* … */).await.map_err(ActionError::action_failed)
//! }
//! ```
//!
//! Nexus's `make_saga_dag` keeps building its DAG with steno's `DagBuilder`: hand the `SagaDag` to
//! [`Engine::create_from_dag`](crate::Engine::create_from_dag), which creates it as it is (names, labels,
//! steno subsagas), with a context of the saga's own if the caller has one
//! ([`Engine::create_with_context`](crate::Engine::create_with_context) for a DAG ratchet lays out). A typed
//! node can join such a DAG before the whole saga is ported: [`TypedNodes`](crate::TypedNodes) makes its
//! steno node and keeps its arguments. `examples/trip` runs steno's own trip example this way, unchanged but
//! for the saga type, beside steno's in-memory executor, with the same results.
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
//! # 7. Recovery and quiesce as Nexus runs them
//!
//! Set [`EngineConfig::recovery_interval`](crate::EngineConfig) (Nexus's saga-recovery task runs every few
//! minutes) and call [`Engine::trigger_recovery`](crate::Engine::trigger_recovery) where Nexus activates its
//! recovery task (after `sagas_reassign_sec` hands an expunged Nexus's sagas to this one). Each pass claims
//! the sagas that came to this executor under a new epoch (`adopt_generation` bumped again, so the expunged
//! owner, were it alive, is fenced out) and never starts a second copy of a saga this engine already runs.
//! [`Engine::recovery_status`](crate::Engine::recovery_status) says what the passes did.
//!
//! Before an upgrade, [`Engine::quiesce`](crate::Engine::quiesce) refuses new sagas
//! ([`EngineError::Quiescing`](crate::EngineError::Quiescing)) and reports those still running (every saga
//! created before it is among them); [`Engine::quiesced`](crate::Engine::quiesced) resolves once none runs
//! and no recovery pass is under way; [`Engine::quiesce_status`](crate::Engine::quiesce_status) reports
//! meanwhile. Sagas handed to the engine while it quiesces (a reassignment) are still recovered: they are
//! existing work, and they show up in the status until they come to rest.
//!
//! # 8. Taking over the sagas plain steno left
//!
//! When Nexus's plain steno executor has stopped for good under an executor id (the release after the last
//! saga moved), start that id's engine once with
//! [`EngineConfig::recovery_scope`](crate::EngineConfig) = [`ratchet_store::RecoveryScope::PlainStenoToo`]:
//! recovery then also claims the plain steno sagas of the names it registers, and marks them
//! `driven_by_ratchet` in the claiming statement (`omicron_upgrade.rs` does this). Never while a plain steno
//! executor may still drive sagas under that id: both would run them.
//!
//! # What stays different from Nexus's stack, and what Nexus must change
//!
//! - Connections: ratchet's own pool (the saga log's) is bb8 over diesel-async's `AsyncPgConnection`;
//!   Nexus's is a qorb pool of `async-bb8-diesel` connections (over diesel's synchronous `PgConnection`).
//!   A database node may run on either: a [`DbNode<S, C>`](crate::DbNode) whose `C` is
//!   `async_bb8_diesel::Connection<C>` (ratchet-store's `async-bb8-diesel` feature) gets Nexus's connection
//!   type in its phases, so datastore functions taking `&async_bb8_diesel::Connection<C>` and bodies in
//!   Nexus's idiom (`execute_async(tx.conn())`) run unchanged inside its commit; the connections come from
//!   the pool the host registers for `C` ([`EngineBuilder::node_pool`](crate::EngineBuilder::node_pool): a
//!   bb8 pool of async-bb8-diesel's `ConnectionManager` today; a qorb pool needs its own
//!   [`ratchet_store::NodePool`] impl). The saga log still needs a diesel-async pool on the same database
//!   ([`ratchet_store::session_manager`] builds one under ratchet's session limits), passed to
//!   [`EngineBuilder::with_pool`](crate::EngineBuilder::with_pool) or built from the URL.
//! - Two executors, one executor id: while Nexus still runs some sagas on its own steno executor, both
//!   recover the unfinished sagas of that id, and nothing fences one from the other: Nexus's store checks no
//!   generation (its state update filters on `current_sec` alone, its event inserts on nothing). A saga's
//!   name cannot tell them apart (in the release that moves a saga, both register its name); the column
//!   `saga.driven_by_ratchet` does. ratchet sets it when it creates a saga and in every statement with which
//!   it claims one (recovery, adoption, retry-unwind); Nexus's store never names it, so its rows are FALSE.
//!   ratchet's recovery takes only its own sagas (`driven_by_ratchet`, or `definition_version` set: created
//!   by ratchet before the column existed) unless told to take plain steno ones too (step 8). Nexus's
//!   saga-recovery listing (`saga_list_recovery_candidates_batched`) **must** add exactly this predicate
//!   ([`ratchet_store::NEXUS_RECOVERY_PREDICATE`]):
//!
//!   ```sql
//!   AND NOT driven_by_ratchet
//!   ```
//!
//!   (in diesel: `.filter(dsl::driven_by_ratchet.eq(false))`), so the listing becomes
//!   `saga_state IN ('running', 'unwinding') AND current_sec = $sec_id AND NOT driven_by_ratchet`.
//!   Otherwise Nexus finds a ratchet saga it has no actions for (or, with a shared name, runs it a second
//!   time under plain steno) and that write lands. `crates/engine/tests/recovery_periodic.rs` checks, with both
//!   kinds in flight under one executor id, that each executor takes exactly its own.
//! - The `stuck` state and `undo_failed` events: Omicron's `SagaState` enum decodes `running`, `unwinding`,
//!   `done` and `abandoned` only, and one row with another label fails a whole listing (the fault-management
//!   analysis task lists every saga not `done`; omdb lists them all); its conversion of a `saga_node_event`
//!   row accepts `started`, `undo_started` and `undo_finished` without data and `succeeded` and `failed` with
//!   data, and refuses every `undo_failed` row (steno 0.4, which Omicron pins). With
//!   [`EngineConfig::omicron_readable_log`](crate::EngineConfig) on, ratchet records a stuck saga
//!   `unwinding` with `stuck_node`, `stuck_reason` and `time_stuck` set, and a failed undo in
//!   `saga_undo_failure` instead of `saga_node_event`. ratchet's readers (the operator listing and counts,
//!   the diagnosis, retry-unwind, abandon, the CLI's `sagas` commands, the matrix's checks) see such a saga
//!   `stuck` ([`ratchet_store::EFFECTIVE_STATE_SQL`]); nothing of ratchet's resumes it or writes for it
//!   (the fence and every recovery listing require `time_stuck IS NULL`); Nexus's recovery listing leaves it
//!   alone (it is ratchet's); `sagas_reassign_sec` moves it like any unfinished saga, and the new owner's
//!   ratchet still sees it stuck. Omicron's orphan abandonment (`sagas_abandon_orphans`) would abandon it
//!   like any unfinished saga of an expunged executor: what it does to a plain steno saga left unwinding.
//!   `crates/engine/tests/omicron_readable.rs` reads every row with Omicron's shapes. The mode is off by
//!   default: off, the `stuck` label says what it is to any SQL reader (psql, dashboards), which a host whose
//!   log no Omicron code reads wants; Nexus must turn it on.
//! - A saga's DAG (`saga_dag`) holds, beside steno's fields, ratchet's typed nodes' arguments under
//!   `ratchet_node_args`, which decoding it as a steno `SagaDag` ignores; its parameters are the saga's own
//!   (only sagas an earlier ratchet release created show them inside an envelope, `{"params": …, "nodes":
//!   …}`). `ratchet_store::saga_history` and [`ratchet_store::stuck_diagnosis`] read both.
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
//!   takes `ActionContext<StenoSaga<S>>`, one saga type per saga definition (step 4): the alias moves from
//!   Nexus's shared module to each saga's.
//! - Database: ratchet is tested on PostgreSQL; `docs/COCKROACHDB.md` lists every construct whose behaviour
//!   differs on CockroachDB and what ratchet would do there.
//! - Schema names: Nexus qualifies its tables as `omicron.public.saga`; ratchet's SQL names them unqualified,
//!   in the connection's current schema.
