//! The hard edges, attacked on the real embedded PostgreSQL: a restarted executor beside its old self, a
//! `COMMIT` whose outcome is unknown, panics in every user phase, a node that ends the engine's transaction
//! itself, and an executor frozen inside a transaction.
//!
//! Each test injects a real fault where it can (a backend the server terminates, a second live incarnation of
//! one executor id, a transaction held open while another executor needs its locks); the lost `COMMIT` reply
//! that needs a proxy on the wire is in `tests/tests/commit_unknown.rs`.

mod common;

use common::*;
use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ratchet_engine::store::SessionLimits;
use ratchet_engine::{
    CommitTx, DbNode, Engine, EngineBuilder, EngineConfig, EngineError, FaultEffect, FaultPoint,
    NodeError, NodeRegistry, PrepareCx, SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_example_saga::{AccountState, ProvisionWidget};
use ratchet_store::{RetryPolicy, get_saga};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const LONG: FaultEffect = FaultEffect::Delay { millis: 600_000 };

fn config(db: &TestDatabase, sec_id: Uuid) -> EngineConfig {
    let mut config = EngineConfig::new(&db.url, sec_id);
    config.forward_retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        max_attempts: Some(8),
    };
    config
}

async fn start(config: EngineConfig) -> Engine {
    EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .register::<EndsItsTransaction>(Arc::new(()))
        .start()
        .await
        .expect("engine starts")
        .0
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 90 s"))
}

fn charged_once(state: &AccountState) -> bool {
    state.balance == 70 && state.ledger == vec![-30]
}

/// A `COMMIT` that landed but whose reply the engine never saw: the node is not failed (its commit would
/// leak) nor run again (it would charge twice); the engine finds its commit record and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_resolved_from_the_record() {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "charge_account",
        FaultPoint::CommitReply,
        FaultEffect::LoseReply,
        1,
    );
    let outcome = within("the saga", saga.run()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(charged_once(&state(&engine, account).await));
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(
        commits,
        names(&["activate_widget", "charge_account", "reserve_widget"])
    );
    assert!(compensations.is_empty());
    let counters = engine.counters().snapshot();
    assert_eq!(counters.unknown_outcomes, 1, "{counters:?}");
    assert_eq!(counters.commits, 3, "{counters:?}");
    assert!(engine.waiting().is_empty());
}

/// Runs the example saga with activate_widget failing, so that it unwinds, and `effect` armed once at
/// charge_account's `point`; returns the engine, the account, the saga and its outcome.
async fn unwound_with(point: FaultPoint, effect: FaultEffect) -> (Engine, Uuid, Uuid, SagaOutcome) {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    let points = engine.failpoints();
    points.arm(
        id,
        "activate_widget",
        FaultPoint::AfterPrepare,
        FaultEffect::PermanentError,
        1,
    );
    points.arm(id, "charge_account", point, effect, 1);
    let outcome = within("the saga", saga.run()).await.unwrap();
    (engine, account, id, outcome)
}

/// The same for a compensation's `COMMIT`: the compensation is not run twice (a refund twice) and the saga
/// is not left stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_compensation_commit_reply_is_resolved_from_the_record() {
    let (engine, account, id, outcome) =
        unwound_with(FaultPoint::CompensationReply, FaultEffect::LoseReply).await;
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "activate_widget"),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await, untouched());
    let (_, compensations) = records(&engine, id).await;
    assert_eq!(
        compensations,
        vec![
            ("charge_account".into(), true),
            ("reserve_widget".into(), true)
        ]
    );
    assert_eq!(engine.counters().snapshot().unknown_outcomes, 1);
    assert_eq!(saga_state(&engine, id).await, "done");
}

