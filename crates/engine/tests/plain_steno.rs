//! Plain steno actions on ratchet, written as under steno: they read the saga's parameters with steno's
//! `saga_params` and the host's context through `user_data()`, in sagas ratchet builds beside typed nodes, on
//! creation and after a crash and recovery; a context of the saga's own reaches them; and a saga the previous
//! release created (its parameters in ratchet's envelope with the typed nodes' arguments) still recovers.

mod common;

use common::*;
use diesel::sql_types::{Jsonb, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{
    CommitOnlyDbNode, CommitTx, Engine, FaultEffect, FaultPoint, NodeError, SagaBuilder, SagaDef,
    SagaOutcome, StenoSaga, TypedNodes,
};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use steno::{ActionContext, ActionError, ActionFunc};
use uuid::Uuid;

/// A saga mixing a typed node and a plain steno action that reads the saga's parameters and context the
/// steno way.
struct Mixed;

#[derive(Debug, Serialize, Deserialize)]
struct MixedParams {
    label: String,
}

/// The host's context.
#[derive(Debug)]
struct Host {
    greeting: String,
}

const PLAIN: &str = "mixed.plain";

impl SagaDef for Mixed {
    type Error = ratchet_engine::Untyped;
    const NAME: &'static str = "test-mixed";
    type Params = MixedParams;
    type Context = Host;

    ratchet_engine::declare_saga_nodes! {
        db Typed,
        unchecked PLAIN => plain_action(),
    }

    fn build(params: &MixedParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        let action = plain_action();
        dag.db(
            "typed",
            Typed {
                n: params.label.len() as u32,
            },
        )
        .stage(|stage| {
            stage.unchecked_steno_action("plain", action.as_ref());
        });
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Typed {
    n: u32,
}

impl CommitOnlyDbNode for Typed {
    type Saga = Mixed;
    const NAME: &'static str = "mixed.typed";
    type Receipt = u32;
    type Output = u32;

    async fn commit(&self, _: &mut CommitTx<'_>) -> Result<u32, NodeError> {
        Ok(self.n)
    }

    fn finish(receipt: u32) -> u32 {
        receipt
    }

    async fn compensate(&self, _: &mut CommitTx<'_>, _: u32) -> Result<(), NodeError> {
        Ok(())
    }
}

type MixedSaga = StenoSaga<Mixed>;

fn plain_action() -> Arc<dyn steno::Action<MixedSaga>> {
    ActionFunc::new_action(PLAIN, plain, undo_plain)
}

/// How many times the plain action's body ran, by the saga's label (each test binary is its own process).
static PLAIN_RUNS: std::sync::Mutex<BTreeMap<String, u32>> = std::sync::Mutex::new(BTreeMap::new());

fn plain_runs(label: &str) -> u32 {
    PLAIN_RUNS.lock().unwrap().get(label).copied().unwrap_or(0)
}

/// As written for steno: `saga_params::<P>()`, `user_data().field`, `lookup`.
async fn plain(ctx: ActionContext<MixedSaga>) -> Result<String, ActionError> {
    let params = ctx.saga_params::<MixedParams>()?;
    *PLAIN_RUNS
        .lock()
        .unwrap()
        .entry(params.label.clone())
        .or_default() += 1;
    let typed: u32 = ctx.lookup("typed")?;
    Ok(format!(
        "{} {} ({typed})",
        ctx.user_data().greeting,
        params.label
    ))
}

async fn undo_plain(_: ActionContext<MixedSaga>) -> Result<(), anyhow::Error> {
    Ok(())
}

async fn engine(db: &TestDatabase, sec_id: Uuid) -> Engine {
    let (engine, _) = builder(db, sec_id)
        .register::<Mixed>(Arc::new(Host {
            greeting: "hello from the engine".to_owned(),
        }))
        .start()
        .await
        .expect("engine starts");
    engine
}

fn mixed(label: &str) -> MixedParams {
    MixedParams {
        label: label.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_action_reads_parameters_and_context_as_under_steno() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let (_, outcome) = engine.run::<Mixed>(mixed("trip")).await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Succeeded { output, .. } if *output == serde_json::json!("hello from the engine trip (4)")),
        "{outcome:?}"
    );
    // A context of the saga's own reaches its actions.
    let saga = engine
        .create_with_context::<Mixed>(
            mixed("own"),
            Arc::new(Host {
                greeting: "hello from the saga".to_owned(),
            }),
        )
        .await
        .unwrap();
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Succeeded { output, .. } if *output == serde_json::json!("hello from the saga own (3)")),
        "{outcome:?}"
    );
}

