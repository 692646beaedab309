//! The engine: steno SECs, the registered saga definitions, running new sagas and recovering old ones.
//!
//! Operator actions (adoption, retry-unwind, abandonment) are in `operate.rs`; shutdown in `shutdown.rs`;
//! counters and recent outcomes in `observe.rs`.

use crate::error::EngineError;
use crate::failpoint::Failpoints;
use crate::observe::{Counters, HostLog, RecentOutcome, RecentOutcomes, Waiting, WaitingNode};
use crate::saga_def::{Envelope, NodeKind, NodeRegistry, Ratchet, SagaBuilder, SagaCx, SagaDef};
use crate::shutdown::{ShutdownState, panic_message, steno_call};
use futures::FutureExt;
use ratchet_store::ops::{abandon_saga, claim_unfinished, dag_action_names, unfinished_among};
use ratchet_store::saga::load_logs;
use ratchet_store::{
    DbError, DbPool, Liveness, PgSecStore, PoolConfig, RetryPolicy, SagaLogHandle, SagaOwner,
    SagaRegistration, SagaRow, connect_pool, retry_transient, run_migrations,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use steno::{SagaDag, SagaId, SagaResultErr};
use uuid::Uuid;

/// How many sagas recovery and adoption take (and load the logs of) per query.
pub(crate) const BATCH: usize = 1000;

/// What every action of every saga of one engine shares.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) pool: DbPool,
    pub(crate) failpoints: Failpoints,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) counters: Counters,
    pub(crate) forward_retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
    pub(crate) shutdown: ShutdownState,
    pub(crate) recent: RecentOutcomes,
    pub(crate) waiting: Waiting,
    pub(crate) start_limit: Option<u32>,
    /// The database and the `application_name` of this engine's sessions: an injected crash ends them all
    /// from the server side, as a process's death would.
    pub(crate) database_url: String,
    /// `None` on a pool the embedder brought: its sessions are the embedder's.
    pub(crate) application_name: Option<String>,
    pub(crate) host_log: HostLog,
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
    /// How many times a node (or its compensation) of a *recovered* saga may be started before the engine
    /// gives up on it: the forward node fails, a compensation makes the saga stuck. `None`: no limit.
    ///
    /// This is the crash-loop guard for binaries built with `panic = "abort"` (Omicron's release profile),
    /// where a node that panics deterministically kills the process each time it starts, and each restart
    /// recovers the saga and starts it again. Each start in a recovered saga is counted durably
    /// (`saga_node_start`, one write per node start, only for recovered sagas). With unwinding panics the
    /// engine catches a panic in any phase, so the default is a limit only when this crate is built with
    /// `panic = "abort"`.
    pub start_limit: Option<u32>,
    /// Whether [`EngineBuilder::start`] applies the saga log's migrations (ratchet's tables and columns) to
    /// `database_url` first. An embedder whose own schema tooling applies them (the SQL files are in
    /// `ratchet_store::pool::MIGRATIONS_SQL`) turns this off; the engine then checks at start that every table
    /// and column it needs is there, and names what is missing ([`EngineError::SchemaMissing`]).
    pub run_migrations: bool,
    /// The embedder's `slog` logger (Omicron's convention): steno's log and ratchet's own events go to it
    /// (see the crate docs, "Observability"). Without one, steno's log is bridged into `tracing`.
    pub log: Option<slog::Logger>,
}

impl EngineConfig {
    pub fn new(database_url: impl Into<String>, sec_id: Uuid) -> EngineConfig {
        EngineConfig {
            database_url: database_url.into(),
            pool: PoolConfig::default(),
            sec_id,
            // Under contention (serializable transactions on small, hot tables, a pool smaller than the
            // work) a node can need a dozen attempts: 30 instance-creates of 11 disks each on a pool of 4
            // had a node needing 17, and with 8 attempts half of those sagas unwound on serialization
            // failures alone. PostgreSQL's SSI makes progress (a retried transaction is not cancelled again
            // by the same pivot), so the budget only has to outlast the queue: 32 attempts, capped at 1 s,
            // is up to about 26 s of waiting per phase. See `ratchet-sagas`' retry-budget load test.
            forward_retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max_delay: Duration::from_secs(1),
                max_attempts: Some(32),
            },
            // Longer still: a compensation that gives up makes its saga stuck, for an operator. Recovery of
            // 200 killed instance-creates (tests/recovery_under_load.rs) left sagas stuck on serialization
            // failures alone with 16 attempts; 60, capped at 5 s (about four minutes), left none. It stays
            // bounded so that an error wrongly classified as transient still ends in a diagnosable stuck
            // saga rather than an unwind that never finishes.
            compensation_retry: RetryPolicy {
                initial: Duration::from_millis(20),
                max_delay: Duration::from_secs(5),
                max_attempts: Some(60),
            },
            start_limit: cfg!(panic = "abort").then_some(DEFAULT_START_LIMIT),
            run_migrations: true,
            log: None,
        }
    }
}