/// A real unknown outcome: the server ends the session of a transaction held idle (the session limit), so
/// the engine's `COMMIT` meets a dead connection. The probe finds no record (the server rolled the
/// transaction back), and the node runs again: one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_a_terminated_session_is_resolved_and_the_node_runs_again() {
    let db = database().await;
    let mut config = config(&db, Uuid::new_v4());
    config.pool.session = SessionLimits {
        idle_in_transaction: Duration::from_millis(500),
        ..SessionLimits::default()
    };
    let engine = start(config).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    // Inside the charge's transaction, after its writes and its fenced record, before COMMIT: held idle
    // past the limit.
    engine.failpoints().arm(
        id,
        "charge_account",
        FaultPoint::BeforeCommit,
        FaultEffect::Delay { millis: 2_000 },
        1,
    );
    let outcome = within("the saga", saga.run()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(charged_once(&state(&engine, account).await));
    let counters = engine.counters().snapshot();
    assert!(
        counters.unknown_outcomes + counters.retries >= 1,
        "the held transaction was ended by the server: {counters:?}"
    );
    let (commits, _) = records(&engine, id).await;
    assert_eq!(commits.len(), 3);
}

async fn panic_in(point: FaultPoint) -> (Engine, Uuid, Uuid, SagaOutcome) {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine
        .failpoints()
        .arm(id, "charge_account", point, FaultEffect::Panic, 1);
    let outcome = within("the saga", saga.run()).await.unwrap();
    (engine, id, account, outcome)
}

/// A panic in prepare or commit: the transaction rolls back and the node fails with the panic's message;
/// the saga unwinds instead of hanging in a dead task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_prepare_or_commit_fails_the_node_and_the_saga_unwinds() {
    for (point, phase) in [
        (FaultPoint::InPrepare, "prepare"),
        (FaultPoint::InCommit, "commit"),
    ] {
        let (engine, id, account, outcome) = panic_in(point).await;
        match &outcome {
            SagaOutcome::Unwound { node, error, .. } => {
                assert_eq!(node, "charge_account");
                assert!(
                    error.contains(&format!("the node's {phase} panicked")),
                    "{error}"
                );
            }
            other => panic!("{point:?}: expected an unwind, got {other:?}"),
        }
        assert_eq!(state(&engine, account).await, untouched());
        let (commits, _) = records(&engine, id).await;
        assert_eq!(commits, names(&["reserve_widget"]));
        assert_eq!(engine.counters().snapshot().panics, 1);
    }
}

/// A panic in a compensation makes the saga stuck, with the message (not hung `unwinding`); once the cause
/// is gone, retry-unwind finishes the unwind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_compensation_makes_the_saga_stuck_with_the_message() {
    let (engine, account, id, outcome) =
        unwound_with(FaultPoint::InCompensation, FaultEffect::Panic).await;
    match &outcome {
        SagaOutcome::Stuck {
            undo_node,
            undo_error,
            ..
        } => {
            assert_eq!(undo_node, "charge_account");
            assert!(undo_error.contains("compensation panicked"), "{undo_error}");
        }
        other => panic!("expected a stuck saga, got {other:?}"),
    }
    let row = {
        let mut conn = engine.pool().get().await.unwrap();
        get_saga(&mut conn, id).await.unwrap().unwrap()
    };
    assert_eq!(row.saga_state, "stuck");
    assert!(
        row.stuck_reason
            .as_deref()
            .is_some_and(|r| r.contains("panicked")),
        "{row:?}"
    );
    // The charge stands until the unwind is re-driven; then everything is undone.
    assert!(charged_once(&state(&engine, account).await));
    let outcome = within("retry-unwind", engine.retry_unwind(id))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await, untouched());
}

/// A second live incarnation of one executor id (a restarted Nexus whose old process still lives, or two
/// recoveries at once): the new one's recovery takes a new epoch, the old one is fenced out like a foreign
/// executor, and the charge happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_incarnation_of_an_executor_fences_the_old_one() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let old = start(config(&db, sec_id)).await;
    let account = account(&old).await;
    let saga = old
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    // The old incarnation stops inside the charge's transaction, after its prepare, before its writes.
    old.failpoints()
        .arm(id, "charge_account", FaultPoint::AfterPrepare, LONG, 1);
    let old_run = tokio::spawn(saga.run());
    until_delaying(&old, id).await;

    // The new incarnation, same id: its start recovers the saga under a new generation and finishes it.
    let (new, report) = EngineBuilder::new(config(&db, sec_id))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap();
    assert_eq!(report.resumed, vec![id]);
    let outcome = within("the new incarnation's saga", new.wait(id))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let row = {
        let mut conn = new.pool().get().await.unwrap();
        get_saga(&mut conn, id).await.unwrap().unwrap()
    };
    assert_eq!(row.adopt_generation, 2, "the recovery took a new epoch");

    // The old one wakes: it commits nothing, records nothing, and stops driving the saga.
    old.failpoints().wake(id);
    let old_outcome = within("the old incarnation", old_run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old_outcome, SagaOutcome::Fenced);
    assert!(charged_once(&state(&new, account).await));
    let (commits, compensations) = records(&new, id).await;
    assert_eq!(commits.len(), 3);
    assert!(compensations.is_empty());
    assert!(old.counters().snapshot().fenced >= 1);
    assert_eq!(saga_state(&new, id).await, "done");
}

