//! Operations on the real embedded PostgreSQL: adoption and fencing of a stale executor, recovery that refuses
//! what this binary cannot run, stuck sagas (diagnosis, retry-unwind, abandon), counters and recent outcomes,
//! and a clean shutdown.

mod common;

use common::*;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{AdoptOptions, Engine, EngineError, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_example_saga::ProvisionWidget;
use ratchet_store::{AbandonReason, SagaHistory, get_saga, saga_history, stuck_diagnosis};
use std::time::Duration;
use uuid::Uuid;

const LONG: FaultEffect = FaultEffect::Delay { millis: 600_000 };

async fn start(db: &ratchet_template_db::TestDatabase, sec_id: Uuid) -> Engine {
    builder(db, sec_id).start().await.expect("engine starts").0
}

async fn outcome_within(
    run: tokio::task::JoinHandle<Result<SagaOutcome, EngineError>>,
) -> SagaOutcome {
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the saga's run returned")
        .expect("the run task")
        .expect("the run")
}

/// Two engines; engine A runs a saga and holds it at charge_account's `point` until woken. With `unwind`,
/// activate_widget fails first, so the saga is unwinding when the pause comes.
struct Handoff {
    a: Engine,
    b: Engine,
    sec_a: Uuid,
    sec_b: Uuid,
    account: Uuid,
    id: Uuid,
    /// A's run of the saga, until a test takes it.
    a_run: Option<tokio::task::JoinHandle<Result<SagaOutcome, EngineError>>>,
}

async fn paused_on_a(point: FaultPoint, unwind: bool) -> Handoff {
    let db = database().await;
    let (sec_a, sec_b) = (Uuid::new_v4(), Uuid::new_v4());
    let a = start(&db, sec_a).await;
    let b = start(&db, sec_b).await;
    let account = account(&a).await;
    let saga = a.create::<ProvisionWidget>(params(account)).await.unwrap();
    let id = saga.id;
    a.failpoints().arm(id, "charge_account", point, LONG, 1);
    if unwind {
        a.failpoints().arm(
            id,
            "activate_widget",
            FaultPoint::BeforePrepare,
            FaultEffect::PermanentError,
            1,
        );
    }
    let a_run = Some(tokio::spawn(saga.run()));
    until_delaying(&a, id).await;
    Handoff {
        a,
        b,
        sec_a,
        sec_b,
        account,
        id,
        a_run,
    }
}

impl Handoff {
    /// B adopts A's sagas and brings this one to rest while A is still paused; then A wakes and must find
    /// itself fenced. Returns the adoption report, B's outcome and the saga's history, having checked that A
    /// recorded no event after the adoption.
    async fn adopt_then_wake_a(
        &mut self,
    ) -> (ratchet_engine::AdoptionReport, SagaOutcome, SagaHistory) {
        let report = self.b.adopt(self.sec_a).await.unwrap();
        assert_eq!(report.resumed, vec![self.id], "{report:?}");
        let outcome = self.b.wait(self.id).await.unwrap();
        let a_run = self.a_run.take().expect("A's run");
        assert!(
            !a_run.is_finished(),
            "A is alive, still paused, when B finishes"
        );
        self.a.failpoints().wake(self.id);
        assert_eq!(outcome_within(a_run).await, SagaOutcome::Fenced);
        let mut conn = self.b.pool().get().await.unwrap();
        let history = saga_history(&mut conn, self.id).await.unwrap().unwrap();
        for event in history.events.iter().filter(|e| e.creator == self.sec_a) {
            assert!(
                event.event_time < history.saga.adopt_time,
                "A recorded an event after the adoption: {event:?}"
            );
        }
        (report, outcome, history)
    }
}

/// Engine A is paused inside charge_account's transaction, after prepare and before its fencing lock; engine B
/// adopts the saga and finishes it; then A wakes. A must commit nothing, record nothing, notice the fence and
/// stop, without unwinding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_saga_fences_out_the_stale_executor() {
    let mut handoff = paused_on_a(FaultPoint::AfterPrepare, false).await;
    let (report, outcome, history) = handoff.adopt_then_wake_a().await;
    let Handoff {
        a,
        b,
        sec_a,
        sec_b,
        account,
        id,
        ..
    } = handoff;
    assert_eq!(report.adopted.len(), 1, "{report:?}");
    assert_eq!(report.adopted[0].id, id);
    assert_eq!(report.adopted[0].generation, 2);
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );

    // Exactly once across the hand-off: one charge, B's.
    let after = state(&b, account).await;
    assert_eq!(
        (after.balance, after.ledger.clone()),
        (70, vec![-30]),
        "{after:?}"
    );
    assert_eq!(after.widgets[0].1, "active");
    assert_eq!(history.saga.saga_state, "done");
    assert_eq!(history.saga.current_sec, Some(sec_b));
    for commit in &history.commits {
        let expected = if commit.node_name == "reserve_widget" {
            (sec_a, 1)
        } else {
            (sec_b, 2)
        };
        assert_eq!(
            (commit.creator, commit.adopt_generation),
            expected,
            "{commit:?}"
        );
    }
    assert_eq!(history.commits.len(), 3);
    assert!(history.compensations.is_empty(), "A did not unwind");
    let counters = a.counters().snapshot();
    assert!(counters.fenced >= 1, "{counters:?}");
    assert_eq!(counters.commits, 1, "A committed reserve_widget only");
    assert_eq!(b.counters().snapshot().commits, 2);
    let recent = a.recent_outcomes();
    assert_eq!(
        recent.last().map(|r| (&r.outcome, r.saga_id)),
        Some((&SagaOutcome::Fenced, id))
    );
    let recent = b.recent_outcomes();
    assert!(matches!(
        recent.last().map(|r| &r.outcome),
        Some(SagaOutcome::Succeeded { .. })
    ));
    assert_eq!(recent[0].saga_name, "example-provision");
}

