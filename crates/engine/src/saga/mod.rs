//! The definition side of a saga: what a saga is ([`definition`]), the node types it may use ([`registry`]),
//! how its DAG is laid out ([`builder`]), the typed node traits ([`node`], [`output`]) and the handles a node's
//! phases get ([`phase`]). Nothing here runs a node: the runners are in `run/`, above.

pub(crate) mod builder;
pub(crate) mod definition;
pub(crate) mod node;
pub(crate) mod output;
pub(crate) mod phase;
pub(crate) mod registry;
