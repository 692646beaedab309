//! The `ratchet` binary run as a user would, against a fresh database (`--database-url`): listing and showing
//! sagas, retry-unwind, abandon, adopt and recover, each with a right and a wrong id or state.

mod common;

use common::{
    assert_fails_after_saying, assert_refused, assert_says, ratchet, rename_activate_widget,
};
use ratchet_engine::example::{self, ProvisionParams, ProvisionWidget};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, SagaOutcome};
use ratchet_store::saga::get_saga;
use ratchet_store::testing::{TestDatabase, fresh_database};
use std::sync::Arc;
use uuid::Uuid;

async fn database() -> TestDatabase {
    fresh_database(&[&example::MIGRATIONS])
        .await
        .expect("test database")
}

async fn engine(db: &TestDatabase, sec_id: Uuid) -> Engine {
    EngineBuilder::new(EngineConfig::new(&db.url, sec_id))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("engine")
        .0
}

async fn account(engine: &Engine) -> Uuid {
    let mut conn = engine.pool().get().await.unwrap();
    example::create_account(&mut conn, 100).await.unwrap()
}

fn params(account_id: Uuid) -> ProvisionParams {
    ProvisionParams {
        account_id,
        widget_name: format!("w-{}", Uuid::new_v4().simple()),
        price: 30,
    }
}

/// A saga left stuck (see `example::run_stuck`).
async fn stuck_saga(engine: &Engine, account: Uuid) -> Uuid {
    let (id, outcome) = example::run_stuck(engine, params(account)).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Stuck { .. }), "{outcome:?}");
    id
}

