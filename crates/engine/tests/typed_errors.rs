//! A saga's typed error and its outputs by name, in the outcome the engine returns: on the plain failure
//! path, after a crash and recovery (the failure lost before its recording, or recorded and the unwind cut
//! short), in a stuck saga's outcome and diagnosis; and a node whose output is a `Result` refused when its
//! saga is registered. The saga is the example's `OrderWidget` (its error is `ApiError`, an HTTP status each;
//! its outputs a tuple of three, a `chrono::DateTime` and a `BTreeMap`).

mod common;

use chrono::{DateTime, Utc};
use common::{account, builder, database, run_prepared_until_crash, state, untouched};
use ratchet_engine::{
    CommitTx, DbNode, Engine, EngineError, FaultEffect, FaultPoint, NodeError, OutcomeLookupError,
    PrepareCx, SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_example_saga::{ApiError, CONFLICT_MESSAGE, OrderParams, OrderWidget};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

async fn engine(db: &TestDatabase, sec_id: Uuid) -> Engine {
    builder(db, sec_id)
        .register::<OrderWidget>(Arc::new(()))
        .start()
        .await
        .expect("engine")
        .0
}

fn order(account_id: Uuid, refuse: bool, refuse_undo: bool) -> OrderParams {
    OrderParams {
        account_id,
        price: 30,
        refuse,
        refuse_undo,
    }
}

fn conflict() -> ApiError {
    ApiError::Conflict {
        message: CONFLICT_MESSAGE.to_owned(),
    }
}

/// Asserts that `outcome` is the unwind of a refused order, carrying the check's typed error.
fn assert_unwound_with_conflict(outcome: &SagaOutcome) {
    let SagaOutcome::Unwound { node, error, .. } = outcome else {
        panic!("expected an unwind: {outcome:?}");
    };
    assert_eq!(node, "check");
    assert!(error.contains(CONFLICT_MESSAGE), "{error}");
    let typed = outcome
        .saga_error::<OrderWidget>()
        .expect("the typed error decodes as the saga's error type");
    assert_eq!(typed, Some(conflict()), "{outcome:?}");
    assert_eq!(typed.map(|e| e.status()), Some(409));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_error_reaches_the_outcome() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let (_, outcome) = engine
        .run::<OrderWidget>(order(account, true, false))
        .await
        .unwrap();
    assert_unwound_with_conflict(&outcome);
    assert_eq!(
        state(&engine, account).await,
        untouched(),
        "the debit was given back"
    );
    // An untyped failure carries no typed error.
    let saga = engine
        .create::<OrderWidget>(order(account, false, false))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "check",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.saga_error::<OrderWidget>(), Ok(None));
}

