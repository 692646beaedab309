//! steno's trip saga on ratchet and on steno's in-memory SEC: the same outcome, outputs and action events,
//! cleanly and with an error injected at each node; and the port's action code is steno's.

use diesel::sql_types::{Nullable, Text};
use diesel_async::RunQueryDsl;
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_test_utils::testing::fresh_database;
use ratchet_trip_example::{TripOutcome, ratchet_trip, steno_trip};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn params_steno() -> steno_trip::TripParams {
    steno_trip::TripParams {
        hotel_name: String::from("Springfield Palace Hotel"),
        flight_info: String::from("any flight"),
        car_info: String::from("1998 Canyonero"),
        charge_details: String::from("Moneybank Charge Card"),
    }
}

fn params_ratchet() -> ratchet_trip::TripParams {
    ratchet_trip::TripParams {
        hotel_name: String::from("Springfield Palace Hotel"),
        flight_info: String::from("any flight"),
        car_info: String::from("1998 Canyonero"),
        charge_details: String::from("Moneybank Charge Card"),
    }
}

async fn on_steno(inject: Option<&str>, inject_undo: Option<&str>) -> TripOutcome {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let sec = steno::sec(log, Arc::new(steno::InMemorySecStore::new()));
    steno_trip::book_trip(
        sec,
        Arc::new(steno_trip::TripContext),
        params_steno(),
        inject,
        inject_undo,
    )
    .await
}

async fn on_ratchet(
    engine: &Engine,
    inject: Option<&str>,
    inject_undo: Option<&str>,
) -> TripOutcome {
    ratchet_trip::book_trip(
        engine.clone(),
        Arc::new(ratchet_trip::TripContext),
        params_ratchet(),
        inject,
        inject_undo,
    )
    .await
}

/// Every node of the trip, cleanly first: ratchet and steno agree on how each trip comes to rest, what it
/// outputs, and which actions ran, failed and were undone.
#[tokio::test]
async fn trip_runs_on_ratchet_as_on_steno() {
    let db = fresh_database(&[]).await.expect("test database");
    let engine = EngineBuilder::new(EngineConfig::new(&db.url, Uuid::new_v4()))
        .register::<ratchet_trip::Trip>(Arc::new(ratchet_trip::TripContext))
        .start()
        .await
        .expect("engine")
        .0;
    for inject in [
        None,
        Some("payment"),
        Some("hotel"),
        Some("flight"),
        Some("car"),
        Some("output"),
    ] {
        let steno = on_steno(inject, None).await;
        let ratchet = on_ratchet(&engine, inject, None).await;
        match inject {
            None => assert!(steno.result.is_ok(), "{steno:?}"),
            Some(node) => assert_eq!(steno.result, Err((node.to_owned(), None))),
        }
        assert_eq!(ratchet, steno, "injected error at {inject:?}");
    }
    engine.shutdown().await;
}

/// An undo error injected into a plain action (steno's `saga_inject_error_undo`): after the last node fails,
/// the hotel's cancellation fails; steno reports the undo failure, and ratchet's saga ends stuck with the
/// same nodes named, its row saying so.
#[tokio::test]
async fn an_undo_error_in_a_plain_action_leaves_the_trip_stuck_as_on_steno() {
    let db = fresh_database(&[]).await.expect("test database");
    let engine = EngineBuilder::new(EngineConfig::new(&db.url, Uuid::new_v4()))
        .register::<ratchet_trip::Trip>(Arc::new(ratchet_trip::TripContext))
        .start()
        .await
        .expect("engine")
        .0;
    let steno = on_steno(Some("output"), Some("hotel")).await;
    assert_eq!(
        steno.result,
        Err(("output".to_owned(), Some("hotel".to_owned())))
    );
    let ratchet = on_ratchet(&engine, Some("output"), Some("hotel")).await;
    assert_eq!(ratchet, steno);
    let mut conn = ratchet_store::establish(&db.url).await.expect("connection");
    let stuck: Vec<Stuck> = diesel::sql_query("SELECT saga_state, stuck_node FROM saga")
        .load(&mut conn)
        .await
        .expect("the saga row");
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].saga_state, "stuck");
    assert!(
        stuck[0]
            .stuck_node
            .as_deref()
            .is_some_and(|node| node.contains("Hotel") || node.contains("hotel")),
        "{:?}",
        stuck[0].stuck_node
    );
    engine.shutdown().await;
}

