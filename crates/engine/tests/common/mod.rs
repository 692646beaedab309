//! What the engine's test files share: a fresh database per test, engines running the example saga, and
//! readers of what the example's tables and the saga log hold.

#![allow(dead_code)] // each test file uses its own subset

use ratchet_engine::{
    Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, PreparedSaga, SagaOutcome,
};
use ratchet_example_saga::{self as example, AccountState, ProvisionParams, ProvisionWidget};
use ratchet_store::{get_saga, saga_history};
use ratchet_template_db::TestDatabase;
use ratchet_test_utils::testing::fresh_database;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub async fn database() -> TestDatabase {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    fresh_database(&[&example::MIGRATIONS])
        .await
        .expect("test database")
}

/// An engine builder for executor `sec_id` with the example saga registered. With
/// `RATCHET_TEST_OMICRON_READABLE_LOG=1` in the environment its engines write the Omicron-readable log
/// (`EngineConfig::omicron_readable_log`): the same tests then check that every reader still sees a stuck
/// saga as stuck.
pub fn builder(db: &TestDatabase, sec_id: Uuid) -> EngineBuilder {
    EngineBuilder::new(config(db, sec_id)).register::<ProvisionWidget>(Arc::new(()))
}

/// The configuration [`builder`] uses.
pub fn config(db: &TestDatabase, sec_id: Uuid) -> EngineConfig {
    let mut config = EngineConfig::new(&db.url, sec_id);
    config.omicron_readable_log = omicron_readable_log_from_env();
    config
}

/// Whether `RATCHET_TEST_OMICRON_READABLE_LOG=1` asks the tests to run in the Omicron-readable mode.
pub fn omicron_readable_log_from_env() -> bool {
    std::env::var("RATCHET_TEST_OMICRON_READABLE_LOG").is_ok_and(|v| v == "1")
}

pub async fn account(engine: &Engine) -> Uuid {
    let mut conn = engine.pool().get().await.unwrap();
    example::create_account(&mut conn, 100).await.unwrap()
}

pub async fn state(engine: &Engine, account: Uuid) -> AccountState {
    let mut conn = engine.pool().get().await.unwrap();
    example::account_state(&mut conn, account).await.unwrap()
}

/// The account as it was before any saga ran.
pub fn untouched() -> AccountState {
    AccountState {
        balance: 100,
        ledger: vec![],
        widgets: vec![],
    }
}

pub fn params(account_id: Uuid) -> ProvisionParams {
    ProvisionParams {
        account_id,
        widget_name: format!("w-{}", Uuid::new_v4().simple()),
        price: 30,
    }
}

pub async fn saga_state(engine: &Engine, id: Uuid) -> String {
    let mut conn = engine.pool().get().await.unwrap();
    get_saga(&mut conn, id)
        .await
        .unwrap()
        .unwrap()
        .saga_state
        .to_string()
}

/// (commit records, compensation records) of a saga, by node.
pub async fn records(engine: &Engine, id: Uuid) -> (Vec<String>, Vec<(String, bool)>) {
    let mut conn = engine.pool().get().await.unwrap();
    records_on(&mut conn, id).await
}

/// [`records`] read on a connection of its own: after an engine's injected crash, whose session
/// terminations may still reach that engine's pooled connections.
pub async fn records_in(db: &TestDatabase, id: Uuid) -> (Vec<String>, Vec<(String, bool)>) {
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    records_on(&mut conn, id).await
}

async fn records_on(
    conn: &mut ratchet_store::DbConnection,
    id: Uuid,
) -> (Vec<String>, Vec<(String, bool)>) {
    let history = saga_history(conn, id).await.unwrap().unwrap();
    let mut commits: Vec<String> = history.commits.into_iter().map(|c| c.node_name).collect();
    let mut compensations: Vec<(String, bool)> = history
        .compensations
        .into_iter()
        .map(|c| (c.node_name, c.had_commit))
        .collect();
    commits.sort();
    compensations.sort();
    (commits, compensations)
}

pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Creates a provisioning saga on `first`, arms a crash at `node`/`point`, runs it until the engine dies.
/// Returns the saga id.
pub async fn run_until_crash(first: &Engine, account: Uuid, node: &str, point: FaultPoint) -> Uuid {
    let saga = first
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    first
        .failpoints()
        .arm(saga.id, node, point, FaultEffect::Crash, 1);
    run_prepared_until_crash(first, saga).await
}

/// Runs `saga` (created on `first`, a crash armed) until the engine dies. Returns the saga id.
pub async fn run_prepared_until_crash(first: &Engine, saga: PreparedSaga) -> Uuid {
    let id = saga.id;
    let run = tokio::spawn(saga.run());
    tokio::time::timeout(Duration::from_secs(60), async {
        while !first.is_crashed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the engine crashed at the armed point");
    run.abort();
    id
}

/// Waits (up to a minute) until a node of saga `id` sleeps in a `Delay` fault of `engine`.
pub async fn until_delaying(engine: &Engine, id: Uuid) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !engine.failpoints().is_delaying(id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the saga reached its delay");
}

/// Runs the example saga to `stuck` (see `example::run_stuck`).
pub async fn stuck_saga(engine: &Engine, account: Uuid) -> Uuid {
    let (id, outcome) = example::run_stuck(engine, params(account)).await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Stuck { undo_node, .. } if undo_node == "charge_account"),
        "{outcome:?}"
    );
    id
}
