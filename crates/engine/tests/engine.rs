//! The engine's guarantees, on the real embedded PostgreSQL: one fresh database per test.

mod common;

use common::*;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{
    CommitTx, DbNode, Engine, FaultEffect, FaultPoint, NodeError, NodeRegistry, PrepareCx,
    SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_example_saga::{AccountState, ProvisionWidget};
use ratchet_store::{get_saga, saga_history};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

async fn engine(db: &TestDatabase, sec_id: Uuid) -> Engine {
    let (engine, _) = builder(db, sec_id)
        .register::<WritesInPrepare>(Arc::new(()))
        .start()
        .await
        .expect("engine starts");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_commits_each_node_once() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let p = params(account);
    let (id, outcome) = engine.run::<ProvisionWidget>(p.clone()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        state(&engine, account).await,
        AccountState {
            balance: 70,
            ledger: vec![-30],
            widgets: vec![(p.widget_name, "active".into())]
        }
    );
    assert_eq!(saga_state(&engine, id).await, "done");
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(
        commits,
        names(&["activate_widget", "charge_account", "reserve_widget"])
    );
    assert!(compensations.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_right_after_commit_compensates_once_and_leaves_nothing() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "charge_account",
        FaultPoint::AfterCommit,
        FaultEffect::PermanentError,
        1,
    );
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "charge_account"),
        "{outcome:?}"
    );
    assert_eq!(
        state(&engine, account).await,
        AccountState {
            balance: 100,
            ledger: vec![],
            widgets: vec![]
        }
    );
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(commits, names(&["charge_account", "reserve_widget"]));
    assert_eq!(
        compensations,
        vec![
            ("charge_account".into(), true),
            ("reserve_widget".into(), true)
        ]
    );
    assert_eq!(saga_state(&engine, id).await, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_finish_rolls_the_commit_back() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "charge_account",
        FaultPoint::InFinish,
        FaultEffect::Panic,
        1,
    );
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, error, .. } if node == "charge_account" && error.contains("panicked")),
        "{outcome:?}"
    );
    assert_eq!(
        state(&engine, account).await,
        AccountState {
            balance: 100,
            ledger: vec![],
            widgets: vec![]
        }
    );
    let (commits, _) = records(&engine, id).await;
    assert_eq!(
        commits,
        names(&["reserve_widget"]),
        "the panicking node committed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_error_in_commit_is_retried_and_the_saga_succeeds() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "charge_account",
        FaultPoint::BeforeCommit,
        FaultEffect::TransientError,
        2,
    );
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        state(&engine, account).await.ledger,
        vec![-30],
        "charged exactly once"
    );
    assert!(engine.counters().snapshot().retries >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_undo_failure_is_recorded_stuck_not_done() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let id = stuck_saga(&engine, account).await;
    let mut conn = engine.pool().get().await.unwrap();
    let row = get_saga(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(row.saga_state, "stuck");
    assert_eq!(row.stuck_node.as_deref(), Some("charge_account"));
    assert!(row.stuck_reason.unwrap().contains("InCompensation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_actions_and_undos_commit_and_compensate_once() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    saga.inject_repeat("charge_account", 2, 2).await.unwrap();
    saga.inject_repeat("reserve_widget", 2, 2).await.unwrap();
    engine.failpoints().arm(
        saga.id,
        "activate_widget",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    // A second compensation of the charge would leave the balance at 130.
    assert_eq!(
        state(&engine, account).await,
        AccountState {
            balance: 100,
            ledger: vec![],
            widgets: vec![]
        }
    );
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(commits, names(&["charge_account", "reserve_widget"]));
    assert_eq!(compensations.len(), 2);
}

/// Crashes the first engine at `node`/`point`, then a second engine with the same executor id recovers.
async fn crash_and_recover(point: FaultPoint) -> (Engine, Uuid, Uuid, SagaOutcome) {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let id = run_until_crash(&first, account, "charge_account", point).await;
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    (second, account, id, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_then_recovery_commits_once() {
    let (engine, account, _, outcome) = crash_and_recover(FaultPoint::BeforeCommit).await;
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await.ledger, vec![-30]);
    assert_eq!(state(&engine, account).await.balance, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_then_recovery_does_not_commit_again() {
    let (engine, account, id, outcome) = crash_and_recover(FaultPoint::AfterCommit).await;
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await.ledger, vec![-30]);
    assert_eq!(state(&engine, account).await.balance, 70);
    assert_eq!(saga_state(&engine, id).await, "done");
}

/// A log that lost the node's `succeeded` event (as steno's own truncated-log tests do) makes recovery re-run
/// a node whose commit happened: the commit record turns the re-run into a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_commit_replayed_after_a_crash_commits_once() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let id = run_until_crash(&first, account, "charge_account", FaultPoint::AfterCommit).await;
    {
        let mut conn = first.pool().get().await.unwrap();
        let deleted = diesel::sql_query(
            "DELETE FROM saga_node_event WHERE saga_id = $1 AND event_type = 'succeeded' AND data = '70'::jsonb",
        )
        .bind::<SqlUuid, _>(id)
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(deleted, 1, "charge_account's succeeded event");
    }
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        state(&second, account).await.ledger,
        vec![-30],
        "one charge, not two"
    );
    assert_eq!(state(&second, account).await.balance, 70);
}

/// A compensation whose forward has no commit record has nothing to undo, and is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_without_a_commit_record_is_skipped() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let id = run_until_crash(
        &first,
        account,
        "activate_widget",
        FaultPoint::BeforePrepare,
    )
    .await;
    {
        // Make the log say: charge_account succeeded without a commit (its record gone), and activate_widget
        // failed. Recovery must unwind, and charge_account's compensation must not refund a charge it cannot
        // prove happened. (The crashed engine's own sessions were ended with it: a connection of our own.)
        let mut conn = ratchet_store::establish(&db.url).await.unwrap();
        diesel::sql_query(
            "DELETE FROM saga_commit_record WHERE saga_id = $1 AND node_name = 'charge_account'",
        )
        .bind::<SqlUuid, _>(id)
        .execute(&mut conn)
        .await
        .unwrap();
        // steno numbers DAG nodes in the order they were added: activate_widget is the third.
        let node: i64 = 2;
        for (event, data) in [
            ("started", None),
            (
                "failed",
                Some(r#"{"ActionFailed":{"source_error":"test"}}"#),
            ),
        ] {
            diesel::sql_query(
                "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
                 VALUES ($1, $2, $3, $4::jsonb, now(), $1) ON CONFLICT DO NOTHING",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<diesel::sql_types::BigInt, _>(node)
            .bind::<Text, _>(event)
            .bind::<diesel::sql_types::Nullable<Text>, _>(data)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let (second, report) = builder(&db, sec_id).start().await.unwrap();
    assert_eq!(report.resumed, vec![id], "{report:?}");
    let outcome = second.wait(id).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    let (_, compensations) = records(&second, id).await;
    assert_eq!(
        compensations,
        vec![
            ("charge_account".into(), false),
            ("reserve_widget".into(), true)
        ]
    );
    // No refund: the balance stays as the (unrecorded) charge left it.
    assert_eq!(state(&second, account).await.balance, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_executor_can_neither_commit_nor_record_events() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    {
        // Another executor adopts the saga before this one starts it.
        let mut conn = engine.pool().get().await.unwrap();
        diesel::sql_query(
            "UPDATE saga SET current_sec = $2, adopt_generation = adopt_generation + 1 WHERE id = $1",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(Uuid::new_v4())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), saga.run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Fenced);
    let mut conn = engine.pool().get().await.unwrap();
    let history = saga_history(&mut conn, id).await.unwrap().unwrap();
    assert!(
        history.events.is_empty(),
        "no event landed: {:?}",
        history.events
    );
    assert!(history.commits.is_empty());
    assert_eq!(
        history.saga.saga_state, "running",
        "the stale executor did not change the state"
    );
    assert_eq!(
        state(&engine, account).await,
        AccountState {
            balance: 100,
            ledger: vec![],
            widgets: vec![]
        }
    );
}

/// A saga whose node tries to write during prepare.
struct WritesInPrepare;

#[derive(Serialize, Deserialize)]
struct SneakyWrite;

impl SagaDef for WritesInPrepare {
    const NAME: &'static str = "test-writes-in-prepare";
    type Params = ();
    type Context = ();
    type Error = ratchet_engine::Untyped;
    fn register(registry: &mut NodeRegistry<Self>) {
        registry.db::<SneakyWrite>();
    }
    fn build((): &(), dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("sneaky", SneakyWrite);
        Ok(())
    }
}

impl DbNode<WritesInPrepare> for SneakyWrite {
    const NAME: &'static str = "test.sneaky_write";
    type Plan = ();
    type Receipt = ();
    type Output = ();
    async fn prepare(&self, cx: &mut PrepareCx<'_, WritesInPrepare>) -> Result<(), NodeError> {
        diesel::sql_query(
            "INSERT INTO example_account (id, balance) VALUES (gen_random_uuid(), 1)",
        )
        .execute(cx.conn())
        .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_inside_prepare_is_rejected_by_postgres() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let (_, outcome) = engine.run::<WritesInPrepare>(()).await.unwrap();
    match outcome {
        SagaOutcome::Unwound { node, error, .. } => {
            assert_eq!(node, "sneaky");
            assert!(error.contains("read-only transaction"), "{error}");
        }
        other => panic!("expected the node to fail, got {other:?}"),
    }
    let mut conn = engine.pool().get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let count: Count = diesel::sql_query("SELECT count(*) AS count FROM example_account")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(count.count, 0);
}
