//! Running sagas: creating one ([`Engine::create`]), running it ([`PreparedSaga`]), and following any
//! started saga (created or resumed) to rest.
//!
//! # Design
//!
//! [`Engine::create`] builds the saga's DAG, registers the saga with the SEC's store ([`Engine::saga_cx`]:
//! which nodes are database nodes, whose `started` event their own transaction writes) and has steno record
//! it durably; nothing runs until [`PreparedSaga::run`]. Every started saga, created or resumed, is then
//! followed by [`Engine::finish`], which waits for the first of steno's result, a fence, or the engine's
//! shutdown, and turns it into a [`SagaOutcome`].
//!
//! # Invariants
//!
//! - A saga is in [`Engine::live`] from before its row exists until it comes to rest (or is fenced, or
//!   interrupted): recovery never claims a saga this engine is creating or driving.
//! - A fenced saga's outcome is [`SagaOutcome::Fenced`], whatever steno concluded in memory: the executor that
//!   adopted the saga owns its outcome.
//! - Every outcome is counted once and recorded in the ring of recent outcomes, and the saga's registration
//!   with the store is dropped.

use crate::engine::outcome::SagaOutcome;
use crate::engine::sec::{Sec, lock};
use crate::engine::{Engine, Registered};
use crate::error::EngineError;
use crate::observe::RecentOutcome;
use crate::run::saga_state::{NodeInputs, SagaCx};
use crate::saga::builder::SagaBuilder;
use crate::saga::definition::{NodeKind, SagaDef};
use crate::shutdown::panic_message;
use futures::FutureExt;
use ratchet_store::{DagNodeKind, PersistedDag, SagaLogHandle, SagaOwner, SagaRegistration};
use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steno::{SagaDag, SagaId, SagaResultErr};
use uuid::Uuid;

/// What the engine needs to bring one started saga to rest.
pub(crate) struct StartedSaga {
    pub(super) id: Uuid,
    pub(super) name: &'static str,
    started: Instant,
    sec: Arc<Sec>,
    log: SagaLogHandle,
    /// Action nodes' paths by steno node index: steno names a failed node by its name, which repeats
    /// across the instances of a subsaga.
    paths: BTreeMap<u32, String>,
    /// The paths under which a succeeded saga's outcome gives node outputs, by steno node index: every
    /// action node's, every constant's and subsaga entry's ([`output_paths`]).
    output_paths: BTreeMap<u32, String>,
}

impl StartedSaga {
    /// A saga this engine is about to start (created or resumed): its clock starts now.
    pub(super) fn new(
        id: Uuid,
        name: &'static str,
        sec: Arc<Sec>,
        log: SagaLogHandle,
        nodes: &PersistedDag,
    ) -> StartedSaga {
        StartedSaga {
            id,
            name,
            started: Instant::now(),
            sec,
            log,
            paths: nodes.action_paths(),
            output_paths: output_paths(nodes),
        }
    }
}

/// Where a saga the engine is about to drive comes from (for [`Engine::saga_cx`]).
pub(super) struct SagaOrigin<'a, S: SagaDef> {
    /// The log a resumed saga was loaded from; `None` for a saga created here.
    pub(super) resumed_from: Option<&'a [steno::SagaNodeEvent]>,
    /// Where its typed nodes' arguments are (for a saga created here, the store writes them with its row).
    pub(super) inputs: NodeInputs,
    /// The saga's own host context; `None` for the engine's.
    pub(super) context: Option<Arc<S::Context>>,
}

/// A saga created (durably) but not yet started: arm failpoints or steno injections, then run it.
pub struct PreparedSaga {
    engine: Engine,
    pub id: Uuid,
    /// steno's future for the saga's result. In a mutex only so that `PreparedSaga` is `Sync` (a boxed future
    /// is `Send` but not `Sync`), so that a `&PreparedSaga` can be held across an `.await`; it is never locked
    /// while contended.
    future: Mutex<futures::future::BoxFuture<'static, steno::SagaResult>>,
    tracked: StartedSaga,
    dag: Arc<SagaDag>,
    /// Every node's path and kind, in steno's node order.
    nodes: Vec<(String, NodeKind)>,
    /// Action nodes' steno node ids, by path.
    node_ids: BTreeMap<String, u32>,
}

