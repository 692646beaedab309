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
///     }
///     fn build(/* … */) { /* … */ }
/// }
/// ```
///
/// The list is the only place a saga names its node types: `build` only lays them out. A type `build` uses
/// and the list lacks fails every creation of a saga whose DAG holds it (see [`SagaDef`]). The check runs when
/// a saga is created rather than at compile time, so that sagas written without this macro (a `register` by
/// hand) keep compiling: `SagaBuilder` cannot require a declaration they lack. A complete saga using it is
/// the example saga (`ratchet_test_utils::example`).
#[macro_export]
macro_rules! declare_saga_nodes {
    ($($nodes:tt)*) => {
        fn register(registry: &mut $crate::NodeRegistry<Self>) {
            $crate::__register_saga_nodes!(registry; $($nodes)*);
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
}

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
}

/// The node types of one saga definition, as steno actions.
pub struct NodeRegistry<S: SagaDef> {
    pub(crate) actions: steno::ActionRegistry<Ratchet<S>>,
    pub(crate) names: HashMap<&'static str, TypeId>,
    /// The action names of database nodes: on resume, the engine defers their `started` events by these.
    pub(crate) db_actions: HashSet<&'static str>,
    pub(crate) duplicate: Option<String>,
}

impl<S: SagaDef> NodeRegistry<S> {
    pub(crate) fn new() -> Self {
        NodeRegistry {
            actions: steno::ActionRegistry::new(),
            names: HashMap::new(),
            db_actions: HashSet::new(),
            duplicate: None,
        }
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
        if self.claim::<N>(N::NAME) {
            self.db_actions.insert(N::NAME);
            self.actions.register(Arc::new(DbAction::<S, N>::new()));
        }
        self
    }

    pub fn external<N: ExternalNode<S>>(&mut self) -> &mut Self {
        if self.claim::<N>(N::NAME) {
            self.actions
                .register(Arc::new(ExternalAction::<S, N>::new()));
        }
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
        if self.claim::<UncheckedAction<S>>(name) {
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

/// The saga's parameters, for a plain steno action.
pub fn steno_action_params<S: SagaDef>(
    ctx: &steno::ActionContext<Ratchet<S>>,
) -> Result<S::Params, steno::ActionError> {
    Ok(ctx.saga_params::<Envelope<S::Params>>()?.params)
}

/// A built DAG, every node's arguments, and every node's kind.
pub(crate) type BuiltDag = (
    steno::Dag,
    BTreeMap<String, serde_json::Value>,
    BTreeMap<String, NodeKind>,
);

/// Lays out a saga's DAG: stages run one after another; the nodes of one stage run in parallel.
pub struct SagaBuilder<S: SagaDef> {
    stages: Vec<Vec<steno::Node>>,
    pub(crate) node_args: BTreeMap<String, serde_json::Value>,
    pub(crate) kinds: BTreeMap<String, NodeKind>,
    /// The saga's declared node types ([`SagaDef::register`]), by action name: every node laid out must be
    /// one of them.
    declared: BTreeMap<steno::ActionName, TypeId>,
    error: Option<String>,
    _saga: PhantomData<S>,
}

/// One parallel stage of a DAG.
pub struct Stage<'a, S: SagaDef> {
    builder: &'a mut SagaBuilder<S>,
    nodes: Vec<steno::Node>,
}

impl<S: SagaDef> Stage<'_, S> {
    pub fn db<N: DbNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = DbAction::<S, N>::new();
        let node = self
            .builder
            .planned::<N, _>(name, &node, NodeKind::Db, &action);
        self.nodes.extend(node);
        self
    }

    pub fn external<N: ExternalNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = ExternalAction::<S, N>::new();
        let node = self
            .builder
            .planned::<N, _>(name, &node, NodeKind::External, &action);
        self.nodes.extend(node);
        self
    }

    /// **Unchecked**: a plain steno action node (see [`NodeRegistry::unchecked_steno_action`]); register the
    /// same action there.
    pub fn unchecked_steno_action(
        &mut self,
        name: &str,
        action: &dyn steno::Action<Ratchet<S>>,
    ) -> &mut Self {
        let node = self.builder.planned::<UncheckedAction<S>, _>(
            name,
            &serde_json::Value::Null,
            NodeKind::Steno,
            action,
        );
        self.nodes.extend(node);
        self
    }

    /// A constant node: a value later nodes can look up by `name`.
    pub fn constant(&mut self, name: &str, value: impl Serialize) -> &mut Self {
        match serde_json::to_value(value) {
            Ok(value) => {
                self.builder
                    .kinds
                    .insert(name.to_owned(), NodeKind::Constant);
                self.nodes.push(steno::Node::constant(name, value));
            }
            Err(error) => self
                .builder
                .fail(format!("constant {name:?} does not encode: {error}")),
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
            kinds: BTreeMap::new(),
            declared,
            error: None,
            _saga: PhantomData,
        }
    }

    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    /// Node `name`, of type `N` (as [`NodeRegistry`] records it), running `action`; or `None`, with the
    /// builder failed, when its arguments do not encode or `N` is not one of the saga's declared node types.
    /// steno would refuse an undeclared action too, but only by name: an action name declared for another
    /// type would run that type's phases on this node's arguments.
    fn planned<N: 'static, T: Serialize>(
        &mut self,
        name: &str,
        node: &T,
        kind: NodeKind,
        action: &dyn steno::Action<Ratchet<S>>,
    ) -> Option<steno::Node> {
        let action_name = action.name();
        let declared = self.declared.get(&action_name).copied();
        if declared != Some(TypeId::of::<N>()) {
            let node_type = std::any::type_name::<N>();
            let problem = match declared {
                None => "no node type of that name is",
                Some(_) => "that name is declared for another type, and this one is not",
            };
            self.fail(format!(
                "node {name:?} is a {node_type} (action {action_name:?}), but {problem} in the saga's \
                 node list (SagaDef::register, declare_saga_nodes!)"
            ));
            return None;
        }
        match serde_json::to_value(node) {
            Ok(args) => {
                self.node_args.insert(name.to_owned(), args);
                self.kinds.insert(name.to_owned(), kind);
                // The label is the node's name: actions find their own arguments and records by it.
                Some(steno::Node::action(name, name, action))
            }
            Err(error) => {
                self.fail(format!("node {name:?} does not encode: {error}"));
                None
            }
        }
    }

    /// Appends a stage of nodes that run in parallel.
    pub fn stage(&mut self, lay_out: impl FnOnce(&mut Stage<'_, S>)) -> &mut Self {
        let mut stage = Stage {
            builder: self,
            nodes: Vec::new(),
        };
        lay_out(&mut stage);
        let nodes = stage.nodes;
        if !nodes.is_empty() {
            self.stages.push(nodes);
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

    /// The steno DAG, or what is wrong with it.
    pub(crate) fn build_dag(self) -> Result<BuiltDag, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut dag = steno::DagBuilder::new(steno::SagaName::new(S::NAME));
        for stage in self.stages {
            dag.append_parallel(stage);
        }
        let dag = dag.build().map_err(|e| e.to_string())?;
        Ok((dag, self.node_args, self.kinds))
    }
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
