//! The type's scope, attacked at run time: what the types cannot stop, the runtime catches.
//!
//! - **A handle smuggled past serde.** A plan or receipt must be serializable (a type that is not does not
//!   compile: `tests/ui/plan_smuggles_pool.rs`, `receipt_smuggles_connection.rs`), but a `#[serde(skip)]`
//!   field still compiles. The engine hands plans and receipts on only through their serialized form, so
//!   such a field arrives as its default: a pool put in a plan by prepare never reaches the commit, and one
//!   put in a receipt by the commit never reaches `finish`. The tests smuggle a real pool both ways and check
//!   that nothing was written through it.
//! - **A node that ends the engine's transaction, on every path.** A `COMMIT` sent through the node's
//!   connection ends the engine's transaction. The success path was already caught (the record's statement
//!   checks the transaction's token); here the node then fails (an error, a transient error that would be
//!   retried, a panic), ends it in its read-only prepare (of a database node or of an external node, whose call
//!   is then never made), or in a compensation. Each time the node fails for
//!   *that* reason, not its own, it is not retried, and the saga's diagnosis lists the node under
//!   `escaped_writes`.

mod common;

use common::*;
use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ratchet_engine::{
    CallError, CommitTx, DbNode, EngineBuilder, EngineConfig, ExternalCx, ExternalNode, NodeError,
    NodeRegistry, PrepareCx, SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_store::{DbPool, PoolConfig, RetryPolicy, connect_pool, stuck_diagnosis};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------------
// A pool smuggled in a plan and in a receipt.

/// The saga's context: a pool of the host's (the ambient authority no type can take away from prepare).
struct Smuggles;

#[derive(Serialize, Deserialize)]
struct SmugglingNode;

/// A plan that "is" serializable data, with a pool serde skips.
#[derive(Serialize, Deserialize)]
struct SmugglingPlan {
    account: Uuid,
    #[serde(skip)]
    pool: Option<DbPool>,
}

/// A receipt likewise.
#[derive(Serialize, Deserialize)]
struct SmugglingReceipt {
    plan_pool_arrived: bool,
    #[serde(skip)]
    pool: Option<DbPool>,
}

/// Where a commit finds a pool to put in its receipt (a commit has no context: only ambient state remains).
static RECEIPT_POOL: OnceLock<DbPool> = OnceLock::new();

impl SagaDef for Smuggles {
    const NAME: &'static str = "test-smuggles-a-pool";
    type Params = Uuid;
    type Context = DbPool;
    type Error = ratchet_engine::Untyped;
    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<SmugglingNode>();
    }
    fn build(_: &Uuid, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("smuggle", SmugglingNode);
        Ok(())
    }
}

async fn debit_outside(pool: &DbPool, account: Uuid) {
    let mut conn = pool.get().await.expect("a connection of the smuggled pool");
    diesel::sql_query("UPDATE example_account SET balance = balance - 1000 WHERE id = $1")
        .bind::<SqlUuid, _>(account)
        .execute(&mut *conn)
        .await
        .expect("the smuggled write");
}

impl DbNode<Smuggles> for SmugglingNode {
    const NAME: &'static str = "test.smuggling_node";
    type Plan = SmugglingPlan;
    type Receipt = SmugglingReceipt;
    /// (the plan's pool reached the commit, the receipt's pool reached `finish`)
    type Output = (bool, bool);

