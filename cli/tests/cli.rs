//! The `ratchet` binary run as a user would, against a fresh database (`--database-url`): listing and showing
//! sagas, retry-unwind, abandon, adopt and recover, each with a right and a wrong id or state; their JSON, their
//! dry runs, their refusals; and the command line itself (exit status 2 for a usage error).

mod common;

use common::{
    Run, assert_fails_after_saying, assert_refused, assert_says, assert_usage_error, ratchet,
    ratchet_at, redacted, rename_activate_widget,
};
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_engine::{
    Abandoned, AdoptedSaga, AdoptionReport, Engine, EngineBuilder, EngineConfig, FaultEffect,
    FaultPoint, RecoveryReport, SagaOutcome,
};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_store::{
    AbandonReason, SagaEnd, SagaFilter, SagaHistory, SagaPage, StuckDiagnosis, get_saga,
    list_sagas_where, saga_history,
};
use ratchet_template_db::TestDatabase;
use ratchet_test_utils::testing::{fresh_database, test_server};
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

/// A saga that failed after `activate_widget`'s commit and unwound cleanly: `done`, but not succeeded.
async fn unwound_saga(engine: &Engine, account: Uuid) -> Uuid {
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "activate_widget",
        FaultPoint::AfterCommit,
        FaultEffect::PermanentError,
        1,
    );
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    id
}

async fn saga_row(engine: &Engine, id: Uuid) -> ratchet_store::SagaRow {
    let mut conn = engine.pool().get().await.unwrap();
    get_saga(&mut conn, id).await.unwrap().unwrap()
}

