//! The optional step after a node's commit and after its compensation (`after_commit`,
//! `after_compensation`): Nexus's background-task nudges. Each sees the saga's context and the receipt, runs
//! at most once, in the process whose attempt committed, and cannot fail the node. Attacked with a crash
//! right after the commit (the recovering engine replays the node: the step does not run again), a lost
//! `COMMIT` reply (resolved as landed: the step runs once), and a panic in the step (the node stays
//! committed, the saga goes on).

mod common;

use common::{database, run_prepared_until_crash};
use ratchet_engine::{
    AfterCommitCx, CallError, CallOnlyExternalNode, CommitTx, DbNode, Engine, EngineBuilder,
    EngineConfig, ExternalCx, FaultEffect, FaultPoint, NodeError, PrepareCx, SagaBuilder, SagaDef,
    SagaOutcome, Untyped,
};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The host's context: where the steps leave their nudges (Nexus's background-task handles are shared
/// state the same way).
#[derive(Default)]
struct Nudges(Mutex<Vec<String>>);

impl Nudges {
    fn push(&self, nudge: String) {
        self.0.lock().unwrap().push(nudge);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NudgeParams {
    /// Whether the last node fails (so that the saga unwinds through both compensations).
    fail_last: bool,
    /// Whether `write`'s after-commit step panics.
    panic_in_step: bool,
}

struct NudgingSaga;

impl SagaDef for NudgingSaga {
    const NAME: &'static str = "test-after-commit";
    type Params = NudgeParams;
    type Context = Nudges;
    type Error = Untyped;

    ratchet_engine::declare_saga_nodes! {
        db Write,
        external Call,
        db Last,
    }

    fn build(_: &NudgeParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("write", Write)
            .external("call", Call)
            .db("last", Last);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Write;

/// What `write` commits with: its receipt names whether its step should panic.
#[derive(Serialize, Deserialize)]
struct WriteReceipt {
    serial: u32,
    panic_in_step: bool,
}

impl DbNode<NudgingSaga> for Write {
    const NAME: &'static str = "test.after_commit.write";
    type Plan = bool;
    type Receipt = WriteReceipt;
    type Output = u32;

    async fn prepare(&self, cx: &mut PrepareCx<'_, NudgingSaga>) -> Result<bool, NodeError> {
        Ok(cx.params().panic_in_step)
    }
    async fn commit(
        &self,
        _: &mut CommitTx<'_>,
        panic_in_step: bool,
    ) -> Result<WriteReceipt, NodeError> {
        Ok(WriteReceipt {
            serial: 7,
            panic_in_step,
        })
    }
    fn finish(receipt: WriteReceipt) -> u32 {
        receipt.serial
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: WriteReceipt) -> Result<(), NodeError> {
        Ok(())
    }
    fn after_commit(cx: &AfterCommitCx<'_, NudgingSaga>, receipt: &WriteReceipt) {
        if receipt.panic_in_step {
            panic!("the nudge panicked");
        }
        cx.context().push(format!(
            "after_commit {} {} {}",
            cx.node_name(),
            receipt.serial,
            cx.saga_id()
        ));
    }
    fn after_compensation(cx: &AfterCommitCx<'_, NudgingSaga>, receipt: &WriteReceipt) {
        cx.context().push(format!(
            "after_compensation {} {} {}",
            cx.node_name(),
            receipt.serial,
            cx.saga_id()
        ));
    }
}

#[derive(Serialize, Deserialize)]
struct Call;

impl CallOnlyExternalNode for Call {
    type Saga = NudgingSaga;
    const NAME: &'static str = "test.after_commit.call";
    type Receipt = u32;
    type Output = ();

    async fn call(&self, _: &ExternalCx<'_, NudgingSaga>) -> Result<u32, CallError> {
        Ok(9)
    }
    fn finish(_: u32) {}
    async fn compensate(
        &self,
        _: &ExternalCx<'_, NudgingSaga>,
        _: Option<u32>,
    ) -> Result<(), CallError> {
        Ok(())
    }
    fn after_commit(cx: &AfterCommitCx<'_, NudgingSaga>, receipt: &u32) {
        cx.context().push(format!(
            "after_commit {} {receipt} {}",
            cx.node_name(),
            cx.saga_id()
        ));
    }
    fn after_compensation(cx: &AfterCommitCx<'_, NudgingSaga>, receipt: Option<&u32>) {
        cx.context().push(format!(
            "after_compensation {} {} {}",
            cx.node_name(),
            receipt.copied().unwrap_or_default(),
            cx.saga_id()
        ));
    }
}

#[derive(Serialize, Deserialize)]
struct Last;

impl DbNode<NudgingSaga> for Last {
    const NAME: &'static str = "test.after_commit.last";
    type Plan = ();
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, NudgingSaga>) -> Result<(), NodeError> {
        if cx.params().fail_last {
            return Err(NodeError::permanent("the last node fails"));
        }
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

async fn engine(db: &TestDatabase, sec_id: Uuid, nudges: &Arc<Nudges>) -> Engine {
    let (engine, _) = EngineBuilder::new(EngineConfig::new(&db.url, sec_id))
        .register::<NudgingSaga>(Arc::clone(nudges))
        .start()
        .await
        .unwrap();
    engine
}

fn params(fail_last: bool) -> NudgeParams {
    NudgeParams {
        fail_last,
        panic_in_step: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_runs_once_after_its_commit_and_its_compensation() {
    let db = database().await;
    let nudges = Arc::new(Nudges::default());
    let engine = engine(&db, Uuid::new_v4(), &nudges).await;

    let (done, outcome) = engine.run::<NudgingSaga>(params(false)).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        nudges.all(),
        vec![
            format!("after_commit write 7 {done}"),
            format!("after_commit call 9 {done}"),
        ]
    );

    let (unwound, outcome) = engine.run::<NudgingSaga>(params(true)).await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "last"),
        "{outcome:?}"
    );
    assert_eq!(
        nudges.all()[2..],
        [
            format!("after_commit write 7 {unwound}"),
            format!("after_commit call 9 {unwound}"),
            format!("after_compensation call 9 {unwound}"),
            format!("after_compensation write 7 {unwound}"),
        ]
    );
}

/// The executor dies right after `write`'s `COMMIT`, before its step: the engine that recovers the saga
/// replays `write` from its commit record and does not run the step (at most once), and runs the steps of
/// the nodes it commits itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_is_not_run_again_by_the_engine_that_recovers_the_saga() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let before = Arc::new(Nudges::default());
    let first = engine(&db, sec_id, &before).await;
    let saga = first.create::<NudgingSaga>(params(false)).await.unwrap();
    first.failpoints().arm(
        saga.id,
        "write",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    assert_eq!(before.all(), Vec::<String>::new());

    let after = Arc::new(Nudges::default());
    let second = engine(&db, sec_id, &after).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(after.all(), vec![format!("after_commit call 9 {id}")]);
}

/// `write`'s `COMMIT` lands and its reply is lost: the engine resolves the outcome from the commit record,
/// and the step runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_once_after_a_lost_commit_reply_is_resolved() {
    let db = database().await;
    let nudges = Arc::new(Nudges::default());
    let engine = engine(&db, Uuid::new_v4(), &nudges).await;
    let saga = engine.create::<NudgingSaga>(params(false)).await.unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "write",
        FaultPoint::CommitReply,
        FaultEffect::LoseReply,
        1,
    );
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(
        engine
            .failpoints()
            .has_fired(id, "write", FaultPoint::CommitReply),
        "the reply was never lost"
    );
    assert_eq!(
        nudges.all(),
        vec![
            format!("after_commit write 7 {id}"),
            format!("after_commit call 9 {id}"),
        ]
    );
}

/// A panic in the step is caught: the node stays committed and the saga goes on to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_step_leaves_the_node_committed() {
    let db = database().await;
    let nudges = Arc::new(Nudges::default());
    let engine = engine(&db, Uuid::new_v4(), &nudges).await;
    let (id, outcome) = engine
        .run::<NudgingSaga>(NudgeParams {
            fail_last: false,
            panic_in_step: true,
        })
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(nudges.all(), vec![format!("after_commit call 9 {id}")]);
    let (commits, compensations) = common::records(&engine, id).await;
    assert_eq!(commits, common::names(&["call", "last", "write"]));
    assert!(compensations.is_empty(), "{compensations:?}");
}