    async fn prepare(&self, cx: &mut PrepareCx<'_, Smuggles>) -> Result<SmugglingPlan, NodeError> {
        Ok(SmugglingPlan {
            account: *cx.params(),
            pool: Some(cx.context().clone()),
        })
    }
    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        plan: SmugglingPlan,
    ) -> Result<SmugglingReceipt, NodeError> {
        let plan_pool_arrived = plan.pool.is_some();
        if let Some(pool) = &plan.pool {
            // The 10695 shape: a write on a second connection, outside the node's transaction.
            debit_outside(pool, plan.account).await;
        }
        diesel::sql_query("UPDATE example_account SET balance = balance - 1 WHERE id = $1")
            .bind::<SqlUuid, _>(plan.account)
            .execute(tx.conn())
            .await?;
        Ok(SmugglingReceipt {
            plan_pool_arrived,
            pool: RECEIPT_POOL.get().cloned(),
        })
    }
    fn finish(receipt: SmugglingReceipt) -> (bool, bool) {
        (receipt.plan_pool_arrived, receipt.pool.is_some())
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: SmugglingReceipt) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A pool put in a plan by prepare, or in a receipt by the commit, with `#[serde(skip)]`: neither arrives,
/// and nothing is written through it. (Before plans and receipts were passed on through their serialized
/// form, both arrived and the commit debited 1000 outside its transaction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_smuggled_past_serde_in_a_plan_or_receipt_never_arrives() {
    let db = database().await;
    let smuggled = connect_pool(&db.url, &PoolConfig::default()).await.unwrap();
    let _ = RECEIPT_POOL.set(smuggled.clone());
    let (engine, _) = builder(&db, Uuid::new_v4())
        .register::<Smuggles>(Arc::new(smuggled))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    let (id, outcome) = engine.run::<Smuggles>(account).await.unwrap();
    let SagaOutcome::Succeeded { output, .. } = &outcome else {
        panic!("expected success, got {outcome:?}");
    };
    let arrived: (bool, bool) = serde_json::from_value(output.clone()).unwrap();
    assert_eq!(
        arrived,
        (false, false),
        "a pool rode in (plan → commit, receipt → finish)"
    );
    assert_eq!(
        state(&engine, account).await.balance,
        99,
        "only the node's own write, in its transaction (no smuggled debit)"
    );
    let (commits, _) = records(&engine, id).await;
    assert_eq!(commits, names(&["smuggle"]));
}

// ---------------------------------------------------------------------------------------------------------
// A node that ends the engine's transaction and then fails, on every path.

/// Where, and how, the rogue node ends the engine's transaction.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
enum Rogue {
    /// Its commit sends `COMMIT; BEGIN`, then returns a permanent error of its own.
    CommitThenError,
    /// The same, then a transient error (which the engine would retry, applying the escaped debit again).
    CommitThenTransient,
    /// The same, then panics.
    CommitThenPanic,
    /// Its read-only prepare sends `COMMIT` and writes (autocommitted), then returns a plan.
    InPrepare,
    /// The same in the prepare of an external node, which then returns a plan and would make its call.
    InExternalPrepare,
    /// Its forward is clean; its compensation sends `COMMIT; BEGIN`, then fails (the next node fails, so the
    /// saga unwinds into it).
    InCompensation,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RogueParams {
    account: Uuid,
    rogue: Rogue,
}

struct RogueSaga;

#[derive(Serialize, Deserialize)]
struct RogueNode;

#[derive(Serialize, Deserialize)]
struct FailsIfAsked;

/// The rogue as an external node: its prepare ends the engine's transaction and succeeds.
#[derive(Serialize, Deserialize)]
struct RogueCall;

impl SagaDef for RogueSaga {
    const NAME: &'static str = "test-rogue-transaction";
    type Params = RogueParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;
    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<RogueNode>();
        registry.db::<FailsIfAsked>();
        registry.external::<RogueCall>();
    }
    fn build(params: &RogueParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        if params.rogue == Rogue::InExternalPrepare {
            dag.external("rogue", RogueCall);
        } else {
            dag.db("rogue", RogueNode);
        }
        dag.db("next", FailsIfAsked);
        Ok(())
    }
}

async fn debit(conn: &mut ratchet_store::DbConnection, account: Uuid) -> Result<(), NodeError> {
    diesel::sql_query("UPDATE example_account SET balance = balance - 1 WHERE id = $1")
        .bind::<SqlUuid, _>(account)
        .execute(conn)
        .await?;
    Ok(())
}

