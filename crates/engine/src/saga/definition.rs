//! Saga definitions: a name, parameters, the node types a saga may use ([`SagaDef::register`], written with
//! [`declare_saga_nodes!`](crate::declare_saga_nodes)), how to build its DAG ([`SagaDef::build`]), and the
//! steno saga type a definition runs under ([`StenoSaga`]).
//!
//! This file, `registry.rs` and `builder.rs` are the one import circle of the definitions: the trait names the
//! registry and the builder it hands to `register` and `build`, and they take the trait as their bound. The
//! node kinds' own registration and layout (`NodeRegistry::db`, `Stage::db`, and the external and nested
//! forms) live with their runners in `run/`, which instantiate the steno actions, so that nothing here
//! imports a runner.

use crate::saga::builder::SagaBuilder;
use crate::saga::registry::NodeRegistry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

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
    /// The saga's typed error: what its nodes fail with besides transient and permanent infrastructure
    /// errors ([`NodeError::Saga`](crate::NodeError::Saga)), recorded in the log and carried back by the
    /// saga's outcome ([`SagaOutcome::saga_error`](crate::SagaOutcome::saga_error)), after a crash too. A
    /// saga without one writes `type Error = ratchet_engine::Untyped;` (associated-type defaults are not
    /// stable Rust); its nodes' `Result<_, NodeError>` then compiles as it always did. A subsaga shares the
    /// error type of the saga that nests it.
    type Error: crate::error::SagaError;

    /// Registers every node type the saga may use: write it with
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes).
    fn register(registry: &mut NodeRegistry<Self>);

    /// Lays out the DAG. Fails (with a message naming the problem) on parameters that make no saga.
    fn build(params: &Self::Params, builder: &mut SagaBuilder<Self>) -> Result<(), String>;

    /// Registers this saga's node types in the registry of a saga `R` that nests it as a subsaga
    /// ([`SagaBuilder::subsaga`]), under `R`'s steno saga type. [`declare_saga_nodes!`](crate::declare_saga_nodes)
    /// writes it from the same list as `register`, and the list of `R` names this saga (`subsaga Child`) to
    /// call it. The default refuses: a saga whose `register` is written by hand refuses to be nested (the
    /// registration of `R` then fails with [`EngineError::BadRegistration`](crate::EngineError::BadRegistration)).
    fn register_nested<R: SagaDef<Context = Self::Context, Error = Self::Error>>(
        registry: &mut NodeRegistry<R>,
    ) {
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
///     // NAME, Params, Context, Error …
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
            R: $crate::SagaDef<
                    Context = <Self as $crate::SagaDef>::Context,
                    Error = <Self as $crate::SagaDef>::Error,
                >,
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
    ($registry:ident; db ($conn:ty) $node:ty $(, $($rest:tt)*)?) => {
        $registry.db_on::<$conn, $node>();
        $crate::__register_saga_nodes!($registry; $($($rest)*)?);
    };
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
/// registered under the nesting saga's steno type. An unchecked steno action is typed for its own saga, so
/// it is not registered here: a saga that has one refuses to be nested.
#[doc(hidden)]
#[macro_export]
macro_rules! __register_nested_nodes {
    ($registry:ident, $saga:ty;) => {};
    ($registry:ident, $saga:ty; db ($conn:ty) $node:ty $(, $($rest:tt)*)?) => {
        $registry.nested_db_on::<$saga, $conn, $node>();
        $crate::__register_nested_nodes!($registry, $saga; $($($rest)*)?);
    };
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
pub struct StenoSaga<S>(PhantomData<S>);

impl<S> fmt::Debug for StenoSaga<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StenoSaga")
    }
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
    /// The node [`SagaBuilder`] appends after a parallel last stage ([`JOIN_NODE`](crate::JOIN_NODE)): it commits nothing, and
    /// outputs the last stage's outputs by node name.
    Join,
}

/// What steno holds as a ratchet saga's parameters: the definition's parameters, plus every node's own value
/// (its arguments), by node name.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StenoParams<P> {
    pub(crate) params: P,
    pub(crate) nodes: BTreeMap<String, serde_json::Value>,
}
