//! The engine: its handle ([`Engine`]), its configuration and its builder ([`EngineBuilder`]), and the saga
//! definitions it registers.
//!
//! # Design
//!
//! An [`Engine`] is a cheap, cloneable handle on one executor (one `sec_id`) of one process: what every action
//! of every saga shares ([`EngineShared`]: the pool, the counters, the retry policies, the shutdown state),
//! steno's SEC (`sec.rs`), and what the builder registered: each saga definition's action registry and
//! context ([`Registered`]), how to resume a saga of it ([`Resumer`]), and what recovery and adoption check
//! before they take a saga ([`Definitions`]). The rest of the engine's behaviour lives beside this file:
//!
//! - `running.rs`: creating a saga, running it ([`PreparedSaga`]), and following any started saga to rest;
//! - `recovery.rs`: recovery (at start, and periodically when configured), and the resuming half of adoption
//!   and retry-unwind;
//! - `quiesce.rs`: quiesce (no new sagas; say what still runs, and when nothing does);
//! - `sec.rs`: the wrapper around steno's SEC client;
//! - operator actions (adoption, retry-unwind, abandonment) in `operations.rs`, shutdown in `shutdown.rs`,
//!   counters and recent outcomes in `observe.rs`.
//!
//! # Invariants
//!
//! - [`EngineBuilder::start`] recovers every unfinished saga of this executor *before* it returns the
//!   engine (the handle that creates new sagas).
//! - A saga definition is registered under one name; a second registration of a node name with another type
//!   fails the build ([`EngineError::DuplicateNode`]).
//! - [`Engine::recovering`] orders every claim of this engine (recovery, adoption, retry-unwind) against
//!   the creation of sagas, so that no claim of this engine fences out a saga it is itself creating or
//!   driving.

pub(crate) mod operations;
pub(crate) mod outcome;
pub(crate) mod quiesce;
pub(crate) mod recovery;
pub(crate) mod running;
pub(crate) mod sec;
pub(crate) mod shared;

use crate::engine::outcome::SagaOutcome;
use crate::engine::recovery::{RecoveryReport, ResumedSaga};
use crate::engine::sec::Sec;
use crate::engine::shared::{EngineShared, NodePools};
use crate::error::EngineError;
use crate::failpoint::Failpoints;
use crate::observe::{Counters, HostLog, RecentOutcome, RecentOutcomes, Waiting, WaitingNode};
use crate::saga::definition::{SagaDef, StenoSaga};
use crate::saga::registry::NodeRegistry;
use crate::shutdown::ShutdownState;
use ratchet_store::{
    DbConnection, DbPool, Liveness, NodeConnection, NodePool, PoolConfig, RecoveryScope,
    RetryPolicy, SagaRow, action_names, connect_pool, retry_transient, run_migrations,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// How to start an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The database holding the saga log (and the sagas' own tables). Empty for an engine on the host's pool
    /// ([`EngineConfig::for_host_pool`]).
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
    /// `ratchet_store::MIGRATIONS_SQL`) turns this off; the engine then checks at start that every table
    /// and column it needs is there, and names what is missing ([`EngineError::SchemaMissing`]).
    pub run_migrations: bool,
    /// The embedder's `slog` logger (Omicron's convention): steno's log and ratchet's own events go to it
    /// (see the crate docs, "Observability"). Without one, steno's log is bridged into `tracing`.
    pub log: Option<slog::Logger>,
    /// Run a recovery pass this often after the one at start (`None`, the default: only the one at start).
    /// Each pass picks up the sagas handed to this executor since the last (Omicron's `sagas_reassign_sec`
    /// moving an expunged Nexus's sagas here), as Nexus's saga-recovery background task does;
    /// [`Engine::trigger_recovery`] runs one now. See `recovery.rs`.
    pub recovery_interval: Option<Duration>,
    /// Which of this executor's unfinished sagas recovery takes: only ratchet's own (the default), or also
    /// those plain steno created ([`RecoveryScope::PlainStenoToo`]: a Nexus that ran them has stopped and
    /// ratchet finishes them). Never the second while a plain steno executor may still drive sagas under this
    /// executor id: it would run them twice.
    pub recovery_scope: RecoveryScope,
    /// Write only what Omicron's readers of the saga log parse: a stuck saga recorded `unwinding` (with
    /// `time_stuck` set) instead of `stuck`, a failed undo in `saga_undo_failure` instead of an `undo_failed`
    /// event (see `ratchet_store`'s saga log, "An Omicron-readable log"). Off by default: the `stuck` state
    /// says what it is to every SQL reader, and a host whose own readers are ratchet's (or know `stuck`)
    /// loses nothing; a host whose saga log Omicron's code also reads (Nexus) must turn it on. ratchet's
    /// readers see a stuck saga as stuck either way.
    pub omicron_readable_log: bool,
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
            recovery_interval: None,
            recovery_scope: RecoveryScope::RatchetOnly,
            omicron_readable_log: false,
        }
    }
}

impl EngineConfig {
    /// The configuration of an engine that runs on the host's pool ([`EngineBuilder::with_pool`]) and on a
    /// schema the host's own tooling applies (`ratchet_store::MIGRATIONS_SQL`): no database URL, migrations
    /// off (the engine checks the schema at start). Everything else as [`EngineConfig::new`].
    pub fn for_host_pool(sec_id: Uuid) -> EngineConfig {
        EngineConfig {
            run_migrations: false,
            ..EngineConfig::new(String::new(), sec_id)
        }
    }
}

