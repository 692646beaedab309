//! Saga definitions: a name, parameters, the node types a saga may use, and how to build its DAG.

use crate::engine::EngineShared;
use crate::exec_db::DbAction;
use crate::exec_external::ExternalAction;
use crate::node::{DbNode, ExternalNode};
use ratchet_store::SagaLogHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use uuid::Uuid;

/// A saga type.
///
/// `register` names every node type the saga may use (recovery needs them without the parameters); `build`
/// lays out the DAG for one set of parameters. Node names in the DAG and node `NAME`s are persisted: keep them
/// stable across releases, and bump `VERSION` when the DAG's shape changes.
///
/// Write `register` with [`declare_saga_nodes!`](crate::declare_saga_nodes), the one list of the saga's node
/// types. A node that `build` lays out but that list lacks (or whose `NAME` the list gives to another type)
/// fails the saga's creation with [`EngineError::BadDag`](crate::EngineError::BadDag), naming the node and
/// its type, before anything is written.
pub trait SagaDef: Sized + Send + Sync + 'static {
    const NAME: &'static str;
    const VERSION: i32 = 1;
    type Params: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static;
    /// What external nodes (and prepares) may use: clients of other services, configuration.
    type Context: Send + Sync + 'static;

    /// Registers every node type the saga may use: write it with
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes).
    fn register(registry: &mut NodeRegistry<Self>);

    /// Lays out the DAG. Fails (with a message naming the problem) on parameters that make no saga.
    fn build(params: &Self::Params, builder: &mut SagaBuilder<Self>) -> Result<(), String>;

    /// Registers this saga's node types in the registry of a saga `R` that nests it as a subsaga
    /// ([`SagaBuilder::subsaga`]), under `R`'s steno saga type. [`declare_saga_nodes!`](crate::declare_saga_nodes)
    /// writes it from the same list as `register`, and the list of `R` names this saga (`subsaga Child`) to
    /// call it. The default refuses: a saga whose `register` is written by hand cannot be nested (the
    /// registration of `R` then fails with [`EngineError::BadRegistration`](crate::EngineError::BadRegistration)).
    fn register_nested<R: SagaDef<Context = Self::Context>>(registry: &mut NodeRegistry<R>) {
        registry.refuse_nested(
            Self::NAME,
            "its node types are registered by hand, not with declare_saga_nodes!",
        );
    }
}

/// Declares a saga's node types, once, and generates its [`SagaDef::register`] from them. It goes inside
/// `impl SagaDef for MySaga`, where `register` would be:
///
/// ```ignore
/// impl SagaDef for InstanceCreate {
///     // NAME, Params, Context …
///     ratchet_engine::declare_saga_nodes! {
///         db CreateInstanceRecord,          // a `DbNode<Self>` (or `CommitOnlyDbNode`)
///         external EnsureVmm,               // an `ExternalNode<Self>` (or `CallOnlyExternalNode`)
///         unchecked LEGACY_ATTACH => legacy_attach_action(), // a plain steno action: name => action
///         subsaga DiskAttach,               // a saga `build` nests (`SagaBuilder::subsaga`): its nodes
///     }
///     fn build(/* … */) { /* … */ }
/// }
/// ```
///
/// The list is the only place a saga names its node types: `build` only lays them out. A type `build` uses
/// and the list lacks fails every creation of a saga whose DAG holds it (see [`SagaDef`]). The check runs when
/// a saga is created rather than at compile time, so that sagas written without this macro (a `register` by
/// hand) keep compiling: `SagaBuilder` cannot require a declaration they lack. A complete saga using it is
/// the example saga (`ratchet_example_saga`).
#[macro_export]
macro_rules! declare_saga_nodes {
    ($($nodes:tt)*) => {
        fn register(registry: &mut $crate::NodeRegistry<Self>) {
            $crate::__register_saga_nodes!(registry; $($nodes)*);
        }

        fn register_nested<R>(registry: &mut $crate::NodeRegistry<R>)
        where
            R: $crate::SagaDef<Context = <Self as $crate::SagaDef>::Context>,
        {
            $crate::__register_nested_nodes!(registry, Self; $($nodes)*);
        }
    };
}

/// The muncher behind [`declare_saga_nodes!`](crate::declare_saga_nodes): one registration a list item.
#[doc(hidden)]
#[macro_export]
macro_rules! __register_saga_nodes {
    ($registry:ident;) => {};
    ($registry:ident; db $node:ty $(, $($rest:tt)*)?) => {
        $registry.db::<$node>();
        $crate::__register_saga_nodes!($registry; $($($rest)*)?);
    };
    ($registry:ident; external $node:ty $(, $($rest:tt)*)?) => {
        $registry.external::<$node>();
        $crate::__register_saga_nodes!($registry; $($($rest)*)?);
    };
    ($registry:ident; unchecked $name:expr => $action:expr $(, $($rest:tt)*)?) => {
        $registry.unchecked_steno_action($name, $action);
        $crate::__register_saga_nodes!($registry; $($($rest)*)?);
    };
    ($registry:ident; subsaga $child:ty $(, $($rest:tt)*)?) => {
        $registry.subsaga::<$child>();
        $crate::__register_saga_nodes!($registry; $($($rest)*)?);
    };
}

