//! What a node hands on: its output (seen by later nodes, [`NodeOutput`]) and its receipt (recorded with its
//! commit, [`NodeReceipt`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value a node's post-commit phase may produce.
///
/// This trait is deliberately *not* implemented for `Result` (and cannot be: the orphan rule forbids it
/// outside this crate), so a node whose `finish` could fail does not compile. Implement it for your own
/// output types: `impl NodeOutput for MyOutput {}`.
pub trait NodeOutput:
    Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

macro_rules! node_outputs {
    ($($t:ty),*) => { $(impl NodeOutput for $t {})* };
}
node_outputs!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    i8,
    i16,
    i32,
    i64,
    String,
    uuid::Uuid,
    serde_json::Value
);
impl<T: NodeOutput> NodeOutput for Vec<T> {}
impl<T: NodeOutput> NodeOutput for Option<T> {}
impl<A: NodeOutput, B: NodeOutput> NodeOutput for (A, B) {}

/// What a commit hands on: everything the post-commit phase and the compensation need, recorded in the commit
/// record in the same transaction as the node's writes.
pub trait NodeReceipt: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> NodeReceipt for T {}