/// The default [`EngineConfig::start_limit`] under `panic = "abort"`: a node that killed its process this many
/// times in a row is given up on.
pub const DEFAULT_START_LIMIT: u32 = 5;

type Resumer = Arc<
    dyn Fn(
            &Engine,
            SagaRow,
            Vec<steno::SagaNodeEvent>,
        ) -> futures::future::BoxFuture<'static, Result<ResumedSaga, EngineError>>
        + Send
        + Sync,
>;

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
    /// Quiesce: whether new sagas are refused, and a wake-up whenever a saga leaves [`Engine::live`].
    pub(crate) quiesce: Arc<quiesce::QuiesceState>,
    /// The periodic recovery task's trigger and status.
    pub(crate) periodic: Arc<recovery::PeriodicRecovery>,
    pub(crate) recovery_scope: RecoveryScope,
}

/// Collects the saga definitions an engine runs, then starts it.
pub struct EngineBuilder {
    config: EngineConfig,
    /// A pool the embedder brought ([`EngineBuilder::with_pool`]).
    pool: Option<DbPool>,
    /// Pools for database nodes on other connection types ([`EngineBuilder::node_pool`]).
    node_pools: NodePools,
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
    /// The name of every saga definition registered here.
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.keys().map(|name| (*name).to_owned()).collect()
    }

    /// Why this binary cannot run `row`'s saga (the reason recorded for it), or `None` if it can.
    pub(crate) fn lacks(&self, row: &SagaRow) -> Option<String> {
        let missing = format!("no definition of saga {} here", row.definition());
        let Some((version, actions)) = self.0.get(row.name.as_str()) else {
            return Some(missing);
        };
        let (node, action) = action_names(&row.saga_dag)
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
    registry: Arc<steno::ActionRegistry<StenoSaga<S>>>,
    /// Every action name the definition registers.
    actions: HashSet<&'static str>,
    db_actions: HashSet<&'static str>,
    app: Arc<S::Context>,
}

impl EngineBuilder {
    pub fn new(config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            pool: None,
            node_pools: NodePools::default(),
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
    /// [`ratchet_store::SessionLimits::set_statements`]) so that a frozen executor cannot hold its locks
    /// forever.
    pub fn with_pool(mut self, pool: DbPool) -> EngineBuilder {
        self.pool = Some(pool);
        self
    }

    /// Registers the pool database nodes on connection type `C` (a [`DbNode<S, C>`](crate::DbNode)) check their
    /// transaction's connection out of: the host's pool, such as Nexus's bb8 pool of
    /// `async_bb8_diesel::ConnectionManager<C>` (ratchet-store's `async-bb8-diesel` feature). The node's
    /// writes, its commit record, its events and the fence run in one transaction on one connection of it, as
    /// on the engine's own pool; an unknown `COMMIT` is resolved on the engine's own pool (any connection to
    /// the same database settles it). The engine's transactions on it set `lock_timeout` and
    /// `idle_in_transaction_session_timeout` themselves (`SET LOCAL`, with their `BEGIN`, from
    /// [`EngineConfig::pool`]'s session limits), since the sessions are the host's. Without a pool for `C`,
    /// such a node fails permanently, saying so.
    pub fn node_pool<C: NodeConnection>(mut self, pool: impl NodePool<C>) -> EngineBuilder {
        self.node_pools.insert::<C>(Arc::new(pool));
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
        if let Some(message) = registry.refused.take() {
            self.error.get_or_insert(EngineError::BadRegistration {
                saga: S::NAME.to_owned(),
                message,
            });
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
    /// owns *before* returning the engine (the handle that creates new sagas).
    pub async fn start(self) -> Result<(Engine, RecoveryReport), EngineError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.config.database_url.is_empty() {
            if self.pool.is_none() {
                return Err(EngineError::BadConfig(
                    "no database: give EngineConfig::database_url, or the host's pool with \
                     EngineBuilder::with_pool"
                        .to_owned(),
                ));
            }
            if self.config.run_migrations {
                return Err(EngineError::BadConfig(
                    "run_migrations needs EngineConfig::database_url (migrations run on a connection of their \
                     own); on the host's pool without a URL, apply ratchet_store::MIGRATIONS_SQL with the host's \
                     tooling and turn run_migrations off (EngineConfig::for_host_pool does)"
                        .to_owned(),
                ));
            }
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
            Ok(ratchet_store::missing_schema(&mut conn).await?)
        })
        .await?;
        if !missing.is_empty() {
            return Err(EngineError::SchemaMissing { missing });
        }
        let mut node_pools = self.node_pools;
        if !node_pools.contains::<DbConnection>() {
            node_pools.insert::<DbConnection>(Arc::new(pool.clone()));
        }
        let shared = Arc::new(EngineShared {
            pool,
            node_pools,
            node_session: self.config.pool.session,
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
            omicron_readable_log: self.config.omicron_readable_log,
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
            quiesce: Arc::default(),
            periodic: Arc::default(),
            recovery_scope: self.config.recovery_scope,
        };
        let report = engine.recover().await?;
        if let Some(interval) = self.config.recovery_interval {
            engine.spawn_periodic_recovery(interval);
        }
        Ok((engine, report))
    }
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

    fn registered<S: SagaDef>(&self) -> Result<Arc<Registered<S>>, EngineError> {
        self.registries
            .get(S::NAME)
            .and_then(|any| Arc::clone(any).downcast::<Registered<S>>().ok())
            .ok_or_else(|| EngineError::UnknownSaga(S::NAME.to_owned()))
    }
}