// `PreparedSaga` stays `Send + Sync`: callers hold a `&PreparedSaga` across `.await`s (steno injections) in
// futures that must be `Send`.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PreparedSaga>();
};

impl PreparedSaga {
    /// The saga's nodes in DAG order (steno's node order: insertion order), by path, with their kinds; the
    /// start and end nodes are left out. A subsaga's nodes come before the subsaga's own entry
    /// ([`NodeKind::Subsaga`], its output), and after its parameters' constant (see [`SagaBuilder::subsaga`]).
    pub fn nodes(&self) -> Vec<(String, NodeKind)> {
        self.nodes.clone()
    }

    /// steno's node index of the node at `path` (for `saga_inject_*`): an action node anywhere (by path), or
    /// a constant or subsaga of the top level (by name).
    pub fn node_index(&self, path: &str) -> Result<steno::SagaNodeId, EngineError> {
        Ok(steno::SagaNodeId::from(
            self.petgraph_index(path)?.index() as u32
        ))
    }

    fn petgraph_index(&self, path: &str) -> Result<petgraph::graph::NodeIndex, EngineError> {
        match self.node_ids.get(path) {
            Some(index) => Ok(petgraph::graph::NodeIndex::new(*index as usize)),
            None if path.contains(crate::saga::builder::PATH_SEPARATOR) => Err(EngineError::Steno(
                format!("the saga has no action node at path {path:?}"),
            )),
            None => self
                .dag
                .get_index(path)
                .map_err(|e| EngineError::Steno(e.to_string())),
        }
    }

    /// Replaces the action of the node at `path` with an error (steno's own injection: the action body never
    /// runs).
    pub async fn inject_error(&self, path: &str) -> Result<(), EngineError> {
        let index = self.petgraph_index(path)?;
        let id = steno_id(self.id);
        self.tracked
            .sec
            .call("saga_inject_error", |sec| async move {
                sec.saga_inject_error(id, index).await
            })
            .await
    }

    /// Replaces the undo of the node at `path` with an error (steno's own injection: the undo body never
    /// runs), for a plain steno action as for a typed node: should the saga unwind past the node, it ends
    /// stuck, its diagnosis naming the node.
    pub async fn inject_error_undo(&self, path: &str) -> Result<(), EngineError> {
        let index = self.petgraph_index(path)?;
        let id = steno_id(self.id);
        self.tracked
            .sec
            .call("saga_inject_error_undo", |sec| async move {
                sec.saga_inject_error_undo(id, index).await
            })
            .await
    }

