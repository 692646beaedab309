//! Database nodes on Nexus's connection type: `async_bb8_diesel::Connection<PgConnection>`, checked out of
//! the host's bb8 pool of async-bb8-diesel's `ConnectionManager`, with node bodies written as Nexus writes
//! its datastore code (`async_bb8_diesel::AsyncRunQueryDsl` in scope, `execute_async`, `get_result_async`).
//!
//! Every guarantee of the diesel-async backend is attacked here again on this one, with real faults: the
//! node's writes, its commit record and its events in one transaction (a panic after the writes rolls all of
//! them back); a stale executor fenced; a `COMMIT` whose backend is terminated by the server while the
//! `COMMIT` is in flight, resolved (and a lost reply, resolved as landed); the session limits on a host pool
//! whose sessions have none.

mod common;

use async_bb8_diesel::AsyncRunQueryDsl;
use common::*;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::SimpleAsyncConnection;
use ratchet_engine::store::SessionLimits;
use ratchet_engine::{
    CommitTx, DbNode, Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, NodeError,
    PrepareCx, SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_store::RetryPolicy;
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Nexus's connection type (Nexus wraps `PgConnection` in diesel-dtrace's `DTraceConnection`).
type NexusConn = async_bb8_diesel::Connection<diesel::PgConnection>;
type NexusPool = bb8::Pool<async_bb8_diesel::ConnectionManager<diesel::PgConnection>>;

diesel::table! {
    nexus_widget (id) {
        id -> Uuid,
        name -> Text,
        state -> Text,
    }
}

/// The widgets table, and a gate every insert into it passes at `COMMIT`: a deferred constraint trigger that
/// takes advisory lock [`COMMIT_GATE`], so that a test holding that lock holds the node's `COMMIT` in flight.
const SCHEMA: &str = "
CREATE TABLE nexus_widget (id UUID PRIMARY KEY, name TEXT NOT NULL UNIQUE, state TEXT NOT NULL);
CREATE FUNCTION nexus_widget_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER nexus_widget_gate AFTER INSERT ON nexus_widget
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION nexus_widget_gate();
";
const COMMIT_GATE: i64 = 4242;

/// A saga of two database nodes on Nexus's connection: create a widget, then activate it.
struct NexusIdiom;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct WidgetParams {
    name: String,
    /// The create node panics right after its insert.
    panic_after_insert: bool,
}

