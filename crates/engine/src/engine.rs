//! The engine: one steno SEC, the registered saga definitions, running new sagas and recovering old ones.

use crate::error::EngineError;
use crate::failpoint::Failpoints;
use crate::saga_def::{Envelope, NodeKind, NodeRegistry, Ratchet, SagaBuilder, SagaCx, SagaDef};
use ratchet_store::saga::{list_unfinished, load_logs, mark_abandoned};
use ratchet_store::{
    DbPool, Liveness, PgSecStore, PoolConfig, RetryPolicy, SagaOwner, SagaRegistration, SagaRow,
    connect_pool, run_migrations,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use steno::{SagaDag, SagaId, SagaResultErr};
use uuid::Uuid;

/// Counters a support engineer reads first.
#[derive(Debug, Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub unwound: AtomicU64,
    pub stuck: AtomicU64,
    pub abandoned: AtomicU64,
    pub commits: AtomicU64,
    pub compensations: AtomicU64,
    pub retries: AtomicU64,
    pub fenced: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    pub started: u64,
    pub succeeded: u64,
    pub unwound: u64,
    pub stuck: u64,
    pub abandoned: u64,
    pub commits: u64,
    pub compensations: u64,
    pub retries: u64,
    pub fenced: u64,
}

impl Counters {
    /// The counters' current values.
    pub fn snapshot(&self) -> CounterValues {
        let get = |counter: &AtomicU64| AtomicU64::load(counter, Ordering::Relaxed);
        CounterValues {
            started: get(&self.started),
            succeeded: get(&self.succeeded),
            unwound: get(&self.unwound),
            stuck: get(&self.stuck),
            abandoned: get(&self.abandoned),
            commits: get(&self.commits),
            compensations: get(&self.compensations),
            retries: get(&self.retries),
            fenced: get(&self.fenced),
        }
    }
}

/// What every action of every saga of one engine shares.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) pool: DbPool,
    pub(crate) failpoints: Failpoints,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) counters: Counters,
    pub(crate) forward_retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
}

/// How to start an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The database holding the saga log (and the sagas' own tables).
    pub database_url: String,
    pub pool: PoolConfig,
    /// This executor's id. Keep it across restarts: recovery resumes the sagas of this id.
    pub sec_id: Uuid,
    /// Retries of transient failures in prepare and commit.
    pub forward_retry: RetryPolicy,
    /// Retries of transient failures in compensations (longer: a compensation that gives up makes the saga
    /// stuck).
    pub compensation_retry: RetryPolicy,
}

impl EngineConfig {
    pub fn new(database_url: impl Into<String>, sec_id: Uuid) -> EngineConfig {
        EngineConfig {
            database_url: database_url.into(),
            pool: PoolConfig::default(),
            sec_id,
            forward_retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max_delay: Duration::from_secs(1),
                max_attempts: Some(8),
            },
            compensation_retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max_delay: Duration::from_secs(2),
                max_attempts: Some(16),
            },
        }
    }
}

/// How a saga came to rest.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum SagaOutcome {
    /// Every node succeeded; the saga's output.
    Succeeded { output: serde_json::Value },
    /// A node failed and every committed node was compensated.
    Unwound { node: String, error: String },
    /// A compensation failed for good: the saga is stuck (recorded `stuck`).
    Stuck {
        node: String,
        error: String,
        undo_node: String,
        undo_error: String,
    },
    /// Another executor adopted the saga; this one stopped driving it.
    Fenced,
}

type Resumer = Arc<
    dyn Fn(
            &Engine,
            SagaRow,
            Vec<steno::SagaNodeEvent>,
        ) -> futures::future::BoxFuture<'static, Result<(), EngineError>>
        + Send
        + Sync,
>;

/// A ratchet engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
    store: Arc<PgSecStore>,
    sec: Arc<steno::SecClient>,
    sec_id: Uuid,
    resumers: Arc<HashMap<&'static str, Resumer>>,
    registries: Arc<HashMap<&'static str, Arc<dyn std::any::Any + Send + Sync>>>,
    running:
        Arc<std::sync::Mutex<HashMap<Uuid, tokio::sync::watch::Receiver<Option<SagaOutcome>>>>>,
}

