//! A `COMMIT` whose reply is lost on the wire, followed by a database outage longer than every retry budget.
//!
//! The engine talks to PostgreSQL through a proxy (`ratchet_wire_proxy`) that delivers the node's
//! `COMMIT` to the server, throws the server's reply away and closes the connection; the proxy then refuses
//! every connection for longer than the node's retry budget. The commit landed, and the engine cannot know it
//! until the database is back. A node that failed here would leak its commit (steno never undoes a failed
//! node); one that ran again would charge twice. The engine waits, resolves the outcome from the commit
//! record once the database answers, and goes on: one charge, one commit record, the saga done.

mod common;

use common::database_with_account;
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_store::{RetryPolicy, saga_history};
use ratchet_wire_proxy::{PgProxy, Upstream};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long the database stays unreachable: several times the whole retry budget below.
const OUTAGE: Duration = Duration::from_secs(4);

/// A budget of three quick attempts (about 30 ms of backoff in all, and 200 ms per pool checkout) for forward
/// phases and for compensations.
fn short_budget() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        max_attempts: Some(3),
    }
}

async fn engine_through(proxy: &PgProxy, dbname: &str) -> Engine {
    let mut config = EngineConfig::new(proxy.url_for(dbname, "postgres"), Uuid::new_v4());
    config.forward_retry = short_budget();
    config.compensation_retry = short_budget();
    // A checkout fails fast during the outage instead of waiting it out: every attempt fails at once.
    config.pool.checkout_timeout = Duration::from_millis(200);
    EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("engine starts through the proxy")
        .0
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Holds `node` of saga `id` at `point` (inside its transaction, before `COMMIT`), arms the proxy to drop
/// the next `COMMIT`'s reply, lets the node go, and takes the database away for [`OUTAGE`] as soon as the
/// reply has been dropped.
async fn lose_the_commit_reply_then_an_outage(
    engine: &Engine,
    proxy: &Arc<PgProxy>,
    id: Uuid,
) -> tokio::task::JoinHandle<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !engine.failpoints().is_delaying(id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the node reached its pause");
    proxy.drop_next_commit_reply(Duration::from_millis(100));
    let outage = tokio::spawn({
        let proxy = Arc::clone(proxy);
        async move {
            until("the COMMIT reply to be dropped", || {
                proxy.commit_replies_dropped() == 1
            })
            .await;
            proxy.begin_outage();
            tokio::time::sleep(OUTAGE).await;
            proxy.end_outage();
        }
    });
    engine.failpoints().wake(id);
    outage
}

fn params(account_id: Uuid) -> ProvisionParams {
    ProvisionParams {
        account_id,
        widget_name: format!("w-{}", Uuid::new_v4().simple()),
        price: 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_and_a_long_outage_neither_leak_nor_commit_twice() {
    let (db, mut direct, account) = database_with_account().await;
    let (upstream, _, _) = Upstream::from_url(&db.url).unwrap();
    let proxy = Arc::new(PgProxy::start(upstream).await.unwrap());
    let engine = engine_through(&proxy, &db.name).await;

    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "charge_account",
        FaultPoint::BeforeCommit,
        FaultEffect::Delay { millis: 60_000 },
        1,
    );
    let run = tokio::spawn(saga.run());
    let outage = lose_the_commit_reply_then_an_outage(&engine, &proxy, id).await;

    // While the database is away the node waits, and says why.
    until("the node to wait for its COMMIT's outcome", || {
        !engine.waiting().is_empty()
    })
    .await;
    let waiting = engine.waiting();
    assert_eq!(waiting[0].node, "charge_account", "{waiting:?}");
    assert_eq!(waiting[0].what, "commit");

    outage.await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the saga came to rest after the outage")
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(proxy.commit_replies_dropped(), 1, "the fault fired");
    let state = example::account_state(&mut direct, account).await.unwrap();
    assert_eq!(
        (state.balance, state.ledger),
        (70, vec![-30]),
        "charged once"
    );
    let history = saga_history(&mut direct, id).await.unwrap().unwrap();
    let charges = history
        .commits
        .iter()
        .filter(|c| c.node_name == "charge_account")
        .count();
    assert_eq!(charges, 1);
    assert_eq!(history.saga.saga_state, "done");
    assert!(engine.counters().snapshot().unknown_outcomes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_compensation_commit_reply_and_a_long_outage_leave_no_stuck_saga() {
    let (db, mut direct, account) = database_with_account().await;
    let (upstream, _, _) = Upstream::from_url(&db.url).unwrap();
    let proxy = Arc::new(PgProxy::start(upstream).await.unwrap());
    let engine = engine_through(&proxy, &db.name).await;

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
    points.arm(
        id,
        "charge_account",
        FaultPoint::InCompensation,
        FaultEffect::Delay { millis: 60_000 },
        1,
    );
    let run = tokio::spawn(saga.run());
    let outage = lose_the_commit_reply_then_an_outage(&engine, &proxy, id).await;
    outage.await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the saga came to rest after the outage")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "activate_widget"),
        "{outcome:?}"
    );
    assert_eq!(proxy.commit_replies_dropped(), 1, "the fault fired");
    let state = example::account_state(&mut direct, account).await.unwrap();
    assert_eq!(
        (state.balance, state.ledger.len()),
        (100, 0),
        "refunded once"
    );
    let history = saga_history(&mut direct, id).await.unwrap().unwrap();
    assert_eq!(history.saga.saga_state, "done", "not stuck");
    assert_eq!(
        history
            .compensations
            .iter()
            .filter(|c| c.node_name == "charge_account")
            .count(),
        1
    );
}

/// A `COMMIT` that never reaches the server while its transaction lives on, idle, holding the commit
/// record's key (the client's side of the connection is gone; the server has not noticed). The engine cannot
/// settle the outcome until the server ends that transaction: meanwhile the saga's row says why it waits,
/// and `ratchet sagas show` prints it; then the outcome is settled (it did not land), the node runs again,
/// and the note is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_waiting_on_an_unsettled_commit_says_so_in_sagas_show() {
    // Built (if need be) before the clock starts: `sagas show` must run while the saga waits.
    let ratchet = ratchet_tests::ratchet_cli();
    let (db, mut direct, account) = database_with_account().await;
    let (upstream, _, _) = Upstream::from_url(&db.url).unwrap();
    let proxy = Arc::new(PgProxy::start(upstream).await.unwrap());
    let mut config = EngineConfig::new(proxy.url_for(&db.name, "postgres"), Uuid::new_v4());
    config.pool.session = ratchet_store::SessionLimits {
        idle_in_transaction: Duration::from_secs(10),
        lock_timeout: Duration::from_millis(300),
        statement_timeout: None,
    };
    let engine = EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("engine starts through the proxy")
        .0;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "charge_account",
        FaultPoint::BeforeCommit,
        FaultEffect::Delay { millis: 60_000 },
        1,
    );
    let run = tokio::spawn(saga.run());
    until("the charge to pause before its COMMIT", || {
        engine.failpoints().is_delaying(id)
    })
    .await;
    proxy.withhold_next_commit(Duration::from_millis(100));
    engine.failpoints().wake(id);

    // The note lands in the saga's row while the withheld transaction still holds the record's key.
    let note = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(note) = ratchet_store::waiting_note(&mut direct, id).await.unwrap() {
                return note;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the saga's row said it was waiting");
    assert!(note.0.contains("charge_account"), "{note:?}");
    let shown = std::process::Command::new(&ratchet)
        .args(["--database-url", &db.url, "sagas", "show", &id.to_string()])
        .output()
        .expect("run ratchet sagas show");
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        stdout.contains("WAITING since") && stdout.contains("charge_account"),
        "{stdout}"
    );

    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the saga came to rest once the server ended the withheld transaction")
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(proxy.commits_withheld(), 1, "the fault fired");
    let state = example::account_state(&mut direct, account).await.unwrap();
    assert_eq!(
        (state.balance, state.ledger),
        (70, vec![-30]),
        "charged once"
    );
    assert_eq!(
        ratchet_store::waiting_note(&mut direct, id).await.unwrap(),
        None,
        "the note is cleared"
    );
}
