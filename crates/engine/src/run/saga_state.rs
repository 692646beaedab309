//! The runtime state of one saga ([`SagaCx`]): what every action of the saga sees through steno's
//! `ActionContext::user_data` — its id, the engine's shared state, its log handle, the host's context, its
//! node ids by path, its typed nodes' arguments, and what this engine knows of its nodes' commits. Also the
//! steno saga type's binding of that state ([`StenoSaga`]'s `SagaType` impl).
//!
//! # Parameters as steno holds them
//!
//! steno's parameters of a saga are the saga's own (`S::Params`, and a subsaga's own inside it), so that a
//! plain steno action reads them as in steno, with `ActionContext::saga_params::<P>()`. The typed nodes'
//! arguments, which a plain action never reads, are kept beside them ([`NodeInputs`]): in the persisted DAG
//! under [`ratchet_store::NODE_ARGS_KEY`], written in the saga's own `INSERT` and read back on recovery from
//! the row that is loaded anyway. Sagas an earlier release created hold both in an envelope (`StenoParams`,
//! in the saga's and each subsaga's parameters): they are read in that shape to the end of their lives.
//!
//! `SagaCx<S>` derefs to the host's context (`S::Context`), so a plain action written against steno's
//! `ActionContext` reads `ctx.user_data().field` as it did.

use crate::engine::shared::EngineShared;
use crate::saga::definition::{SagaDef, StenoParams, StenoSaga};
use ratchet_store::SagaLogHandle;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use uuid::Uuid;

impl<S: SagaDef> steno::SagaType for StenoSaga<S> {
    type ExecContextType = SagaCx<S>;
}

/// The per-saga context every action of one saga sees.
pub struct SagaCx<S: SagaDef> {
    pub(crate) saga_id: Uuid,
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) log: SagaLogHandle,
    pub(crate) app: Arc<S::Context>,
    /// Action node path to steno node id.
    pub(crate) node_ids: BTreeMap<String, u32>,
    /// Where the typed nodes' arguments are, and the shape of steno's parameters.
    pub(crate) inputs: NodeInputs,
    /// The path of every plain action node labelled otherwise (labels one node has), by label: a plain
    /// action knows itself only by its label.
    pub(crate) paths_by_label: BTreeMap<String, String>,
    /// For a saga this engine took over from a log (recovery, adoption, retry-unwind): the nodes that log
    /// shows `started`. Empty for a saga created here.
    pub(crate) started_in_log: HashSet<u32>,
    /// The database nodes for which this engine sent a `COMMIT` that may have landed (see
    /// [`SagaCx::commit_may_exist`]).
    pub(crate) commit_sent: std::sync::Mutex<HashSet<u32>>,
    /// The nodes (database nodes, and compensations) one of whose `COMMIT`s had an unknown outcome: the set
    /// is only added to, whatever later attempts meet (see `commit_outcome.rs`).
    pub(crate) commit_unknown: std::sync::Mutex<HashSet<u32>>,
    /// Whether this engine took the saga over from the database (recovery, adoption, retry-unwind), so that
    /// a node start may follow a crash in the same node ([`crate::EngineConfig::start_limit`]).
    pub(crate) resumed: bool,
    /// Held by a database node's transaction of this saga from before `BEGIN` to its end: the saga's
    /// database transactions run one at a time (see [`SagaCx::db_turn`]).
    pub(crate) db_turn: tokio::sync::Mutex<()>,
    /// The saga's logger: the host's, or one bridged into `tracing`, with `saga_id` and `saga_name` attached
    /// (a node's phases add their path: [`crate::PrepareCx::log`]).
    pub(crate) logger: slog::Logger,
}

/// Where a saga's typed nodes find their arguments, which also says what steno holds as its parameters.
#[derive(Debug)]
pub(crate) enum NodeInputs {
    /// steno's parameters are the saga's own (a subsaga's own inside it); the arguments are these, by path
    /// (empty for a saga without typed nodes, and for one plain steno created).
    Beside(BTreeMap<String, serde_json::Value>),
    /// A saga an earlier release created: steno's parameters (the saga's, and each subsaga's) are a
    /// `StenoParams` envelope holding the parameters and the arguments of that saga's own nodes.
    InEnvelope,
}

