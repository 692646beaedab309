//! The Omicron-readable saga log (`EngineConfig::omicron_readable_log`): sagas run to success, to a clean
//! unwind and to `stuck` (a failed undo), then the database is read with Omicron's row shapes (its
//! `saga_state` labels and the event types its reader takes, `ratchet_test_utils::omicron`): every row parses.
//! ratchet's own readers still see the stuck saga as stuck (listing, counts, diagnosis), recovery does not
//! resume it, and retry-unwind and abandon take it. Without the mode, the same sagas leave rows Omicron
//! refuses: what the mode exists for.

mod common;

use common::*;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{Engine, EngineBuilder, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_example_saga::ProvisionWidget;
use ratchet_store::{
    SagaFilter, SagaState, count_by_state, get_saga, list_sagas_where, stuck_diagnosis,
    unfinished_by_name,
};
use ratchet_test_utils::omicron::{omicron_recovery_listing, rows_omicron_cannot_parse};
use std::sync::Arc;
use uuid::Uuid;

/// A started engine on `db` for executor `sec_id`, writing the Omicron-readable log or not.
async fn engine(
    db: &ratchet_template_db::TestDatabase,
    sec_id: Uuid,
    omicron_readable: bool,
) -> Engine {
    let mut config = config(db, sec_id);
    config.omicron_readable_log = omicron_readable;
    EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap()
        .0
}

/// One saga of each ending: succeeded, unwound (a node fails before its commit), stuck (a compensation fails
/// for good). Returns the stuck saga's id.
async fn run_every_ending(engine: &Engine) -> Uuid {
    let (_, ok) = engine
        .run::<ProvisionWidget>(params(account(engine).await))
        .await
        .unwrap();
    assert!(matches!(ok, SagaOutcome::Succeeded { .. }), "{ok:?}");
    let saga = engine
        .create::<ProvisionWidget>(params(account(engine).await))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "activate_widget",
        FaultPoint::AfterCommit,
        FaultEffect::PermanentError,
        1,
    );
    let unwound = saga.run().await.unwrap();
    assert!(
        matches!(unwound, SagaOutcome::Unwound { .. }),
        "{unwound:?}"
    );
    stuck_saga(engine, account(engine).await).await
}

/// The saga's `saga_state` as recorded (not as ratchet's readers see it).
async fn recorded_state(engine: &Engine, id: Uuid) -> String {
    #[derive(diesel::QueryableByName)]
    struct State {
        #[diesel(sql_type = Text)]
        state: String,
    }
    let mut conn = engine.pool().get().await.unwrap();
    diesel::sql_query("SELECT saga_state::TEXT AS state FROM saga WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .get_result::<State>(&mut conn)
        .await
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_parses_with_omicrons_readers_and_ratchet_still_sees_stuck() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let engine = engine(&db, sec_id, true).await;
    let stuck = run_every_ending(&engine).await;

    let mut conn = engine.pool().get().await.unwrap();
    assert_eq!(
        rows_omicron_cannot_parse(&mut conn).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(recorded_state(&engine, stuck).await, "unwinding");
    // Nexus's recovery listing parses, and leaves the stuck saga to ratchet.
    assert_eq!(
        omicron_recovery_listing(&mut conn, sec_id).await.unwrap(),
        Vec::<Uuid>::new()
    );

    // ratchet's readers: the row, the filtered listing, the counts, the diagnosis, the CLI's pre-check.
    let row = get_saga(&mut conn, stuck).await.unwrap().unwrap();
    assert_eq!(row.saga_state, SagaState::Stuck);
    assert_eq!(row.stuck_node.as_deref(), Some("charge_account"));
    let listed = list_sagas_where(
        &mut conn,
        &SagaFilter {
            state: Some(SagaState::Stuck),
            ..SagaFilter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        listed.sagas.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![stuck]
    );
    let unwinding = list_sagas_where(
        &mut conn,
        &SagaFilter {
            state: Some(SagaState::Unwinding),
            ..SagaFilter::default()
        },
    )
    .await
    .unwrap();
    assert!(unwinding.sagas.is_empty(), "{unwinding:?}");
    let counts = count_by_state(&mut conn).await.unwrap();
    assert_eq!(
        (
            counts.get("stuck"),
            counts.get("unwinding"),
            counts.get("done")
        ),
        (Some(&1), None, Some(&2))
    );
    assert_eq!(
        unfinished_by_name(&mut conn, &["example-provision"], &[sec_id], &[stuck])
            .await
            .unwrap()
            .get("example-provision"),
        Some(&1),
        "counted as stuck, not as unfinished twice"
    );
    let diagnosis = stuck_diagnosis(&mut conn, stuck).await.unwrap().unwrap();
    assert_eq!(diagnosis.state, "stuck");
    assert_eq!(
        diagnosis
            .failed_undos
            .iter()
            .map(|f| f.node.as_str())
            .collect::<Vec<_>>(),
        vec!["charge_account"]
    );
    assert!(
        diagnosis.failed_undos[0].error.contains("InCompensation"),
        "{diagnosis:?}"
    );
    assert!(diagnosis.stuck_since.is_some());
    drop(conn);

    // Recovery does not resume it (it is not unfinished), under this executor or after a reassignment.
    engine.shutdown().await;
    let next = self::engine(&db, sec_id, true).await;
    let report = next.recover().await.unwrap();
    assert!(report.resumed.is_empty(), "{report:?}");
    {
        let mut conn = next.pool().get().await.unwrap();
        ratchet_test_utils::omicron::reassign_sec(&mut conn, &[sec_id], Uuid::new_v4())
            .await
            .unwrap();
    }

    // Retry-unwind takes it (its failed undo read from ratchet's own table) and finishes the unwind once the
    // cause is gone.
    next.failpoints().clear(stuck);
    let outcome = next.retry_unwind(stuck).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    assert_eq!(recorded_state(&next, stuck).await, "done");
    let (_, compensations) = records(&next, stuck).await;
    assert_eq!(
        compensations
            .iter()
            .map(|(node, _)| node.as_str())
            .collect::<Vec<_>>(),
        vec!["charge_account", "reserve_widget"]
    );

    // A second stuck saga, abandoned.
    let again = stuck_saga(&next, account(&next).await).await;
    let abandoned = next.abandon(again, "an operator gives up").await.unwrap();
    assert_eq!(abandoned.previous_state, "stuck");
    let mut conn = next.pool().get().await.unwrap();
    assert_eq!(
        rows_omicron_cannot_parse(&mut conn).await.unwrap(),
        Vec::<String>::new()
    );
    drop(conn);
    next.shutdown().await;
}

/// Without the mode, a stuck saga leaves a `stuck` state and an `undo_failed` event: the rows Omicron's
/// readers refuse (the check above is not vacuous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mode_a_stuck_saga_leaves_rows_omicron_refuses() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4(), false).await;
    let stuck = run_every_ending(&engine).await;
    assert_eq!(recorded_state(&engine, stuck).await, "stuck");
    let mut conn = engine.pool().get().await.unwrap();
    let problems = rows_omicron_cannot_parse(&mut conn).await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains("\"stuck\""))
            && problems.iter().any(|p| p.contains("\"undo_failed\"")),
        "{problems:?}"
    );
    drop(conn);
    engine.shutdown().await;
}
