//! Laying out a saga's DAG ([`SagaBuilder`], [`Stage`]): node paths, subsagas, the join after a parallel last
//! stage, and the check that every node laid out is one of the saga's declared node types.
//!
//! The typed nodes' own layout methods (`db`, `external`, on [`SagaBuilder`] and [`Stage`]) live with their
//! runners in `run/` (they name the steno action the node runs); constants, subsagas and plain steno actions
//! are laid out here.

use crate::saga::definition::{NodeKind, SagaDef, StenoSaga};
use crate::saga::registry::{NodeRegistry, UncheckedAction};
use serde::Serialize;
use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// The separator of a node path: a node inside subsaga `attach_disk_0` named `attach` there has path
/// `attach_disk_0/attach` (see [`SagaBuilder::subsaga`]). Node names may not contain it.
pub const PATH_SEPARATOR: char = ratchet_store::PATH_SEPARATOR;

/// The name of the node [`SagaBuilder`] appends after a parallel last stage: a saga's (or subsaga's) output
/// is its last node's, and steno wants exactly one last node. Its output is a JSON object holding every
/// node of that last stage's output by name. A DAG may not name a node of its own so.
pub const JOIN_NODE: &str = "ratchet.join";

/// The action [`JOIN_NODE`] runs, registered for every saga.
pub(crate) const JOIN_ACTION: &str = "ratchet.join";

/// The suffix of the constant node that holds a subsaga's parameters, beside the subsaga in its parent:
/// subsaga `attach_disk_0`'s parameters are node `attach_disk_0.params`.
pub const SUBSAGA_PARAMS_SUFFIX: &str = ".params";

/// A built DAG: steno's DAG, every typed node's arguments by path (a subsaga's nodes' too: paths are unique in
/// the whole DAG), every node by path and kind in steno's node order, and every node type laid out.
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
    pub(crate) error: Option<String>,
    _saga: PhantomData<S>,
}

/// One parallel stage of a DAG.
pub struct Stage<'a, S: SagaDef> {
    pub(crate) builder: &'a mut SagaBuilder<S>,
    nodes: Vec<(String, steno::Node)>,
    order: Vec<(String, NodeKind)>,
    /// The constant nodes holding this stage's subsagas' parameters: a stage of their own, just before (steno
    /// wants a subsaga's parameters node appended before the subsaga).
    params: Vec<(String, steno::Node)>,
    params_order: Vec<(String, NodeKind)>,
}