/// An executor frozen inside a transaction that holds the fence's share lock on a saga: another executor
/// adopts the saga anyway within the session limits (the server ends the frozen session and its locks), and
/// the frozen one, thawed, writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_frozen_in_a_transaction_cannot_block_its_adopter() {
    let db = database().await;
    let limits = SessionLimits {
        idle_in_transaction: Duration::from_secs(2),
        lock_timeout: Duration::from_millis(500),
        statement_timeout: None,
    };
    let mut frozen_config = config(&db, Uuid::new_v4());
    frozen_config.pool.session = limits;
    let frozen = start(frozen_config).await;
    let account = account(&frozen).await;
    let saga = frozen
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    // Frozen after the charge's fenced write (it holds the share lock on the saga row), before COMMIT.
    frozen
        .failpoints()
        .arm(id, "charge_account", FaultPoint::BeforeCommit, LONG, 1);
    let frozen_run = tokio::spawn(saga.run());
    until_delaying(&frozen, id).await;

    let mut adopter_config = config(&db, Uuid::new_v4());
    adopter_config.pool.session = limits;
    let adopter = start(adopter_config).await;
    let report = within("the adoption", adopter.adopt(frozen.sec_id()))
        .await
        .unwrap();
    assert_eq!(report.resumed, vec![id]);
    let outcome = within("the adopted saga", adopter.wait(id)).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(charged_once(&state(&adopter, account).await));

    // Thawed: its connection is gone, its COMMIT's outcome is resolved (nothing landed), and it is fenced.
    let before_thaw = rows_by(&adopter, id, frozen.sec_id()).await;
    frozen.failpoints().wake(id);
    let frozen_outcome = within("the thawed executor", frozen_run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frozen_outcome, SagaOutcome::Fenced);
    assert!(charged_once(&state(&adopter, account).await));
    assert_eq!(
        rows_by(&adopter, id, frozen.sec_id()).await,
        before_thaw,
        "the thawed executor wrote nothing"
    );
    assert_eq!(saga_state(&adopter, id).await, "done");
    let (commits, _) = records(&adopter, id).await;
    assert_eq!(commits.len(), 3);
}

/// How many commit records, compensation records and log events of saga `id` executor `sec_id` wrote.
async fn rows_by(engine: &Engine, id: Uuid, sec_id: Uuid) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = engine.pool().get().await.unwrap();
    let rows: Count = diesel::sql_query(
        "SELECT (SELECT count(*) FROM saga_commit_record WHERE saga_id = $1 AND creator = $2) \
         + (SELECT count(*) FROM saga_node_event WHERE saga_id = $1 AND creator = $2) \
         + (SELECT count(*) FROM saga_compensation_record WHERE saga_id = $1 AND creator = $2) AS count",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(sec_id)
    .get_result(&mut conn)
    .await
    .unwrap();
    rows.count
}

/// A saga whose node ends the engine's transaction itself and writes on.
struct EndsItsTransaction;

#[derive(Serialize, Deserialize)]
struct CommitsOnItsOwn;

impl SagaDef for EndsItsTransaction {
    const NAME: &'static str = "test-ends-its-transaction";
    type Params = Uuid;
    type Context = ();
    type Error = ratchet_engine::Untyped;
    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<CommitsOnItsOwn>();
    }
    fn build(_: &Uuid, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("rogue", CommitsOnItsOwn);
        Ok(())
    }
}