/// Engine A holds charge_account's transaction open right before COMMIT (with its share lock on the saga row);
/// B's adoption waits for that commit, then B carries the saga on without committing the charge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_waits_for_a_commit_in_flight_and_nothing_commits_twice() {
    let Handoff {
        a,
        b,
        sec_a,
        account,
        id,
        a_run,
        ..
    } = paused_on_a(FaultPoint::BeforeCommit, false).await;

    let adopt = tokio::spawn({
        let b = b.clone();
        async move { b.adopt(sec_a).await }
    });
    // The adoption's UPDATE waits on the share lock A's open commit holds on the saga row: wait until the
    // server says so, rather than for a while.
    let mut conn = b.pool().get().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            #[derive(diesel::QueryableByName)]
            struct Waiting {
                #[diesel(sql_type = BigInt)]
                waiting: i64,
            }
            let row: Waiting = diesel::sql_query(
                "SELECT count(*) AS waiting FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE 'UPDATE \"saga\" SET \"current_sec\"%'",
            )
            .get_result(&mut conn)
            .await
            .unwrap();
            if row.waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the adoption waits on A's lock");
    drop(conn);
    assert!(
        !adopt.is_finished(),
        "the adoption waits for A's open commit"
    );
    // Once woken, A commits the charge and would run straight on to finish the saga: if B's adoption is
    // retried (A's commit can abort its first attempt with a serialization failure), it could then find
    // nothing left to adopt. A second pause, before activate_widget, keeps the saga A's and unfinished.
    a.failpoints()
        .arm(id, "activate_widget", FaultPoint::BeforePrepare, LONG, 1);
    a.failpoints().wake(id);
    let report = tokio::time::timeout(Duration::from_secs(60), adopt)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.resumed, vec![id], "{report:?}");
    let outcome = b.wait(id).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    a.failpoints().wake(id);
    assert_eq!(
        outcome_within(a_run.expect("A's run")).await,
        SagaOutcome::Fenced
    );

    let after = state(&b, account).await;
    assert_eq!((after.balance, after.ledger), (70, vec![-30]));
    let mut conn = b.pool().get().await.unwrap();
    let history = saga_history(&mut conn, id).await.unwrap().unwrap();
    let charge = history
        .commits
        .iter()
        .find(|c| c.node_name == "charge_account")
        .unwrap();
    assert_eq!(
        (charge.creator, charge.adopt_generation),
        (sec_a, 1),
        "A's commit landed before the adoption"
    );
    assert_eq!(history.commits.len(), 3);
    assert_eq!(history.saga.saga_state, "done");
}