/// The port changes no action: the actions' definitions (`mod actions`), the DAG (`make_trip_dag`), the
/// parameters and the actions' bodies (from the data types to the end) are the same text in both files.
#[test]
fn the_ports_actions_are_stenos() {
    let steno = include_str!("../src/steno_trip.rs");
    let ratchet = include_str!("../src/ratchet_trip.rs");
    let section = |file: &'static str, from: &str, to: &[&str]| -> &'static str {
        let start = file.find(from).expect("the section's start");
        let rest = &file[start..];
        let end = to
            .iter()
            .filter_map(|to| rest.find(to))
            .min()
            .unwrap_or(rest.len());
        rest[..end].trim()
    };
    for (from, to) in [
        (
            "mod actions",
            &["/// Load our actions", "/// Build the DAG"][..],
        ),
        (
            "/// Build the DAG",
            &["// Application-specific context"][..],
        ),
        ("// Data types emitted", &[][..]),
    ] {
        let (in_steno, in_ratchet) = (section(steno, from, to), section(ratchet, from, to));
        assert!(in_steno.lines().count() > 10, "{from}: {in_steno}");
        assert_eq!(in_ratchet, in_steno, "the section from {from:?}");
    }
}

#[derive(diesel::QueryableByName)]
struct Stuck {
    #[diesel(sql_type = Text)]
    saga_state: String,
    #[diesel(sql_type = Nullable<Text>)]
    stuck_node: Option<String>,
}

/// The executor crashes (its sessions ended from the server side, its tasks parked) at a fault point of one
/// plain action: before its body, after it (its effect done, not recorded), or after its undo's body (the
/// saga unwinding from an error injected at the last node). An engine under the same executor id recovers
/// the saga, and it comes to rest as steno's uncrashed run does, with the same outcome, output and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_plain_action_recovers_to_stenos_outcome() {
    let db = fresh_database(&[]).await.expect("test database");
    let cells = ["payment", "hotel", "flight", "car", "output"]
        .into_iter()
        .flat_map(|node| {
            [FaultPoint::BeforeCommit, FaultPoint::AfterCommit]
                .into_iter()
                .map(move |point| (node, point))
        })
        .chain(
            ["payment", "hotel", "flight", "car"]
                .into_iter()
                .map(|node| (node, FaultPoint::InCompensation)),
        );
    for (node, point) in cells {
        let unwinds = point == FaultPoint::InCompensation;
        let inject = unwinds.then_some("output");
        let sec_id = Uuid::new_v4();
        let first = trip_engine(&db.url, sec_id).await;
        let dag = ratchet_trip::make_trip_dag(params_ratchet());
        let saga = first
            .create_from_dag::<ratchet_trip::Trip>(
                Arc::clone(&dag),
                ratchet_engine::TypedNodes::new(),
                None,
            )
            .await
            .expect("created");
        if let Some(last) = inject {
            saga.inject_error(last).await.expect("injected");
        }
        first
            .failpoints()
            .arm(saga.id, node, point, FaultEffect::Crash, 1);
        let id = saga.id;
        let run = tokio::spawn(saga.run());
        tokio::time::timeout(Duration::from_secs(60), async {
            while !first.is_crashed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no crash at {node} {point:?}"));
        run.abort();
        assert!(first.failpoints().has_fired(id, node, point));

        let second = trip_engine(&db.url, sec_id).await;
        let outcome = second.wait(id).await.expect("the saga was resumed");
        let result = match outcome {
            SagaOutcome::Succeeded { output, .. } => Ok(output),
            SagaOutcome::Unwound { node, .. } => Err((node, None)),
            other => panic!("{node} {point:?}: {other:?}"),
        };
        let events = ratchet_trip_example::logged_events(&second, id).await;
        let ratchet = TripOutcome::new(&dag, result, events);
        let steno = on_steno(inject, None).await;
        assert_eq!(ratchet, steno, "crash at {node} {point:?}");
        second.shutdown().await;
    }
}

async fn trip_engine(url: &str, sec_id: Uuid) -> Engine {
    EngineBuilder::new(EngineConfig::new(url, sec_id))
        .register::<ratchet_trip::Trip>(Arc::new(ratchet_trip::TripContext))
        .start()
        .await
        .expect("engine")
        .0
}