/// Crashes the first engine at `node`/`point` of a refused order, checks whether the check's failure was
/// recorded by then (`failure_recorded`: its `failed` event, with the typed error in it), then a second engine
/// with the same executor id recovers the saga. Returns the recovered outcome.
async fn refused_order_crashed_at(
    node: &str,
    point: FaultPoint,
    failure_recorded: bool,
) -> (TestDatabase, Engine, Uuid, SagaOutcome) {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let saga = first
        .create::<OrderWidget>(order(account, true, false))
        .await
        .unwrap();
    first
        .failpoints()
        .arm(saga.id, node, point, FaultEffect::Crash, 1);
    let id = run_prepared_until_crash(&first, saga).await;
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let history = ratchet_store::saga_history(&mut conn, id)
        .await
        .unwrap()
        .unwrap();
    let failed: Vec<_> = history
        .events
        .iter()
        .filter(|e| e.event_type == "failed")
        .collect();
    if failure_recorded {
        let [failed] = failed.as_slice() else {
            panic!("the check's failure is recorded once: {:?}", history.events);
        };
        let recorded = ratchet_store::saga_error_of(failed.data.as_ref()).expect("typed");
        assert_eq!(
            serde_json::from_value::<ApiError>(recorded).unwrap(),
            conflict()
        );
    } else {
        assert!(failed.is_empty(), "no failure recorded yet: {failed:?}");
    }
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    (db, second, account, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_failure_lost_before_its_recording_is_typed_again_after_recovery() {
    let (_db, engine, account, outcome) =
        refused_order_crashed_at("check", FaultPoint::AfterFailure, false).await;
    assert_unwound_with_conflict(&outcome);
    assert_eq!(state(&engine, account).await, untouched());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_typed_failure_is_read_back_from_the_log_after_recovery() {
    // The crash comes in the debit's compensation: the check's `failed` event (with its typed error) is
    // durable, and the recovering engine does not run the check again.
    let (_db, engine, account, outcome) =
        refused_order_crashed_at("debit", FaultPoint::InCompensation, true).await;
    assert_unwound_with_conflict(&outcome);
    assert_eq!(state(&engine, account).await, untouched());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_keeps_both_typed_errors_in_its_outcome_and_its_diagnosis() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let (id, outcome) = engine
        .run::<OrderWidget>(order(account, true, true))
        .await
        .unwrap();
    let SagaOutcome::Stuck { undo_node, .. } = &outcome else {
        panic!("expected stuck: {outcome:?}");
    };
    assert_eq!(undo_node, "debit");
    assert_eq!(outcome.saga_error::<OrderWidget>(), Ok(Some(conflict())));
    let undo = outcome.undo_saga_error::<OrderWidget>().unwrap();
    assert!(
        matches!(&undo, Some(e @ ApiError::Unavailable { .. }) if e.status() == 503),
        "{outcome:?}"
    );

    let mut conn = engine.pool().get().await.unwrap();
    let diagnosis = ratchet_store::stuck_diagnosis(&mut conn, id)
        .await
        .unwrap()
        .expect("the saga exists");
    assert_eq!(diagnosis.state, "stuck");
    let [failed] = diagnosis.failed_nodes.as_slice() else {
        panic!("one failed node: {diagnosis:?}");
    };
    assert_eq!(failed.node, "check");
    let recorded: ApiError =
        serde_json::from_value(failed.saga_error.clone().expect("typed")).unwrap();
    assert_eq!(recorded, conflict());
    let [failed_undo] = diagnosis.failed_undos.as_slice() else {
        panic!("one failed undo: {diagnosis:?}");
    };
    assert_eq!(failed_undo.node, "debit");
    let recorded: ApiError =
        serde_json::from_value(failed_undo.saga_error.clone().expect("typed")).unwrap();
    assert_eq!(Some(recorded), undo);
}

/// Checks a succeeded order's outputs, by name, typed: a tuple of three, a `DateTime`, a `BTreeMap`.
fn assert_outputs(outcome: &SagaOutcome, account: Uuid) {
    let debit: (Uuid, i64, String) = outcome.lookup_node_output("debit").unwrap();
    assert_eq!(debit, (account, 70, "debited".to_owned()));
    let stamp: DateTime<Utc> = outcome.lookup_node_output("stamp").unwrap();
    assert!(stamp <= Utc::now(), "{stamp}");
    let summary: BTreeMap<String, i64> = outcome.lookup_node_output("summarise").unwrap();
    assert_eq!(
        summary,
        BTreeMap::from([("balance".to_owned(), 70), ("price".to_owned(), 30)])
    );
    assert_eq!(
        outcome.lookup_node_output::<u32>("nowhere"),
        Err(OutcomeLookupError::NoSuchNode("nowhere".to_owned()))
    );
    assert!(matches!(
        outcome.lookup_node_output::<String>("summarise"),
        Err(OutcomeLookupError::Decode { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_by_name_after_a_run() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let (_, outcome) = engine
        .run::<OrderWidget>(order(account, false, false))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_outputs(&outcome, account);
    assert_eq!(
        outcome.saga_error::<OrderWidget>(),
        Ok(None),
        "a success has no error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_by_name_after_recovery() {
    // The first engine dies in the last node's transaction: the earlier nodes' outputs are in the log only.
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let saga = first
        .create::<OrderWidget>(order(account, false, false))
        .await
        .unwrap();
    first.failpoints().arm(
        saga.id,
        "check",
        FaultPoint::BeforeCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_outputs(&outcome, account);
}

/// A saga one of whose nodes outputs a `Result`.
struct OutputsAResult;

impl SagaDef for OutputsAResult {
    const NAME: &'static str = "test-outputs-a-result";
    type Params = ();
    type Context = ();
    type Error = ratchet_engine::Untyped;
    ratchet_engine::declare_saga_nodes! { db Fallible }
    fn build(_: &(), dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("fallible", Fallible);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Fallible;

impl DbNode<OutputsAResult> for Fallible {
    const NAME: &'static str = "test.fallible";
    type Plan = ();
    type Receipt = u32;
    type Output = Result<u32, String>;
    async fn prepare(&self, _: &mut PrepareCx<'_, OutputsAResult>) -> Result<(), NodeError> {
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<u32, NodeError> {
        Ok(0)
    }
    fn finish(receipt: u32) -> Result<u32, String> {
        if receipt == 0 {
            Err("re-fetch failed".to_owned())
        } else {
            Ok(receipt)
        }
    }
    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_output_is_a_result_is_refused_at_registration() {
    let db = database().await;
    let refused = builder(&db, Uuid::new_v4())
        .register::<OutputsAResult>(Arc::new(()))
        .start()
        .await;
    match refused {
        Err(EngineError::BadRegistration { saga, message }) => {
            assert_eq!(saga, OutputsAResult::NAME);
            assert!(
                message.contains("test.fallible") && message.contains("Result"),
                "{message}"
            );
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a node whose output is a Result was registered"),
    }
}