/// The muncher behind [`declare_saga_nodes!`](crate::declare_saga_nodes)'s `register_nested`: the same list,
/// registered under the nesting saga's steno type. An unchecked steno action is typed for its own saga and
/// cannot be: a saga that has one refuses to be nested.
#[doc(hidden)]
#[macro_export]
macro_rules! __register_nested_nodes {
    ($registry:ident, $saga:ty;) => {};
    ($registry:ident, $saga:ty; db $node:ty $(, $($rest:tt)*)?) => {
        $registry.nested_db::<$saga, $node>();
        $crate::__register_nested_nodes!($registry, $saga; $($($rest)*)?);
    };
    ($registry:ident, $saga:ty; external $node:ty $(, $($rest:tt)*)?) => {
        $registry.nested_external::<$saga, $node>();
        $crate::__register_nested_nodes!($registry, $saga; $($($rest)*)?);
    };
    ($registry:ident, $saga:ty; unchecked $name:expr => $action:expr $(, $($rest:tt)*)?) => {
        $registry.refuse_nested(
            <$saga as $crate::SagaDef>::NAME,
            "it runs an unchecked steno action, which is typed for its own saga only",
        );
        $crate::__register_nested_nodes!($registry, $saga; $($($rest)*)?);
    };
    ($registry:ident, $saga:ty; subsaga $child:ty $(, $($rest:tt)*)?) => {
        $registry.subsaga::<$child>();
        $crate::__register_nested_nodes!($registry, $saga; $($($rest)*)?);
    };
}

/// A `Send + Sync` marker of a type parameter that is never stored (an action's saga and node types).
pub(crate) type Marker<T> = fn() -> T;

/// steno's saga type for a ratchet saga definition.
pub struct Ratchet<S>(PhantomData<S>);

impl<S> fmt::Debug for Ratchet<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ratchet")
    }
}

impl<S: SagaDef> steno::SagaType for Ratchet<S> {
    type ExecContextType = SagaCx<S>;
}

/// The per-saga context every action of one saga sees.
pub struct SagaCx<S: SagaDef> {
    pub(crate) saga_id: Uuid,
    pub(crate) shared: Arc<EngineShared>,
    pub(crate) log: SagaLogHandle,
    pub(crate) app: Arc<S::Context>,
    /// Node name to steno node id.
    pub(crate) node_ids: BTreeMap<String, u32>,
    /// For a saga this engine took over from a log (recovery, adoption, retry-unwind): the nodes that log
    /// shows `started`. Empty for a saga created here.
    pub(crate) started_in_log: HashSet<u32>,
    /// The database nodes for which this engine sent a `COMMIT` that may have landed (see
    /// [`SagaCx::commit_may_exist`]).
    pub(crate) commit_sent: std::sync::Mutex<HashSet<u32>>,
    /// The nodes (database nodes, and compensations) one of whose `COMMIT`s had an unknown outcome: never
    /// forgotten, whatever later attempts meet (see `commit_outcome.rs`).
    pub(crate) commit_unknown: std::sync::Mutex<HashSet<u32>>,
    /// Whether this engine took the saga over from the database (recovery, adoption, retry-unwind), so that
    /// a node start may follow a crash in the same node ([`crate::EngineConfig::start_limit`]).
    pub(crate) resumed: bool,
    /// Held by a database node's transaction of this saga from before `BEGIN` to its end: the saga's
    /// database transactions run one at a time (see [`SagaCx::db_turn`]).
    pub(crate) db_turn: tokio::sync::Mutex<()>,
}

impl<S: SagaDef> SagaCx<S> {
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

/// What steno holds as a ratchet saga's parameters: the definition's parameters, plus every node's own value
/// (its arguments), by node name.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<P> {
    pub(crate) params: P,
    pub(crate) nodes: BTreeMap<String, serde_json::Value>,
}

/// What kind of node a DAG node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Db,
    External,
    Constant,
    /// A plain steno action, with none of ratchet's guarantees (comparison fixtures only).
    Steno,
    /// A subsaga ([`SagaBuilder::subsaga`]): its entry stands for its output (steno's subsaga end node); its
    /// own nodes are listed before it, by their paths.
    Subsaga,
    /// The node [`SagaBuilder`] appends after a parallel last stage ([`JOIN_NODE`]): it commits nothing, and
    /// outputs the last stage's outputs by node name.
    Join,
}