    /// Runs the action of the node at `path` `action` times and its undo `undo` times (steno's repeat
    /// injection).
    pub async fn inject_repeat(
        &self,
        path: &str,
        action: u32,
        undo: u32,
    ) -> Result<(), EngineError> {
        let index = self.petgraph_index(path)?;
        let repeat = steno::RepeatInjected {
            action: std::num::NonZeroU32::new(action.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
            undo: std::num::NonZeroU32::new(undo.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        };
        let id = steno_id(self.id);
        self.tracked
            .sec
            .call("saga_inject_repeat", |sec| async move {
                sec.saga_inject_repeat(id, index, repeat).await
            })
            .await
    }

    /// Starts the saga and waits for it to come to rest. Refused once the engine is shutting down (the saga
    /// stays `running` in the database, for recovery).
    pub async fn run(self) -> Result<SagaOutcome, EngineError> {
        let engine = self.engine;
        engine.refuse_if_shutting_down()?;
        engine.start_in_steno(&self.tracked).await?;
        let future = self
            .future
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(engine.finish(self.tracked, future).await)
    }
}

pub(crate) fn steno_id(id: Uuid) -> SagaId {
    newtype_uuid::GenericUuid::from_untyped_uuid(id)
}

impl Engine {
    /// Creates saga `S` with `params`: builds its DAG and records it durably. Nothing runs until
    /// [`PreparedSaga::run`]. Refused once the engine is shutting down or quiescing ([`Engine::quiesce`]).
    /// Its actions see the engine's context for `S` (the one
    /// [`EngineBuilder::register`](crate::EngineBuilder::register) was given).
    pub async fn create<S: SagaDef>(&self, params: S::Params) -> Result<PreparedSaga, EngineError> {
        self.create_built::<S>(params, None).await
    }

    /// [`Engine::create`], with a context of this saga's own for its actions (steno's `saga_create` takes
    /// one per saga; trip booking makes one per trip). The context lives in memory only: a saga recovered
    /// after a restart (or adopted, or re-driven) sees the engine's context for `S`.
    pub async fn create_with_context<S: SagaDef>(
        &self,
        params: S::Params,
        context: Arc<S::Context>,
    ) -> Result<PreparedSaga, EngineError> {
        self.create_built::<S>(params, Some(context)).await
    }

    async fn create_built<S: SagaDef>(
        &self,
        params: S::Params,
        context: Option<Arc<S::Context>>,
    ) -> Result<PreparedSaga, EngineError> {
        self.refuse_if_shutting_down()?;
        let mut builder = SagaBuilder::<S>::new();
        S::build(&params, &mut builder).map_err(|message| EngineError::BadParams {
            saga: S::NAME.to_owned(),
            message,
        })?;
        let built = builder.build_dag().map_err(|message| EngineError::BadDag {
            saga: S::NAME.to_owned(),
            message,
        })?;
        // steno's parameters are the saga's own: a plain action reads them with `saga_params`. The typed
        // nodes' arguments go beside them (see `NodeInputs`).
        let steno_params = serde_json::to_value(&params).map_err(|e| EngineError::BadParams {
            saga: S::NAME.to_owned(),
            message: e.to_string(),
        })?;
        let dag = Arc::new(SagaDag::new(built.dag, steno_params));
        self.create_dag_inner::<S>(dag, built.node_args, Some(built.nodes), context)
            .await
    }

    /// Creates saga `S` from a DAG the caller built with steno's own `DagBuilder` (as Nexus's
    /// `make_saga_dag` does), as it is: its nodes, names and labels are kept. Its actions must be the ones
    /// `S` registers (its [`declare_saga_nodes!`](crate::declare_saga_nodes) list), the DAG must carry `S`'s
    /// name, and its parameters must decode as `S::Params`; otherwise nothing is written. Its plain steno
    /// actions run on the unchecked path, as under steno, and read their parameters with `saga_params`; its
    /// typed nodes (laid out with `typed`, [`TypedNodes`](crate::TypedNodes); `TypedNodes::new()` when it
    /// has none) have every guarantee they have in a DAG [`SagaBuilder`] lays out. `context` is the saga's
    /// own (see [`Engine::create_with_context`]), or the engine's for `S` when `None`.
    ///
    /// A plain action node is known by its name (its label, for people, is kept in the DAG): the store's
    /// DAG reader ([`PersistedDag`]) gives an action node its label as its path only when the label is a
    /// path ratchet gave it.
    pub async fn create_from_dag<S: SagaDef>(
        &self,
        dag: Arc<SagaDag>,
        typed: crate::TypedNodes<S>,
        context: Option<Arc<S::Context>>,
    ) -> Result<PreparedSaga, EngineError> {
        self.refuse_if_shutting_down()?;
        if dag.saga_name().to_string() != S::NAME {
            return Err(EngineError::BadDag {
                saga: S::NAME.to_owned(),
                message: format!(
                    "the DAG is saga {:?}'s (recovery finds a saga's definition by that name)",
                    dag.saga_name().to_string()
                ),
            });
        }
        let serialized = serde_json::to_value(dag.as_ref()).map_err(|e| EngineError::BadDag {
            saga: S::NAME.to_owned(),
            message: format!("the DAG does not serialize: {e}"),
        })?;
        let params = ratchet_store::saga_params(&serialized)
            .cloned()
            .unwrap_or_default();
        serde_json::from_value::<S::Params>(params).map_err(|e| EngineError::BadParams {
            saga: S::NAME.to_owned(),
            message: format!("the DAG's parameters do not decode: {e}"),
        })?;
        let args = typed.into_args();
        let persisted = PersistedDag::read(&serialized);
        for path in args.keys() {
            let holding = persisted
                .action_nodes()
                .filter(|(_, other, _)| other == path)
                .count();
            if holding != 1 {
                return Err(EngineError::BadDag {
                    saga: S::NAME.to_owned(),
                    message: format!(
                        "typed node {path:?}'s path is that of {holding} action nodes of the DAG: \
                         exactly one (its own) may have it"
                    ),
                });
            }
        }
        self.create_dag_inner::<S>(dag, args, None, context).await
    }

    /// Registers and records a saga whose DAG is built. `nodes`: every node by path and kind, as the builder
    /// laid them out; `None` for a DAG built elsewhere (they are then read from the DAG).
    async fn create_dag_inner<S: SagaDef>(
        &self,
        dag: Arc<SagaDag>,
        node_args: BTreeMap<String, serde_json::Value>,
        listed: Option<Vec<(String, NodeKind)>>,
        context: Option<Arc<S::Context>>,
    ) -> Result<PreparedSaga, EngineError> {
        let registered = self.registered::<S>()?;
        let nodes = read_dag(&dag);
        if let Some((_, path, action)) = nodes
            .action_nodes()
            .find(|(_, _, action)| !registered.actions.contains(action))
        {
            return Err(EngineError::UnknownAction {
                saga: S::NAME.to_owned(),
                node: path.to_owned(),
                action: action.to_owned(),
            });
        }
        let listed = listed.unwrap_or_else(|| kinds_of(&nodes, &registered.db_actions));
        let id = Uuid::new_v4();
        let owner = SagaOwner {
            sec_id: self.sec_id,
            generation: 1,
        };
        let sec = Arc::clone(&self.sec);
        let (cx, log) = self.saga_cx::<S>(
            &registered,
            &sec,
            id,
            owner,
            &nodes,
            SagaOrigin {
                resumed_from: None,
                inputs: NodeInputs::Beside(node_args),
                context,
            },
        );
        let dag_for_steno = Arc::clone(&dag);
        // Live before its row exists, and no claim of this engine runs until the row is there: a recovery
        // never claims (and so fences) it.
        let creating = self.recovering.read().await;
        {
            // Checked and entered under one lock: a quiesce either reports this saga or refuses it.
            let mut live = lock(&self.live);
            if let Err(refused) = self.refuse_if_quiescing() {
                drop(live);
                sec.store.unregister(steno_id(id));
                return Err(refused);
            }
            live.insert(id, S::NAME.to_owned());
        }
        let created = sec
            .call("saga_create", |client| async move {
                client
                    .saga_create(
                        steno_id(id),
                        Arc::new(cx),
                        Arc::clone(&dag_for_steno),
                        Arc::clone(&registered.registry),
                    )
                    .await
            })
            .await;
        let future = created.map_err(|error| {
            sec.store.unregister(steno_id(id));
            self.release_live(&id);
            if self.is_shutting_down() {
                EngineError::ShuttingDown
            } else {
                error
            }
        })?;
        drop(creating);
        self.shared.counters.started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(saga_id = %id, saga = S::NAME, "saga created");
        Ok(PreparedSaga {
            engine: self.clone(),
            id,
            future: Mutex::new(future),
            tracked: StartedSaga::new(id, S::NAME, sec, log, &nodes),
            dag,
            nodes: listed,
            node_ids: nodes.action_ids_by_path(),
        })
    }

    /// Creates and runs saga `S` to rest.
    pub async fn run<S: SagaDef>(
        &self,
        params: S::Params,
    ) -> Result<(Uuid, SagaOutcome), EngineError> {
        let saga = self.create::<S>(params).await?;
        let id = saga.id;
        Ok((id, saga.run().await?))
    }

    /// Waits for a saga this engine resumed (recovery, adoption, retry-unwind) to come to rest; `None` if it
    /// did not resume it.
    pub async fn wait(&self, id: Uuid) -> Option<SagaOutcome> {
        let mut receiver = lock(&self.running).get(&id).cloned()?;
        receiver
            .wait_for(|o| o.is_some())
            .await
            .ok()
            .and_then(|outcome| outcome.clone())
    }

    /// The per-saga context and its registration with `sec`'s store. `nodes`: the saga's DAG as the store
    /// reads it ([`read_dag`]). `origin`: where the saga comes from ([`SagaOrigin`]).
    ///
    /// Nodes are known by their paths (an action node's steno label, see [`SagaBuilder::subsaga`]), not by
    /// steno's names, which repeat across the instances of one subsaga; a node is a database node (its
    /// `started` event held by the store for its own transaction to write) when its action is registered as
    /// one.
    pub(super) fn saga_cx<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        sec: &Sec,
        id: Uuid,
        owner: SagaOwner,
        nodes: &PersistedDag,
        origin: SagaOrigin<'_, S>,
    ) -> (SagaCx<S>, SagaLogHandle) {
        let SagaOrigin {
            resumed_from,
            inputs,
            context,
        } = origin;
        let db_nodes = nodes
            .action_nodes()
            .filter(|(_, _, action_name)| registered.db_actions.contains(action_name))
            .map(|(index, _, _)| index)
            .collect();
        let names = nodes
            .nodes()
            .map(|(index, node)| (index, node.path.clone()))
            .collect();
        let end_node = nodes.end_node();
        let nodes_without_action = nodes
            .nodes()
            .filter(|(_, node)| node.kind.is_without_action() && node.kind != DagNodeKind::End)
            .map(|(index, _)| index)
            .collect();
        let log = sec.store.register(
            steno_id(id),
            SagaRegistration {
                owner,
                definition_version: S::VERSION,
                db_nodes,
                node_names: names,
                end_node,
                nodes_without_action,
                undo_failed_logged: resumed_from.is_some_and(|events| {
                    events
                        .iter()
                        .any(|e| matches!(e.event_type, steno::SagaNodeEventType::UndoFailed(_)))
                }),
                node_args: match &inputs {
                    NodeInputs::Beside(args) if resumed_from.is_none() && !args.is_empty() => {
                        Some(serde_json::Value::Object(
                            args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        ))
                    }
                    _ => None,
                },
            },
        );
        let cx = SagaCx {
            logger: self.shared.host_log.saga_logger(id, S::NAME),
            saga_id: id,
            shared: Arc::clone(&self.shared),
            log: log.clone(),
            app: context.unwrap_or_else(|| Arc::clone(&registered.app)),
            node_ids: nodes.action_ids_by_path(),
            inputs,
            paths_by_label: nodes.paths_by_label(),
            started_in_log: resumed_from
                .into_iter()
                .flatten()
                .filter(|e| matches!(e.event_type, steno::SagaNodeEventType::Started))
                .map(|e| u32::from(e.node_id))
                .collect(),
            commit_sent: Mutex::new(HashSet::new()),
            commit_unknown: Mutex::new(HashSet::new()),
            resumed: resumed_from.is_some(),
            db_turn: tokio::sync::Mutex::new(()),
        };
        (cx, log)
    }

    /// Tells steno to start a created or resumed saga.
    pub(super) async fn start_in_steno(&self, tracked: &StartedSaga) -> Result<(), EngineError> {
        let id = steno_id(tracked.id);
        let started = tracked
            .sec
            .call(
                "saga_start",
                |client| async move { client.saga_start(id).await },
            )
            .await;
        if let Err(error) = started {
            tracked.sec.store.unregister(steno_id(tracked.id));
            return Err(error);
        }
        tracked.sec.unresolved.fetch_add(1, Ordering::SeqCst);
        lock(&self.live).insert(tracked.id, tracked.name.to_owned());
        Ok(())
    }

    /// Waits for steno's result (or a fence, or the engine's shutdown) and turns it into an outcome.
    pub(super) async fn finish(
        &self,
        tracked: StartedSaga,
        future: futures::future::BoxFuture<'static, steno::SagaResult>,
    ) -> SagaOutcome {
        let StartedSaga {
            id,
            name,
            started,
            sec,
            log,
            paths,
            output_paths,
        } = tracked;
        let fence = Arc::clone(log.fence());
        let mut outcome = tokio::select! {
            biased;
            result = AssertUnwindSafe(future).catch_unwind() => {
                sec.unresolved.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(result) => outcome_of(result, &paths, &output_paths, &log),
                    Err(panic) => {
                        let reason = format!(
                            "steno's executor dropped the saga ({}); it stays unfinished in the database",
                            panic_message(panic.as_ref())
                        );
                        tracing::error!(saga_id = %id, %reason, "saga interrupted");
                        SagaOutcome::Interrupted { reason }
                    }
                }
            }
            () = fence.raised() => SagaOutcome::Fenced,
            () = self.shared.shutdown.stopped() => SagaOutcome::Interrupted {
                reason: "the engine shut down before the saga came to rest; it stays unfinished in the \
                         database for the next start to recover"
                    .to_owned(),
            },
        };
        if fence.is_raised() {
            // Some write of this executor was refused: whatever steno concluded in memory is not what the
            // database holds. The executor that adopted the saga owns its outcome.
            outcome = SagaOutcome::Fenced;
        }
        let host = &self.shared.host_log;
        match &outcome {
            SagaOutcome::Fenced => host.event(
                slog::Level::Info,
                "fenced",
                id,
                None,
                "fenced out: another executor (or a newer incarnation) drives this saga now",
            ),
            SagaOutcome::Stuck {
                undo_node,
                undo_error,
                ..
            } => host.event(
                slog::Level::Error,
                "stuck",
                id,
                Some(undo_node),
                &format!("saga stuck: the compensation of {undo_node} failed: {undo_error}"),
            ),
            _ => {}
        }
        match &outcome {
            SagaOutcome::Fenced => tracing::info!(saga_id = %id, saga = name,
                "fenced out: another executor adopted this saga (or it was abandoned); this executor stopped \
                 driving it without unwinding it"),
            SagaOutcome::Interrupted { reason } => {
                tracing::info!(saga_id = %id, saga = name, %reason, "saga left unfinished")
            }
            outcome => tracing::info!(saga_id = %id, saga = name, ?outcome, "saga at rest"),
        }
        self.shared.counters.count_outcome(&outcome);
        self.record_outcome(id, name, outcome.clone(), started.elapsed());
        sec.store.unregister(steno_id(id));
        self.release_live(&id);
        outcome
    }