/// Collects the saga definitions an engine runs, then starts it.
pub struct EngineBuilder {
    config: EngineConfig,
    resumers: HashMap<&'static str, Resumer>,
    registries: Vec<(&'static str, Arc<dyn std::any::Any + Send + Sync>)>,
    error: Option<EngineError>,
}

struct Registered<S: SagaDef> {
    registry: Arc<steno::ActionRegistry<Ratchet<S>>>,
    db_actions: HashSet<&'static str>,
    app: Arc<S::Context>,
}

/// What startup recovery did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RecoveryReport {
    pub resumed: Vec<Uuid>,
    pub abandoned: Vec<(Uuid, String)>,
}

impl EngineBuilder {
    pub fn new(config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            resumers: HashMap::new(),
            registries: Vec::new(),
            error: None,
        }
    }

    /// Registers saga definition `S`, whose nodes use `app`.
    pub fn register<S: SagaDef>(mut self, app: Arc<S::Context>) -> EngineBuilder {
        let mut registry = NodeRegistry::<S>::new();
        S::register(&mut registry);
        if let Some(node) = registry.duplicate.take() {
            self.error
                .get_or_insert(EngineError::DuplicateNode { node });
        }
        let registered = Arc::new(Registered::<S> {
            registry: Arc::new(registry.actions),
            db_actions: registry.db_actions,
            app,
        });
        let for_resume = Arc::clone(&registered);
        let resumer: Resumer = Arc::new(move |engine, row, events| {
            let registered = Arc::clone(&for_resume);
            let engine = engine.clone();
            Box::pin(async move { engine.resume_one::<S>(&registered, row, events).await })
        });
        self.resumers.insert(S::NAME, resumer);
        self.registries.push((S::NAME, registered));
        self
    }

    /// Applies the saga log's migrations, builds the pool, and recovers every unfinished saga this executor
    /// owns *before* returning the engine, so no new saga can start first.
    pub async fn start(self) -> Result<(Engine, RecoveryReport), EngineError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        run_migrations(
            &self.config.database_url,
            &ratchet_store::SAGA_LOG_MIGRATIONS,
        )
        .await?;
        let pool = connect_pool(&self.config.database_url, &self.config.pool).await?;
        let liveness = Arc::new(Liveness::default());
        let store = Arc::new(PgSecStore::new(
            pool.clone(),
            self.config.sec_id,
            Arc::clone(&liveness),
        ));
        let log = slog::Logger::root(crate::slog_bridge::TracingDrain, slog::o!());
        let sec = steno::sec(log, Arc::clone(&store) as Arc<dyn steno::SecStore>);
        let shared = Arc::new(EngineShared {
            pool,
            failpoints: Failpoints::default(),
            liveness,
            counters: Counters::default(),
            forward_retry: self.config.forward_retry,
            compensation_retry: self.config.compensation_retry,
        });
        let engine = Engine {
            shared,
            store,
            sec: Arc::new(sec),
            sec_id: self.config.sec_id,
            resumers: Arc::new(self.resumers),
            running: Arc::default(),
            registries: Arc::new(self.registries.into_iter().collect()),
        };
        let report = engine.recover().await?;
        Ok((engine, report))
    }
}

/// A saga created (durably) but not yet started: arm failpoints or steno injections, then run it.
pub struct PreparedSaga {
    engine: Engine,
    pub id: Uuid,
    future: futures::future::BoxFuture<'static, steno::SagaResult>,
    log: ratchet_store::SagaLogHandle,
    dag: Arc<SagaDag>,
    kinds: BTreeMap<String, NodeKind>,
}

impl PreparedSaga {
    /// The saga's nodes in DAG order (steno's node order: insertion order), with their kinds; the start and
    /// end nodes are left out.
    pub fn nodes(&self) -> Vec<(String, NodeKind)> {
        let mut nodes: Vec<(u32, String, NodeKind)> = self
            .dag
            .get_nodes()
            .filter_map(|node| {
                let name = node.name().as_ref().to_owned();
                let kind = *self.kinds.get(&name)?;
                Some((node.index().index() as u32, name, kind))
            })
            .collect();
        nodes.sort_by_key(|(index, _, _)| *index);
        nodes.into_iter().map(|(_, name, kind)| (name, kind)).collect()
    }