/// The node types of one saga definition, as steno actions.
pub struct NodeRegistry<S: SagaDef> {
    pub(crate) actions: steno::ActionRegistry<Ratchet<S>>,
    /// Action name to the type it runs: `(T, N)` for node type `N` of saga `T` (the saga itself, or one it
    /// nests), so that one node type registered for two sagas under one name (whose parameters differ) is a
    /// duplicate, not a silent choice of one.
    pub(crate) names: HashMap<&'static str, TypeId>,
    /// The action names of database nodes: on resume, the engine defers their `started` events by these.
    pub(crate) db_actions: HashSet<&'static str>,
    pub(crate) duplicate: Option<String>,
    /// Why a saga this one nests cannot be nested ([`SagaDef::register_nested`]): the registration fails.
    pub(crate) refused: Option<String>,
}

impl<S: SagaDef> NodeRegistry<S> {
    /// A registry holding the engine's own [`JOIN_NODE`] action, which every saga may need.
    pub(crate) fn new() -> Self {
        let mut registry = NodeRegistry {
            actions: steno::ActionRegistry::new(),
            names: HashMap::new(),
            db_actions: HashSet::new(),
            duplicate: None,
            refused: None,
        };
        if registry.claim::<JoinAction<S>>(JOIN_ACTION) {
            registry.actions.register(Arc::new(JoinAction::<S>::new()));
        }
        registry
    }

    fn claim<T: 'static>(&mut self, name: &'static str) -> bool {
        match self.names.get(name) {
            None => {
                self.names.insert(name, TypeId::of::<T>());
                true
            }
            Some(existing) if *existing == TypeId::of::<T>() => false,
            Some(_) => {
                self.duplicate = Some(name.to_owned());
                false
            }
        }
    }

    pub fn db<N: DbNode<S>>(&mut self) -> &mut Self {
        self.nested_db::<S, N>()
    }

    pub fn external<N: ExternalNode<S>>(&mut self) -> &mut Self {
        self.nested_external::<S, N>()
    }

    /// Database node type `N` of saga `T`, which is `S` or a saga `S` nests (what
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes) writes for a nested saga's `db` entries).
    #[doc(hidden)]
    pub fn nested_db<T: SagaDef<Context = S::Context>, N: DbNode<T>>(&mut self) -> &mut Self {
        let name = <N as DbNode<T>>::NAME;
        if self.claim::<(T, N)>(name) {
            self.db_actions.insert(name);
            self.actions.register(Arc::new(DbAction::<S, T, N>::new()));
        }
        self
    }

    /// External node type `N` of saga `T`, which is `S` or a saga `S` nests.
    #[doc(hidden)]
    pub fn nested_external<T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
        &mut self,
    ) -> &mut Self {
        if self.claim::<(T, N)>(<N as ExternalNode<T>>::NAME) {
            self.actions
                .register(Arc::new(ExternalAction::<S, T, N>::new()));
        }
        self
    }

    /// Every node type of saga `T`, which `S`'s DAG nests as a subsaga ([`SagaBuilder::subsaga`]), registered
    /// under `S`'s steno saga type (so that recovery can run a DAG holding `T`'s nodes): through
    /// [`SagaDef::register_nested`], and so on down for the sagas `T` nests. A saga nesting itself, directly
    /// or not, recurses without end here: the engine does not check for it.
    pub fn subsaga<T: SagaDef<Context = S::Context>>(&mut self) -> &mut Self {
        T::register_nested(self);
        self
    }

    /// Records that saga `saga`, which this saga nests, cannot be nested, and why: the registration fails.
    #[doc(hidden)]
    pub fn refuse_nested(&mut self, saga: &str, why: &str) -> &mut Self {
        self.refused
            .get_or_insert_with(|| format!("saga {saga:?} cannot be nested as a subsaga: {why}"));
        self
    }

    /// **Unchecked**: a plain steno action, registered as is. It gets none of ratchet's guarantees: no commit
    /// record, no exactly-once replay, no compensation after a failure, no read-only prepare, no panic guard,
    /// no fencing of its own writes (only of steno's log events). Its commit point is wherever its code puts
    /// it, and a fallible step after it leaks exactly as in plain steno (Omicron issue 10695). It exists for
    /// incremental adoption (a saga ported node by node, a plain steno saga recovered beside typed ones) and
    /// for the pre-fix comparison fixtures. `name` must be the action's own name (what it was made with).
    pub fn unchecked_steno_action(
        &mut self,
        name: &'static str,
        action: Arc<dyn steno::Action<Ratchet<S>>>,
    ) -> &mut Self {
        if self.claim::<(S, UncheckedAction<S>)>(name) {
            self.actions.register(action);
        }
        self
    }
}