    /// Adds an entry to the ring of recent outcomes.
    pub(crate) fn record_outcome(
        &self,
        id: Uuid,
        name: &str,
        outcome: SagaOutcome,
        duration: Duration,
    ) {
        self.shared.recent.push(RecentOutcome {
            saga_id: id,
            saga_name: name.to_owned(),
            outcome,
            finished_at: chrono::Utc::now(),
            duration,
        });
    }
}

/// `dag` as the store reads a persisted DAG ([`ratchet_store::PersistedDag`]): steno's serialized form, the
/// form the saga log persists, so that a saga's DAG reads the same on creation and on recovery. This is how
/// the engine learns what steno's public API does not tell: every action node's path and action name, the end
/// node, the nodes without an action. A DAG that does not serialize reads as no nodes: no event is held (more
/// durable commits per saga) and every node then fails, loudly, as not in the saga's DAG.
pub(crate) fn read_dag(dag: &SagaDag) -> PersistedDag {
    serde_json::to_value(dag)
        .map(|serialized| PersistedDag::read(&serialized))
        .unwrap_or_default()
}

/// Every node of a DAG built elsewhere (not by [`SagaBuilder`]) by path and kind, in steno's node order, as
/// [`PreparedSaga::nodes`] lists them: an action is a database node when its action is registered as one,
/// else a plain steno action; a subsaga is listed by its end node; the start and end nodes and subsaga
/// starts are left out.
fn kinds_of(nodes: &PersistedDag, db_actions: &HashSet<&'static str>) -> Vec<(String, NodeKind)> {
    nodes
        .nodes()
        .filter_map(|(_, node)| {
            let kind = match node.kind {
                DagNodeKind::Action => match node.action_name.as_deref() {
                    Some(action) if db_actions.contains(action) => NodeKind::Db,
                    Some(crate::saga::builder::JOIN_ACTION) => NodeKind::Join,
                    _ => NodeKind::Steno,
                },
                DagNodeKind::Constant => NodeKind::Constant,
                DagNodeKind::SubsagaEnd => NodeKind::Subsaga,
                _ => return None,
            };
            Some((node.path.clone(), kind))
        })
        .collect()
}