/// The default [`EngineConfig::start_limit`] under `panic = "abort"`: a node that killed its process this many
/// times in a row is given up on.
pub const DEFAULT_START_LIMIT: u32 = 5;

/// How a saga came to rest, or why this engine stopped driving it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The saga was abandoned (by recovery, which could not resume it, or by an operator), its rows left as
    /// they were.
    Abandoned { reason: String },
    /// Another executor adopted the saga (or an operator abandoned it); this one stopped driving it.
    Fenced,
    /// This engine shut down (or lost steno's executor) before the saga came to rest: it stays unfinished in
    /// the database, and the next engine with this executor id recovers it.
    Interrupted { reason: String },
}

type Resumer = Arc<
    dyn Fn(
            &Engine,
            SagaRow,
            Vec<steno::SagaNodeEvent>,
        ) -> futures::future::BoxFuture<'static, Result<ResumedSaga, EngineError>>
        + Send
        + Sync,
>;

/// A saga handed back to steno (`saga_resume`) but not yet started: recovery resumes every saga of a batch
/// before it starts any, so that the resume calls do not queue behind the events of sagas already running on
/// the same SEC task (resuming 10,000 sagas one start at a time took 38 s; see docs/PERFORMANCE.md).
#[must_use = "a resumed saga runs only once started (`Engine::start_resumed`)"]
pub(crate) struct ResumedSaga {
    tracked: Tracked,
    future: futures::future::BoxFuture<'static, steno::SagaResult>,
}

/// One steno SEC and the saga log store it writes through.
///
/// An engine has one, plus one more for each saga it re-drives that its first SEC already ran (steno keeps every
/// saga it ran in memory and refuses to resume an id it holds). Each has its own store, so that a stale
/// execution parked in one SEC can never write through the registration of a newer one.
pub(crate) struct Sec {
    client: Mutex<Option<Arc<steno::SecClient>>>,
    pub(crate) store: Arc<PgSecStore>,
    /// Sagas started in this SEC whose steno future has not resolved (running, or parked for good).
    pub(crate) unresolved: AtomicUsize,
}

impl Sec {
    fn start(shared: &EngineShared, sec_id: Uuid) -> Arc<Sec> {
        let store = Arc::new(PgSecStore::new(
            shared.pool.clone(),
            sec_id,
            Arc::clone(&shared.liveness),
            Arc::clone(&shared.counters.fenced),
        ));
        let log = match &shared.host_log.0 {
            Some(host) => {
                host.new(slog::o!("component" => "steno", "sec_id" => sec_id.to_string()))
            }
            None => slog::Logger::root(crate::slog_bridge::TracingDrain, slog::o!()),
        };
        let client = steno::sec(log, Arc::clone(&store) as Arc<dyn steno::SecStore>);
        Arc::new(Sec {
            client: Mutex::new(Some(Arc::new(client))),
            store,
            unresolved: AtomicUsize::new(0),
        })
    }

    /// The client, unless the engine shut down.
    pub(crate) fn client(&self) -> Result<Arc<steno::SecClient>, EngineError> {
        lock(&self.client).clone().ok_or(EngineError::ShuttingDown)
    }