/// A saga whose node leaves a nested transaction (a diesel savepoint) open, as a `conn.transaction(..)`
/// future dropped half-way (a timeout around it) does.
struct LeavesASavepointOpen;

#[derive(Serialize, Deserialize)]
struct HalfATransaction;

impl SagaDef for LeavesASavepointOpen {
    const NAME: &'static str = "test-leaves-a-savepoint-open";
    type Params = Uuid;
    type Context = ();
    type Error = ratchet_engine::Untyped;
    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<HalfATransaction>();
    }
    fn build(_: &Uuid, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("half", HalfATransaction);
        Ok(())
    }
}

impl DbNode<LeavesASavepointOpen> for HalfATransaction {
    const NAME: &'static str = "test.half_a_transaction";
    type Plan = Uuid;
    type Receipt = ();
    type Output = ();
    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, LeavesASavepointOpen>,
    ) -> Result<Uuid, NodeError> {
        Ok(*cx.params())
    }
    async fn commit(&self, tx: &mut CommitTx<'_>, account: Uuid) -> Result<(), NodeError> {
        use diesel_async::{AnsiTransactionManager, TransactionManager};
        AnsiTransactionManager::begin_transaction(tx.conn()).await?;
        diesel::sql_query("UPDATE example_account SET balance = balance - 1 WHERE id = $1")
            .bind::<SqlUuid, _>(account)
            .execute(tx.conn())
            .await?;
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

/// A node that leaves a savepoint open is failed: the engine's COMMIT would only have released the savepoint,
/// reported a commit that the pool then rolls back, and let the saga go on with its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_a_savepoint_open_is_failed_not_taken_for_committed() {
    let db = database().await;
    let (engine, _) = EngineBuilder::new(config(&db, Uuid::new_v4()))
        .register::<LeavesASavepointOpen>(Arc::new(()))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    let (id, outcome) = engine.run::<LeavesASavepointOpen>(account).await.unwrap();
    match &outcome {
        SagaOutcome::Unwound { node, error, .. } => {
            assert_eq!(node, "half");
            assert!(error.contains("nested transaction"), "{error}");
        }
        other => panic!("expected the node to fail, got {other:?}"),
    }
    let (commits, _) = records(&engine, id).await;
    assert!(commits.is_empty());
    assert_eq!(
        state(&engine, account).await.balance,
        100,
        "nothing committed"
    );
}

impl DbNode<EndsItsTransaction> for CommitsOnItsOwn {
    const NAME: &'static str = "test.commits_on_its_own";
    type Plan = Uuid;
    type Receipt = ();
    type Output = ();
    async fn prepare(&self, cx: &mut PrepareCx<'_, EndsItsTransaction>) -> Result<Uuid, NodeError> {
        Ok(*cx.params())
    }
    async fn commit(&self, tx: &mut CommitTx<'_>, account: Uuid) -> Result<(), NodeError> {
        // The direct port of a datastore method that commits on its own: a COMMIT and a BEGIN sent raw.
        diesel::sql_query("UPDATE example_account SET balance = balance - 1 WHERE id = $1")
            .bind::<SqlUuid, _>(account)
            .execute(tx.conn())
            .await?;
        tx.conn().batch_execute("COMMIT; BEGIN").await?;
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Transaction control sent through `CommitTx` is detected: the engine writes no commit record for a
/// transaction that is not the one it opened, and fails the node loudly, naming what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_ends_the_engines_transaction_is_failed_loudly() {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    let account = account(&engine).await;
    let (id, outcome) = engine.run::<EndsItsTransaction>(account).await.unwrap();
    match &outcome {
        SagaOutcome::Unwound { node, error, .. } => {
            assert_eq!(node, "rogue");
            assert!(error.contains("ended the engine's transaction"), "{error}");
        }
        other => panic!("expected the node to fail, got {other:?}"),
    }
    let (commits, _) = records(&engine, id).await;
    assert!(
        commits.is_empty(),
        "no commit record for a foreign transaction"
    );
    // What the node committed on its own stays: the engine can only say so, not undo it.
    assert_eq!(state(&engine, account).await.balance, 99);
}

/// An engine refuses nothing here but documents the error for an unknown saga id in retry-unwind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_empty_on_an_idle_engine() {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    assert!(engine.waiting().is_empty());
    assert!(matches!(
        engine.retry_unwind(Uuid::new_v4()).await,
        Err(EngineError::NoSuchSaga(_))
    ));
}

