//! The node types of one saga definition, as steno actions ([`NodeRegistry`]).
//!
//! A saga's `register` ([`SagaDef::register`], written by
//! [`declare_saga_nodes!`](crate::declare_saga_nodes)) fills one. Each action name belongs to one node type
//! (of the saga itself, or of a saga it nests): a second type under one name is a duplicate, and the
//! registration fails. The typed node kinds register through methods their runners define (`db` and
//! `nested_db` in `run/db_node.rs`, `external` and `nested_external` in `run/external_node.rs`, plain steno
//! actions' `unchecked_steno_action` in `run/unchecked.rs`); nested sagas register here.

use crate::saga::builder::{JOIN_ACTION, JoinAction};
use crate::saga::definition::{SagaDef, StenoSaga};
use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The node types of one saga definition, as steno actions.
pub struct NodeRegistry<S: SagaDef> {
    pub(crate) actions: steno::ActionRegistry<StenoSaga<S>>,
    /// Action name to the type it runs: `(T, N)` for node type `N` of saga `T` (the saga itself, or one it
    /// nests), so that one node type registered for two sagas under one name (whose parameters differ) is a
    /// duplicate, not a silent choice of one.
    pub(crate) names: HashMap<&'static str, TypeId>,
    /// The action names of database nodes: the store holds their `started` events for their own transactions
    /// to write (`SagaRegistration::db_nodes`).
    pub(crate) db_actions: HashSet<&'static str>,
    pub(crate) duplicate: Option<String>,
    /// Why a saga this one nests refused to be nested ([`SagaDef::register_nested`]): the registration fails.
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

    /// Claims action `name` for type `T`: whether it is new (to be registered); a second type under one
    /// name is recorded as a duplicate.
    pub(crate) fn claim<T: 'static>(&mut self, name: &'static str) -> bool {
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

    /// Every node type of saga `T`, which `S`'s DAG nests as a subsaga ([`SagaBuilder::subsaga`](crate::SagaBuilder::subsaga)), registered
    /// under `S`'s steno saga type (so that recovery can run a DAG holding `T`'s nodes): through
    /// [`SagaDef::register_nested`], and so on down for the sagas `T` nests. A saga nesting itself, directly
    /// or not, recurses without end here: the engine does not check for it.
    pub fn subsaga<T: SagaDef<Context = S::Context, Error = S::Error>>(&mut self) -> &mut Self {
        T::register_nested(self);
        self
    }

    /// Records that saga `saga`, which this saga nests, refuses to be nested, and why: the registration fails.
    #[doc(hidden)]
    pub fn refuse_nested(&mut self, saga: &str, why: &str) -> &mut Self {
        self.refused
            .get_or_insert_with(|| format!("saga {saga:?} cannot be nested as a subsaga: {why}"));
        self
    }

    /// Refuses the registration of node type `node` when its output type `O` is a `Result`. The engine never
    /// reads a node's output as success or failure (a node fails from its prepare, commit or call, never from
    /// `finish`), so a `Result` output would be a failure the engine silently treats as data. A runtime check,
    /// by the type's name (`std::any::type_name`): it catches an output that *is* a `Result` (under any alias,
    /// `anyhow::Result` too), not one nested inside another type (a tuple holding a `Result`).
    pub(crate) fn refuse_result_output<O>(&mut self, node: &str) {
        let output = std::any::type_name::<O>();
        if output.starts_with("core::result::Result<") {
            self.refused.get_or_insert_with(|| {
                format!(
                    "node type {node:?} outputs {output}: a node's output is data, never a failure (a node \
                     fails from its prepare, commit or call; its finish cannot fail), so a Result output is \
                     refused"
                )
            });
        }
    }
}

/// The type a plain steno action is registered (and laid out) as: every such action of a saga shares it.
pub(crate) type UncheckedAction<S> = Arc<dyn steno::Action<StenoSaga<S>>>;