    /// Calls steno through this SEC's client: `ShuttingDown` once the engine took the client out, `SecGone` if
    /// steno panics (its channel to the SEC task is closed), `Steno` for steno's own refusals.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EngineError>
    where
        F: FnOnce(Arc<steno::SecClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, anyhow::Error>>,
    {
        let client = self.client()?;
        steno_call(what, call(client))
            .await?
            .map_err(|e| EngineError::Steno(format!("{e:#}")))
    }

    /// Takes the client out for shutdown: later calls fail with `ShuttingDown` without reaching steno.
    pub(crate) fn take_client(&self) -> Option<Arc<steno::SecClient>> {
        lock(&self.client).take()
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here is one insert, removal or clone.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A ratchet engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) sec: Arc<Sec>,
    pub(crate) extra_secs: Arc<Mutex<Vec<Arc<Sec>>>>,
    pub(crate) sec_id: Uuid,
    pub(crate) resumers: Arc<HashMap<&'static str, Resumer>>,
    /// What recovery and adoption check a saga against before they take it: see [`Definitions`].
    pub(crate) definitions: Arc<Definitions>,
    registries: Arc<HashMap<&'static str, Arc<dyn std::any::Any + Send + Sync>>>,
    /// The outcome of each saga this engine resumed, for [`Engine::wait`].
    //
    // TODO-robustness Entries are never removed (a waiter may come after the saga is at rest): one small entry
    // per resumed saga for the engine's lifetime, like steno's own map of every saga it ran.
    running: Arc<Mutex<HashMap<Uuid, tokio::sync::watch::Receiver<Option<SagaOutcome>>>>>,
    /// Sagas created or resumed by this engine and not yet at rest (nor fenced), by id: their definition's
    /// name. Recovery leaves these alone; a shutdown reports them interrupted.
    pub(crate) live: Arc<Mutex<BTreeMap<Uuid, String>>>,
    /// Taken for writing by every operation that claims sagas under a new epoch ([`Engine::recover`],
    /// [`Engine::adopt`], [`Engine::retry_unwind`]) until the claimed sagas are live here, and for reading by
    /// [`Engine::create`] from marking its saga live until its row exists: so that no claim of this engine can
    /// bump (and so fence out) a saga this engine is creating, or one another claim of it has just taken and
    /// not yet marked live.
    pub(crate) recovering: Arc<tokio::sync::RwLock<()>>,
}

/// Collects the saga definitions an engine runs, then starts it.
pub struct EngineBuilder {
    config: EngineConfig,
    /// A pool the embedder brought ([`EngineBuilder::with_pool`]).
    pool: Option<DbPool>,
    resumers: HashMap<&'static str, Resumer>,
    definitions: Definitions,
    registries: Vec<(&'static str, Arc<dyn std::any::Any + Send + Sync>)>,
    error: Option<EngineError>,
}

/// The saga definitions an engine registers, as recovery and adoption see a saga before they take it: each
/// definition's name, version and every action it registers.
///
/// A saga whose name is not here, or whose DAG runs an action that its name's definition here does not
/// register (another release of it renamed or removed the action), is one whose definition, at its version,
/// this binary lacks. Such a saga may be another binary's (a database shared with other services, a release
/// rolling out): recovery and adoption leave it alone, unless an adoption is told to abandon it
/// ([`crate::AdoptOptions::abandon_unknown`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Definitions(HashMap<&'static str, (i32, HashSet<&'static str>)>);

impl Definitions {
    /// Why this binary cannot run `row`'s saga (the reason recorded for it), or `None` if it can.
    pub(crate) fn lacks(&self, row: &SagaRow) -> Option<String> {
        let missing = format!(
            "no definition of saga {:?} v{} here",
            row.name, row.definition_version
        );
        let Some((version, actions)) = self.0.get(row.name.as_str()) else {
            return Some(missing);
        };
        let (node, action) = dag_action_names(&row.saga_dag)
            .into_iter()
            .find(|(_, action)| !actions.contains(action.as_str()))?;
        Some(format!(
            "{missing}: its node {node:?} runs action {action:?}, which this binary's {:?} (v{version}) does not \
             register",
            row.name
        ))
    }
}

struct Registered<S: SagaDef> {
    registry: Arc<steno::ActionRegistry<Ratchet<S>>>,
    /// Every action name the definition registers.
    actions: HashSet<&'static str>,
    db_actions: HashSet<&'static str>,
    app: Arc<S::Context>,
}

/// What recovery (or the resuming half of an adoption) did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryReport {
    pub resumed: Vec<Uuid>,
    /// Sagas that could not be resumed though this binary has their definition (a DAG or a log that does not
    /// load, a log steno refuses), marked `abandoned`, with the reason.
    pub abandoned: Vec<(Uuid, String)>,
    /// Sagas whose definition (at their version) this binary lacks, with the reason ("no definition of saga
    /// X vN here"): left unfinished and not driven, for a binary that has the definition (or an operator's
    /// `abandon`). Recovery never abandons them.
    #[serde(default)]
    pub left_alone: Vec<(Uuid, String)>,
    /// Unfinished sagas left alone because this engine is already driving them (created or resumed here):
    /// recovering them again would drive one saga twice under one owner.
    pub running_here: Vec<Uuid>,
}

impl EngineBuilder {
    pub fn new(config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            pool: None,
            resumers: HashMap::new(),
            definitions: Definitions::default(),
            registries: Vec::new(),
            error: None,
        }
    }