/// Engine A is unwinding the saga and pauses right after charge_account's compensation committed; B adopts
/// the saga and finishes the unwind (compensating reserve_widget); A wakes and tries to compensate
/// reserve_widget too. Its compensation transaction is fenced: nothing is compensated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executor_compensates_nothing_after_adoption() {
    let mut handoff = paused_on_a(FaultPoint::AfterCompensation, true).await;
    let (_, outcome, history) = handoff.adopt_then_wake_a().await;
    let Handoff {
        a,
        b,
        sec_a,
        sec_b,
        account,
        ..
    } = handoff;
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "activate_widget"),
        "{outcome:?}"
    );

    // A compensation twice would refund 30 twice.
    assert_eq!(state(&b, account).await, untouched());
    assert_eq!(history.saga.saga_state, "done");
    let mut compensations: Vec<(&str, Uuid, i64)> = history
        .compensations
        .iter()
        .map(|c| (c.node_name.as_str(), c.creator, c.adopt_generation))
        .collect();
    compensations.sort_unstable();
    assert_eq!(
        compensations,
        [("charge_account", sec_a, 1), ("reserve_widget", sec_b, 2)]
    );
    let counters = a.counters().snapshot();
    assert!(counters.fenced >= 1, "{counters:?}");
    assert_eq!(
        counters.compensations, 1,
        "A compensated charge_account only"
    );
}

/// `recover` on a running engine leaves alone what the engine is already driving (a saga in flight, and one
/// created but not yet run): resuming them again would drive one saga twice under one owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_alone_what_this_engine_is_driving() {
    let db = database().await;
    let engine = start(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let waiting = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine
        .failpoints()
        .arm(id, "charge_account", FaultPoint::AfterPrepare, LONG, 1);
    let run = tokio::spawn(saga.run());
    until_delaying(&engine, id).await;

    let report = engine.recover().await.unwrap();
    assert!(
        report.resumed.is_empty() && report.abandoned.is_empty(),
        "{report:?}"
    );
    let mut running_here = report.running_here.clone();
    running_here.sort();
    let mut expected = vec![id, waiting.id];
    expected.sort();
    assert_eq!(running_here, expected);

    engine.failpoints().wake(id);
    assert!(matches!(
        outcome_within(run).await,
        SagaOutcome::Succeeded { .. }
    ));
    assert!(matches!(
        waiting.run().await.unwrap(),
        SagaOutcome::Succeeded { .. }
    ));
    let after = state(&engine, account).await;
    assert_eq!(
        (after.balance, after.ledger),
        (40, vec![-30, -30]),
        "each saga charged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_from_oneself_or_from_an_idle_executor() {
    let db = database().await;
    let sec = Uuid::new_v4();
    let engine = start(&db, sec).await;
    assert!(matches!(engine.adopt(sec).await, Err(EngineError::AdoptFromSelf(s)) if s == sec));
    let report = engine.adopt(Uuid::new_v4()).await.unwrap();
    assert!(report.adopted.is_empty() && report.resumed.is_empty());
}

/// `count` example sagas created by executor `sec` and never started (`running`, owned by `sec` at generation
/// 1, as a crash leaves them), and the account they charge; the engine that created them is shut down.
async fn unstarted_sagas(
    db: &ratchet_template_db::TestDatabase,
    sec: Uuid,
    count: usize,
) -> (Vec<Uuid>, Uuid) {
    let first = start(db, sec).await;
    let account = account(&first).await;
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(
            first
                .create::<ProvisionWidget>(params(account))
                .await
                .unwrap()
                .id,
        );
    }
    first.shutdown().await;
    (ids, account)
}

