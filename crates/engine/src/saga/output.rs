//! What a node hands on: its output (seen by later nodes, [`NodeOutput`]) and its receipt (recorded with its
//! commit, [`NodeReceipt`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value a node's post-commit phase may produce: any serializable type (a model type, a `BTreeMap`, a
/// `chrono::DateTime`, a tuple of any length), with no newtype.
///
/// What keeps a fallible step out of the post-commit phase is the signature of `finish` (no `self`, no
/// context, no `async`, and a plain `Self::Output` the engine never reads as success or failure), not this
/// trait: a node fails only from its prepare, commit or call. A `Result` is serializable, so it is a
/// `NodeOutput` too; a node type whose output is one is refused when its saga is registered
/// ([`EngineError::BadRegistration`](crate::EngineError::BadRegistration)), a runtime check.
pub trait NodeOutput:
    Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<T: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static> NodeOutput for T {}

/// What a commit hands on: everything the post-commit phase and the compensation need, recorded in the commit
/// record in the same transaction as the node's writes.
pub trait NodeReceipt: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> NodeReceipt for T {}