/// The executor dies right after the typed node's `COMMIT`; the engine that recovers the saga reads the typed
/// node's arguments from the saga's row, and the plain action then reads the parameters with `saga_params`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_action_reads_its_parameters_after_a_crash_and_recovery() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let saga = first.create::<Mixed>(mixed("crash")).await.unwrap();
    first.failpoints().arm(
        saga.id,
        "typed",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(&outcome, SagaOutcome::Succeeded { output, .. } if *output == serde_json::json!("hello from the engine crash (5)")),
        "{outcome:?}"
    );
    let (commits, _) = records(&second, id).await;
    assert_eq!(commits, names(&["typed"]));
}

/// `Mixed` as Nexus would build it, with steno's own `DagBuilder`: the typed node from [`TypedNodes`], the
/// plain action under a label of its own.
fn steno_built(
    params: &MixedParams,
    plain_label: &str,
) -> Result<(Arc<steno::SagaDag>, TypedNodes<Mixed>), ratchet_engine::EngineError> {
    let mut typed = TypedNodes::<Mixed>::new();
    let mut dag = steno::DagBuilder::new(steno::SagaName::new(Mixed::NAME));
    dag.append(typed.db(
        "typed",
        Typed {
            n: params.label.len() as u32,
        },
    )?);
    dag.append(steno::Node::action(
        "plain",
        plain_label,
        plain_action().as_ref(),
    ));
    let dag = dag.build().expect("the DAG builds");
    let dag = steno::SagaDag::new(dag, serde_json::to_value(params).unwrap());
    Ok((Arc::new(dag), typed))
}

/// A DAG built with steno's `DagBuilder`, holding a typed node: created as it is (labels kept), the executor
/// dies right after the typed node's `COMMIT`, and the engine that recovers it finds the commit record (the
/// node committed once) and runs the plain action, which reads the parameters with `saga_params`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steno_built_dag_with_a_typed_node_keeps_its_guarantees_across_a_crash() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let (dag, typed) = steno_built(&mixed("nexus"), "PlainLabel").unwrap();
    let saga = first
        .create_from_dag::<Mixed>(dag, typed, None)
        .await
        .unwrap();
    assert_eq!(
        saga.nodes(),
        [
            ("typed".to_owned(), ratchet_engine::NodeKind::Db),
            // A plain node is known by its name (its label is for people).
            ("plain".to_owned(), ratchet_engine::NodeKind::Steno),
        ]
    );
    first.failpoints().arm(
        saga.id,
        "typed",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(&outcome, SagaOutcome::Succeeded { output, .. } if *output == serde_json::json!("hello from the engine nexus (5)")),
        "{outcome:?}"
    );
    let (commits, _) = records(&second, id).await;
    assert_eq!(commits, names(&["typed"]));
    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let Dag { saga_dag } = diesel::sql_query("SELECT saga_dag FROM saga WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .get_result::<Dag>(&mut conn)
        .await
        .unwrap();
    let labels: Vec<&str> = saga_dag["graph"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|node| node.get("Action")?.get("label")?.as_str())
        .collect();
    assert_eq!(labels, ["typed", "PlainLabel"]);
}