/// The type a plain steno action is registered (and laid out) as: every such action of a saga shares it.
type UncheckedAction<S> = Arc<dyn steno::Action<Ratchet<S>>>;

impl<S: SagaDef> SagaCx<S> {
    /// The saga's id.
    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// **Unchecked**: the engine's connection pool, for plain steno actions
    /// ([`NodeRegistry::unchecked_steno_action`]) only, which manage their own connections and transactions the
    /// way code did before ratchet. A typed node never needs it and must not use it: a write through it is
    /// outside the node's transaction, so nothing makes it exactly-once or compensates it (the class of bug
    /// ratchet exists to rule out). Typed nodes get no pool from the engine: only this escape hatch, whose
    /// name says what it is.
    pub fn unchecked_pool(&self) -> &ratchet_store::DbPool {
        &self.shared.pool
    }

    /// The application context the saga was registered with.
    pub fn context(&self) -> &S::Context {
        &self.app
    }
}

/// The saga's parameters, for a plain steno action: from ratchet's envelope (a saga ratchet created, whose
/// steno parameters also carry its nodes' arguments) or, failing that, bare (a saga plain steno created,
/// through Nexus's store, before ratchet took over the log). So one action body serves both while a saga is
/// being moved to ratchet.
pub fn steno_action_params<S: SagaDef>(
    ctx: &steno::ActionContext<Ratchet<S>>,
) -> Result<S::Params, steno::ActionError> {
    match ctx.saga_params::<Envelope<S::Params>>() {
        Ok(envelope) => Ok(envelope.params),
        Err(in_envelope) => ctx.saga_params::<S::Params>().map_err(|bare| {
            steno::ActionError::action_failed(format!(
                "the saga's parameters decode neither from ratchet's envelope ({in_envelope}) nor bare \
                 ({bare})"
            ))
        }),
    }
}

/// The separator of a node path: a node inside subsaga `attach_disk_0` named `attach` there has path
/// `attach_disk_0/attach` (see [`SagaBuilder::subsaga`]). Node names may not contain it.
pub const PATH_SEPARATOR: char = ratchet_store::dag::PATH_SEPARATOR;

/// The name of the node [`SagaBuilder`] appends after a parallel last stage: a saga's (or subsaga's) output
/// is its last node's, and steno wants exactly one last node. Its output is a JSON object holding every
/// node of that last stage's output by name. A DAG may not name a node of its own so.
pub const JOIN_NODE: &str = "ratchet.join";

/// The action [`JOIN_NODE`] runs, registered for every saga.
pub(crate) const JOIN_ACTION: &str = "ratchet.join";

/// The suffix of the constant node that holds a subsaga's parameters, beside the subsaga in its parent:
/// subsaga `attach_disk_0`'s parameters are node `attach_disk_0.params`.
pub const SUBSAGA_PARAMS_SUFFIX: &str = ".params";

/// A built DAG: steno's DAG, every node's arguments by path (for a subsaga: its own nodes only; they go in its
/// parameters' envelope), every node by path and kind in steno's node order, and every node type laid out.
pub(crate) struct BuiltDag {
    pub(crate) dag: steno::Dag,
    pub(crate) node_args: BTreeMap<String, serde_json::Value>,
    pub(crate) nodes: Vec<(String, NodeKind)>,
    used: Vec<UsedNodeType>,
}

/// A node type laid out in a DAG (at `path`), for the check that the saga nesting it declares it.
struct UsedNodeType {
    action: steno::ActionName,
    type_id: TypeId,
    type_name: &'static str,
    path: String,
}

/// Lays out a saga's DAG: stages run one after another; the nodes of one stage run in parallel.
///
/// # Paths
///
/// Every node has a **path**, its key in everything the engine persists (commit, compensation and start
/// records, waiting notes), in failpoints and in [`crate::PreparedSaga::nodes`]: a node of the saga itself
/// has its name as its path (so sagas without subsagas keep the keys they always had); a node inside
/// subsaga `s` (itself at path `p`) has path `p/name`. steno's own node name stays the local name (what
/// `PrepareCx::output` looks up, inside the subsaga's scope), and the path is the node's steno label, which
/// is how an action finds itself. Names are unique within their saga (steno refuses a duplicate) and may not
/// contain [`PATH_SEPARATOR`], so paths are unique in the whole DAG: two instances of one subsaga
/// (`attach_disk_0`, `attach_disk_1`) have distinct paths, records and derived ids.
///
/// # Output
///
/// A saga's output is its last node's. A DAG whose last stage runs several nodes in parallel (which steno
/// refuses: `BadOutputNode`) gets one more node, [`JOIN_NODE`], after it: the saga's output is then an object
/// of the last stage's outputs by node name (a subsaga's last stage's outputs by their names in the
/// subsaga).
pub struct SagaBuilder<S: SagaDef> {
    stages: Vec<Vec<(String, steno::Node)>>,
    pub(crate) node_args: BTreeMap<String, serde_json::Value>,
    /// Every node laid out so far, by path, in steno's node order.
    nodes: Vec<(String, NodeKind)>,
    /// The saga's declared node types ([`SagaDef::register`]), by action name: every node laid out must be
    /// one of them.
    declared: BTreeMap<steno::ActionName, TypeId>,
    used: Vec<UsedNodeType>,
    /// The path of the subsaga this builder lays out, `None` for a saga of its own.
    prefix: Option<String>,
    error: Option<String>,
    _saga: PhantomData<S>,
}