/// The paths a succeeded saga's outputs are given under ([`SagaOutcome::lookup_node_output`]), by steno node
/// index: action nodes by path; constants and subsaga entries by their name (a later one wins where a name
/// repeats, as across the instances of one subsaga); an action node's path wins over any of those.
fn output_paths(nodes: &PersistedDag) -> BTreeMap<u32, String> {
    let actions = nodes.action_paths();
    let taken: HashSet<&String> = actions.values().collect();
    let mut paths: BTreeMap<u32, String> = nodes
        .nodes()
        .filter(|(_, node)| matches!(node.kind, DagNodeKind::Constant | DagNodeKind::SubsagaEnd))
        .filter(|(_, node)| !taken.contains(&node.path))
        .map(|(index, node)| (index, node.path.clone()))
        .collect();
    paths.extend(actions);
    paths
}

/// The steno node index of the node steno names `name` whose log shows an event `of_kind`: steno's names
/// repeat across the instances of one subsaga, its log's node ids do not. `None` when no such node, or more
/// than one, matches.
fn node_of(
    log: &steno::SagaLog,
    paths: &BTreeMap<u32, String>,
    name: &steno::NodeName,
    of_kind: fn(&steno::SagaNodeEventType) -> bool,
) -> Option<(u32, String)> {
    let name = name.as_ref();
    let mut found: Vec<(u32, &String)> = log
        .events()
        .iter()
        .filter(|event| of_kind(&event.event_type))
        .filter_map(|event| {
            let id = u32::from(event.node_id);
            paths.get(&id).map(|path| (id, path))
        })
        .filter(|(_, path)| path.rsplit(crate::saga::builder::PATH_SEPARATOR).next() == Some(name))
        .collect();
    found.dedup();
    match found.as_slice() {
        [(id, path)] => Some((*id, (*path).clone())),
        _ => None,
    }
}