/// A steno-built DAG of another saga (recovery would not find its definition) is refused before anything is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steno_built_dag_of_another_saga_is_refused() {
    let db = database().await;
    let engine = engine(&db, Uuid::new_v4()).await;
    let other = steno::DagBuilder::new(steno::SagaName::new("another-saga"));
    let mut other = other;
    other.append(steno::Node::constant("c", serde_json::json!(1)));
    let other = steno::SagaDag::new(other.build().unwrap(), serde_json::json!({"label": "x"}));
    let error = engine
        .create_from_dag::<Mixed>(Arc::new(other), TypedNodes::new(), None)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("another-saga"), "{error}");
    assert_eq!(count_sagas(&engine).await, 0, "nothing was written");
}

async fn count_sagas(engine: &Engine) -> usize {
    let mut conn = engine.pool().get().await.unwrap();
    diesel::sql_query("SELECT saga_dag FROM saga")
        .load::<Dag>(&mut conn)
        .await
        .unwrap()
        .len()
}

/// The matrix's crash faults reach a plain action: the executor dies before its body runs (recovery runs it
/// once), or after its body ran and before steno recorded it (recovery runs it again: steno's at-least-once,
/// which is all a plain action gets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_or_after_a_plain_action_is_recovered_at_least_once() {
    for (point, label, runs) in [
        (FaultPoint::BeforeCommit, "before", 1),
        (FaultPoint::AfterCommit, "after", 2),
    ] {
        let db = database().await;
        let sec_id = Uuid::new_v4();
        let first = engine(&db, sec_id).await;
        let saga = first.create::<Mixed>(mixed(label)).await.unwrap();
        first
            .failpoints()
            .arm(saga.id, "plain", point, FaultEffect::Crash, 1);
        let id = run_prepared_until_crash(&first, saga).await;
        assert!(first.failpoints().has_fired(id, "plain", point));
        let second = engine(&db, sec_id).await;
        let outcome = second.wait(id).await.expect("the saga was resumed");
        assert!(
            matches!(outcome, SagaOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
        assert_eq!(plain_runs(label), runs, "crash {point:?}");
        let (commits, _) = records(&second, id).await;
        assert_eq!(commits, names(&["typed"]), "the typed node committed once");
    }
}

#[derive(diesel::QueryableByName)]
struct Dag {
    #[diesel(sql_type = Jsonb)]
    saga_dag: serde_json::Value,
}

/// A saga the previous release created held its parameters and its typed nodes' arguments in one envelope
/// (`{"params", "nodes"}`) as steno's parameters, and nothing beside them. Such a saga, crashed after its
/// first node's commit, is rewritten to that shape in the database; the engine that recovers it reads the
/// envelope: the saga succeeds, each node committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_the_previous_releases_shape_recovers() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let first = engine(&db, sec_id).await;
    let account = account(&first).await;
    let id = run_until_crash(&first, account, "charge_account", FaultPoint::AfterCommit).await;

    let mut conn = ratchet_store::establish(&db.url).await.unwrap();
    let Dag { mut saga_dag } = diesel::sql_query("SELECT saga_dag FROM saga WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .get_result::<Dag>(&mut conn)
        .await
        .unwrap();
    let object = saga_dag.as_object_mut().unwrap();
    let nodes = object
        .remove(ratchet_store::NODE_ARGS_KEY)
        .expect("typed nodes' arguments");
    let start = object["graph"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find_map(|node| node.get_mut("Start"))
        .unwrap();
    let params = start["params"].take();
    start["params"] = serde_json::json!({ "params": params, "nodes": nodes });
    diesel::sql_query("UPDATE saga SET saga_dag = $2 WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .bind::<Jsonb, _>(&saga_dag)
        .execute(&mut conn)
        .await
        .unwrap();

    let second = engine(&db, sec_id).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert_eq!(state(&second, account).await.ledger, vec![-30]);
    let (commits, _) = records(&second, id).await;
    assert!(
        commits.contains(&"charge_account".to_owned()),
        "{commits:?}"
    );
}