/// One parallel stage of a DAG.
pub struct Stage<'a, S: SagaDef> {
    builder: &'a mut SagaBuilder<S>,
    nodes: Vec<(String, steno::Node)>,
    order: Vec<(String, NodeKind)>,
    /// The constant nodes holding this stage's subsagas' parameters: a stage of their own, just before (steno
    /// wants a subsaga's parameters node appended before the subsaga).
    params: Vec<(String, steno::Node)>,
    params_order: Vec<(String, NodeKind)>,
}

impl<S: SagaDef> Stage<'_, S> {
    pub fn db<N: DbNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = DbAction::<S, S, N>::new();
        let node = self.builder.planned::<N, _>(name, &node, &action);
        self.push(name, NodeKind::Db, node)
    }

    pub fn external<N: ExternalNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = ExternalAction::<S, S, N>::new();
        let node = self.builder.planned::<N, _>(name, &node, &action);
        self.push(name, NodeKind::External, node)
    }

    /// **Unchecked**: a plain steno action node (see [`NodeRegistry::unchecked_steno_action`]); register the
    /// same action there.
    pub fn unchecked_steno_action(
        &mut self,
        name: &str,
        action: &dyn steno::Action<Ratchet<S>>,
    ) -> &mut Self {
        let node =
            self.builder
                .planned::<UncheckedAction<S>, _>(name, &serde_json::Value::Null, action);
        self.push(name, NodeKind::Steno, node)
    }

    /// A constant node: a value later nodes can look up by `name`.
    pub fn constant(&mut self, name: &str, value: impl Serialize) -> &mut Self {
        let Some(path) = self.builder.path_of(name) else {
            return self;
        };
        match serde_json::to_value(value) {
            Ok(value) => {
                let node = steno::Node::constant(name, value);
                self.push(name, NodeKind::Constant, Some((path, node)))
            }
            Err(error) => {
                self.builder
                    .fail(format!("constant {path:?} does not encode: {error}"));
                self
            }
        }
    }

    /// Subsaga `name`: saga `T`'s DAG for `params`, run as one node of this stage. Later nodes read its
    /// output (its last node's, see [`SagaBuilder`]) by `name`; its own nodes have paths under this one
    /// (`name/…`, see [`SagaBuilder`]'s paths), and see `params` as their saga's parameters and only the
    /// subsaga's earlier nodes as ancestors. Its parameters, with its nodes' arguments, are a constant node
    /// `name.params` ([`SUBSAGA_PARAMS_SUFFIX`]) in a stage of their own just before this one.
    ///
    /// `T`'s node types must be registered in this saga (`subsaga T` in its
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes) list): the build fails, naming the node, if one is
    /// not. A `T::build` error fails this saga's build, with the subsaga's path.
    pub fn subsaga<T: SagaDef<Context = S::Context>>(
        &mut self,
        name: &str,
        params: &T::Params,
    ) -> &mut Self {
        let Some(path) = self.builder.path_of(name) else {
            return self;
        };
        let params_name = format!("{name}{SUBSAGA_PARAMS_SUFFIX}");
        let Some(params_path) = self.builder.path_of(&params_name) else {
            return self;
        };
        let mut child = SagaBuilder::<T>::nested(path.clone());
        let built = T::build(params, &mut child).and_then(|()| child.into_dag());
        let built = match built {
            Ok(built) => built,
            Err(message) => {
                self.builder
                    .fail(format!("subsaga {path:?} (saga {:?}): {message}", T::NAME));
                return self;
            }
        };
        if let Some(missing) = built
            .used
            .iter()
            .find(|used| self.builder.declared.get(&used.action) != Some(&used.type_id))
        {
            self.builder.fail(format!(
                "node {:?} is a {} (action {:?}) of subsaga {path:?} (saga {:?}), which this saga's node list \
                 does not register: add `subsaga {}` to its declare_saga_nodes! list",
                missing.path,
                missing.type_name,
                missing.action,
                T::NAME,
                std::any::type_name::<T>(),
            ));
            return self;
        }
        let envelope = serde_json::to_value(Envelope {
            params,
            nodes: built.node_args,
        });
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                self.builder.fail(format!(
                    "the parameters of subsaga {path:?} do not encode: {error}"
                ));
                return self;
            }
        };
        self.params.push((
            params_name.clone(),
            steno::Node::constant(&params_name, envelope),
        ));
        self.params_order.push((params_path, NodeKind::Constant));
        self.order.extend(built.nodes);
        self.builder.used.extend(built.used);
        let node = steno::Node::subsaga(name, built.dag, &params_name);
        self.push(name, NodeKind::Subsaga, Some((path, node)))
    }

    fn push(
        &mut self,
        name: &str,
        kind: NodeKind,
        node: Option<(String, steno::Node)>,
    ) -> &mut Self {
        if let Some((path, node)) = node {
            self.nodes.push((name.to_owned(), node));
            self.order.push((path, kind));
        }
        self
    }
}