impl DbNode<RogueSaga> for RogueNode {
    const NAME: &'static str = "test.rogue_node";
    type Plan = RogueParams;
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, RogueSaga>) -> Result<RogueParams, NodeError> {
        let params = cx.params().clone();
        if params.rogue == Rogue::InPrepare {
            cx.conn().batch_execute("COMMIT").await?;
            debit(cx.conn(), params.account).await?;
        }
        Ok(params)
    }
    async fn commit(&self, tx: &mut CommitTx<'_>, params: RogueParams) -> Result<(), NodeError> {
        debit(tx.conn(), params.account).await?;
        if matches!(
            params.rogue,
            Rogue::InCompensation | Rogue::InPrepare | Rogue::InExternalPrepare
        ) {
            return Ok(());
        }
        tx.conn().batch_execute("COMMIT; BEGIN").await?;
        match params.rogue {
            Rogue::CommitThenError => Err(NodeError::permanent("the node's own error")),
            Rogue::CommitThenTransient => {
                Err(NodeError::transient("the node's own transient error"))
            }
            Rogue::CommitThenPanic => panic!("the node's own panic"),
            Rogue::InPrepare | Rogue::InCompensation | Rogue::InExternalPrepare => unreachable!(),
        }
    }
    fn finish((): ()) {}
    async fn compensate(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        // End the engine's transaction, then fail.
        tx.conn()
            .batch_execute("COMMIT; BEGIN")
            .await
            .map_err(NodeError::from)?;
        Err(NodeError::permanent("the compensation's own error"))
    }
}

impl DbNode<RogueSaga> for FailsIfAsked {
    const NAME: &'static str = "test.fails_if_asked";
    type Plan = ();
    type Receipt = ();
    type Output = ();
    async fn prepare(&self, cx: &mut PrepareCx<'_, RogueSaga>) -> Result<(), NodeError> {
        match cx.params().rogue {
            Rogue::InCompensation => Err(NodeError::permanent("the next node fails")),
            _ => Ok(()),
        }
    }
    async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Whether [`RogueCall`]'s call was made (it must not be: its prepare ended the engine's transaction).
static ROGUE_CALL_MADE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl ExternalNode<RogueSaga> for RogueCall {
    const NAME: &'static str = "test.rogue_call";
    type Plan = Uuid;
    type Receipt = ();
    type Output = ();
    async fn prepare(&self, cx: &mut PrepareCx<'_, RogueSaga>) -> Result<Uuid, NodeError> {
        let account = cx.params().account;
        cx.conn().batch_execute("COMMIT").await?;
        debit(cx.conn(), account).await?;
        Ok(account)
    }
    async fn call(&self, _: &ExternalCx<'_, RogueSaga>, _: &Uuid) -> Result<(), CallError> {
        ROGUE_CALL_MADE.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(
        &self,
        _: &ExternalCx<'_, RogueSaga>,
        _: Option<()>,
    ) -> Result<(), CallError> {
        Ok(())
    }
}

fn rogue_config(db: &TestDatabase) -> EngineConfig {
    let mut config = EngineConfig::new(&db.url, Uuid::new_v4());
    let quick = RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        max_attempts: Some(5),
    };
    config.forward_retry = quick;
    config.compensation_retry = quick;
    config
}

/// Runs the rogue saga in `rogue`'s way; returns the outcome, the account's balance after it, and the nodes
/// the saga's diagnosis lists as having escaped writes (with their event).
async fn run_rogue(rogue: Rogue) -> (SagaOutcome, i64, Vec<(String, String)>) {
    let db = database().await;
    let (engine, _) = EngineBuilder::new(rogue_config(&db))
        .register::<RogueSaga>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    let (id, outcome) = engine
        .run::<RogueSaga>(RogueParams { account, rogue })
        .await
        .unwrap();
    let balance = state(&engine, account).await.balance;
    let mut conn = engine.pool().get().await.unwrap();
    let diagnosis = stuck_diagnosis(&mut conn, id).await.unwrap().unwrap();
    let escaped = diagnosis
        .escaped_writes
        .iter()
        .map(|e| (e.node.clone(), e.event.clone()))
        .collect();
    (outcome, balance, escaped)
}

