//! The typed nodes: database nodes and external nodes, each split into prepare, commit, post-commit (finish)
//! and compensate; and their commit-only forms, for nodes with nothing to prepare.

use crate::error::NodeError;
use crate::saga::definition::SagaDef;
use crate::saga::output::{NodeOutput, NodeReceipt};
use crate::saga::phase::{AfterCommitCx, CommitTx, ExternalCx, PrepareCx};
use ratchet_store::{DbConnection, NodeConnection};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

/// A node whose effect is one database transaction.
///
/// The engine runs the phases in one serializable transaction on one connection:
///
/// ```text
/// BEGIN
///   SAVEPOINT; SET LOCAL transaction_read_only = on
///     prepare(cx)            reads only: PostgreSQL rejects any write
///   ROLLBACK TO SAVEPOINT
///   fencing check            this executor still owns the saga
///   commit(tx, plan)         every write of the node
///   finish(receipt)          pure; runs before COMMIT, so a panic here rolls everything back
///   commit record + log events (started, succeeded)
/// COMMIT                     <- the commit point: nothing fallible follows it
/// ```
///
/// A node value is its own arguments: it is serialized into the saga's DAG when the saga is built, so a
/// recovered saga runs the same node with the same arguments.
///
/// `C` is the connection type the node's phases get: diesel-async's (the default), or any other
/// [`NodeConnection`], such as Nexus's `async_bb8_diesel::Connection<C>` (ratchet-store's `async-bb8-diesel`
/// feature), checked out of the pool the host registered for it
/// ([`EngineBuilder::node_pool`](crate::EngineBuilder::node_pool)). A node on another connection type is
/// registered with `db(C) N` in [`declare_saga_nodes!`](crate::declare_saga_nodes) and laid out with
/// [`SagaBuilder::db_on`](crate::SagaBuilder::db_on).
pub trait DbNode<S: SagaDef, C: NodeConnection = DbConnection>:
    Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The action name persisted in the DAG: stable across releases.
    const NAME: &'static str;
    /// What prepare decided, handed to commit. Serializable data: a type whose serialized fields hold a
    /// connection, a pool or a client does not compile, and the engine hands the plan to commit through its
    /// serialized form, so a field serde skips arrives as its default (no handle rides into the commit).
    type Plan: Serialize + DeserializeOwned + Send;
    /// What commit returns, recorded with the commit.
    type Receipt: NodeReceipt;
    /// The node's output, seen by later nodes.
    type Output: NodeOutput;

    /// Reads and decides. Runs read-only; may be run again (after a transient error, or a crash).
    fn prepare(
        &self,
        cx: &mut PrepareCx<'_, S, C>,
    ) -> impl Future<Output = Result<Self::Plan, NodeError<S::Error>>> + Send;

    /// Every write of the node, on the transaction the engine opened. The receipt must come from the writes
    /// themselves (`RETURNING` rows, values computed before), never from a re-read.
    fn commit(
        &self,
        tx: &mut CommitTx<'_, C>,
        plan: Self::Plan,
    ) -> impl Future<Output = Result<Self::Receipt, NodeError<S::Error>>> + Send;

    /// The post-commit phase: pure, synchronous and infallible. No `self`, no context, no `Result`, no
    /// `async`: it can only compute the output from the receipt.
    fn finish(receipt: Self::Receipt) -> Self::Output;

    /// Reverses the commit, in one transaction, given the commit's receipt. Only called when a commit record
    /// exists and no compensation record does.
    fn compensate(
        &self,
        tx: &mut CommitTx<'_, C>,
        receipt: Self::Receipt,
    ) -> impl Future<Output = Result<(), NodeError<S::Error>>> + Send;

    /// An optional step after the node's `COMMIT` is known to have landed (Nexus's background-task nudges:
    /// activate a reaper, poke the instance watcher). It sees the saga's context read-only and the receipt,
    /// returns nothing and cannot fail; it gets no connection, so it reaches no database through the engine.
    /// **At most once**: it runs in the process whose attempt committed, after the commit (once its outcome
    /// is resolved, if its reply was lost), and never for a commit an earlier attempt or an earlier process
    /// made: not on a replay, not for a node a recovering engine finds committed (an executor that dies
    /// between the `COMMIT` and this step never runs it). It is a hint the host must tolerate losing: it is
    /// also skipped when a failure right after the commit is followed by a compensation that fails (the
    /// commit then stands). A panic in it is caught and logged in an unwinding build (`panic = "abort"` ends
    /// the process, as everywhere); the node stays committed. `finish` stays pure: this is where effects
    /// outside the saga go.
    fn after_commit(_cx: &AfterCommitCx<'_, S>, _receipt: &Self::Receipt) {}

    /// The same after the node's compensation committed: infallible, no database, a hint the host must
    /// tolerate losing (skipped when a failure right after the compensation's `COMMIT` makes the engine retry
    /// it, which then finds it done).
    ///
    /// TODO-correctness When a compensation's `COMMIT` has an unknown outcome, the resolution looks for the
    /// compensation record without checking that this executor still owns the saga, so a stale executor
    /// whose `COMMIT` did not land can find an adopter's record and run this step a second time, in the
    /// wrong process. Check ownership there, as the forward resolution does, and attack it with an adoption
    /// test.
    fn after_compensation(_cx: &AfterCommitCx<'_, S>, _receipt: &Self::Receipt) {}
}

/// A database node with nothing to read or decide before its commit: its arguments (fixed when the DAG was
/// built) are all its commit needs.
///
/// Implementing it implements [`DbNode`] for [`CommitOnlyDbNode::Saga`], with `Plan = ()` and a prepare that
/// reads nothing; commit (which loses only its `plan` argument), finish and compensate are [`DbNode`]'s, with
/// the same signatures, bounds and guarantees, and run the same way (see [`DbNode`]). A node that reads before
/// it writes (to refuse early, or to carry what it read to the commit) implements [`DbNode`] itself; a type that
/// implemented both would hold two conflicting impls (`DbNode` has a blanket impl for every commit-only node).
///
/// The saga is an associated type, not a parameter as in [`DbNode`], so a commit-only node serves one saga.
/// That keeps the blanket impl coherent with nodes that implement [`DbNode`] for every saga of a context (a
/// parameter would let another crate make such a node commit-only for a saga of its own, and rustc refuses
/// the possible overlap).
pub trait CommitOnlyDbNode: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga whose DAG the node belongs to.
    type Saga: SagaDef;
    /// The action name persisted in the DAG: stable across releases.
    const NAME: &'static str;
    /// What commit returns, recorded with the commit.
    type Receipt: NodeReceipt;
    /// The node's output, seen by later nodes.
    type Output: NodeOutput;

    /// Every write of the node, as [`DbNode::commit`].
    fn commit(
        &self,
        tx: &mut CommitTx<'_>,
    ) -> impl Future<Output = Result<Self::Receipt, NodeError<<Self::Saga as SagaDef>::Error>>> + Send;

    /// The post-commit phase, as [`DbNode::finish`]: pure, synchronous and infallible.
    fn finish(receipt: Self::Receipt) -> Self::Output;

    /// Reverses the commit, as [`DbNode::compensate`].
    fn compensate(
        &self,
        tx: &mut CommitTx<'_>,
        receipt: Self::Receipt,
    ) -> impl Future<Output = Result<(), NodeError<<Self::Saga as SagaDef>::Error>>> + Send;

    /// The optional step after the commit, as [`DbNode::after_commit`].
    fn after_commit(_cx: &AfterCommitCx<'_, Self::Saga>, _receipt: &Self::Receipt) {}

    /// The optional step after the compensation, as [`DbNode::after_compensation`].
    fn after_compensation(_cx: &AfterCommitCx<'_, Self::Saga>, _receipt: &Self::Receipt) {}
}

impl<N: CommitOnlyDbNode> DbNode<N::Saga> for N {
    const NAME: &'static str = <N as CommitOnlyDbNode>::NAME;
    type Plan = ();
    type Receipt = N::Receipt;
    type Output = N::Output;

    /// Reads nothing: there is nothing to decide.
    fn prepare(
        &self,
        _: &mut PrepareCx<'_, N::Saga>,
    ) -> impl Future<Output = Result<(), NodeError<<N::Saga as SagaDef>::Error>>> + Send {
        std::future::ready(Ok(()))
    }

    fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (): (),
    ) -> impl Future<Output = Result<N::Receipt, NodeError<<N::Saga as SagaDef>::Error>>> + Send
    {
        CommitOnlyDbNode::commit(self, tx)
    }

    fn finish(receipt: N::Receipt) -> N::Output {
        <N as CommitOnlyDbNode>::finish(receipt)
    }

    fn compensate(
        &self,
        tx: &mut CommitTx<'_>,
        receipt: N::Receipt,
    ) -> impl Future<Output = Result<(), NodeError<<N::Saga as SagaDef>::Error>>> + Send {
        CommitOnlyDbNode::compensate(self, tx, receipt)
    }

    fn after_commit(cx: &AfterCommitCx<'_, N::Saga>, receipt: &N::Receipt) {
        <N as CommitOnlyDbNode>::after_commit(cx, receipt)
    }

    fn after_compensation(cx: &AfterCommitCx<'_, N::Saga>, receipt: &N::Receipt) {
        <N as CommitOnlyDbNode>::after_compensation(cx, receipt)
    }
}

/// Why an external call did not give a receipt.
///
/// `E` is the saga's error type ([`SagaDef::Error`]): a refusal may carry the saga's typed error
/// ([`NodeError::Saga`]), which fails the node (or, from a compensation, makes the saga stuck) with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E = crate::error::Untyped> {
    /// The service definitely did not apply the request (it refused, or failed before applying it).
    #[error("refused: {0}")]
    Refused(NodeError<E>),
    /// The outcome is unknown (a lost response, a timeout): the engine retries the call with the same
    /// idempotency key until the answer is definite.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// A node whose effect is one idempotent call to another service (a sled agent, a storage pantry).
///
/// The engine gives every call the node's idempotency key (a UUIDv5 of saga id and node name, the same on
/// every attempt and after a restart); a service idempotent by resource id and generation instead needs none
/// (see below). A node never fails while the outcome of its call is unknown: the engine retries, or
/// compensates, first.
///
/// # The service's side of the contract
///
/// - **Deduplication**: a request under a key already applied is answered as the first was, not applied
///   again.
/// - **Tombstones**: the compensating call names the forward key it compensates (pass
///   `cx.idempotency_key()` along with `cx.compensation_key()`), and the service keeps a tombstone for it: a
///   forward request under a tombstoned key arriving later (a retry still in flight, a stale executor whose
///   call slipped past its fence check) is refused, never applied. Without tombstones, compensating by key
///   after an unknown outcome races the request it compensates. The simulated sled agent and pantry
///   (`ratchet-sim`) implement both.
/// - **Typed answers**: `call` says whether the request was applied ([`Ok`]), definitely not applied
///   ([`CallError::Refused`]), or may have been ([`CallError::Unknown`]). Only a service's explicit "not
///   applied" is a refusal; a timeout or a dropped connection is unknown.
///
/// # Or: idempotent by resource id and generation
///
/// A service that takes no keys (Nexus's sled agent) makes the same two promises by generation instead: the
/// call names its resource and carries a generation, and a call at the resource's current generation changes
/// nothing (**deduplication**); the compensation removes the resource and *fences* the generation the call
/// carried, so a late call at a fenced generation is refused (the **tombstone**, by generation). A node then
/// ignores the keys: its `call` sends its own resource id and generation (fixed in its arguments or plan, the
/// same on every attempt and after a restart), and its `compensate` fences that generation (the receipt's,
/// or the one the call sent when `receipt` is `None`). The engine drives both forms alike: retries while the
/// outcome is unknown, compensation before failing once any attempt was unknown. Instance-create's
/// `EnsureVmm` (`ratchet_sagas`) is written this way.
pub trait ExternalNode<S: SagaDef>: Serialize + DeserializeOwned + Send + Sync + 'static {
    const NAME: &'static str;
    /// What prepare decided, handed to the call: serializable data, as for database nodes.
    type Plan: Serialize + DeserializeOwned + Send + Sync;
    type Receipt: NodeReceipt;
    type Output: NodeOutput;

    /// Reads and decides, read-only, like a database node's prepare.
    fn prepare(
        &self,
        cx: &mut PrepareCx<'_, S>,
    ) -> impl Future<Output = Result<Self::Plan, NodeError<S::Error>>> + Send;

    /// The call. Must be idempotent on `cx.idempotency_key()`.
    fn call(
        &self,
        cx: &ExternalCx<'_, S>,
        plan: &Self::Plan,
    ) -> impl Future<Output = Result<Self::Receipt, CallError<S::Error>>> + Send;

    /// The post-commit phase, as for database nodes.
    fn finish(receipt: Self::Receipt) -> Self::Output;

    /// Undoes the call by key. `receipt` is `None` when the call's outcome was never recorded (it may or may
    /// not have been applied): the service must treat an unknown key as already undone.
    fn compensate(
        &self,
        cx: &ExternalCx<'_, S>,
        receipt: Option<Self::Receipt>,
    ) -> impl Future<Output = Result<(), CallError<S::Error>>> + Send;

    /// An optional step after the call's receipt is recorded, as [`DbNode::after_commit`]: at most once,
    /// infallible, no database.
    fn after_commit(_cx: &AfterCommitCx<'_, S>, _receipt: &Self::Receipt) {}

    /// The same after the compensation's record committed (see [`DbNode::after_compensation`], its caveats
    /// included). `receipt` is `None` when the call's outcome was never recorded (as for
    /// [`ExternalNode::compensate`]): the step then runs although the call may never have been applied.
    fn after_compensation(_cx: &AfterCommitCx<'_, S>, _receipt: Option<&Self::Receipt>) {}
}

/// An external node with nothing to read or decide before its call: the external twin of
/// [`CommitOnlyDbNode`].
///
/// Implementing it implements [`ExternalNode`] for [`CallOnlyExternalNode::Saga`], with `Plan = ()` and a
/// prepare that reads nothing; call (which loses only its `plan` argument), finish and compensate are
/// [`ExternalNode`]'s, with the same contract (idempotent on the node's key; see [`ExternalNode`]). The saga is
/// an associated type for the reason given at [`CommitOnlyDbNode`].
pub trait CallOnlyExternalNode: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga whose DAG the node belongs to.
    type Saga: SagaDef;
    /// The action name persisted in the DAG: stable across releases.
    const NAME: &'static str;
    type Receipt: NodeReceipt;
    type Output: NodeOutput;

    /// The call, as [`ExternalNode::call`]: idempotent on `cx.idempotency_key()`.
    fn call(
        &self,
        cx: &ExternalCx<'_, Self::Saga>,
    ) -> impl Future<Output = Result<Self::Receipt, CallError<<Self::Saga as SagaDef>::Error>>> + Send;

    /// The post-commit phase, as [`ExternalNode::finish`].
    fn finish(receipt: Self::Receipt) -> Self::Output;

    /// Undoes the call by key, as [`ExternalNode::compensate`].
    fn compensate(
        &self,
        cx: &ExternalCx<'_, Self::Saga>,
        receipt: Option<Self::Receipt>,
    ) -> impl Future<Output = Result<(), CallError<<Self::Saga as SagaDef>::Error>>> + Send;

    /// The optional step after the call, as [`ExternalNode::after_commit`].
    fn after_commit(_cx: &AfterCommitCx<'_, Self::Saga>, _receipt: &Self::Receipt) {}

    /// The optional step after the compensation, as [`ExternalNode::after_compensation`].
    fn after_compensation(_cx: &AfterCommitCx<'_, Self::Saga>, _receipt: Option<&Self::Receipt>) {}
}

impl<N: CallOnlyExternalNode> ExternalNode<N::Saga> for N {
    const NAME: &'static str = <N as CallOnlyExternalNode>::NAME;
    type Plan = ();
    type Receipt = N::Receipt;
    type Output = N::Output;

    /// Reads nothing: there is nothing to decide.
    fn prepare(
        &self,
        _: &mut PrepareCx<'_, N::Saga>,
    ) -> impl Future<Output = Result<(), NodeError<<N::Saga as SagaDef>::Error>>> + Send {
        std::future::ready(Ok(()))
    }

    fn call(
        &self,
        cx: &ExternalCx<'_, N::Saga>,
        (): &(),
    ) -> impl Future<Output = Result<N::Receipt, CallError<<N::Saga as SagaDef>::Error>>> + Send
    {
        CallOnlyExternalNode::call(self, cx)
    }

    fn finish(receipt: N::Receipt) -> N::Output {
        <N as CallOnlyExternalNode>::finish(receipt)
    }

    fn compensate(
        &self,
        cx: &ExternalCx<'_, N::Saga>,
        receipt: Option<N::Receipt>,
    ) -> impl Future<Output = Result<(), CallError<<N::Saga as SagaDef>::Error>>> + Send {
        CallOnlyExternalNode::compensate(self, cx, receipt)
    }

    fn after_commit(cx: &AfterCommitCx<'_, N::Saga>, receipt: &N::Receipt) {
        <N as CallOnlyExternalNode>::after_commit(cx, receipt)
    }

    fn after_compensation(cx: &AfterCommitCx<'_, N::Saga>, receipt: Option<&N::Receipt>) {
        <N as CallOnlyExternalNode>::after_compensation(cx, receipt)
    }
}