impl SagaDef for NexusIdiom {
    const NAME: &'static str = "test-nexus-idiom";
    type Params = WidgetParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;
    ratchet_engine::declare_saga_nodes!(db(NexusConn) CreateWidget, db(NexusConn) ActivateWidget);
    fn build(_: &WidgetParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db_on::<NexusConn, _>("create_widget", CreateWidget)
            .db_on::<NexusConn, _>("activate_widget", ActivateWidget);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct CreateWidget;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Created {
    id: Uuid,
    /// `lock_timeout` and `idle_in_transaction_session_timeout` as the node's transaction saw them.
    lock_timeout: String,
    idle_in_transaction: String,
}

impl DbNode<NexusIdiom, NexusConn> for CreateWidget {
    const NAME: &'static str = "nexus.create_widget";
    type Plan = WidgetParams;
    type Receipt = Created;
    type Output = Created;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, NexusIdiom, NexusConn>,
    ) -> Result<WidgetParams, NodeError> {
        let params = cx.params().clone();
        let taken: i64 = nexus_widget::table
            .filter(nexus_widget::name.eq(params.name.clone()))
            .count()
            .get_result_async(&*cx.conn())
            .await?;
        if taken > 0 {
            return Err(NodeError::permanent("the name is taken"));
        }
        Ok(params)
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_, NexusConn>,
        plan: WidgetParams,
    ) -> Result<Created, NodeError> {
        let id = tx.derived_id("widget");
        diesel::insert_into(nexus_widget::table)
            .values((
                nexus_widget::id.eq(id),
                nexus_widget::name.eq(plan.name),
                nexus_widget::state.eq("creating"),
            ))
            .execute_async(tx.conn())
            .await?;
        if plan.panic_after_insert {
            panic!("the node panics after its insert");
        }
        let setting = |name: &str| {
            diesel::select(diesel::dsl::sql::<Text>(&format!(
                "current_setting('{name}')"
            )))
        };
        let lock_timeout = setting("lock_timeout")
            .get_result_async::<String>(tx.conn())
            .await?;
        let idle_in_transaction = setting("idle_in_transaction_session_timeout")
            .get_result_async::<String>(tx.conn())
            .await?;
        Ok(Created {
            id,
            lock_timeout,
            idle_in_transaction,
        })
    }

    fn finish(receipt: Created) -> Created {
        receipt
    }

    async fn compensate(
        &self,
        tx: &mut CommitTx<'_, NexusConn>,
        receipt: Created,
    ) -> Result<(), NodeError> {
        diesel::delete(nexus_widget::table.filter(nexus_widget::id.eq(receipt.id)))
            .execute_async(tx.conn())
            .await?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ActivateWidget;

impl DbNode<NexusIdiom, NexusConn> for ActivateWidget {
    const NAME: &'static str = "nexus.activate_widget";
    type Plan = Uuid;
    type Receipt = Uuid;
    type Output = ();

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, NexusIdiom, NexusConn>,
    ) -> Result<Uuid, NodeError> {
        Ok(cx.output::<Created>("create_widget")?.id)
    }

    async fn commit(&self, tx: &mut CommitTx<'_, NexusConn>, id: Uuid) -> Result<Uuid, NodeError> {
        diesel::update(nexus_widget::table.filter(nexus_widget::id.eq(id)))
            .set(nexus_widget::state.eq("active"))
            .execute_async(tx.conn())
            .await?;
        Ok(id)
    }

    fn finish(_: Uuid) {}

    async fn compensate(
        &self,
        tx: &mut CommitTx<'_, NexusConn>,
        id: Uuid,
    ) -> Result<(), NodeError> {
        diesel::update(nexus_widget::table.filter(nexus_widget::id.eq(id)))
            .set(nexus_widget::state.eq("creating"))
            .execute_async(tx.conn())
            .await?;
        Ok(())
    }
}

/// A fresh database with the widgets table.
async fn widget_database() -> TestDatabase {
    let db = database().await;
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    conn.batch_execute(SCHEMA).await.unwrap();
    db
}

/// The host's pool: plain sessions, none of ratchet's session limits.
async fn nexus_pool(db: &TestDatabase) -> NexusPool {
    bb8::Pool::builder()
        .max_size(4)
        .build(async_bb8_diesel::ConnectionManager::new(db.url.as_str()))
        .await
        .unwrap()
}

fn config(db: &TestDatabase, sec_id: Uuid) -> EngineConfig {
    let mut config = EngineConfig::new(&db.url, sec_id);
    config.forward_retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        max_attempts: Some(8),
    };
    config
}

async fn start(db: &TestDatabase, config: EngineConfig) -> Engine {
    EngineBuilder::new(config)
        .node_pool::<NexusConn>(nexus_pool(db).await)
        .register::<NexusIdiom>(Arc::new(()))
        .start()
        .await
        .expect("engine starts")
        .0
}

fn widget(name: &str) -> WidgetParams {
    WidgetParams {
        name: name.to_owned(),
        panic_after_insert: false,
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 90 s"))
}

/// The widgets, as (name, state).
async fn widgets(db: &TestDatabase) -> Vec<(String, String)> {
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let query = nexus_widget::table
        .select((nexus_widget::name, nexus_widget::state))
        .order(nexus_widget::name);
    diesel_async::RunQueryDsl::load(query, &mut conn)
        .await
        .unwrap()
}

/// The event types the log holds for node `node` of saga `id` (by its node id in the DAG), sorted.
async fn events_of(db: &TestDatabase, id: Uuid, node_id: i64) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Event {
        #[diesel(sql_type = Text)]
        event_type: String,
    }
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let query = diesel::sql_query(
        "SELECT event_type FROM saga_node_event WHERE saga_id = $1 AND node_id = $2 ORDER BY event_type",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::BigInt, _>(node_id);
    let rows: Vec<Event> = diesel_async::RunQueryDsl::load(query, &mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|e| e.event_type).collect()
}

/// The node id of `create_widget` in the DAG: the start node is 0, so it is 1.
const CREATE_NODE_ID: i64 = 1;

/// A saga whose nodes are written in Nexus's idiom runs on a bb8 pool of async-bb8-diesel connections: the
/// writes land, each node's commit record and events with them, and the node's transaction runs under the
/// engine's session limits although the host's sessions have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nexus_idiom_saga_runs_on_a_bb8_pool_of_async_bb8_diesel_connections() {
    let db = widget_database().await;
    let mut config = config(&db, Uuid::new_v4());
    config.pool.session = SessionLimits {
        idle_in_transaction: Duration::from_secs(7),
        lock_timeout: Duration::from_millis(1500),
        statement_timeout: None,
    };
    let engine = start(&db, config).await;
    let saga = engine.create::<NexusIdiom>(widget("w1")).await.unwrap();
    let id = saga.id;
    let outcome = within("the saga", saga.run()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(widgets(&db).await, vec![("w1".into(), "active".into())]);
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(commits, names(&["activate_widget", "create_widget"]));
    assert!(compensations.is_empty());
    assert_eq!(
        events_of(&db, id, CREATE_NODE_ID).await,
        vec!["started", "succeeded"]
    );
    let created: Created = {
        let mut conn = engine.pool().get().await.unwrap();
        let receipt = ratchet_store::commit_receipt(&mut conn, id, "create_widget")
            .await
            .unwrap()
            .unwrap();
        serde_json::from_value(receipt).unwrap()
    };
    assert_eq!(created.lock_timeout, "1500ms");
    assert_eq!(created.idle_in_transaction, "7s");
    assert_eq!(engine.counters().snapshot().commits, 2);
}

/// A panic in the node after its insert, and a panic after the engine wrote the node's commit record and
/// events (just before `COMMIT`): both roll everything back, the saga unwinds, and nothing of the node is
/// left: no widget, no commit record, no `succeeded` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_the_writes_rolls_back_the_writes_the_record_and_the_events() {
    let db = widget_database().await;
    let engine = start(&db, config(&db, Uuid::new_v4())).await;
    for (name, in_node) in [("in-node", true), ("before-commit", false)] {
        let params = WidgetParams {
            name: name.to_owned(),
            panic_after_insert: in_node,
        };
        let saga = engine.create::<NexusIdiom>(params).await.unwrap();
        let id = saga.id;
        if !in_node {
            engine.failpoints().arm(
                id,
                "create_widget",
                FaultPoint::BeforeCommit,
                FaultEffect::Panic,
                1,
            );
        }
        let outcome = within("the saga", saga.run()).await.unwrap();
        match &outcome {
            SagaOutcome::Unwound { node, error, .. } => {
                assert_eq!(node, "create_widget");
                assert!(error.contains("panic"), "{error}");
            }
            other => panic!("{name}: expected an unwind, got {other:?}"),
        }
        assert_eq!(widgets(&db).await, vec![], "{name}");
        let (commits, _) = records(&engine, id).await;
        assert!(commits.is_empty(), "{name}: {commits:?}");
        let events = events_of(&db, id, CREATE_NODE_ID).await;
        assert!(
            !events.contains(&"succeeded".to_owned()),
            "{name}: {events:?}"
        );
    }
    // The node's own panic is a phase panic, caught and counted; the injected one is the harness's.
    assert_eq!(engine.counters().snapshot().panics, 1);
}

/// A second live incarnation of one executor id takes the saga under a new generation; the old one, woken
/// inside its node's transaction on the bb8 connection, is fenced: it writes nothing, and the widget is
/// created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_executor_on_a_bb8_connection_is_fenced() {
    let db = widget_database().await;
    let sec_id = Uuid::new_v4();
    let old = start(&db, config(&db, sec_id)).await;
    let saga = old.create::<NexusIdiom>(widget("w1")).await.unwrap();
    let id = saga.id;
    old.failpoints().arm(
        id,
        "create_widget",
        FaultPoint::AfterPrepare,
        FaultEffect::Delay { millis: 600_000 },
        1,
    );
    let old_run = tokio::spawn(saga.run());
    until_delaying(&old, id).await;