/// Renames saga `id`'s definition to `name`, as if another binary (sharing the database) had created it.
async fn make_foreign(db: &ratchet_template_db::TestDatabase, id: Uuid, name: &str) {
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let updated = diesel::sql_query("UPDATE saga SET name = $2 WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(name)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated, 1);
}

/// Points node `charge_account` of saga `id` at an action this binary does not register, as a newer release
/// of the definition that renamed it would have created it.
async fn rename_charge_account(db: &ratchet_template_db::TestDatabase, id: Uuid) {
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let updated = diesel::sql_query(
        "UPDATE saga SET saga_dag = jsonb_set(saga_dag, '{graph,nodes,1,Action,action_name}', \
         '\"example.charge_account_v0\"') WHERE id = $1 \
         AND saga_dag #>> '{graph,nodes,1,Action,name}' = 'charge_account'",
    )
    .bind::<SqlUuid, _>(id)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(updated, 1);
}

/// An adoption takes only what this binary can run: a saga of a definition it does not register, and one whose
/// DAG runs an action its definition here lacks, stay with their executor exactly as they were (owner, state,
/// generation, log) and are reported with the reason. Only with `abandon_unknown` are they taken, and
/// abandoned with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_leaves_what_this_binary_cannot_run_with_its_owner() {
    let db = database().await;
    let (dead, adopter) = (Uuid::new_v4(), Uuid::new_v4());
    let (ids, account) = unstarted_sagas(&db, dead, 3).await;
    let [good, foreign, renamed] = ids[..] else {
        unreachable!()
    };
    make_foreign(&db, foreign, "someone-elses-saga").await;
    rename_charge_account(&db, renamed).await;
    let history = |id: Uuid| {
        let url = db.url.clone();
        async move {
            let mut conn = ratchet_store::establish(&url).await.unwrap();
            saga_history(&mut conn, id).await.unwrap().unwrap()
        }
    };
    let before = (history(foreign).await, history(renamed).await);

    let engine = start(&db, adopter).await;
    let report = engine.adopt(dead).await.unwrap();
    let adopted: Vec<Uuid> = report.adopted.iter().map(|a| a.id).collect();
    assert_eq!(adopted, vec![good], "{report:?}");
    assert_eq!(report.resumed, vec![good]);
    assert!(report.abandoned.is_empty(), "{report:?}");
    let reasons: std::collections::BTreeMap<Uuid, String> =
        report.left_alone.iter().cloned().collect();
    assert_eq!(reasons.len(), 2, "{report:?}");
    assert_eq!(
        reasons[&foreign],
        "no definition of saga \"someone-elses-saga\" v1 here"
    );
    assert!(
        reasons[&renamed].starts_with("no definition of saga \"example-provision\" v1 here")
            && reasons[&renamed].contains("\"example.charge_account_v0\""),
        "{}",
        reasons[&renamed]
    );
    assert!(matches!(
        engine.wait(good).await,
        Some(SagaOutcome::Succeeded { .. })
    ));
    // Untouched: the same executor, state and generation, and not a row of their log changed.
    let after = (history(foreign).await, history(renamed).await);
    for (before, after) in [(&before.0, &after.0), (&before.1, &after.1)] {
        assert_eq!(after.saga.current_sec, Some(dead));
        assert_eq!(after.saga.saga_state, "running");
        assert_eq!(after.saga.adopt_generation, 1);
        assert_eq!(before, after);
    }
    assert_eq!(engine.counters().snapshot().abandoned, 0);
    assert_eq!(state(&engine, account).await.ledger, vec![-30]);

    // Asked to, the adoption takes them and abandons them, with the reason.
    let report = engine
        .adopt_with(
            dead,
            AdoptOptions {
                abandon_unknown: true,
            },
        )
        .await
        .unwrap();
    assert!(report.left_alone.is_empty(), "{report:?}");
    let mut adopted: Vec<(Uuid, i64)> = report
        .adopted
        .iter()
        .map(|a| (a.id, a.generation))
        .collect();
    adopted.sort();
    let mut expected = vec![(foreign, 2), (renamed, 2)];
    expected.sort();
    assert_eq!(adopted, expected);
    let abandoned: std::collections::BTreeMap<Uuid, String> =
        report.abandoned.iter().cloned().collect();
    assert_eq!(
        abandoned.keys().copied().collect::<Vec<_>>(),
        reasons.keys().copied().collect::<Vec<_>>()
    );
    for (id, reason) in &abandoned {
        assert_eq!(reason, &format!("unrecoverable: {}", reasons[id]));
        let row = history(*id).await.saga;
        assert_eq!(row.saga_state, "abandoned");
        assert_eq!(row.current_sec, Some(adopter));
        assert_eq!(row.abandon_reason, Some(AbandonReason::Unrecoverable));
        assert_eq!(row.abandon_comment.as_ref(), Some(reason));
    }
    assert_eq!(engine.counters().snapshot().abandoned, 2);
    assert_eq!(
        state(&engine, account).await.ledger,
        vec![-30],
        "nothing of theirs ran"
    );
}