impl<S: SagaDef> Stage<'_, S> {
    /// **Unchecked**: a plain steno action node (see [`NodeRegistry::unchecked_steno_action`]); register the
    /// same action there.
    pub fn unchecked_steno_action(
        &mut self,
        name: &str,
        action: &dyn steno::Action<StenoSaga<S>>,
    ) -> &mut Self {
        let node =
            self.builder
                .planned::<UncheckedAction<S>, _>(name, &serde_json::Value::Null, action);
        // A plain action has no arguments but the saga's parameters: none is recorded for it.
        if let Some((path, _)) = &node {
            self.builder.node_args.remove(path);
        }
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
    pub fn subsaga<T: SagaDef<Context = S::Context, Error = S::Error>>(
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
        // The subsaga's parameters are its own (what its plain actions read with `saga_params`); its typed
        // nodes' arguments join the saga's, by path.
        let steno_params = match serde_json::to_value(params) {
            Ok(steno_params) => steno_params,
            Err(error) => {
                self.builder.fail(format!(
                    "the parameters of subsaga {path:?} do not encode: {error}"
                ));
                return self;
            }
        };
        self.params.push((
            params_name.clone(),
            steno::Node::constant(&params_name, steno_params),
        ));
        self.params_order.push((params_path, NodeKind::Constant));
        self.builder.node_args.extend(built.node_args);
        self.order.extend(built.nodes);
        self.builder.used.extend(built.used);
        let node = steno::Node::subsaga(name, built.dag, &params_name);
        self.push(name, NodeKind::Subsaga, Some((path, node)))
    }

    pub(crate) fn push(
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
    pub(crate) fn planned<N: 'static, T: Serialize>(
        &mut self,
        name: &str,
        node: &T,
        action: &dyn steno::Action<StenoSaga<S>>,
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
    pub fn subsaga<T: SagaDef<Context = S::Context, Error = S::Error>>(
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

/// Typed nodes for a DAG built with steno's own `DagBuilder` (as Nexus's `make_saga_dag` builds one), which
/// [`Engine::create_from_dag`](crate::Engine::create_from_dag) then creates as it is: each method returns the
/// steno node to append, and keeps the node's arguments for the engine to record beside the DAG.
///
/// A typed node's label is its name, which is its path (such a DAG has no ratchet subsagas), by which its
/// records are kept; its type must be in the saga's node list, as for [`SagaBuilder`]. The plain steno
/// actions around it keep their own names and labels (they are known by their names); no other action node
/// may have a typed node's path (one named so inside a steno subsaga: the engine refuses such a DAG). The typed nodes' own layout methods (`db`, `external`) live with their runners in
/// `run/`.
pub struct TypedNodes<S: SagaDef> {
    pub(crate) builder: SagaBuilder<S>,
}

impl<S: SagaDef> TypedNodes<S> {
    /// No typed node yet (a DAG of plain steno actions needs no more).
    pub fn new() -> Self {
        TypedNodes {
            builder: SagaBuilder::new(),
        }
    }

    /// A node laid out by `planned`, or what is wrong with it.
    pub(crate) fn node(
        &mut self,
        planned: Option<(String, steno::Node)>,
    ) -> Result<steno::Node, crate::EngineError> {
        match (planned, self.builder.error.take()) {
            (Some((_, node)), None) => Ok(node),
            (_, error) => Err(crate::EngineError::BadDag {
                saga: S::NAME.to_owned(),
                message: error.unwrap_or_else(|| "the node was not laid out".to_owned()),
            }),
        }
    }

    /// Every typed node's arguments, by path.
    pub(crate) fn into_args(self) -> BTreeMap<String, serde_json::Value> {
        self.builder.node_args
    }
}

impl<S: SagaDef> Default for TypedNodes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SagaDef> fmt::Debug for TypedNodes<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedNodes")
            .field("nodes", &self.builder.node_args.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The action of [`JOIN_NODE`]: outputs the outputs of the nodes its arguments name (the parallel last stage
/// it follows), as an object by node name. It writes nothing, so it needs none of a typed node's machinery; a
/// re-run computes the same object. Its undo does nothing.
pub(crate) struct JoinAction<S>(PhantomData<fn() -> S>);

impl<S> JoinAction<S> {
    pub(crate) fn new() -> Self {
        JoinAction(PhantomData)
    }
}

impl<S> fmt::Debug for JoinAction<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinAction")
    }
}

impl<S: SagaDef> steno::Action<StenoSaga<S>> for JoinAction<S> {
    fn do_it(
        &self,
        ctx: steno::ActionContext<StenoSaga<S>>,
    ) -> futures::future::BoxFuture<'_, steno::ActionResult> {
        Box::pin(async move { join_outputs(&ctx).map(Arc::new) })
    }

    fn undo_it(
        &self,
        _: steno::ActionContext<StenoSaga<S>>,
    ) -> futures::future::BoxFuture<'_, steno::UndoResult> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> steno::ActionName {
        steno::ActionName::new(JOIN_ACTION)
    }
}

fn join_outputs<S: SagaDef>(
    ctx: &steno::ActionContext<StenoSaga<S>>,
) -> Result<serde_json::Value, steno::ActionError> {
    let path = ctx.node_label();
    let failed = |message: String| steno::ActionError::action_failed(message);
    let (_, args) = ctx.user_data().node_input(ctx, &path).map_err(failed)?;
    let names: Vec<String> = serde_json::from_value(args)
        .map_err(|e| failed(format!("the arguments of {path:?} do not decode: {e}")))?;
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
        type Error = crate::Untyped;

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