impl NodeInputs {
    /// How a persisted DAG (a saga row's) holds its arguments: beside steno's parameters under
    /// [`ratchet_store::NODE_ARGS_KEY`]; in the envelope when it lacks that key and its parameters have the
    /// envelope's shape (exactly the fields `params` and `nodes`, `nodes` an object: every saga an earlier
    /// release created had one, for its action nodes); otherwise none (plain steno created it, or it has no
    /// typed nodes). Parameters of a plain saga that themselves have exactly that shape would be misread:
    /// its plain actions would still see them whole through `saga_params`, and only typed nodes, which
    /// such a saga lacks, read the envelope.
    pub(crate) fn of_persisted(dag: &serde_json::Value) -> NodeInputs {
        if let Some(args) = ratchet_store::node_args(dag) {
            return NodeInputs::Beside(args);
        }
        let envelope = ratchet_store::saga_params(dag)
            .and_then(serde_json::Value::as_object)
            .is_some_and(|fields| {
                fields.len() == 2
                    && fields.contains_key("params")
                    && fields
                        .get("nodes")
                        .is_some_and(serde_json::Value::is_object)
            });
        if envelope {
            NodeInputs::InEnvelope
        } else {
            NodeInputs::Beside(BTreeMap::new())
        }
    }
}

impl<S: SagaDef> SagaCx<S> {
    /// The parameters of the saga node `path` belongs to (a subsaga's, inside one) and the node's own
    /// arguments, for an action running as that node.
    pub(crate) fn node_input(
        &self,
        ctx: &steno::ActionContext<StenoSaga<S>>,
        path: &str,
    ) -> Result<(serde_json::Value, serde_json::Value), String> {
        let missing = || format!("no arguments recorded for node {path:?}");
        match &self.inputs {
            NodeInputs::Beside(args) => {
                let params = ctx
                    .saga_params::<serde_json::Value>()
                    .map_err(|e| format!("saga parameters do not decode: {e}"))?;
                let args = args.get(path).cloned().ok_or_else(missing)?;
                Ok((params, args))
            }
            NodeInputs::InEnvelope => {
                let envelope: StenoParams<serde_json::Value> = ctx
                    .saga_params()
                    .map_err(|e| format!("saga parameters do not decode: {e}"))?;
                let args = envelope.nodes.get(path).cloned().ok_or_else(missing)?;
                Ok((envelope.params, args))
            }
        }
    }

    /// The path of the action node labelled `label` (its label, when no other path is known).
    pub(crate) fn plain_path(&self, label: &str) -> String {
        self.paths_by_label
            .get(label)
            .cloned()
            .unwrap_or_else(|| label.to_owned())
    }

    /// Whether a commit (or compensation) record of `node_id` may already exist, so that a forward attempt
    /// must look for one before it commits (a replay).
    ///
    /// Only an executor that owned the saga can have written a record, and a database node's commit record is
    /// written in the same transaction as the node's `started` event (only its `succeeded` is ever withdrawn,
    /// by a compensation right after the commit). So a record can exist only for a node whose log, as loaded
    /// when this engine took the saga over, shows it `started` (any commit by an earlier owner landed before
    /// the hand-over, or was fenced out); or one for which this engine sent a `COMMIT` the server did not
    /// refuse: it committed (steno's repeat injection, a failure after the commit), or its reply was lost.
    /// An attempt rolled back before its `COMMIT`, or whose `COMMIT` the server answered with an error (a
    /// serialization failure), wrote nothing. Every other attempt skips the lookup. This matters under
    /// SERIALIZABLE: the lookup reads the index page the saga's records share, so sibling nodes committing in
    /// parallel each read the page the other writes, and PostgreSQL aborts one of them (40001), whose retry
    /// would look again. Should another executor
    /// have adopted the saga, the fence check that precedes every write stops this one; and the record's
    /// primary key refuses a second commit record in any case.
    pub(crate) fn commit_may_exist(&self, node_id: u32) -> bool {
        self.started_in_log.contains(&node_id)
            || self.commits_sent().contains(&node_id)
            || relock(&self.commit_unknown).contains(&node_id)
    }