async fn saga_row(engine: &Engine, id: Uuid) -> ratchet_store::SagaRow {
    let mut conn = engine.pool().get().await.unwrap();
    get_saga(&mut conn, id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_with_the_stuck_diagnosis() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let (done, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let stuck = stuck_saga(&engine, account).await;

    let all = ratchet(&db, &["sagas", "list"]);
    assert_says(&all, &["2 saga(s)"]);
    for (id, state) in [(done, "done"), (stuck, "stuck")] {
        let line = all.stdout.lines().find(|l| l.starts_with(&id.to_string()));
        assert!(
            line.is_some_and(|l| l.contains(state) && l.contains("example-provision")),
            "{all:?}"
        );
    }
    let only_stuck = ratchet(&db, &["sagas", "list", "--state", "stuck"]);
    assert_says(&only_stuck, &[&stuck.to_string(), "1 saga(s)"]);
    assert!(
        !only_stuck.stdout.contains(&done.to_string()),
        "{only_stuck:?}"
    );
    assert_says(
        &ratchet(&db, &["sagas", "list", "--state", "abandoned"]),
        &["no abandoned sagas"],
    );
    assert_refused(
        &ratchet(&db, &["sagas", "list", "--state", "wedged"]),
        "unknown saga state \"wedged\"",
    );

    let show = ratchet(&db, &["sagas", "show", &stuck.to_string()]);
    assert_says(
        &show,
        &[
            "(example-provision, definition version 1)",
            "state      stuck",
            "nodes, in DAG order:",
            "  reserve_widget",
            "  charge_account",
            "  activate_widget",
            "commit record",
            "undo_failed",
            "diagnosis:",
            "the compensation of charge_account failed",
            "injected at InCompensation",
            "commits not yet compensated, oldest first:",
            "stuck for ",
            &format!("ratchet sagas retry-unwind {stuck}"),
        ],
    );
    let uncompensated = show
        .stdout
        .split("commits not yet compensated")
        .nth(1)
        .unwrap();
    assert!(
        uncompensated.contains("reserve_widget") && uncompensated.contains("charge_account"),
        "{show:?}"
    );
    let show_done = ratchet(&db, &["sagas", "show", &done.to_string()]);
    assert_says(&show_done, &["state      done", "succeeded"]);
    assert!(!show_done.stdout.contains("diagnosis:"), "{show_done:?}");

    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(&db, &["sagas", "show", &missing]),
        &format!("no saga with id {missing}"),
    );
    assert_refused(
        &ratchet(&db, &["sagas", "show", "saga-17"]),
        "\"saga-17\" is not a saga id",
    );
    assert_refused(&ratchet(&db, &["sagas", "show"]), "needs a saga id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_unwind_finishes_a_stuck_saga_and_refuses_the_rest() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let stuck = stuck_saga(&engine, account).await;
    let (id, cli_sec) = (stuck.to_string(), Uuid::new_v4().to_string());

    // The cause (this process's failpoint) does not exist in the CLI's engine: the compensation now succeeds.
    let retry = ratchet(&db, &["sagas", "retry-unwind", &id, "--sec-id", &cli_sec]);
    assert_says(
        &retry,
        &[
            "unwound cleanly after activate_widget failed",
            "the unwind completed",
        ],
    );
    let row = saga_row(&engine, stuck).await;
    assert_eq!(row.saga_state, "done");
    assert_eq!(
        row.current_sec.map(|s| s.to_string()),
        Some(cli_sec.clone())
    );
    let mut conn = engine.pool().get().await.unwrap();
    let after = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(
        (after.balance, after.ledger.len(), after.widgets.len()),
        (100, 0, 0),
        "no leak: {after:?}"
    );

    assert_refused(
        &ratchet(&db, &["sagas", "retry-unwind", &id, "--sec-id", &cli_sec]),
        &format!("saga {id} is done, but this operation needs it stuck"),
    );
    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(
            &db,
            &["sagas", "retry-unwind", &missing, "--sec-id", &cli_sec],
        ),
        &format!("no saga with id {missing}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_records_the_reason_and_says_the_rows_stay() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let stuck = stuck_saga(&engine, account).await;
    let id = stuck.to_string();
    let reason = "volume deleted by hand (ticket 42)";

    assert_refused(
        &ratchet(&db, &["sagas", "abandon", &id]),
        "needs --reason TEXT",
    );
    assert_says(
        &ratchet(&db, &["sagas", "abandon", &id, "--reason", reason]),
        &[
            &format!("saga {id} (example-provision) is abandoned; it was stuck"),
            &format!("reason recorded: {reason}"),
            "its rows are left as they are",
            "commits still in effect",
            "reserve_widget",
            "charge_account",
        ],
    );
    let row = saga_row(&engine, stuck).await;
    assert_eq!(row.saga_state, "abandoned");
    assert_eq!(row.abandon_reason.as_deref(), Some(reason));

    assert_refused(
        &ratchet(&db, &["sagas", "abandon", &id, "--reason", "again"]),
        "is abandoned, but this operation needs it running, unwinding or stuck",
    );
    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(&db, &["sagas", "abandon", &missing, "--reason", "x"]),
        &format!("no saga with id {missing}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_and_recover_finish_another_executors_sagas() {
    let db = database().await;
    let (dead, cli) = (Uuid::new_v4(), Uuid::new_v4());
    let (dead_s, cli_s) = (dead.to_string(), cli.to_string());
    let first = engine(&db, dead).await;
    let account = account(&first).await;
    // Created by the "dead" executor and never started: running, owned by it.
    let orphan = first
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap()
        .id;

    let adopt = ["sagas", "adopt", "--from", &dead_s, "--sec-id", &cli_s];
    assert_says(
        &ratchet(&db, &adopt),
        &[
            &format!("adopted 1 saga(s) from executor {dead}"),
            &format!("{orphan} (example-provision) now at generation 2"),
            &format!("{orphan}: succeeded"),
        ],
    );
    let row = saga_row(&first, orphan).await;
    assert_eq!(
        (row.saga_state.as_str(), row.current_sec),
        ("done", Some(cli))
    );
    assert_says(&ratchet(&db, &adopt), &["nothing adopted"]);
    assert_refused(
        &ratchet(
            &db,
            &["sagas", "adopt", "--from", &cli_s, "--sec-id", &cli_s],
        ),
        "cannot adopt its own sagas",
    );
    assert_refused(
        &ratchet(&db, &["sagas", "adopt", "--sec-id", &cli_s]),
        "needs --from SEC_ID",
    );

    // `recover` resumes this executor's own unfinished sagas, abandoning one whose action is gone.
    let mine = Uuid::new_v4();
    let second = engine(&db, mine).await;
    let good = second
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap()
        .id;
    let renamed = second
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap()
        .id;
    let mut conn = second.pool().get().await.unwrap();
    rename_activate_widget(&mut conn, renamed).await;
    let recover = ["recover", "--sec-id", &mine.to_string()];
    // An abandoned saga needs an operator: `recover` says so in its exit status.
    assert_fails_after_saying(
        &ratchet(&db, &recover),
        &[
            &format!("executor {mine}: resumed 1 saga(s), abandoned 1"),
            &format!("abandoned {renamed}: unrecoverable: node \"activate_widget\""),
            "\"example.activate_widget_v0\"",
            &format!("{good}: succeeded"),
            "recovered 1 saga(s): 1 succeeded; abandoned 1",
        ],
        "recovery needs an operator: 0 saga(s) stuck",
    );
    assert_says(&ratchet(&db, &recover), &["nothing to recover"]);
}