    let new = start(&db, config(&db, sec_id)).await;
    let outcome = within("the new incarnation's saga", new.wait(id))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    old.failpoints().wake(id);
    let old_outcome = within("the old incarnation", old_run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old_outcome, SagaOutcome::Fenced);
    assert_eq!(widgets(&db).await, vec![("w1".into(), "active".into())]);
    let (commits, compensations) = records(&new, id).await;
    assert_eq!(commits, names(&["activate_widget", "create_widget"]));
    assert!(compensations.is_empty());
    assert!(old.counters().snapshot().fenced >= 1);
}

/// The node's `COMMIT` is in flight (held at the widgets' commit gate) when the server terminates its
/// backend (`pg_terminate_backend`): the outcome is unknown, the engine resolves it from the database (the
/// transaction rolled back: no record) and runs the node again. One widget, one commit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_backend_is_terminated_in_flight_is_resolved() {
    let db = widget_database().await;
    let engine = start(&db, config(&db, Uuid::new_v4())).await;
    let mut gate = ratchet_store::establish(&db.url).await.unwrap();
    gate.batch_execute(&format!("SELECT pg_advisory_lock({COMMIT_GATE})"))
        .await
        .unwrap();
    let saga = engine.create::<NexusIdiom>(widget("w1")).await.unwrap();
    let id = saga.id;
    let run = tokio::spawn(saga.run());

    #[derive(QueryableByName)]
    struct Backend {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let committing = within("a COMMIT waiting at the gate", async {
        loop {
            let query = diesel::sql_query(
                "SELECT pid FROM pg_stat_activity WHERE query = 'COMMIT' AND wait_event_type = 'Lock' \
                 AND datname = current_database()",
            );
            let found: Vec<Backend> = diesel_async::RunQueryDsl::load(query, &mut gate)
                .await
                .unwrap();
            if let Some(backend) = found.into_iter().next() {
                break backend.pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gate.batch_execute(&format!(
        "SELECT pg_terminate_backend({committing}); SELECT pg_advisory_unlock({COMMIT_GATE})"
    ))
    .await
    .unwrap();

    let outcome = within("the saga", run).await.unwrap().unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(widgets(&db).await, vec![("w1".into(), "active".into())]);
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(commits, names(&["activate_widget", "create_widget"]));
    assert!(compensations.is_empty());
    let counters = engine.counters().snapshot();
    assert_eq!(counters.unknown_outcomes, 1, "{counters:?}");
    assert!(engine.waiting().is_empty());
}

/// A `COMMIT` that landed but whose reply was lost, on the bb8 connection: resolved as landed from the
/// record, not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_on_a_bb8_connection_is_resolved_as_landed() {
    let db = widget_database().await;
    let engine = start(&db, config(&db, Uuid::new_v4())).await;
    let saga = engine.create::<NexusIdiom>(widget("w1")).await.unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "create_widget",
        FaultPoint::CommitReply,
        FaultEffect::LoseReply,
        1,
    );
    let outcome = within("the saga", saga.run()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(widgets(&db).await, vec![("w1".into(), "active".into())]);
    let (commits, _) = records(&engine, id).await;
    assert_eq!(commits, names(&["activate_widget", "create_widget"]));
    let counters = engine.counters().snapshot();
    assert_eq!(counters.unknown_outcomes, 1, "{counters:?}");
    assert_eq!(counters.commits, 2, "{counters:?}");
}

/// The session limits hold on the host's sessions, which have none of their own: a node's transaction held
/// idle past `idle_in_transaction` (before its `COMMIT`) is ended by the server, and the node runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_transaction_held_idle_on_a_host_session_is_ended_by_the_server() {
    let db = widget_database().await;
    let mut config = config(&db, Uuid::new_v4());
    config.pool.session = SessionLimits {
        idle_in_transaction: Duration::from_millis(500),
        ..SessionLimits::default()
    };
    let engine = start(&db, config).await;
    let saga = engine.create::<NexusIdiom>(widget("w1")).await.unwrap();
    let id = saga.id;
    engine.failpoints().arm(
        id,
        "create_widget",
        FaultPoint::BeforeCommit,
        FaultEffect::Delay { millis: 2_000 },
        1,
    );
    let outcome = within("the saga", saga.run()).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(widgets(&db).await, vec![("w1".into(), "active".into())]);
    let counters = engine.counters().snapshot();
    assert!(
        counters.unknown_outcomes + counters.retries >= 1,
        "the held transaction was ended by the server: {counters:?}"
    );
    let (commits, _) = records(&engine, id).await;
    assert_eq!(commits, names(&["activate_widget", "create_widget"]));
}