    /// steno's node index of `node` (for `saga_inject_*`).
    pub fn node_index(&self, node: &str) -> Result<steno::SagaNodeId, EngineError> {
        let index = self
            .dag
            .get_index(node)
            .map_err(|e| EngineError::Steno(e.to_string()))?;
        Ok(steno::SagaNodeId::from(index.index() as u32))
    }

    /// Replaces `node`'s action with an error (steno's own injection: the action body never runs).
    pub async fn inject_error(&self, node: &str) -> Result<(), EngineError> {
        let index = self
            .dag
            .get_index(node)
            .map_err(|e| EngineError::Steno(e.to_string()))?;
        self.engine
            .sec
            .saga_inject_error(steno_id(self.id), index)
            .await
            .map_err(|e| EngineError::Steno(e.to_string()))
    }

    /// Runs `node`'s action `action` times and its undo `undo` times (steno's repeat injection).
    pub async fn inject_repeat(
        &self,
        node: &str,
        action: u32,
        undo: u32,
    ) -> Result<(), EngineError> {
        let index = self
            .dag
            .get_index(node)
            .map_err(|e| EngineError::Steno(e.to_string()))?;
        let repeat = steno::RepeatInjected {
            action: std::num::NonZeroU32::new(action.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
            undo: std::num::NonZeroU32::new(undo.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        };
        self.engine
            .sec
            .saga_inject_repeat(steno_id(self.id), index, repeat)
            .await
            .map_err(|e| EngineError::Steno(e.to_string()))
    }

    /// Starts the saga and waits for it to come to rest.
    pub async fn run(self) -> Result<SagaOutcome, EngineError> {
        let engine = self.engine.clone();
        let id = self.id;
        engine
            .sec
            .saga_start(steno_id(id))
            .await
            .map_err(|e| EngineError::Steno(e.to_string()))?;
        Ok(engine.finish(id, self.future, self.log).await)
    }
}

fn steno_id(id: Uuid) -> SagaId {
    newtype_uuid::GenericUuid::from_untyped_uuid(id)
}

impl Engine {
    pub fn sec_id(&self) -> Uuid {
        self.sec_id
    }

    pub fn pool(&self) -> &DbPool {
        &self.shared.pool
    }

    pub fn failpoints(&self) -> &Failpoints {
        &self.shared.failpoints
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether this engine has "crashed" (a `Crash` fault fired): it writes nothing more.
    pub fn is_crashed(&self) -> bool {
        self.shared.liveness.is_dead()
    }

    /// Creates saga `S` with `params`: builds its DAG and records it durably. Nothing runs until
    /// [`PreparedSaga::run`].
    pub async fn create<S: SagaDef>(&self, params: S::Params) -> Result<PreparedSaga, EngineError> {
        let registered = self.registered::<S>()?;
        let mut builder = SagaBuilder::<S>::new();
        S::build(&params, &mut builder).map_err(|message| EngineError::BadParams {
            saga: S::NAME.to_owned(),
            message,
        })?;
        let (dag, node_args, kinds) =
            builder.build_dag().map_err(|message| EngineError::BadDag {
                saga: S::NAME.to_owned(),
                message,
            })?;
        let envelope = serde_json::to_value(Envelope {
            params,
            nodes: node_args,
        })
        .map_err(|e| EngineError::BadParams {
            saga: S::NAME.to_owned(),
            message: e.to_string(),
        })?;
        let dag = Arc::new(SagaDag::new(dag, envelope));
        let id = Uuid::new_v4();
        let owner = SagaOwner {
            sec_id: self.sec_id,
            generation: 1,
        };
        let (cx, log) = self.saga_cx::<S>(&registered, id, owner, &dag, &kinds);
        let future = self
            .sec
            .saga_create(
                steno_id(id),
                Arc::new(cx),
                Arc::clone(&dag),
                Arc::clone(&registered.registry),
            )
            .await
            .map_err(|e| {
                self.store.unregister(steno_id(id));
                EngineError::Steno(format!("{e:#}"))
            })?;
        self.shared.counters.started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(saga_id = %id, saga = S::NAME, "saga created");
        Ok(PreparedSaga {
            engine: self.clone(),
            id,
            future,
            log,
            dag,
            kinds,
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

    /// Waits for a saga this engine resumed (or runs) to come to rest; `None` if it is not running here.
    pub async fn wait(&self, id: Uuid) -> Option<SagaOutcome> {
        let mut receiver = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()?;
        receiver
            .wait_for(|o| o.is_some())
            .await
            .ok()
            .and_then(|outcome| outcome.clone())
    }

    fn registered<S: SagaDef>(&self) -> Result<Arc<Registered<S>>, EngineError> {
        self.registries
            .get(S::NAME)
            .and_then(|any| Arc::clone(any).downcast::<Registered<S>>().ok())
            .ok_or_else(|| EngineError::UnknownSaga(S::NAME.to_owned()))
    }

    /// The per-saga context and its registration with the store.
    fn saga_cx<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        id: Uuid,
        owner: SagaOwner,
        dag: &SagaDag,
        kinds: &BTreeMap<String, NodeKind>,
    ) -> (SagaCx<S>, ratchet_store::SagaLogHandle) {
        let mut node_ids = BTreeMap::new();
        let mut deferred = HashSet::new();
        let mut names = BTreeMap::new();
        for node in dag.get_nodes() {
            let index = node.index().index() as u32;
            let name = node.name().as_ref().to_owned();
            if kinds.get(&name) == Some(&NodeKind::Db) {
                deferred.insert(index);
            }
            names.insert(index, name.clone());
            node_ids.insert(name, index);
        }
        let log = self.store.register(
            steno_id(id),
            SagaRegistration {
                owner,
                definition_version: S::VERSION,
                deferred_nodes: deferred,
                node_names: names,
            },
        );
        let cx = SagaCx {
            saga_id: id,
            shared: Arc::clone(&self.shared),
            log: log.clone(),
            app: Arc::clone(&registered.app),
            node_ids,
        };
        (cx, log)
    }

    /// Waits for steno's result (or a fence, or a crash) and turns it into an outcome.
    async fn finish(
        &self,
        id: Uuid,
        future: futures::future::BoxFuture<'static, steno::SagaResult>,
        log: ratchet_store::SagaLogHandle,
    ) -> SagaOutcome {
        let fence = Arc::clone(log.fence());
        let outcome = tokio::select! {
            result = future => outcome_of(result),
            () = fence.raised() => {
                self.shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(saga_id = %id, "fenced out: stopped driving the saga");
                SagaOutcome::Fenced
            }
        };
        let counters = &self.shared.counters;
        match &outcome {
            SagaOutcome::Succeeded { .. } => counters.succeeded.fetch_add(1, Ordering::Relaxed),
            SagaOutcome::Unwound { .. } => counters.unwound.fetch_add(1, Ordering::Relaxed),
            SagaOutcome::Stuck { .. } => counters.stuck.fetch_add(1, Ordering::Relaxed),
            SagaOutcome::Fenced => 0,
        };
        tracing::info!(saga_id = %id, ?outcome, "saga at rest");
        self.store.unregister(steno_id(id));
        outcome
    }

    /// Resumes every unfinished saga this executor owns. Sagas that cannot be resumed (no such definition in
    /// this binary, an unregistered action, a log steno refuses) are marked `abandoned` with the reason; the
    /// others go on.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        let mut conn = self
            .shared
            .pool
            .get()
            .await
            .map_err(ratchet_store::DbError::from)?;
        let rows = list_unfinished(&mut conn, self.sec_id, 1000)
            .await
            .map_err(ratchet_store::DbError::from)?;
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let mut logs = load_logs(&mut conn, &ids, 1000)
            .await
            .map_err(ratchet_store::DbError::from)?;
        let mut report = RecoveryReport::default();
        for row in rows {
            let id = row.id;
            let events: Result<Vec<_>, _> = logs
                .remove(&id)
                .unwrap_or_default()
                .iter()
                .map(|e| e.to_steno())
                .collect();
            let result = match (self.resumers.get(row.name.as_str()), events) {
                (None, _) => Err(format!(
                    "no saga definition named {:?} in this binary",
                    row.name
                )),
                (_, Err(error)) => Err(error.to_string()),
                (Some(resume), Ok(events)) => {
                    resume(self, row, events).await.map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(()) => report.resumed.push(id),
                Err(reason) => {
                    tracing::warn!(saga_id = %id, %reason, "saga cannot be recovered: abandoned");
                    mark_abandoned(&mut conn, id, &reason)
                        .await
                        .map_err(ratchet_store::DbError::from)?;
                    self.shared
                        .counters
                        .abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    report.abandoned.push((id, reason));
                }
            }
        }
        tracing::info!(
            resumed = report.resumed.len(),
            abandoned = report.abandoned.len(),
            "recovery done"
        );
        Ok(report)
    }

    async fn resume_one<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        row: SagaRow,
        events: Vec<steno::SagaNodeEvent>,
    ) -> Result<(), EngineError> {
        let id = row.id;
        let owner = row.owner().ok_or(EngineError::NoSuchSaga(id))?;
        let dag: SagaDag = serde_json::from_value(row.saga_dag.clone())
            .map_err(|e| EngineError::Steno(format!("the saga's DAG does not decode: {e}")))?;
        let kinds = db_node_kinds(&row.saga_dag, &registered.db_actions);
        let (cx, log) = self.saga_cx::<S>(registered, id, owner, &dag, &kinds);
        let future = match self
            .sec
            .saga_resume(
                steno_id(id),
                Arc::new(cx),
                row.saga_dag,
                Arc::clone(&registered.registry),
                events,
            )
            .await
        {
            Ok(future) => future,
            Err(error) => {
                self.store.unregister(steno_id(id));
                return Err(EngineError::Steno(format!("{error:#}")));
            }
        };
        self.sec
            .saga_start(steno_id(id))
            .await
            .map_err(|e| EngineError::Steno(e.to_string()))?;
        let (sender, receiver) = tokio::sync::watch::channel(None);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, receiver);
        let engine = self.clone();
        tokio::spawn(async move {
            let outcome = engine.finish(id, future, log).await;
            let _ = sender.send(Some(outcome));
        });
        tracing::info!(saga_id = %id, saga = S::NAME, "saga resumed");
        Ok(())
    }
}

/// Which nodes of a persisted DAG are database nodes: those whose action is registered as one.
///
/// steno's `SagaDag` does not expose a node's action name, so this reads the persisted DAG's JSON
/// (`graph.nodes[i] = {"Action": {"name", "label", "action_name"}}`). A shape this does not recognise only
/// costs the deferral (one extra `started` write per node), never correctness: steno itself validates the DAG.
fn db_node_kinds(
    persisted_dag: &serde_json::Value,
    db_actions: &HashSet<&'static str>,
) -> BTreeMap<String, NodeKind> {
    let nodes = persisted_dag
        .pointer("/graph/nodes")
        .and_then(serde_json::Value::as_array);
    nodes
        .into_iter()
        .flatten()
        .filter_map(|node| {
            let action = node.get("Action")?;
            let name = action.get("name")?.as_str()?;
            let action_name = action.get("action_name")?.as_str()?;
            db_actions
                .contains(action_name)
                .then(|| (name.to_owned(), NodeKind::Db))
        })
        .collect()
}

fn outcome_of(result: steno::SagaResult) -> SagaOutcome {
    match result.kind {
        Ok(ok) => SagaOutcome::Succeeded {
            output: ok
                .saga_output::<serde_json::Value>()
                .unwrap_or(serde_json::Value::Null),
        },
        Err(SagaResultErr {
            error_node_name,
            error_source,
            undo_failure,
        }) => {
            let error = match error_source.clone().convert::<crate::error::NodeFailure>() {
                Ok(failure) => failure.message,
                Err(_) => error_source.to_string(),
            };
            match undo_failure {
                None => SagaOutcome::Unwound {
                    node: error_node_name.as_ref().to_owned(),
                    error,
                },
                Some((undo_node, undo_error)) => SagaOutcome::Stuck {
                    node: error_node_name.as_ref().to_owned(),
                    error,
                    undo_node: undo_node.as_ref().to_owned(),
                    undo_error: undo_error.to_string(),
                },
            }
        }
    }
}