    /// Runs the engine on the embedder's own pool (a bb8 pool of diesel-async PostgreSQL connections)
    /// instead of building one from [`EngineConfig::database_url`] and [`EngineConfig::pool`].
    ///
    /// A node's transaction holds exactly one connection of it, for the node's transaction only; the engine
    /// never takes a second one for a node. Its other users are the saga log's writes (one connection per
    /// statement) and the engine's own bookkeeping. The sessions are the embedder's: set
    /// `idle_in_transaction_session_timeout` and `lock_timeout` on them (see
    /// [`ratchet_store::pool::SessionLimits::set_statements`]) so that a frozen executor cannot hold its locks
    /// forever.
    pub fn with_pool(mut self, pool: DbPool) -> EngineBuilder {
        self.pool = Some(pool);
        self
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
            actions: registry.names.keys().copied().collect(),
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
        self.definitions
            .0
            .insert(S::NAME, (S::VERSION, registered.actions.clone()));
        self.registries.push((S::NAME, registered));
        self
    }

    /// Why an engine of this builder could not run saga `row` (no definition of its name here, or one that
    /// lacks an action its DAG runs), or `None` if it could: what recovery and adoption check before they take
    /// a saga, for a caller that wants to know without starting an engine (a dry run).
    pub fn lacks_definition(&self, row: &SagaRow) -> Option<String> {
        self.definitions.lacks(row)
    }

    /// Applies the saga log's migrations, builds the pool, and recovers every unfinished saga this executor
    /// owns *before* returning the engine, so no new saga can start first.
    pub async fn start(self) -> Result<(Engine, RecoveryReport), EngineError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.config.run_migrations {
            run_migrations(
                &self.config.database_url,
                &ratchet_store::SAGA_LOG_MIGRATIONS,
            )
            .await?;
        }
        let (pool, application_name) = match self.pool {
            Some(pool) => (pool, None),
            None => {
                // Each start is a new incarnation of the executor; its sessions say which.
                let mut pool_config = self.config.pool.clone();
                pool_config.application_name = format!("ratchet/{}", Uuid::new_v4());
                let pool = connect_pool(&self.config.database_url, &pool_config).await?;
                (pool, Some(pool_config.application_name))
            }
        };
        let missing = retry_transient(RetryPolicy::OPERATOR, "checking the schema", || async {
            let mut conn = pool.get().await?;
            Ok(ratchet_store::schema_check::missing(&mut conn).await?)
        })
        .await?;
        if !missing.is_empty() {
            return Err(EngineError::SchemaMissing { missing });
        }
        let shared = Arc::new(EngineShared {
            pool,
            failpoints: Failpoints::default(),
            liveness: Arc::new(Liveness::default()),
            counters: Counters::default(),
            forward_retry: self.config.forward_retry,
            compensation_retry: self.config.compensation_retry,
            shutdown: ShutdownState::default(),
            recent: RecentOutcomes::default(),
            waiting: Waiting::default(),
            start_limit: self.config.start_limit,
            database_url: self.config.database_url.clone(),
            application_name,
            host_log: HostLog(self.config.log.clone()),
        });
        let engine = Engine {
            sec: Sec::start(&shared, self.config.sec_id),
            shared,
            extra_secs: Arc::default(),
            sec_id: self.config.sec_id,
            resumers: Arc::new(self.resumers),
            definitions: Arc::new(self.definitions),
            running: Arc::default(),
            live: Arc::default(),
            recovering: Arc::default(),
            registries: Arc::new(self.registries.into_iter().collect()),
        };
        let report = engine.recover().await?;
        Ok((engine, report))
    }
}

/// What the engine needs to bring one started saga to rest.
pub(crate) struct Tracked {
    id: Uuid,
    name: &'static str,
    started: Instant,
    sec: Arc<Sec>,
    log: SagaLogHandle,
}

impl Tracked {
    /// A saga this engine is about to start (created or resumed): its clock starts now.
    fn new(id: Uuid, name: &'static str, sec: Arc<Sec>, log: SagaLogHandle) -> Tracked {
        Tracked {
            id,
            name,
            started: Instant::now(),
            sec,
            log,
        }
    }
}

/// A saga created (durably) but not yet started: arm failpoints or steno injections, then run it.
pub struct PreparedSaga {
    engine: Engine,
    pub id: Uuid,
    /// steno's future for the saga's result. In a mutex only so that `PreparedSaga` is `Sync` (a boxed future
    /// is `Send` but not `Sync`), so that a `&PreparedSaga` can be held across an `.await`; it is never locked
    /// while contended.
    future: Mutex<futures::future::BoxFuture<'static, steno::SagaResult>>,
    tracked: Tracked,
    dag: Arc<SagaDag>,
    kinds: BTreeMap<String, NodeKind>,
}

