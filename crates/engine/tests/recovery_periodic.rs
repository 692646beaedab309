//! Recovery as Nexus runs it: one executor id shared by Nexus's plain steno executor and ratchet (each takes
//! exactly its own sagas), periodic recovery passes racing Omicron's reassignment of an expunged Nexus's
//! sagas (every saga runs to rest exactly once), and quiesce racing creates (every create is refused or
//! reported, and every reported saga finishes).

mod common;

use common::*;
use diesel::sql_types::{Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{EngineError, SagaOutcome};
use ratchet_example_saga::ProvisionWidget;
use ratchet_store::{RecoveryScope, get_saga};
use ratchet_test_utils::omicron::{omicron_recovery_listing, reassign_sec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The example saga's nodes that commit: each must have exactly one commit record once its saga succeeded.
fn committing_nodes() -> Vec<String> {
    names(&["activate_widget", "charge_account", "reserve_widget"])
}

/// Writes a saga row as Nexus's plain steno store does (Omicron's columns only: ratchet's are left to their
/// defaults), under executor `sec_id`, running, named `name`, with `dag` as its DAG.
async fn insert_plain_steno_saga(
    conn: &mut ratchet_store::DbConnection,
    sec_id: Uuid,
    name: &str,
    dag: &serde_json::Value,
) -> Uuid {
    let id = Uuid::new_v4();
    diesel::sql_query(
        "INSERT INTO saga (id, creator, time_created, name, saga_dag, saga_state, current_sec, \
                           adopt_generation, adopt_time) \
         VALUES ($1, $2, $3, $4, $5, 'running', $2, 1, $3)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(sec_id)
    .bind::<Timestamptz, _>(chrono::Utc::now())
    .bind::<Text, _>(name)
    .bind::<Jsonb, _>(dag)
    .execute(conn)
    .await
    .unwrap();
    id
}

/// Nexus's plain steno executor and ratchet under one executor id, with sagas of one shared name in flight
/// for both (the release that moves a saga to ratchet): Nexus's recovery listing, with the adoption guide's
/// predicate, lists exactly the plain steno saga; ratchet's recovery takes exactly its own, and leaves the
/// plain steno one untouched (its generation and its column as Nexus wrote them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_executor_id_two_executors_each_recovers_exactly_its_own() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    // ratchet's saga, left in flight by an engine that stops before running it.
    let (first, _) = builder(&db, sec_id).start().await.unwrap();
    let account = account(&first).await;
    let ratchets = first
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap()
        .id;
    first.shutdown().await;
    // Nexus's saga of the same name, in flight under the same executor id, as its store writes it.
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let theirs = get_saga(&mut conn, ratchets).await.unwrap().unwrap();
    let nexus = insert_plain_steno_saga(&mut conn, sec_id, &theirs.name, &theirs.saga_dag).await;

    assert_eq!(
        omicron_recovery_listing(&mut conn, sec_id).await.unwrap(),
        vec![nexus],
        "Nexus's listing takes its own saga and leaves ratchet's"
    );

    let (engine, report) = builder(&db, sec_id).start().await.unwrap();
    assert_eq!(report.resumed, vec![ratchets], "{report:?}");
    assert!(report.left_alone.is_empty(), "{report:?}");
    let outcome = engine.wait(ratchets).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let untouched = get_saga(&mut conn, nexus).await.unwrap().unwrap();
    assert_eq!(
        (
            untouched.saga_state.as_str(),
            untouched.adopt_generation,
            untouched.driven_by_ratchet
        ),
        ("running", 1, false),
        "ratchet neither claimed nor ran Nexus's saga"
    );
    assert_eq!(
        omicron_recovery_listing(&mut conn, sec_id).await.unwrap(),
        vec![nexus]
    );
    engine.shutdown().await;
    // Once Nexus's executor is gone for good, ratchet is told to take plain steno sagas too: it takes it and
    // marks it its own, and Nexus's listing no longer has it.
    let mut config = ratchet_engine::EngineConfig::new(&db.url, sec_id);
    config.recovery_scope = RecoveryScope::PlainStenoToo;
    let (taker, report) = ratchet_engine::EngineBuilder::new(config)
        .register::<ProvisionWidget>(std::sync::Arc::new(()))
        .start()
        .await
        .unwrap();
    assert_eq!(report.resumed, vec![nexus], "{report:?}");
    assert!(
        get_saga(&mut conn, nexus)
            .await
            .unwrap()
            .unwrap()
            .driven_by_ratchet
    );
    assert!(
        omicron_recovery_listing(&mut conn, sec_id)
            .await
            .unwrap()
            .is_empty()
    );
    taker.shutdown().await;
    drop(conn);
}

/// Sagas of ten expunged executors are reassigned to this one, one executor per step (Omicron's
/// `sagas_reassign_sec`), while periodic passes (every 10 ms, also triggered at every step) and explicit
/// `recover` calls run. Every saga runs to rest exactly once: one outcome each, succeeded (a second copy
/// started here would fence the first: a `Fenced` outcome), resumed by exactly one pass, each commit record
/// once, each widget and charge once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_recovery_racing_reassignment_runs_every_saga_once() {
    let db = database().await;
    // The expunged executor: its sagas are created, never run, and it stops.
    let expunged = Uuid::new_v4();
    let (old, _) = builder(&db, expunged).start().await.unwrap();
    let mut sagas = Vec::new();
    let mut accounts = BTreeMap::new();
    for _ in 0..20 {
        let account = account(&old).await;
        let id = old
            .create::<ProvisionWidget>(params(account))
            .await
            .unwrap()
            .id;
        accounts.insert(id, account);
        sagas.push(id);
    }
    old.shutdown().await;
    // Ten executors' worth (two sagas each), as after several Nexus zones were expunged.
    let owners: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    for (pair, owner) in sagas.chunks(2).zip(&owners) {
        diesel::sql_query("UPDATE saga SET current_sec = $1 WHERE id = ANY($2)")
            .bind::<SqlUuid, _>(owner)
            .bind::<diesel::sql_types::Array<SqlUuid>, _>(pair)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let sec_id = Uuid::new_v4();
    let mut config = ratchet_engine::EngineConfig::new(&db.url, sec_id);
    config.recovery_interval = Some(Duration::from_millis(10));
    let (engine, report) = ratchet_engine::EngineBuilder::new(config)
        .register::<ProvisionWidget>(std::sync::Arc::new(()))
        .start()
        .await
        .unwrap();
    assert!(report.resumed.is_empty(), "{report:?}");
    let mut explicit = Vec::new();
    for owner in &owners {
        // The database runs serializable: a reassignment racing a claim may be refused, and is retried (as
        // Nexus's would be).
        let moved = loop {
            match reassign_sec(&mut conn, &[*owner], sec_id).await {
                Ok(moved) => break moved,
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::SerializationFailure,
                    _,
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(other) => panic!("reassigning: {other}"),
            }
        };
        assert_eq!(moved, 2);
        engine.trigger_recovery();
        explicit.extend(engine.recover().await.unwrap().resumed);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for id in &sagas {
            let row = get_saga(&mut conn, *id).await.unwrap().unwrap();
            done += usize::from(row.saga_state == "done");
        }
        if done == sagas.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} sagas at rest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resumed once each, by a periodic pass or an explicit one.
    let mut resumed = engine.recovery_status().borrow().resumed.clone();
    resumed.extend(explicit);
    let mut counted: BTreeMap<Uuid, usize> = BTreeMap::new();
    for id in resumed {
        *counted.entry(id).or_default() += 1;
    }
    assert_eq!(
        counted,
        sagas.iter().map(|id| (*id, 1)).collect::<BTreeMap<_, _>>()
    );
    // One outcome each, succeeded; none fenced.
    let mut outcomes: BTreeMap<Uuid, Vec<SagaOutcome>> = BTreeMap::new();
    for recent in engine.recent_outcomes() {
        outcomes
            .entry(recent.saga_id)
            .or_default()
            .push(recent.outcome);
    }
    for id in &sagas {
        let of = outcomes.get(id).cloned().unwrap_or_default();
        assert!(
            matches!(of.as_slice(), [SagaOutcome::Succeeded { .. }]),
            "{id}: {of:?}"
        );
        assert_eq!(records(&engine, *id).await.0, committing_nodes());
        let account = state(&engine, accounts[id]).await;
        assert_eq!((account.balance, account.widgets.len()), (70, 1), "{id}");
    }
    assert_eq!(engine.counters().snapshot().fenced, 0);
    engine.shutdown().await;
    drop(conn);
}

/// Creates race a quiesce: every create either is refused (`Quiescing`) or its saga is in the quiesce's
/// report and runs to rest; `quiesced` resolves only once none runs, and a create after it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_racing_creates_reports_every_saga_it_lets_through() {
    let db = database().await;
    let (engine, _) = builder(&db, Uuid::new_v4()).start().await.unwrap();
    let mut accounts = Vec::new();
    for _ in 0..40 {
        accounts.push(account(&engine).await);
    }
    let creates: Vec<_> = accounts
        .iter()
        .map(|account| {
            let engine = engine.clone();
            let params = params(*account);
            tokio::spawn(async move { engine.create::<ProvisionWidget>(params).await })
        })
        .collect();
    // Quiesce while the creates are under way: once a few have gone through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.quiesce_status().running.len() < 5 {
        assert!(Instant::now() < deadline, "no create went through");
        tokio::task::yield_now().await;
    }
    let report = engine.quiesce();
    assert!(report.quiescing);
    let reported: BTreeSet<Uuid> = report.running.iter().map(|(id, _)| *id).collect();

    let mut let_through = Vec::new();
    let mut refused = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(saga) => let_through.push(saga),
            Err(EngineError::Quiescing) => refused += 1,
            Err(other) => panic!("a create failed otherwise: {other}"),
        }
    }
    assert!(!let_through.is_empty());
    for saga in &let_through {
        assert!(
            reported.contains(&saga.id),
            "saga {} was created but not reported",
            saga.id
        );
    }
    assert_eq!(let_through.len() + refused, accounts.len());
    tracing::info!(
        let_through = let_through.len(),
        refused,
        "quiesce raced the creates"
    );

    // Not quiesced while a reported saga has not run.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), engine.quiesced())
            .await
            .is_err(),
        "quiesced with sagas still to run"
    );
    let ids: Vec<Uuid> = let_through.iter().map(|saga| saga.id).collect();
    let runs: Vec<_> = let_through
        .into_iter()
        .map(|saga| tokio::spawn(saga.run()))
        .collect();
    tokio::time::timeout(Duration::from_secs(120), engine.quiesced())
        .await
        .expect("quiesced once every reported saga came to rest");
    for run in runs {
        let outcome = run.await.unwrap().unwrap();
        assert!(
            matches!(outcome, SagaOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
    }
    let mut conn = engine.pool().get().await.unwrap();
    for id in ids {
        assert_eq!(
            get_saga(&mut conn, id).await.unwrap().unwrap().saga_state,
            "done"
        );
    }
    drop(conn);
    assert!(engine.quiesce_status().is_quiesced());
    let after = engine
        .create::<ProvisionWidget>(params(accounts[0]))
        .await
        .err();
    assert!(matches!(after, Some(EngineError::Quiescing)), "{after:?}");
    engine.shutdown().await;
}