impl<S: SagaDef> SagaBuilder<S> {
    /// A builder for one saga of `S`, which knows `S`'s declared node types (from [`SagaDef::register`]).
    pub(crate) fn new() -> Self {
        let mut registry = NodeRegistry::<S>::new();
        S::register(&mut registry);
        let declared = registry
            .names
            .into_iter()
            .map(|(name, type_id)| (steno::ActionName::new(name), type_id))
            .collect();
        SagaBuilder {
            stages: Vec::new(),
            node_args: BTreeMap::new(),
            nodes: Vec::new(),
            declared,
            used: Vec::new(),
            prefix: None,
            error: None,
            _saga: PhantomData,
        }
    }

    /// A builder for `S` nested as the subsaga at `path`.
    fn nested(path: String) -> Self {
        let mut builder = Self::new();
        builder.prefix = Some(path);
        builder
    }

    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    /// The path of this saga's node `name`, or `None` (the builder failed) if the name cannot be one.
    fn path_of(&mut self, name: &str) -> Option<String> {
        if name.is_empty() || name.contains(PATH_SEPARATOR) {
            self.fail(format!(
                "node name {name:?} is empty or holds {PATH_SEPARATOR:?}, which separates a subsaga's path \
                 from its nodes' names"
            ));
            return None;
        }
        if name == JOIN_NODE {
            self.fail(format!(
                "node name {name:?} is the engine's own (the node after a parallel last stage)"
            ));
            return None;
        }
        Some(match &self.prefix {
            None => name.to_owned(),
            Some(prefix) => format!("{prefix}{PATH_SEPARATOR}{name}"),
        })
    }