/// A commit this engine never heard of (an earlier attempt whose COMMIT it took for refused): the node's new
/// attempt meets the commit record's key. It is not failed, and it spends no retry: its own writes roll back
/// and the recorded receipt is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_record_already_there_is_replayed_not_failed() {
    let db = database().await;
    let engine = start(config(&db, Uuid::new_v4())).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    // Hold charge_account before its transaction begins, and plant the record of a commit the engine did
    // not see (its receipt: a charge that left the balance at 70).
    engine
        .failpoints()
        .arm(id, "charge_account", FaultPoint::BeforePrepare, LONG, 1);
    let run = tokio::spawn(saga.run());
    until_delaying(&engine, id).await;
    let receipt = serde_json::json!({
        "ledger_id": Uuid::new_v4(), "account_id": account, "widget_id": Uuid::new_v4(),
        "amount": 30, "balance": 70,
    });
    {
        let mut conn = engine.pool().get().await.unwrap();
        diesel::sql_query(
            "INSERT INTO saga_commit_record \
             (saga_id, node_name, receipt, time_committed, creator, adopt_generation) \
             VALUES ($1, 'charge_account', $2, now(), $3, 1)",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<diesel::sql_types::Jsonb, _>(receipt)
        .bind::<SqlUuid, _>(engine.sec_id())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let retries_before = engine.counters().snapshot().retries;
    engine.failpoints().wake(id);
    let outcome = within("the saga", run).await.unwrap().unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    // The node's own charge rolled back with its attempt: only the planted commit stands.
    let after = state(&engine, account).await;
    assert_eq!((after.balance, after.ledger.len()), (100, 0), "{after:?}");
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(
        commits,
        names(&["activate_widget", "charge_account", "reserve_widget"])
    );
    assert!(compensations.is_empty());
    let counters = engine.counters().snapshot();
    assert_eq!(
        counters.retries, retries_before,
        "no retry spent: {counters:?}"
    );
    assert_eq!(
        counters.unknown_outcomes, 0,
        "a definite answer: {counters:?}"
    );
}

/// The waiting note is fenced: an executor that no longer owns the saga (an older generation, or another
/// executor) cannot leave a note, and a note its former owner left before an adoption is not shown as the
/// saga's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executor_cannot_leave_a_waiting_note() {
    use ratchet_store::SagaOwner;
    use ratchet_store::{note_waiting, waiting_note};
    let db = database().await;
    let sec = Uuid::new_v4();
    let engine = start(config(&db, sec)).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    let mut conn = engine.pool().get().await.unwrap();
    let generation = get_saga(&mut conn, id)
        .await
        .unwrap()
        .unwrap()
        .adopt_generation;
    let owner = SagaOwner {
        sec_id: sec,
        generation,
    };

    // An older incarnation, and another executor: no note.
    for stale in [
        SagaOwner {
            sec_id: sec,
            generation: generation - 1,
        },
        SagaOwner {
            sec_id: Uuid::new_v4(),
            generation,
        },
    ] {
        note_waiting(&mut conn, id, "charge_account", stale, Some("stale"))
            .await
            .unwrap();
        assert_eq!(
            waiting_note(&mut conn, id).await.unwrap(),
            None,
            "{stale:?}"
        );
    }
    // The owner: a note.
    note_waiting(&mut conn, id, "charge_account", owner, Some("the owner's"))
        .await
        .unwrap();
    let (reason, _) = waiting_note(&mut conn, id)
        .await
        .unwrap()
        .expect("the owner's note");
    assert_eq!(reason, "the owner's");
    // Adopted by another executor: the former owner's note is no longer the saga's.
    diesel::sql_query(
        "UPDATE saga SET current_sec = $2, adopt_generation = adopt_generation + 1 WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(Uuid::new_v4())
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(waiting_note(&mut conn, id).await.unwrap(), None);
    drop(conn);
    drop(saga);
}