/// The path of the node steno names `name` whose log shows an event `of_kind`: steno's names repeat across
/// the instances of one subsaga, its log's node ids do not. `name` itself when no such node, or more than
/// one, matches (a node outside any subsaga: its path is its name).
fn path_of(
    log: &steno::SagaLog,
    paths: &BTreeMap<u32, String>,
    name: &steno::NodeName,
    of_kind: fn(&steno::SagaNodeEventType) -> bool,
) -> String {
    node_of(log, paths, name, of_kind).map_or_else(|| name.as_ref().to_owned(), |(_, path)| path)
}

/// A steno result as an outcome. `log`: the saga's log with this store, which holds the typed errors of
/// failed compensations (steno's own record of one holds only its message).
fn outcome_of(
    result: steno::SagaResult,
    paths: &BTreeMap<u32, String>,
    output_paths: &BTreeMap<u32, String>,
    saga_log: &SagaLogHandle,
) -> SagaOutcome {
    let log = &result.saga_log;
    match result.kind {
        Ok(ok) => SagaOutcome::Succeeded {
            output: ok
                .saga_output::<serde_json::Value>()
                .unwrap_or(serde_json::Value::Null),
            outputs: log
                .events()
                .iter()
                .filter_map(|event| match &event.event_type {
                    steno::SagaNodeEventType::Succeeded(output) => output_paths
                        .get(&u32::from(event.node_id))
                        .map(|path| (path.clone(), (**output).clone())),
                    _ => None,
                })
                .collect(),
        },
        Err(SagaResultErr {
            error_node_name,
            error_source,
            undo_failure,
        }) => {
            // A ratchet node's failure names the node by its path; steno's name is only unique within the
            // node's saga or subsaga.
            let (node, error, saga_error) =
                match error_source.clone().convert::<crate::error::NodeFailure>() {
                    Ok(failure) => (failure.node, failure.message, failure.saga_error),
                    Err(_) => (
                        path_of(log, paths, &error_node_name, |kind| {
                            matches!(kind, steno::SagaNodeEventType::Failed(_))
                        }),
                        error_source.to_string(),
                        None,
                    ),
                };
            match undo_failure {
                None => SagaOutcome::Unwound {
                    node,
                    error,
                    saga_error,
                },
                Some((undo_node, undo_error)) => {
                    let undo_failed = node_of(log, paths, &undo_node, |kind| {
                        matches!(kind, steno::SagaNodeEventType::UndoFailed(_))
                    });
                    let steno::UndoActionError::PermanentFailure { source_error } = &undo_error;
                    let undo_saga_error = source_error
                        .get(ratchet_store::SAGA_ERROR_FIELD)
                        .cloned()
                        .or_else(|| {
                            undo_failed
                                .as_ref()
                                .and_then(|(id, _)| saga_log.undo_error(*id))
                        });
                    SagaOutcome::Stuck {
                        node,
                        error,
                        saga_error,
                        undo_node: undo_failed
                            .map_or_else(|| undo_node.as_ref().to_owned(), |(_, path)| path),
                        undo_error: undo_error.to_string(),
                        undo_saga_error,
                    }
                }
            }
        }
    }
}