    /// Node `name`, of type `N` (as [`NodeRegistry`] records it), running `action`: its path and steno node;
    /// or `None`, with the builder failed, when its arguments do not encode or `N` is not one of the saga's
    /// declared node types. steno would refuse an undeclared action too, but only by name: an action name
    /// declared for another type would run that type's phases on this node's arguments.
    fn planned<N: 'static, T: Serialize>(
        &mut self,
        name: &str,
        node: &T,
        action: &dyn steno::Action<Ratchet<S>>,
    ) -> Option<(String, steno::Node)> {
        let path = self.path_of(name)?;
        let action_name = action.name();
        let declared = self.declared.get(&action_name).copied();
        if declared != Some(TypeId::of::<(S, N)>()) {
            let node_type = std::any::type_name::<N>();
            let problem = match declared {
                None => "no node type of that name is",
                Some(_) => "that name is declared for another type, and this one is not",
            };
            self.fail(format!(
                "node {path:?} is a {node_type} (action {action_name:?}), but {problem} in the saga's \
                 node list (SagaDef::register, declare_saga_nodes!)"
            ));
            return None;
        }
        match serde_json::to_value(node) {
            Ok(args) => {
                self.node_args.insert(path.clone(), args);
                self.used.push(UsedNodeType {
                    action: action_name,
                    type_id: TypeId::of::<(S, N)>(),
                    type_name: std::any::type_name::<N>(),
                    path: path.clone(),
                });
                // steno's name is the local name (lookups inside the saga's scope); the label is the path:
                // actions find their own arguments and records by it.
                Some((path.clone(), steno::Node::action(name, &path, action)))
            }
            Err(error) => {
                self.fail(format!("node {path:?} does not encode: {error}"));
                None
            }
        }
    }

    /// Appends a stage of nodes that run in parallel.
    pub fn stage(&mut self, lay_out: impl FnOnce(&mut Stage<'_, S>)) -> &mut Self {
        let mut stage = Stage {
            builder: self,
            nodes: Vec::new(),
            order: Vec::new(),
            params: Vec::new(),
            params_order: Vec::new(),
        };
        lay_out(&mut stage);
        let Stage {
            nodes,
            order,
            params,
            params_order,
            ..
        } = stage;
        if !params.is_empty() {
            self.stages.push(params);
            self.nodes.extend(params_order);
        }
        if !nodes.is_empty() {
            self.stages.push(nodes);
            self.nodes.extend(order);
        }
        self
    }

    /// Appends a database node as a stage of its own.
    pub fn db<N: DbNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        self.stage(|s| {
            s.db(name, node);
        })
    }

    /// Appends an external node as a stage of its own.
    pub fn external<N: ExternalNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        self.stage(|s| {
            s.external(name, node);
        })
    }

    /// Appends a constant node as a stage of its own.
    pub fn constant(&mut self, name: &str, value: impl Serialize) -> &mut Self {
        self.stage(|s| {
            s.constant(name, value);
        })
    }

    /// Appends subsaga `name` (saga `T` for `params`) as a stage of its own (after the stage of its
    /// parameters' constant); see [`Stage::subsaga`].
    ///
    /// ```ignore
    /// ratchet_engine::declare_saga_nodes! { db CreateInstance, subsaga DiskAttach }
    /// fn build(p: &Params, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
    ///     dag.db("create_instance", CreateInstance { id: p.id });
    ///     dag.stage(|s| { for (i, disk) in p.disks.iter().enumerate() {
    ///         s.subsaga::<DiskAttach>(&format!("attach_disk_{i}"), &disk.attach_params()); } });
    ///     Ok(())  // later nodes read `cx.output::<Attached>("attach_disk_0")`
    /// }
    /// ```
    pub fn subsaga<T: SagaDef<Context = S::Context>>(
        &mut self,
        name: &str,
        params: &T::Params,
    ) -> &mut Self {
        self.stage(|s| {
            s.subsaga::<T>(name, params);
        })
    }

    /// The steno DAG, or what is wrong with it.
    pub(crate) fn build_dag(self) -> Result<BuiltDag, String> {
        self.into_dag()
    }

    /// The steno DAG (a saga's, or a subsaga's to nest), with a [`JOIN_NODE`] after a parallel last stage.
    fn into_dag(mut self) -> Result<BuiltDag, String> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        if let Some(last) = self.stages.last().filter(|stage| stage.len() > 1) {
            let names: Vec<String> = last.iter().map(|(name, _)| name.clone()).collect();
            let path = match &self.prefix {
                None => JOIN_NODE.to_owned(),
                Some(prefix) => format!("{prefix}{PATH_SEPARATOR}{JOIN_NODE}"),
            };
            let node = steno::Node::action(JOIN_NODE, &path, &JoinAction::<S>::new());
            self.node_args
                .insert(path.clone(), serde_json::Value::from(names));
            self.nodes.push((path, NodeKind::Join));
            self.stages.push(vec![(JOIN_NODE.to_owned(), node)]);
        }
        let mut dag = steno::DagBuilder::new(steno::SagaName::new(S::NAME));
        for stage in self.stages {
            dag.append_parallel(stage.into_iter().map(|(_, node)| node).collect());
        }
        let dag = dag.build().map_err(|e| e.to_string())?;
        Ok(BuiltDag {
            dag,
            node_args: self.node_args,
            nodes: self.nodes,
            used: self.used,
        })
    }
}

/// The action of [`JOIN_NODE`]: outputs the outputs of the nodes its arguments name (the parallel last stage
/// it follows), as an object by node name. It writes nothing, so it needs none of a typed node's machinery; a
/// re-run computes the same object. Its undo does nothing.
struct JoinAction<S>(PhantomData<fn() -> S>);

impl<S> JoinAction<S> {
    fn new() -> Self {
        JoinAction(PhantomData)
    }
}

impl<S> fmt::Debug for JoinAction<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinAction")
    }
}

impl<S: SagaDef> steno::Action<Ratchet<S>> for JoinAction<S> {
    fn do_it(
        &self,
        ctx: steno::ActionContext<Ratchet<S>>,
    ) -> futures::future::BoxFuture<'_, steno::ActionResult> {
        Box::pin(async move { join_outputs(&ctx).map(Arc::new) })
    }

    fn undo_it(
        &self,
        _: steno::ActionContext<Ratchet<S>>,
    ) -> futures::future::BoxFuture<'_, steno::UndoResult> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> steno::ActionName {
        steno::ActionName::new(JOIN_ACTION)
    }
}