fn assert_failed_for_ending_the_transaction(outcome: &SagaOutcome, own: &str) {
    match outcome {
        SagaOutcome::Unwound { node, error, .. } => {
            assert_eq!(node, "rogue");
            assert!(
                error.contains("ended the engine's transaction"),
                "failed for its own reason, not for ending the transaction: {error}"
            );
            assert!(
                !error.contains(own),
                "the node's own error stands in: {error}"
            );
        }
        other => panic!("expected the rogue node to fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_then_an_error_is_caught() {
    let (outcome, balance, escaped) = run_rogue(Rogue::CommitThenError).await;
    assert_failed_for_ending_the_transaction(&outcome, "the node's own error");
    assert_eq!(
        balance, 99,
        "the escaped debit stays (the engine can only say so)"
    );
    assert_eq!(escaped, vec![("rogue".to_owned(), "failed".to_owned())]);
}

/// A transient error would be retried: every retry would commit the debit again on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_then_a_transient_error_is_caught_and_not_retried() {
    let (outcome, balance, escaped) = run_rogue(Rogue::CommitThenTransient).await;
    assert_failed_for_ending_the_transaction(&outcome, "the node's own transient error");
    assert_eq!(
        balance, 99,
        "the escaped debit once: the attempt was not retried"
    );
    assert_eq!(escaped, vec![("rogue".to_owned(), "failed".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_then_a_panic_is_caught() {
    let (outcome, balance, escaped) = run_rogue(Rogue::CommitThenPanic).await;
    assert_failed_for_ending_the_transaction(&outcome, "the node's own panic");
    assert_eq!(balance, 99);
    assert_eq!(escaped, vec![("rogue".to_owned(), "failed".to_owned())]);
}

/// A prepare is read-only only inside the engine's transaction: a `COMMIT` leaves it, and what follows
/// autocommits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_a_read_only_prepare_is_caught() {
    let (outcome, balance, escaped) = run_rogue(Rogue::InPrepare).await;
    assert_failed_for_ending_the_transaction(&outcome, "ROLLBACK TO SAVEPOINT");
    assert_eq!(balance, 99, "the prepare's escaped debit, once");
    assert_eq!(escaped, vec![("rogue".to_owned(), "failed".to_owned())]);
}

/// An external node's prepare runs in the engine's read-only transaction too: one that ends it and then
/// succeeds is failed for that, and its call is never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_an_external_nodes_prepare_is_caught_and_the_call_not_made() {
    let (outcome, balance, escaped) = run_rogue(Rogue::InExternalPrepare).await;
    assert_failed_for_ending_the_transaction(&outcome, "the call was made");
    assert!(
        !std::sync::atomic::AtomicBool::load(&ROGUE_CALL_MADE, std::sync::atomic::Ordering::SeqCst),
        "the call was made after a prepare that ended the engine's transaction"
    );
    assert_eq!(balance, 99, "the prepare's escaped debit, once");
    assert_eq!(escaped, vec![("rogue".to_owned(), "failed".to_owned())]);
}

/// A compensation that ends the engine's transaction and fails: the saga is stuck for that reason, and the
/// diagnosis lists the node's failed undo as one whose writes may have escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_a_compensation_is_caught() {
    let (outcome, balance, escaped) = run_rogue(Rogue::InCompensation).await;
    match &outcome {
        SagaOutcome::Stuck {
            undo_node,
            undo_error,
            ..
        } => {
            assert_eq!(undo_node, "rogue");
            assert!(
                undo_error.contains("ended the engine's transaction"),
                "stuck for its own reason: {undo_error}"
            );
        }
        other => panic!("expected the saga to be stuck, got {other:?}"),
    }
    assert_eq!(
        balance, 99,
        "the forward's debit (the compensation undid nothing)"
    );
    assert_eq!(
        escaped,
        vec![("rogue".to_owned(), "undo_failed".to_owned())]
    );
}