    /// Notes that a `COMMIT` of `node_id`'s transaction had an unknown outcome: every later attempt looks
    /// for its record first, whatever it meets in between.
    pub(crate) fn note_commit_unknown(&self, node_id: u32) {
        relock(&self.commit_unknown).insert(node_id);
    }

    /// Waits for this saga's turn to run a database transaction, and holds it while the guard lives.
    ///
    /// Parallel database nodes of one saga touch the same rows and index pages (four disks of one project,
    /// their instance), so under SERIALIZABLE their overlapping transactions abort each other: run side by
    /// side, instance-create's four `create_disk_record` and four `finalize_disk` transactions cost three
    /// serialization failures per saga, each followed by a backoff (`ratchet bench`, concurrency 1; the
    /// plain-steno baseline, whose `started` writes happen to stagger its siblings, lost under one). One
    /// at a time, each is a millisecond or two, and none aborts another. Parallelism between sagas, and of
    /// external calls within one, is untouched. The turn is taken before a pool connection, so a waiting
    /// node holds none.
    pub(crate) async fn db_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.db_turn.lock().await
    }

    /// Notes that a `COMMIT` of `node_id`'s transaction is about to be sent.
    pub(crate) fn note_commit_sent(&self, node_id: u32) {
        self.commits_sent().insert(node_id);
    }

    /// Notes that the server refused `node_id`'s `COMMIT` (it rolled the transaction back).
    pub(crate) fn note_commit_refused(&self, node_id: u32) {
        self.commits_sent().remove(&node_id);
    }

    /// A poisoned lock only means a node's attempt panicked while holding it; every critical section is one
    /// insert, removal or lookup, so the set is still valid.
    fn commits_sent(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        relock(&self.commit_sent)
    }
}

/// Locks one of [`SagaCx`]'s sets, recovering from poisoning (every critical section is one insert, removal
/// or lookup, so the set is valid even if a holder panicked).
fn relock(set: &std::sync::Mutex<HashSet<u32>>) -> std::sync::MutexGuard<'_, HashSet<u32>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: SagaDef> fmt::Debug for SagaCx<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaCx")
            .field("saga", &S::NAME)
            .field("saga_id", &self.saga_id)
            .finish_non_exhaustive()
    }
}

impl<S: SagaDef> SagaCx<S> {
    /// The saga's id.
    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// **Unchecked**: the engine's connection pool, for plain steno actions
    /// ([`NodeRegistry::unchecked_steno_action`](crate::NodeRegistry::unchecked_steno_action)) only, which manage their own connections and transactions the
    /// way code did before ratchet. A typed node never needs it and must not use it: a write through it is
    /// outside the node's transaction, so nothing makes it exactly-once or compensates it (the class of bug
    /// ratchet exists to rule out). Typed nodes get no pool from the engine: only this escape hatch, whose
    /// name says what it is.
    pub fn unchecked_pool(&self) -> &ratchet_store::DbPool {
        &self.shared.pool
    }

    /// The application context of this saga: the one it was created with
    /// ([`Engine::create_with_context`](crate::Engine::create_with_context)), else the engine's for its
    /// saga type. `SagaCx` also derefs to it.
    pub fn context(&self) -> &S::Context {
        &self.app
    }
}

/// A plain steno action reads the host's context through `ctx.user_data()` as it did under steno:
/// `ctx.user_data().field`.
impl<S: SagaDef> Deref for SagaCx<S> {
    type Target = S::Context;

    fn deref(&self) -> &S::Context {
        &self.app
    }
}

/// The saga's parameters, for a plain steno action, whatever created the saga: `ctx.saga_params()` does the
/// same for every saga but those an earlier release of ratchet created, whose parameters are in an envelope
/// with the typed nodes' arguments (see the module's docs); this reads those too. An action that never meets
/// such a saga needs only `saga_params`.
pub fn steno_action_params<S: SagaDef>(
    ctx: &steno::ActionContext<StenoSaga<S>>,
) -> Result<S::Params, steno::ActionError> {
    match ctx.user_data().inputs {
        NodeInputs::InEnvelope => Ok(ctx.saga_params::<StenoParams<S::Params>>()?.params),
        NodeInputs::Beside(_) => ctx.saga_params::<S::Params>(),
    }
}