/// Recovery leaves unfinished, and reports with the reason, a saga of a definition this binary does not
/// register and one whose DAG names an action this binary does not register; it abandons, with a reason, one
/// whose log steno refuses and one whose log does not decode; it resumes the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_alone_what_it_cannot_run_and_abandons_what_does_not_load() {
    let db = database().await;
    let sec = Uuid::new_v4();
    let (ids, account) = unstarted_sagas(&db, sec, 5).await;
    let [good, unknown_action, refused_log, corrupt_row, foreign] = ids[..] else {
        unreachable!()
    };
    // A newer release renamed charge_account's action; another binary's saga.
    rename_charge_account(&db, unknown_action).await;
    make_foreign(&db, foreign, "someone-elses-saga").await;
    {
        let mut conn = ratchet_store::establish(&db.url).await.unwrap();
        // activate_widget (node 2) succeeded while its parents never started: steno refuses this log.
        // A `failed` event whose error does not decode: the log cannot even be read.
        for (id, node, event, data) in [
            (refused_log, 2i64, "succeeded", r#"{"widget_id": null}"#),
            (corrupt_row, 0, "failed", r#""not an ActionError""#),
        ] {
            diesel::sql_query(
                "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
                 VALUES ($1, $2, $3, $4::jsonb, now(), $5)",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(node)
            .bind::<Text, _>(event)
            .bind::<Text, _>(data)
            .bind::<SqlUuid, _>(sec)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }

    let foreign_generation = {
        let mut conn = ratchet_store::establish(&db.url).await.unwrap();
        get_saga(&mut conn, foreign)
            .await
            .unwrap()
            .unwrap()
            .adopt_generation
    };

    let (second, report) = builder(&db, sec).start().await.unwrap();
    assert_eq!(report.resumed, vec![good], "{report:?}");
    let left_alone: std::collections::BTreeMap<Uuid, String> =
        report.left_alone.iter().cloned().collect();
    assert_eq!(
        left_alone
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [unknown_action, foreign].into_iter().collect(),
        "{report:?}"
    );
    let unknown = &left_alone[&unknown_action];
    assert!(
        unknown.contains("\"example.charge_account_v0\"") && unknown.contains("\"charge_account\""),
        "the reason names the node and the action: {unknown}"
    );
    assert_eq!(
        left_alone[&foreign],
        "no definition of saga \"someone-elses-saga\" v1 here"
    );
    let reasons: std::collections::BTreeMap<Uuid, String> =
        report.abandoned.iter().cloned().collect();
    assert_eq!(reasons.len(), 2, "{report:?}");
    assert!(
        reasons[&refused_log].contains("steno refused"),
        "{}",
        reasons[&refused_log]
    );
    assert!(
        reasons[&corrupt_row].contains("does not load"),
        "{}",
        reasons[&corrupt_row]
    );

    let outcome = second.wait(good).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let mut conn = second.pool().get().await.unwrap();
    for (id, reason) in &reasons {
        let row = get_saga(&mut conn, *id).await.unwrap().unwrap();
        assert_eq!(row.saga_state, "abandoned");
        assert_eq!(row.abandon_reason, Some(AbandonReason::Unrecoverable));
        assert_eq!(row.abandon_comment.as_ref(), Some(reason));
    }
    // Left unfinished, with this executor, for a binary that has their definitions.
    for id in left_alone.keys() {
        let row = get_saga(&mut conn, *id).await.unwrap().unwrap();
        assert_eq!(
            (row.saga_state.as_str(), row.current_sec),
            ("running", Some(sec))
        );
        assert_eq!(row.abandon_reason, None);
    }
    // Another binary's saga is not even claimed: its generation is unchanged, so a process of that binary
    // under this executor id goes on driving it.
    let row = get_saga(&mut conn, foreign).await.unwrap().unwrap();
    assert_eq!(row.adopt_generation, foreign_generation);
    assert_eq!(
        state(&second, account).await.ledger,
        vec![-30],
        "only the good saga ran"
    );
    assert_eq!(second.counters().snapshot().abandoned, 2);
    let abandoned_outcomes = second
        .recent_outcomes()
        .iter()
        .filter(|r| matches!(r.outcome, SagaOutcome::Abandoned { .. }))
        .count();
    assert_eq!(abandoned_outcomes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_diagnosed_then_retry_unwind_completes_it() {
    let db = database().await;
    let engine = start(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let id = stuck_saga(&engine, account).await;

    let mut conn = engine.pool().get().await.unwrap();
    let diagnosis = stuck_diagnosis(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(diagnosis.state, "stuck");
    assert_eq!(diagnosis.failed_undos.len(), 1, "{diagnosis:?}");
    assert_eq!(diagnosis.failed_undos[0].node, "charge_account");
    assert!(
        diagnosis.failed_undos[0].error.contains("InCompensation"),
        "{diagnosis:?}"
    );
    assert_eq!(diagnosis.stuck_node.as_deref(), Some("charge_account"));
    assert!(
        diagnosis
            .stuck_reason
            .as_deref()
            .unwrap()
            .contains("InCompensation")
    );
    // charge_account's compensation failed, and steno never ran reserve_widget's.
    let uncompensated: Vec<&str> = diagnosis
        .uncompensated
        .iter()
        .map(|c| c.node.as_str())
        .collect();
    assert_eq!(uncompensated, ["reserve_widget", "charge_account"]);
    assert!(diagnosis.stuck_since.is_some() && diagnosis.stuck_for.is_some());
    assert_eq!(
        state(&engine, account).await.balance,
        70,
        "the charge is still in effect"
    );

    // Refusals: a wrong id, a wrong state, and a retry while the cause is still there is allowed but ends stuck.
    let nowhere = Uuid::new_v4();
    assert!(
        matches!(engine.retry_unwind(nowhere).await, Err(EngineError::NoSuchSaga(i)) if i == nowhere)
    );
    let (done, _) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let refused = engine.retry_unwind(done).await.unwrap_err();
    assert!(
        matches!(&refused, EngineError::WrongState { state, wanted: "stuck", .. } if state == "done"),
        "{refused}"
    );

    engine.failpoints().clear(id);
    let outcome = engine.retry_unwind(id).await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "activate_widget"),
        "{outcome:?}"
    );
    let row = get_saga(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(row.saga_state, "done");
    assert_eq!(
        (row.stuck_node, row.stuck_reason, row.time_stuck),
        (None, None, None)
    );
    assert_eq!(row.current_sec, Some(engine.sec_id()));
    assert_eq!(
        row.adopt_generation, 2,
        "the retry took the saga over at the next generation"
    );
    let (_, compensations) = records(&engine, id).await;
    assert_eq!(
        compensations,
        vec![
            ("charge_account".into(), true),
            ("reserve_widget".into(), true)
        ]
    );
    let diagnosis = stuck_diagnosis(&mut conn, id).await.unwrap().unwrap();
    assert!(diagnosis.uncompensated.is_empty() && diagnosis.failed_undos.is_empty());
    // No leak: only the other (successful) saga's widget and charge remain.
    let after = state(&engine, account).await;
    assert_eq!((after.balance, after.ledger), (70, vec![-30]));
    assert_eq!(after.widgets.len(), 1);
    let counters = engine.counters().snapshot();
    assert_eq!(
        (counters.stuck, counters.unwound, counters.succeeded),
        (1, 1, 1),
        "{counters:?}"
    );
    assert_eq!(counters.compensations, 2);
    assert!(matches!(
        engine.recent_outcomes().last().map(|r| &r.outcome),
        Some(SagaOutcome::Unwound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_records_the_reason_and_leaves_the_rows() {
    let db = database().await;
    let engine = start(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let id = stuck_saga(&engine, account).await;
    let (commits_before, compensations_before) = records(&engine, id).await;

    assert!(matches!(
        engine.abandon(id, "  ").await,
        Err(EngineError::EmptyReason)
    ));
    let abandoned = engine
        .abandon(id, "disk was destroyed by hand")
        .await
        .unwrap();
    assert_eq!(abandoned.previous_state, "stuck");
    assert_eq!(abandoned.reason, "disk was destroyed by hand");
    assert_eq!(abandoned.uncompensated.len(), 2);

    let mut conn = engine.pool().get().await.unwrap();
    let row = get_saga(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(row.saga_state, "abandoned");
    assert_eq!(
        (row.abandon_reason, row.abandon_comment.as_deref()),
        (
            Some(AbandonReason::Omdb),
            Some("disk was destroyed by hand")
        )
    );
    assert!(row.abandon_time.is_some());
    assert_eq!(
        records(&engine, id).await,
        (commits_before, compensations_before)
    );
    let after = state(&engine, account).await;
    let widgets: Vec<&str> = after
        .widgets
        .iter()
        .map(|(_, state)| state.as_str())
        .collect();
    assert_eq!(
        (after.balance, after.ledger.clone(), widgets),
        (70, vec![-30], vec!["reserved"]),
        "nothing was compensated: {after:?}"
    );
    let again = engine.abandon(id, "twice").await.unwrap_err();
    assert!(
        matches!(&again, EngineError::WrongState { state, .. } if state == "abandoned"),
        "{again}"
    );
    let retry = engine.retry_unwind(id).await.unwrap_err();
    assert!(
        matches!(&retry, EngineError::WrongState { state, .. } if state == "abandoned"),
        "{retry}"
    );
    assert_eq!(engine.counters().snapshot().abandoned, 1);
}

/// A shutdown while a node is in flight: the node stops at its next phase boundary, nothing more is written,
/// new sagas are refused, and the next start recovers the saga and commits each node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_nodes_at_a_phase_boundary_and_the_next_start_recovers() {
    let db = database().await;
    let sec = Uuid::new_v4();
    let engine = start(&db, sec).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine
        .failpoints()
        .arm(id, "charge_account", FaultPoint::AfterPrepare, LONG, 1);
    let run = tokio::spawn(saga.run());
    until_delaying(&engine, id).await;

    let shutdown = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown().await }
    });
    // The shutdown has begun (a condition, with a deadline), and new sagas are refused...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !engine.is_shutting_down() {
        assert!(
            std::time::Instant::now() < deadline,
            "the shutdown never began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        engine.create::<ProvisionWidget>(params(account)).await,
        Err(EngineError::ShuttingDown)
    ));
    // ...and it does not end while the node is in flight (an observation window, not synchronisation).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the node in flight"
    );
    engine.failpoints().wake(id);
    let report = tokio::time::timeout(Duration::from_secs(60), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.interrupted, vec![id]);
    assert!(!report.steno_stopped, "a parked saga keeps steno's SEC");
    assert!(matches!(
        outcome_within(run).await,
        SagaOutcome::Interrupted { .. }
    ));
    assert!(matches!(
        engine.recover().await,
        Err(EngineError::ShuttingDown)
    ));
    assert!(matches!(
        engine.adopt(Uuid::new_v4()).await,
        Err(EngineError::ShuttingDown)
    ));

    assert_eq!(saga_state(&engine, id).await, "running");
    let (commits, _) = records(&engine, id).await;
    assert_eq!(
        commits,
        names(&["reserve_widget"]),
        "charge_account stopped before its commit"
    );
    assert_eq!(state(&engine, account).await.ledger, Vec::<i64>::new());

    let (next, report) = builder(&db, sec).start().await.unwrap();
    assert_eq!(report.resumed, vec![id]);
    let outcome = next.wait(id).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let after = state(&next, account).await;
    assert_eq!((after.balance, after.ledger), (70, vec![-30]));

    // An engine with nothing in flight shuts steno down cleanly.
    let report = next.shutdown().await;
    assert!(
        report.interrupted.is_empty() && report.steno_stopped,
        "{report:?}"
    );
    assert!(matches!(
        next.create::<ProvisionWidget>(params(account)).await,
        Err(EngineError::ShuttingDown)
    ));
}

/// steno's own writes (its events and its saga state) of a stale executor are fenced even where they would
/// change what the database says: A, paused right after charge_account's COMMIT, wakes after B adopted and
/// finished the saga, and its next node fails. Unfenced, A would record that node `failed` and set the saga
/// `unwinding` over B's `done`; fenced, nothing of it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executors_failure_cannot_reopen_a_finished_saga() {
    let mut handoff = paused_on_a(FaultPoint::AfterCommit, false).await;
    handoff.a.failpoints().arm(
        handoff.id,
        "activate_widget",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    let (_, outcome, history) = handoff.adopt_then_wake_a().await;
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(
        handoff
            .a
            .failpoints()
            .has_fired(handoff.id, "activate_widget", FaultPoint::BeforePrepare),
        "A's failure happened (the attack ran)"
    );
    assert_eq!(history.saga.saga_state, "done", "B's outcome stands");
    assert!(
        !history.events.iter().any(|e| e.event_type == "failed"),
        "no failure recorded: {:?}",
        history.events
    );
    assert!(history.compensations.is_empty(), "nothing unwound");
    let after = state(&handoff.b, handoff.account).await;
    assert_eq!((after.balance, after.ledger), (70, vec![-30]));
    assert!(handoff.a.counters().snapshot().fenced >= 1);
}

/// An operator abandons a saga while its owner is alive and in the middle of it: the owner, woken, commits
/// nothing, records nothing and stops; the saga stays `abandoned`, its rows as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_against_a_live_owner_fences_it() {
    let mut handoff = paused_on_a(FaultPoint::AfterPrepare, false).await;
    let id = handoff.id;
    let abandoned = ratchet_engine::abandon(handoff.b.pool(), id, "operator: wedged in testing")
        .await
        .unwrap();
    assert_eq!(abandoned.previous_state, "running");
    handoff.a.failpoints().wake(id);
    let a_run = handoff.a_run.take().expect("A's run");
    assert_eq!(outcome_within(a_run).await, SagaOutcome::Fenced);
    let mut conn = handoff.b.pool().get().await.unwrap();
    let history = saga_history(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(history.saga.saga_state, "abandoned");
    let commits: Vec<&str> = history
        .commits
        .iter()
        .map(|c| c.node_name.as_str())
        .collect();
    assert_eq!(commits, ["reserve_widget"], "A committed nothing after");
    let after = state(&handoff.b, handoff.account).await;
    assert_eq!((after.balance, after.ledger.len()), (100, 0), "no charge");
    assert!(handoff.a.counters().snapshot().fenced >= 1);
}

/// A compensation that keeps failing transiently spends its budget: the saga is `stuck` (not hung
/// `unwinding`), with the error; once the cause is gone, retry-unwind finishes the unwind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_spends_its_budget_leaves_the_saga_stuck_then_retry_unwind_finishes() {
    let db = database().await;
    let mut config = common::config(&db, Uuid::new_v4());
    config.compensation_retry = ratchet_store::RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts: Some(4),
    };
    let (engine, _) = ratchet_engine::EngineBuilder::new(config)
        .register::<ProvisionWidget>(std::sync::Arc::new(()))
        .start()
        .await
        .unwrap();
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
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    points.arm(
        id,
        "charge_account",
        FaultPoint::InCompensation,
        FaultEffect::TransientError,
        u32::MAX,
    );
    let outcome = saga.run().await.unwrap();
    match &outcome {
        SagaOutcome::Stuck {
            undo_node,
            undo_error,
            ..
        } => {
            assert_eq!(undo_node, "charge_account");
            assert!(undo_error.contains("transient"), "{undo_error}");
        }
        other => panic!("expected a stuck saga, got {other:?}"),
    }
    assert_eq!(saga_state(&engine, id).await, "stuck");
    assert!(
        engine.counters().snapshot().retries >= 3,
        "the budget was spent"
    );
    engine.failpoints().clear(id);
    let outcome = engine.retry_unwind(id).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await, untouched());
}