fn join_outputs<S: SagaDef>(
    ctx: &steno::ActionContext<Ratchet<S>>,
) -> Result<serde_json::Value, steno::ActionError> {
    let path = ctx.node_label();
    let failed = |message: String| steno::ActionError::action_failed(message);
    let envelope: Envelope<serde_json::Value> = ctx.saga_params()?;
    let names: Vec<String> = envelope
        .nodes
        .get(&path)
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| failed(format!("the arguments of {path:?} do not decode: {e}")))?
        .ok_or_else(|| failed(format!("no arguments recorded for node {path:?}")))?;
    let mut outputs = serde_json::Map::new();
    for name in names {
        // steno panics on a name that is not an ancestor (steno#32); the names are the stage this node was
        // appended after, so each is one, but a panic here would hang the saga: it is caught.
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.lookup::<serde_json::Value>(&name)
        }))
        .map_err(|_| {
            failed(format!(
                "{path:?} joins {name:?}, which is not its ancestor"
            ))
        })??;
        outputs.insert(name, output);
    }
    Ok(serde_json::Value::Object(outputs))
}

#[cfg(test)]
mod test {
    use super::{SagaBuilder, SagaDef};
    use crate::{CommitOnlyDbNode, CommitTx, NodeError};
    use serde::{Deserialize, Serialize};

    /// A saga whose node list declares `Listed` only; its parameters say which node `build` lays out.
    struct Declares;

    impl SagaDef for Declares {
        const NAME: &'static str = "test-declares";
        type Params = String;
        type Context = ();

        crate::declare_saga_nodes! {
            db Listed,
        }

        fn build(node: &String, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
            match node.as_str() {
                "listed" => dag.db("listed", Listed),
                "parallel_last" => dag.db("listed", Listed).stage(|stage| {
                    stage.constant("a", 1).constant("b", 2);
                }),
                "slash" => dag.db("a/b", Listed),
                "unlisted" => dag.db("unlisted", Unlisted),
                _ => dag.stage(|stage| {
                    stage.db("listed", Listed).db("impostor", Impostor);
                }),
            };
            Ok(())
        }
    }

    macro_rules! commit_only_nodes {
        ($($node:ident = $name:literal),*) => {$(
            #[derive(Serialize, Deserialize)]
            struct $node;

            impl CommitOnlyDbNode for $node {
                type Saga = Declares;
                const NAME: &'static str = $name;
                type Receipt = ();
                type Output = ();

                async fn commit(&self, _: &mut CommitTx<'_>) -> Result<(), NodeError> {
                    Ok(())
                }

                fn finish((): ()) {}

                async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
                    Ok(())
                }
            }
        )*};
    }

    // The impostor takes the listed node's action name.
    commit_only_nodes!(
        Listed = "test.listed",
        Unlisted = "test.unlisted",
        Impostor = "test.listed"
    );

    fn built(node: &str) -> Result<(), String> {
        let mut builder = SagaBuilder::<Declares>::new();
        Declares::build(&node.to_owned(), &mut builder)?;
        builder.build_dag().map(drop)
    }

    #[test]
    fn a_declared_node_builds() {
        assert_eq!(built("listed"), Ok(()));
    }

    /// steno refuses a DAG whose last stage is parallel (BadOutputNode); the builder appends a join.
    #[test]
    fn a_parallel_last_stage_builds_with_a_join_after_it() {
        let mut builder = SagaBuilder::<Declares>::new();
        Declares::build(&"parallel_last".to_owned(), &mut builder).unwrap();
        let built = builder.build_dag().unwrap();
        let kinds: Vec<_> = built
            .nodes
            .iter()
            .map(|(path, kind)| (path.as_str(), *kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("listed", super::NodeKind::Db),
                ("a", super::NodeKind::Constant),
                ("b", super::NodeKind::Constant),
                (super::JOIN_NODE, super::NodeKind::Join),
            ]
        );
        assert_eq!(
            built.node_args[super::JOIN_NODE],
            serde_json::json!(["a", "b"])
        );
    }

    #[test]
    fn a_name_holding_the_path_separator_fails_the_build() {
        let error = built("slash").unwrap_err();
        assert!(error.contains("\"a/b\""), "{error}");
    }

    #[test]
    fn an_undeclared_node_fails_the_build_naming_it() {
        let error = built("unlisted").unwrap_err();
        assert!(
            error.contains("\"unlisted\"")
                && error.contains("Unlisted")
                && error.contains("no node type of that name"),
            "{error}"
        );
    }

    #[test]
    fn a_node_taking_a_declared_name_fails_the_build() {
        let error = built("impostor").unwrap_err();
        assert!(
            error.contains("\"impostor\"")
                && error.contains("Impostor")
                && error.contains("declared for another type"),
            "{error}"
        );
    }
}