// `PreparedSaga` stays `Send + Sync`: callers hold a `&PreparedSaga` across `.await`s (steno injections) in
// futures that must be `Send`.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PreparedSaga>();
};

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
        nodes
            .into_iter()
            .map(|(_, name, kind)| (name, kind))
            .collect()
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
        let id = steno_id(self.id);
        self.tracked
            .sec
            .call("saga_inject_error", |sec| async move {
                sec.saga_inject_error(id, index).await
            })
            .await
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

    /// The last [`crate::RECENT_OUTCOMES`] sagas that came to rest in this engine (or that it stopped
    /// driving, or abandoned), oldest first.
    pub fn recent_outcomes(&self) -> Vec<RecentOutcome> {
        self.shared.recent.snapshot()
    }

    /// The nodes waiting, right now, for an unknown `COMMIT` outcome to be resolved from the database (see
    /// the crate docs, "A COMMIT whose outcome is unknown"): the saga is neither failing nor going on, and
    /// says why.
    pub fn waiting(&self) -> Vec<WaitingNode> {
        self.shared.waiting.snapshot()
    }

    /// Whether this engine has "crashed" (a `Crash` fault fired): it writes nothing more.
    pub fn is_crashed(&self) -> bool {
        self.shared.liveness.is_dead()
    }

    /// Whether [`Engine::shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_requested()
    }

    pub(crate) fn refuse_if_shutting_down(&self) -> Result<(), EngineError> {
        if self.is_shutting_down() {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates saga `S` with `params`: builds its DAG and records it durably. Nothing runs until
    /// [`PreparedSaga::run`]. Refused once the engine is shutting down.
    pub async fn create<S: SagaDef>(&self, params: S::Params) -> Result<PreparedSaga, EngineError> {
        self.refuse_if_shutting_down()?;
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
        let sec = Arc::clone(&self.sec);
        let (cx, log) = self.saga_cx::<S>(&registered, &sec, id, owner, &dag, &kinds, None);
        let dag_for_steno = Arc::clone(&dag);
        // Live before its row exists, and no claim of this engine runs until the row is there: a recovery
        // never claims (and so fences) it.
        let creating = self.recovering.read().await;
        lock(&self.live).insert(id, S::NAME.to_owned());
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
            lock(&self.live).remove(&id);
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
            tracked: Tracked::new(id, S::NAME, sec, log),
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

    fn registered<S: SagaDef>(&self) -> Result<Arc<Registered<S>>, EngineError> {
        self.registries
            .get(S::NAME)
            .and_then(|any| Arc::clone(any).downcast::<Registered<S>>().ok())
            .ok_or_else(|| EngineError::UnknownSaga(S::NAME.to_owned()))
    }

    /// The per-saga context and its registration with `sec`'s store. `resumed_from`: the log a resumed saga
    /// was loaded from (`None` for a saga created here).
    // Every argument is one fact about the saga being registered; a struct to carry them would be built at two
    // call sites only to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    fn saga_cx<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        sec: &Sec,
        id: Uuid,
        owner: SagaOwner,
        dag: &SagaDag,
        kinds: &BTreeMap<String, NodeKind>,
        resumed_from: Option<&[steno::SagaNodeEvent]>,
    ) -> (SagaCx<S>, SagaLogHandle) {
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
        let (start_node, end_node) = dag_bookends(dag);
        let log = sec.store.register(
            steno_id(id),
            SagaRegistration {
                owner,
                definition_version: S::VERSION,
                deferred_nodes: deferred,
                node_names: names,
                end_node,
                start_node,
                undo_failed_logged: resumed_from.is_some_and(|events| {
                    events
                        .iter()
                        .any(|e| matches!(e.event_type, steno::SagaNodeEventType::UndoFailed(_)))
                }),
            },
        );
        let cx = SagaCx {
            saga_id: id,
            shared: Arc::clone(&self.shared),
            log: log.clone(),
            app: Arc::clone(&registered.app),
            node_ids,
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
    async fn start_in_steno(&self, tracked: &Tracked) -> Result<(), EngineError> {
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
    async fn finish(
        &self,
        tracked: Tracked,
        future: futures::future::BoxFuture<'static, steno::SagaResult>,
    ) -> SagaOutcome {
        let Tracked {
            id,
            name,
            started,
            sec,
            log,
        } = tracked;
        let fence = Arc::clone(log.fence());
        let mut outcome = tokio::select! {
            biased;
            result = AssertUnwindSafe(future).catch_unwind() => {
                sec.unresolved.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(result) => outcome_of(result),
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
        lock(&self.live).remove(&id);
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

    /// Why this engine cannot run saga `row` (see [`EngineBuilder::lacks_definition`]), or `None` if it can.
    pub fn lacks_definition(&self, row: &SagaRow) -> Option<String> {
        self.definitions.lacks(row)
    }

    /// Resumes every unfinished saga this executor owns, under a new fencing epoch.
    ///
    /// A saga whose definition (at its version) this binary lacks (no definition of its name, or an action
    /// of its DAG not registered) is left unfinished and not driven, and reported in
    /// [`RecoveryReport::left_alone`] with the reason: it may be a saga of another release of this binary,
    /// which can still finish it, and abandoning it would leave its commits in effect for good. A saga whose
    /// definition is here but which cannot be resumed (its DAG or its log does not load, steno refuses its
    /// log) is marked `abandoned` with the reason ([`RecoveryReport::abandoned`]); the others go on.
    ///
    /// The sagas are claimed [`BATCH`] at a time, each batch in one statement that bumps their
    /// `adopt_generation` ([`claim_unfinished`]): an executor id is the same across restarts, so a process
    /// with this id that is still alive (hung, or a second recovery started beside this one) would otherwise
    /// pass every fence. After the claim it is fenced out exactly like a foreign executor. Sagas this engine
    /// is already driving are left out of the claim (and reported in [`RecoveryReport::running_here`]);
    /// recoveries of one engine take turns.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        self.refuse_if_shutting_down()?;
        let _turn = self.recovering.write().await;
        // A shutdown may have come while this waited for its turn: claim nothing then.
        self.refuse_if_shutting_down()?;
        let driving: Vec<Uuid> = lock(&self.live).keys().copied().collect();
        let pool = &self.shared.pool;
        let sec_id = self.sec_id;
        // Every batch is claimed before any saga is resumed: resumed sagas start running, and their writes
        // (and steno's queue) would slow the claims and loads still to come (10,000 sagas resumed in 27 s
        // batch by batch, against about 6 s all at once).
        let mut claimed = Vec::new();
        let mut after = None;
        loop {
            let driving = &driving;
            let rows = retry_transient(
                RetryPolicy::OPERATOR,
                "claiming unfinished sagas",
                || async move {
                    let mut conn = pool.get().await?;
                    Ok(claim_unfinished(&mut conn, sec_id, after, driving, BATCH as i64).await?)
                },
            )
            .await?;
            // Only an empty page ends the claim: a row that changed between the statement's subquery and its
            // update (an older incarnation finishing it) makes a page short without being the last.
            if rows.is_empty() {
                break;
            }
            after = rows.last().map(|row| row.id);
            claimed.extend(rows);
        }
        let mut report = self.resume_rows(claimed, false).await?;
        if !driving.is_empty() {
            let driving = &driving;
            let running = retry_transient(
                RetryPolicy::OPERATOR,
                "listing sagas in flight",
                || async move {
                    let mut conn = pool.get().await?;
                    Ok(unfinished_among(&mut conn, sec_id, driving).await?)
                },
            )
            .await?;
            report.running_here.extend(running);
        }
        tracing::info!(
            sec_id = %self.sec_id,
            resumed = report.resumed.len(),
            abandoned = report.abandoned.len(),
            left_alone = report.left_alone.len(),
            running_here = report.running_here.len(),
            "recovery done: every unfinished saga of this executor claimed under a new epoch"
        );
        Ok(report)
    }

    /// Resumes `rows` (sagas this executor owns), loading their logs [`BATCH`] sagas per query; abandons, with
    /// the reason, those that cannot be resumed; leaves alone (reported, not driven) those whose definition this
    /// binary lacks, unless `abandon_unknown`, which abandons them too.
    pub(crate) async fn resume_rows(
        &self,
        rows: Vec<SagaRow>,
        abandon_unknown: bool,
    ) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport::default();
        // Pass 1: hand every saga to steno. Pass 2 (below): start them all.
        let mut resumed = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(BATCH) {
            let ids: Vec<Uuid> = chunk.iter().map(|row| row.id).collect();
            let mut logs = {
                let mut conn = self.shared.pool.get().await.map_err(DbError::from)?;
                load_logs(&mut conn, &ids, BATCH)
                    .await
                    .map_err(DbError::from)?
            };
            for row in chunk {
                let id = row.id;
                {
                    // Checked and claimed at once, so that two recoveries cannot both resume one saga.
                    let mut live = lock(&self.live);
                    if live.contains_key(&id) {
                        report.running_here.push(id);
                        continue;
                    }
                    live.insert(id, row.name.clone());
                }
                let events: Result<Vec<_>, _> = logs
                    .remove(&id)
                    .unwrap_or_default()
                    .iter()
                    .map(|e| e.to_steno())
                    .collect();
                let lacks = self.definitions.lacks(row);
                let result = match (self.resumers.get(row.name.as_str()), lacks, events) {
                    (_, Some(reason), _) => Err(Unresumed::Unknown(reason)),
                    (None, None, _) => Err(Unresumed::Unknown(format!(
                        "no definition of saga {:?} v{} here",
                        row.name, row.definition_version
                    ))),
                    (_, None, Err(error)) => Err(Unresumed::Unrecoverable(format!(
                        "its log does not load: {error}"
                    ))),
                    (Some(resume), None, Ok(events)) => resume(self, row.clone(), events)
                        .await
                        .map_err(Unresumed::from),
                };
                match result {
                    Ok(saga) => resumed.push((row, saga)),
                    Err(unresumed) => {
                        self.unresumed(row, unresumed, abandon_unknown, &mut report)
                            .await?
                    }
                }
            }
        }
        for (row, saga) in resumed {
            match self.start_resumed(saga).await {
                Ok(()) => report.resumed.push(row.id),
                Err(error) => {
                    self.unresumed(row, error.into(), abandon_unknown, &mut report)
                        .await?
                }
            }
        }
        Ok(report)
    }

    /// A saga recovery could not resume (or start), released: left alone (reported) when this binary lacks its
    /// definition and `abandon_unknown` is off; marked `abandoned` with the reason when it cannot be resumed
    /// otherwise (or `abandon_unknown` is on); left as it is when this engine is stopping.
    async fn unresumed(
        &self,
        row: &SagaRow,
        why: Unresumed,
        abandon_unknown: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), EngineError> {
        lock(&self.live).remove(&row.id);
        let reason = match why {
            Unresumed::Interrupted => return Ok(()),
            Unresumed::Unknown(reason) if !abandon_unknown => {
                tracing::info!(saga_id = %row.id, saga = %row.name, %reason,
                    "saga left alone: this binary cannot run it; a binary with its definition can");
                report.left_alone.push((row.id, reason));
                return Ok(());
            }
            Unresumed::Unknown(reason) => reason,
            Unresumed::Unrecoverable(reason) => reason,
        };
        let reason = format!("unrecoverable: {reason}");
        if self.abandon_unrecoverable(row, &reason).await? {
            report.abandoned.push((row.id, reason));
        }
        Ok(())
    }

    /// Starts a saga [`Engine::resume_one`] handed back to steno, and follows it to rest.
    pub(crate) async fn start_resumed(&self, saga: ResumedSaga) -> Result<(), EngineError> {
        let ResumedSaga { tracked, future } = saga;
        let id = tracked.id;
        let name = tracked.name;
        self.start_in_steno(&tracked).await?;
        let (sender, receiver) = tokio::sync::watch::channel(None);
        lock(&self.running).insert(id, receiver);
        let engine = self.clone();
        tokio::spawn(async move {
            let outcome = engine.finish(tracked, future).await;
            let _ = sender.send(Some(outcome));
        });
        tracing::info!(saga_id = %id, saga = name, "saga resumed");
        Ok(())
    }

    /// Marks a saga recovery could not resume `abandoned`. Returns whether it did (another executor may have
    /// taken or finished the saga meanwhile).
    async fn abandon_unrecoverable(
        &self,
        row: &SagaRow,
        reason: &str,
    ) -> Result<bool, EngineError> {
        let id = row.id;
        tracing::warn!(saga_id = %id, saga = %row.name, %reason, "saga cannot be recovered: abandoning it");
        let pool = &self.shared.pool;
        let abandoned = retry_transient(RetryPolicy::OPERATOR, "abandoning a saga", || async {
            let mut conn = pool.get().await?;
            abandon_saga(&mut conn, id, reason).await
        })
        .await?;
        match abandoned {
            Ok(_) => {
                let outcome = SagaOutcome::Abandoned {
                    reason: reason.to_owned(),
                };
                self.shared.counters.count_outcome(&outcome);
                self.record_outcome(id, &row.name, outcome, Duration::ZERO);
                Ok(true)
            }
            Err(refusal) => {
                tracing::warn!(saga_id = %id, ?refusal, "saga not abandoned: it changed meanwhile");
                Ok(false)
            }
        }
    }

    /// The SEC to resume saga `id` in: the engine's own, unless that one already holds the saga (it ran it,
    /// and it came to rest or this engine was fenced out of it): steno keeps every saga it ran and refuses to
    /// resume an id it holds, so the saga then gets a SEC of its own.
    //
    // TODO-robustness Each such re-drive costs one more SEC (a task) until shutdown; steno has no way to drop a
    // finished saga from a SEC's memory.
    async fn sec_for_resume(&self, id: Uuid) -> Result<Arc<Sec>, EngineError> {
        let client = self.sec.client()?;
        let held = steno_call("saga_get", client.saga_get(steno_id(id)))
            .await?
            .is_ok();
        if !held {
            return Ok(Arc::clone(&self.sec));
        }
        tracing::info!(saga_id = %id, "this engine's SEC already ran the saga: resuming it in a new SEC");
        let sec = Sec::start(&self.shared, self.sec_id);
        lock(&self.extra_secs).push(Arc::clone(&sec));
        Ok(sec)
    }

    async fn resume_one<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        row: SagaRow,
        events: Vec<steno::SagaNodeEvent>,
    ) -> Result<ResumedSaga, EngineError> {
        self.refuse_if_shutting_down()?;
        let id = row.id;
        let owner = row.owner().ok_or(EngineError::NoSuchSaga(id))?;
        // Versioning: name an action this binary lacks before steno is asked (its own message is terser).
        let actions = dag_action_names(&row.saga_dag);
        if let Some((node, action)) = actions
            .iter()
            .find(|(_, action)| !registered.actions.contains(action.as_str()))
        {
            return Err(EngineError::UnknownAction {
                saga: S::NAME.to_owned(),
                version: row.definition_version,
                node: node.clone(),
                action: action.clone(),
            });
        }
        if row.definition_version != S::VERSION {
            tracing::info!(saga_id = %id, saga = S::NAME, recorded = row.definition_version,
                current = S::VERSION, "resuming a saga created by another version of its definition");
        }
        let dag: SagaDag = serde_json::from_value(row.saga_dag.clone())
            .map_err(|e| EngineError::Steno(format!("the saga's DAG does not decode: {e}")))?;
        let kinds = db_node_kinds(&actions, &registered.db_actions);
        let sec = self.sec_for_resume(id).await?;
        let (cx, log) = self.saga_cx::<S>(registered, &sec, id, owner, &dag, &kinds, Some(&events));
        let registry = Arc::clone(&registered.registry);
        let resumed = sec
            .call("saga_resume", |client| async move {
                client
                    .saga_resume(steno_id(id), Arc::new(cx), row.saga_dag, registry, events)
                    .await
            })
            .await;
        let future = match resumed {
            Ok(future) => future,
            Err(error) => {
                sec.store.unregister(steno_id(id));
                return Err(error);
            }
        };
        tracing::debug!(saga_id = %id, saga = S::NAME, generation = owner.generation, "saga handed to steno");
        Ok(ResumedSaga {
            tracked: Tracked::new(id, S::NAME, sec, log),
            future,
        })
    }
}

/// Why a claimed saga was not resumed: this binary lacks its definition (it is left alone, unless the caller
/// asked to abandon such sagas), something else about the saga (it is abandoned, with the reason), or this
/// engine stopping (shutdown, steno's executor gone): then it stays unfinished, for the next start.
enum Unresumed {
    Unknown(String),
    Unrecoverable(String),
    Interrupted,
}

impl From<EngineError> for Unresumed {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::ShuttingDown | EngineError::SecGone(_) => Unresumed::Interrupted,
            EngineError::UnknownSaga(_) | EngineError::UnknownAction { .. } => {
                Unresumed::Unknown(error.to_string())
            }
            other => Unresumed::Unrecoverable(other.to_string()),
        }
    }
}

/// steno's indexes of the DAG's start and end nodes (steno keeps them private; its serialized form names
/// them). `None` only if steno's serialized form changes, which costs two durable commits per saga each,
/// never correctness.
fn dag_bookends(dag: &SagaDag) -> (Option<u32>, Option<u32>) {
    let Ok(serialized) = serde_json::to_value(dag) else {
        return (None, None);
    };
    let index = |which: &str| {
        serialized
            .get(which)?
            .as_u64()
            .and_then(|index| u32::try_from(index).ok())
    };
    (index("start_node"), index("end_node"))
}

/// Which nodes of a persisted DAG are database nodes: those whose action (from the DAG's JSON, see
/// [`dag_action_names`]) is registered as one. A shape this does not recognise only costs the deferral (one
/// extra `started` write per node), never correctness: steno itself validates the DAG.
fn db_node_kinds(
    actions: &BTreeMap<String, String>,
    db_actions: &HashSet<&'static str>,
) -> BTreeMap<String, NodeKind> {
    actions
        .iter()
        .filter(|(_, action)| db_actions.contains(action.as_str()))
        .map(|(node, _)| (node.clone(), NodeKind::Db))
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