/// Everything recorded about saga `id` (row, events, records), as JSON: what must not change.
async fn everything(engine: &Engine, id: Uuid) -> serde_json::Value {
    let mut conn = engine.pool().get().await.unwrap();
    let history = saga_history(&mut conn, id).await.unwrap().unwrap();
    serde_json::to_value(&history).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_with_the_stuck_diagnosis() {
    let db = database().await;
    let sec = Uuid::new_v4();
    let engine = engine(&db, sec).await;
    let account = account(&engine).await;
    let (done, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let stuck = stuck_saga(&engine, account).await;
    let labels = [(done, "DONE"), (stuck, "STUCK"), (sec, "SEC")];

    let all = ratchet(&db, &["sagas", "list"]);
    assert!(all.ok, "{all:?}");
    redacted(&labels).bind(|| insta::assert_snapshot!("sagas_list", all.stdout));
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
    assert_usage_error(
        &ratchet(&db, &["sagas", "list", "--state", "wedged"]),
        "invalid value 'wedged' for '--state <STATE>'",
    );

    // The stuck saga: its timeline, then the diagnosis and what to do next.
    let show = ratchet(&db, &["sagas", "show", &stuck.to_string()]);
    assert!(show.ok, "{show:?}");
    redacted(&labels).bind(|| insta::assert_snapshot!("sagas_show_stuck", show.stdout));
    let show_done = ratchet(&db, &["sagas", "show", &done.to_string()]);
    assert_says(&show_done, &["state      done", "succeeded"]);
    assert!(!show_done.stdout.contains("diagnosis:"), "{show_done:?}");

    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(&db, &["sagas", "show", &missing]),
        &format!("no saga with id {missing}"),
    );
    assert_usage_error(
        &ratchet(&db, &["sagas", "show", "saga-17"]),
        "\"saga-17\" is not a saga id",
    );
    assert_usage_error(&ratchet(&db, &["sagas", "show"]), "<ID>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_limits_and_tells_succeeded_from_unwound() {
    let db = database().await;
    let (sec, other) = (Uuid::new_v4(), Uuid::new_v4());
    let engine = engine(&db, sec).await;
    let account = account(&engine).await;
    let (succeeded, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let unwound = unwound_saga(&engine, account).await;
    let second = self::engine(&db, other).await;
    let orphan = second
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap()
        .id;
    second.shutdown().await;

    let all = ratchet(&db, &["sagas", "list"]);
    let line = |run: &Run, id: Uuid| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .map(str::to_owned)
    };
    assert!(
        line(&all, succeeded).is_some_and(|l| l.contains("done (succeeded)")),
        "{all:?}"
    );
    assert!(
        line(&all, unwound).is_some_and(|l| l.contains("done (unwound)")),
        "{all:?}"
    );
    // Times carry their zone.
    assert!(
        line(&all, orphan).is_some_and(|l| l.contains("running") && l.contains("Z ")),
        "{all:?}"
    );
    assert_says(&all, &["3 saga(s)"]);
    // The same from the store, as JSON: how each done saga ended, and nothing for the others.
    let page: SagaPage = parse(&ratchet(&db, &["sagas", "list", "--json"]).json());
    assert_eq!(
        page.endings,
        [(succeeded, SagaEnd::Succeeded), (unwound, SagaEnd::Unwound)]
            .into_iter()
            .collect()
    );
    assert_says(
        &ratchet(&db, &["sagas", "show", &unwound.to_string()]),
        &["state      done (unwound)"],
    );

    let newest = ratchet(&db, &["sagas", "list", "--limit", "1"]);
    assert_says(
        &newest,
        &[
            &orphan.to_string(),
            "1 saga(s) shown, the newest: more match",
        ],
    );
    assert!(line(&newest, succeeded).is_none(), "{newest:?}");

    let by_executor = ratchet(&db, &["sagas", "list", "--executor", &other.to_string()]);
    assert_says(&by_executor, &[&orphan.to_string(), "1 saga(s)"]);
    let by_name = ratchet(&db, &["sagas", "list", "--name", "instance-create"]);
    assert_says(&by_name, &["no sagas match"]);
    let since = ratchet(&db, &["sagas", "list", "--since", "1h"]);
    assert_says(&since, &["3 saga(s)"]);
    let future = ratchet(&db, &["sagas", "list", "--since", "2999-01-01"]);
    assert_says(&future, &["no sagas match"]);
    assert_usage_error(
        &ratchet(&db, &["sagas", "list", "--since", "yesterday"]),
        "is not a time",
    );
    assert_usage_error(&ratchet(&db, &["sagas", "list", "--limit", "0"]), "--limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_receipts_whole_with_full_and_the_dag_with_dot() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let (id, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id_s = id.to_string();
    // charge_account's receipt (account, amount, balance, ledger and widget ids) is longer than 100 characters.
    let receipt_line = |run: &Run| {
        run.stdout
            .lines()
            .skip_while(|l| l.trim() != "charge_account")
            .find_map(|l| l.split_once("receipt ").map(|(_, r)| r.to_owned()))
            .unwrap_or_else(|| panic!("no receipt of charge_account: {run:?}"))
    };
    let short = ratchet(&db, &["sagas", "show", &id_s]);
    assert!(short.ok && receipt_line(&short).ends_with('…'), "{short:?}");
    let full = ratchet(&db, &["sagas", "show", &id_s, "--full"]);
    assert!(full.ok, "{full:?}");
    let mut conn = engine.pool().get().await.unwrap();
    let history = saga_history(&mut conn, id).await.unwrap().unwrap();
    let receipt = history
        .commits
        .iter()
        .find(|c| c.node_name == "charge_account")
        .map(|c| c.receipt.clone());
    let printed: serde_json::Value = serde_json::from_str(&receipt_line(&full)).unwrap();
    assert!(printed.to_string().chars().count() > 100, "{printed}");
    assert_eq!(Some(printed), receipt, "printed whole");

    let stuck = stuck_saga(&engine, account).await;
    let dot = ratchet(&db, &["sagas", "show", &stuck.to_string(), "--dot"]);
    assert!(dot.ok && dot.stdout.starts_with("digraph "), "{dot:?}");
    let node = |name: &str| {
        dot.stdout
            .lines()
            .find(|l| l.contains(&format!("label=\"{name}\\n")))
            .unwrap_or_else(|| panic!("no node {name}: {dot:?}"))
            .to_owned()
    };
    // run_stuck: activate_widget fails, then the compensation of charge_account fails for good.
    assert!(node("activate_widget").contains("\\nfailed\""), "{dot:?}");
    assert!(node("charge_account").contains("\\nstuck\""), "{dot:?}");
    assert!(node("reserve_widget").contains("\\nsucceeded\""), "{dot:?}");
    assert!(dot.stdout.contains(" -> "), "{dot:?}");
    assert!(dot.stdout.trim_end().ends_with('}'), "{dot:?}");
    // A node that failed after its commit undid the commit itself: the DAG says so.
    let unwound = unwound_saga(&engine, account).await;
    let dot = ratchet(&db, &["sagas", "show", &unwound.to_string(), "--dot"]);
    assert!(
        dot.stdout
            .contains("label=\"activate_widget\\nfailed (its commit undone)\""),
        "{dot:?}"
    );
    assert!(
        dot.stdout
            .contains("label=\"charge_account\\ncompensated\""),
        "{dot:?}"
    );
    assert_usage_error(
        &ratchet(&db, &["sagas", "show", &id_s, "--dot", "--json"]),
        "cannot be used with",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_unwind_finishes_a_stuck_saga_and_refuses_the_rest() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let stuck = stuck_saga(&engine, account).await;
    let (id, cli_sec) = (stuck.to_string(), Uuid::new_v4().to_string());
    let retry = ["sagas", "retry-unwind", &id, "--sec-id", &cli_sec];

    // A dry run says what would happen and changes nothing.
    let before = everything(&engine, stuck).await;
    let dry = ratchet(&db, &[&retry[..], &["--dry-run"]].concat());
    assert_says(
        &dry,
        &[
            &format!(
                "would retry the unwind of saga {id} (example-provision) as executor {cli_sec}"
            ),
            "at generation 2",
            "the compensation of charge_account runs again",
            "nothing was changed (--dry-run)",
        ],
    );
    // On a --database-url, without --yes and without a terminal: refused, naming --yes.
    assert_refused(&ratchet(&db, &retry), "pass --yes to go ahead");
    assert_eq!(everything(&engine, stuck).await, before, "untouched");

    // The cause (this process's failpoint) does not exist in the CLI's engine: the compensation now succeeds.
    let retried = ratchet(&db, &[&retry[..], &["--yes"]].concat());
    assert_says(
        &retried,
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

    let wrong_state = format!("saga {id} is done, but this operation needs it stuck");
    assert_refused(
        &ratchet(&db, &[&retry[..], &["--yes"]].concat()),
        &wrong_state,
    );
    assert_refused(
        &ratchet(&db, &[&retry[..], &["--dry-run"]].concat()),
        &wrong_state,
    );
    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(
            &db,
            &[
                "sagas",
                "retry-unwind",
                &missing,
                "--sec-id",
                &cli_sec,
                "--yes",
            ],
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
    let abandon = ["sagas", "abandon", &id, "--reason", reason];

    assert_usage_error(
        &ratchet(&db, &["sagas", "abandon", &id, "--yes"]),
        "--reason <TEXT>",
    );
    let before = everything(&engine, stuck).await;
    assert_says(
        &ratchet(&db, &[&abandon[..], &["--dry-run"]].concat()),
        &[
            &format!(
                "would abandon saga {id} (example-provision), now stuck, recording the reason: {reason}"
            ),
            "commits that would stay in effect",
            "reserve_widget",
            "charge_account",
            "nothing was changed (--dry-run)",
        ],
    );
    assert_refused(&ratchet(&db, &abandon), "pass --yes to go ahead");
    assert_eq!(everything(&engine, stuck).await, before, "untouched");

    assert_says(
        &ratchet(&db, &[&abandon[..], &["--yes"]].concat()),
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
    assert_eq!(
        (row.abandon_reason, row.abandon_comment.as_deref()),
        (Some(AbandonReason::Omdb), Some(reason))
    );
    assert!(row.abandon_time.is_some());

    let wrong_state = "is abandoned, but this operation needs it running, unwinding or stuck";
    assert_refused(
        &ratchet(
            &db,
            &["sagas", "abandon", &id, "--reason", "again", "--yes"],
        ),
        wrong_state,
    );
    assert_refused(
        &ratchet(
            &db,
            &["sagas", "abandon", &id, "--reason", "again", "--dry-run"],
        ),
        wrong_state,
    );
    let missing = Uuid::new_v4().to_string();
    assert_refused(
        &ratchet(
            &db,
            &["sagas", "abandon", &missing, "--reason", "x", "--yes"],
        ),
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
    let before = everything(&first, orphan).await;
    assert_says(
        &ratchet(&db, &[&adopt[..], &["--dry-run"]].concat()),
        &[
            &format!("executor {cli} (from --sec-id) would adopt 1 saga(s) from executor {dead}"),
            &format!("{orphan} (example-provision, running) at generation 2"),
            "nothing was changed (--dry-run)",
        ],
    );
    assert_refused(&ratchet(&db, &adopt), "pass --yes to go ahead");
    assert_eq!(everything(&first, orphan).await, before, "untouched");

    let adopt = [&adopt[..], &["--yes"]].concat();
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
            &[
                "sagas", "adopt", "--from", &cli_s, "--sec-id", &cli_s, "--yes",
            ],
        ),
        "cannot adopt its own sagas",
    );
    assert_usage_error(
        &ratchet(&db, &["sagas", "adopt", "--sec-id", &cli_s, "--yes"]),
        "--from <SEC_ID>",
    );

    // `recover` says which executor it is and what it owns, then resumes its unfinished sagas, leaving alone
    // (unfinished, reported) one whose action this binary lacks.
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
    // A saga left alone needs an operator: `recover` says so in its exit status.
    let recovered = ratchet(&db, &recover);
    assert_fails_after_saying(
        &recovered,
        &[
            &format!("executor {mine} (from --sec-id): owns 2 unfinished saga(s)"),
            &format!("{good}: succeeded"),
        ],
        "1 left alone (this binary lacks their definitions",
    );
    redacted(&[(mine, "SEC"), (good, "GOOD"), (renamed, "RENAMED")])
        .bind(|| insta::assert_snapshot!("recover", recovered.stdout));
    let row = saga_row(&second, renamed).await;
    assert_eq!(
        (row.saga_state.as_str(), row.current_sec),
        ("running", Some(mine))
    );
    // Until an operator gives up on it (or a binary that has its definition recovers it), every recover says so.
    assert_fails_after_saying(
        &ratchet(&db, &recover),
        &["owns 1 unfinished", &format!("left alone {renamed}")],
        "recovery needs an operator",
    );
    assert_says(
        &ratchet(
            &db,
            &[
                "sagas",
                "abandon",
                &renamed.to_string(),
                "--reason",
                "its release is gone",
                "--yes",
            ],
        ),
        &["is abandoned; it was running"],
    );
    assert_says(
        &ratchet(&db, &recover),
        &["owns 0 unfinished", "nothing to recover"],
    );
    // The id may come from the environment too.
    let from_env = ratchet_at(
        None,
        &["--database-url", &db.url, "recover"],
        &[("RATCHET_SEC_ID", &mine.to_string())],
    );
    assert_says(
        &from_env,
        &[&format!("executor {mine} (from RATCHET_SEC_ID)")],
    );
}

/// `value` (a command's JSON, or a part of it) read back as the library type `T`.
#[track_caller]
fn parse<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a {} ({e}): {value}", std::any::type_name::<T>()))
}

/// Every command's `--json` parses, and is the library's own serialization of what it reports: read back into
/// the library's type, it is what the library returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_the_librarys_report() {
    let db = database().await;
    let sec = Uuid::new_v4();
    let engine = engine(&db, sec).await;
    let account = account(&engine).await;
    let (done, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let stuck = stuck_saga(&engine, account).await;
    let other_stuck = stuck_saga(&engine, account).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();

    // sagas list: SagaPage (with how each done saga ended).
    let list: SagaPage = parse(&ratchet(&db, &["sagas", "list", "--json"]).json());
    let page = list_sagas_where(&mut conn, &SagaFilter::default())
        .await
        .unwrap();
    assert_eq!(list, page);
    assert!(!list.truncated);
    assert_eq!(
        list.endings,
        [(done, SagaEnd::Succeeded)].into_iter().collect()
    );
    let limited: SagaPage =
        parse(&ratchet(&db, &["sagas", "list", "-o", "json", "--limit", "1"]).json());
    assert!(limited.truncated);
    assert_eq!(limited.sagas.len(), 1);

    // sagas show: SagaHistory, how it ended, its diagnosis, and whether it waits.
    let show = ratchet(&db, &["sagas", "show", &stuck.to_string(), "--json"]).json();
    let history = saga_history(&mut conn, stuck).await.unwrap().unwrap();
    assert_eq!(parse::<SagaHistory>(&show), history);
    assert_eq!(show["ended"], serde_json::Value::Null);
    // `stuck_for` is as of the moment each side computed it.
    let mut shown: StuckDiagnosis = parse(&show["diagnosis"]);
    let mut diagnosis = history.diagnosis();
    assert!(shown.stuck_for.is_some() && diagnosis.stuck_for.is_some());
    (shown.stuck_for, diagnosis.stuck_for) = (None, None);
    assert_eq!(shown, diagnosis);
    assert_eq!(shown.failed_undos[0].node, "charge_account");
    assert_eq!(show["waiting"], serde_json::Value::Null);
    let show_done = ratchet(&db, &["sagas", "show", &done.to_string(), "--json"]).json();
    assert_eq!(
        parse::<Option<SagaEnd>>(&show_done["ended"]),
        Some(SagaEnd::Succeeded)
    );

    // Dry runs: their plans.
    let cli = Uuid::new_v4().to_string();
    let plan = ratchet(
        &db,
        &[
            "sagas",
            "retry-unwind",
            &stuck.to_string(),
            "--sec-id",
            &cli,
            "--dry-run",
            "--json",
        ],
    )
    .json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["generation"], history.saga.adopt_generation + 1);

    // sagas retry-unwind: the SagaOutcome.
    let retried = ratchet(
        &db,
        &[
            "sagas",
            "retry-unwind",
            &stuck.to_string(),
            "--sec-id",
            &cli,
            "--yes",
            "--json",
        ],
    )
    .json();
    assert_eq!(retried["saga_id"], stuck.to_string());
    assert!(
        matches!(parse(&retried["outcome"]), SagaOutcome::Unwound { node, .. } if node == "activate_widget"),
        "{retried}"
    );
    assert_eq!(
        parse::<RecoveryReport>(&retried["recovered_first"]),
        RecoveryReport::default()
    );

    // sagas abandon: Abandoned.
    let diagnosis = saga_history(&mut conn, other_stuck)
        .await
        .unwrap()
        .unwrap()
        .diagnosis();
    let abandoned = ratchet(
        &db,
        &[
            "sagas",
            "abandon",
            &other_stuck.to_string(),
            "--reason",
            "r",
            "--yes",
            "--json",
        ],
    )
    .json();
    assert_eq!(
        parse::<Abandoned>(&abandoned),
        Abandoned {
            id: other_stuck,
            name: "example-provision".to_owned(),
            previous_state: "stuck".to_owned(),
            reason: "r".to_owned(),
            uncompensated: diagnosis.uncompensated,
        }
    );

    // sagas adopt: the AdoptionReport, with each resumed saga's outcome.
    let dead = Uuid::new_v4();
    let first = self::engine(&db, dead).await;
    let orphan = first
        .create::<ProvisionWidget>(params(self::account(&first).await))
        .await
        .unwrap()
        .id;
    first.shutdown().await;
    let adopted = ratchet(
        &db,
        &[
            "sagas",
            "adopt",
            "--from",
            &dead.to_string(),
            "--sec-id",
            &cli,
            "--yes",
            "--json",
        ],
    )
    .json();
    assert_eq!(
        parse::<AdoptionReport>(&adopted["adoption"]),
        AdoptionReport {
            from_sec: dead,
            to_sec: cli.parse().unwrap(),
            adopted: vec![AdoptedSaga {
                id: orphan,
                name: "example-provision".to_owned(),
                generation: 2,
            }],
            resumed: vec![orphan],
            abandoned: vec![],
            left_alone: vec![],
        }
    );
    assert_eq!(
        parse::<RecoveryReport>(&adopted["recovered_first"]),
        RecoveryReport::default()
    );
    let outcomes: std::collections::BTreeMap<Uuid, Option<SagaOutcome>> =
        parse(&adopted["outcomes"]);
    assert!(
        matches!(outcomes[&orphan], Some(SagaOutcome::Succeeded { .. })),
        "{outcomes:?}"
    );

    // recover: the RecoveryReport, and the outcomes.
    let mine = Uuid::new_v4();
    let third = self::engine(&db, mine).await;
    let resumed = third
        .create::<ProvisionWidget>(params(self::account(&third).await))
        .await
        .unwrap()
        .id;
    third.shutdown().await;
    let recovered = ratchet(&db, &["recover", "--sec-id", &mine.to_string(), "--json"]);
    assert!(recovered.ok, "{recovered:?}");
    let recovered = recovered.json();
    assert_eq!(recovered["executor"], mine.to_string());
    assert_eq!(recovered["unfinished_owned"], 1);
    assert_eq!(
        parse::<RecoveryReport>(&recovered["recovery"]),
        RecoveryReport {
            resumed: vec![resumed],
            ..RecoveryReport::default()
        }
    );
    let outcomes: std::collections::BTreeMap<Uuid, Option<SagaOutcome>> =
        parse(&recovered["outcomes"]);
    assert!(
        matches!(outcomes[&resumed], Some(SagaOutcome::Succeeded { .. })),
        "{outcomes:?}"
    );
    assert_eq!(recovered["needs_operator"], false);

    // check: sagas by state and the violations (none; the commands above made the Nexus tables). A violation
    // read back as `ratchet_datastore::Violation`: `check_violations.rs`.
    let checked = ratchet(&db, &["check", "--json"]);
    assert!(checked.ok, "{checked:?}");
    let checked = checked.json();
    assert_eq!(checked["sagas"]["abandoned"], 1);
    assert_eq!(checked["violations"], serde_json::json!([]));
    assert_eq!(checked["datastore_checked"], true);
    assert_eq!(checked["services_checked"], false);
    assert_usage_error(
        &ratchet(&db, &["check", "--json", "-o", "text"]),
        "cannot be used with",
    );
}

/// `sagas adopt` takes only the sagas this binary can run: another binary's saga (a definition it does not
/// register) stays with its executor, untouched, and is named with the reason; `--abandon-unknown` takes it and
/// abandons it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_leaves_a_saga_it_has_no_definition_of_untouched() {
    let db = database().await;
    let (dead, cli) = (Uuid::new_v4(), Uuid::new_v4());
    let (dead_s, cli_s) = (dead.to_string(), cli.to_string());
    let first = engine(&db, dead).await;
    let account = account(&first).await;
    let create = || first.create::<ProvisionWidget>(params(account));
    let orphan = create().await.unwrap().id;
    let foreign = create().await.unwrap().id;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    // Another binary's saga, sharing the database.
    diesel::sql_query("UPDATE saga SET name = 'someone-elses-saga' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(foreign)
        .execute(&mut conn)
        .await
        .unwrap();
    let before = everything(&first, foreign).await;
    let reason = "no definition of saga \"someone-elses-saga\" v1 here";

    let adopt = ["sagas", "adopt", "--from", &dead_s, "--sec-id", &cli_s];
    assert_says(
        &ratchet(&db, &[&adopt[..], &["--dry-run"]].concat()),
        &[
            &format!("would adopt 1 saga(s) from executor {dead}"),
            &format!("{orphan} (example-provision, running) at generation 2"),
            &format!("left with executor {dead}, untouched (1 saga(s) this binary cannot run"),
            &format!("{foreign}: {reason}"),
        ],
    );
    // The saga left behind has no executor driving it now: the exit status says an operator is needed.
    let adopted = ratchet(&db, &[&adopt[..], &["--yes"]].concat());
    assert_fails_after_saying(
        &adopted,
        &[
            &format!("adopted 1 saga(s) from executor {dead}"),
            &format!("{orphan}: succeeded"),
            &format!("left with executor {dead}, untouched: 1 saga(s) this binary cannot run"),
            &format!("{foreign}: {reason}"),
        ],
        "the adoption needs an operator",
    );
    assert!(!adopted.stdout.contains("abandoned"), "{adopted:?}");
    // Untouched: the same executor, state and generation, and every row as it was.
    let row = saga_row(&first, foreign).await;
    assert_eq!(
        (
            row.saga_state.as_str(),
            row.current_sec,
            row.adopt_generation
        ),
        ("running", Some(dead), 1)
    );
    assert_eq!(everything(&first, foreign).await, before, "untouched");
    // Again, as JSON: the AdoptionReport says so.
    let again = ratchet(&db, &[&adopt[..], &["--yes", "--json"]].concat());
    assert_eq!(again.code, Some(1), "{again:?}");
    let report: AdoptionReport = parse(&again.json()["adoption"]);
    assert!(report.adopted.is_empty(), "{report:?}");
    assert_eq!(report.left_alone, vec![(foreign, reason.to_owned())]);
    assert_fails_after_saying(
        &ratchet(&db, &[&adopt[..], &["--yes"]].concat()),
        &["has no running or unwinding sagas that this binary can run: nothing adopted"],
        "1 left alone",
    );
    assert_eq!(everything(&first, foreign).await, before, "still untouched");

    // The opt-in, documented in the help, takes it and abandons it.
    assert_says(
        &ratchet(&db, &["sagas", "adopt", "--help"]),
        &["--abandon-unknown", "untouched"],
    );
    let abandon = [&adopt[..], &["--abandon-unknown"]].concat();
    assert_says(
        &ratchet(&db, &[&abandon[..], &["--dry-run"]].concat()),
        &[&format!(
            "{foreign} (someone-elses-saga, running) at generation 2: this binary does not run it, so it \
             would be abandoned"
        )],
    );
    assert_eq!(
        everything(&first, foreign).await,
        before,
        "a dry run changes nothing"
    );
    assert_says(
        &ratchet(&db, &[&abandon[..], &["--yes"]].concat()),
        &[&format!(
            "{foreign}: could not be resumed, abandoned: unrecoverable: {reason}"
        )],
    );
    let row = saga_row(&first, foreign).await;
    assert_eq!(
        (row.saga_state.as_str(), row.current_sec),
        ("abandoned", Some(cli))
    );
    assert_eq!(
        (row.abandon_reason, row.abandon_comment),
        (
            Some(AbandonReason::Unrecoverable),
            Some(format!("unrecoverable: {reason}"))
        )
    );
}

/// `sagas list`, `sagas show` and `check` only read: on a database without the saga log they fail, naming
/// what creates it, and leave it as empty as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_create_nothing() {
    let server = test_server().await.unwrap();
    let name = format!("ratchet_empty_{}", Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&server.url("postgres"))
        .await
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let db = TestDatabase {
        url: server.url(&name),
        name,
    };
    let id = Uuid::new_v4().to_string();
    for command in [
        &["sagas", "list"][..],
        &["sagas", "show", &id],
        &["check"],
        &["check", "--json"],
        &["sagas", "abandon", &id, "--reason", "r", "--dry-run"],
    ] {
        let run = ratchet(&db, command);
        assert_refused(&run, "this database has no saga log");
        assert_refused(&run, "missing: table saga");
        assert_refused(&run, "nothing was created");
        assert_refused(&run, "`ratchet recover`");
    }
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let tables: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables.count, 0, "the database is still empty");
    drop(conn);
    server.drop_database(&db).await.unwrap();
}

/// The commands that drive sagas need this executor's id on a `--database-url`: a made-up default would be a
/// new executor each time, whose sagas no `recover` finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driving_sagas_on_a_database_url_needs_an_executor_id() {
    let db = database().await;
    let id = Uuid::new_v4().to_string();
    for command in [
        &["recover"][..],
        &["demo"],
        &["run", "disk-attach", "--count", "1"],
        &["sagas", "retry-unwind", &id, "--yes"],
        &["sagas", "adopt", "--from", &id, "--yes"],
    ] {
        let run = ratchet(&db, command);
        assert_refused(&run, "pass --sec-id UUID (or set RATCHET_SEC_ID)");
        assert_refused(&run, "Nothing was changed");
    }
}

#[test]
fn usage_errors_exit_2_and_help_and_version_exit_0() {
    let version = ratchet_at(None, &["--version"], &[]);
    assert!(
        version.code == Some(0) && version.stdout.starts_with("ratchet "),
        "{version:?}"
    );
    let help = ratchet_at(None, &["sagas", "list", "-h"], &[]);
    assert!(
        help.code == Some(0)
            && help.stdout.contains("--limit <N>")
            && help.stdout.contains("Exit status:"),
        "{help:?}"
    );
    let help = ratchet_at(None, &["--help"], &[]);
    assert!(
        help.code == Some(0) && help.stdout.contains("2  usage error"),
        "{help:?}"
    );
    // A typo is a usage error that names the argument, with a suggestion.
    let typo = ratchet_at(None, &["run", "instance-create", "--disk", "2"], &[]);
    assert_usage_error(&typo, "unexpected argument '--disk'");
    assert_usage_error(&typo, "a similar argument exists: '--disks'");
    // instance-create's options belong to it alone.
    assert_usage_error(
        &ratchet_at(None, &["run", "disk-attach", "--disks", "2"], &[]),
        "unexpected argument '--disks'",
    );
    assert_usage_error(
        &ratchet_at(None, &["run", "instance-crate"], &[]),
        "'instance-create'",
    );
    assert_usage_error(&ratchet_at(None, &["sagas", "lst"], &[]), "'list'");
    assert_usage_error(
        &ratchet_at(None, &["frobnicate"], &[]),
        "unrecognized subcommand",
    );
    assert_usage_error(
        &ratchet_at(None, &["recover", "--sled-agent", "127.0.0.1:1"], &[]),
        "--pantry <ADDR>",
    );
    assert_usage_error(
        &ratchet_at(
            None,
            &[
                "recover",
                "--sled-agent",
                "nowhere",
                "--pantry",
                "127.0.0.1:1",
            ],
            &[],
        ),
        "invalid value 'nowhere' for '--sled-agent <ADDR>'",
    );
    assert_usage_error(
        &ratchet_at(None, &["matrix", "--fault", "after-commit"], &[]),
        "invalid value 'after-commit'",
    );
    assert_usage_error(
        &ratchet_at(None, &["--sec-id", "me", "recover"], &[]),
        "invalid value 'me' for '--sec-id <UUID>'",
    );
    let bare = ratchet_at(None, &[], &[]);
    assert!(
        bare.code == Some(2) && bare.stderr.contains("Usage: ratchet"),
        "{bare:?}"
    );
}

/// A reader that closes the pipe before the first line (`ratchet sagas list | head -0`) ends the command
/// quietly, killed by SIGPIPE as Unix tools are: never a panic (exit 101) with "failed printing to stdout".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let db = database().await;
    let mut child = std::process::Command::new(common::RATCHET)
        .args(["--database-url", db.url.as_str(), "sagas", "list"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ratchet");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for ratchet");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
