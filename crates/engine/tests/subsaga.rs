//! Subsagas, on the real embedded PostgreSQL: a parent saga nests the example saga (`ProvisionWidget`: reserve
//! a widget, charge the account, activate the widget) twice, as `widget_0` and `widget_1`. Every node inside
//! has its own path (`widget_0/charge_account`), and so its own commit and compensation records and derived
//! ids: were the two instances keyed by their node names, the second `reserve_widget` would replay the first's
//! receipt (one widget, charged twice) and the derived ledger ids would collide.

mod common;

use common::*;
use ratchet_engine::{
    CommitTx, DbNode, EngineBuilder, EngineConfig, EngineError, FaultEffect, FaultPoint, NodeError,
    NodeKind, PrepareCx, SagaBuilder, SagaDef, SagaOutcome,
};
use ratchet_example_saga::{AccountState, ProvisionParams, ProvisionWidget, Provisioned};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Two widgets for one account, each by a `ProvisionWidget` subsaga; then (unless the subsagas are the last,
/// parallel stage) a `tally` node that reads both subsagas' outputs.
struct ProvisionTwo;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TwoParams {
    account_id: Uuid,
    names: [String; 2],
    price: i64,
    /// Both subsagas in one stage, the last: the saga's output is then the join of theirs.
    parallel_last: bool,
}

impl TwoParams {
    fn widget(&self, i: usize) -> ProvisionParams {
        ProvisionParams {
            account_id: self.account_id,
            widget_name: self.names[i].clone(),
            price: self.price,
        }
    }
}

impl SagaDef for ProvisionTwo {
    const NAME: &'static str = "test-provision-two";
    type Params = TwoParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        subsaga ProvisionWidget,
        db Tally,
    }

    fn build(p: &TwoParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        if p.parallel_last {
            dag.stage(|s| {
                s.subsaga::<ProvisionWidget>("widget_0", &p.widget(0))
                    .subsaga::<ProvisionWidget>("widget_1", &p.widget(1));
            });
        } else {
            dag.subsaga::<ProvisionWidget>("widget_0", &p.widget(0))
                .subsaga::<ProvisionWidget>("widget_1", &p.widget(1))
                .db("tally", Tally);
        }
        Ok(())
    }
}

/// Reads both subsagas' outputs (in prepare) and commits nothing of its own: its output is the two widgets.
#[derive(Serialize, Deserialize)]
struct Tally;

impl DbNode<ProvisionTwo> for Tally {
    const NAME: &'static str = "test.tally";
    type Plan = (Uuid, Uuid);
    type Receipt = (Uuid, Uuid);
    type Output = (Uuid, Uuid);

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, ProvisionTwo>,
    ) -> Result<(Uuid, Uuid), NodeError> {
        let first: Provisioned = cx.output("widget_0")?;
        let second: Provisioned = cx.output("widget_1")?;
        Ok((first.widget_id, second.widget_id))
    }

    async fn commit(
        &self,
        _: &mut CommitTx<'_>,
        plan: (Uuid, Uuid),
    ) -> Result<(Uuid, Uuid), NodeError> {
        Ok(plan)
    }

    fn finish(receipt: (Uuid, Uuid)) -> (Uuid, Uuid) {
        receipt
    }

    async fn compensate(&self, _: &mut CommitTx<'_>, _: (Uuid, Uuid)) -> Result<(), NodeError> {
        Ok(())
    }
}

/// The same parent, but its node list forgets the subsaga.
struct ForgetsItsSubsaga;

impl SagaDef for ForgetsItsSubsaga {
    const NAME: &'static str = "test-forgets-its-subsaga";
    type Params = ProvisionParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {}

    fn build(p: &ProvisionParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.subsaga::<ProvisionWidget>("widget", p);
        Ok(())
    }
}

fn two_params(account_id: Uuid, parallel_last: bool) -> TwoParams {
    let name = || format!("w-{}", Uuid::new_v4().simple());
    TwoParams {
        account_id,
        names: [name(), name()],
        price: 30,
        parallel_last,
    }
}

fn config(db: &ratchet_template_db::TestDatabase, sec_id: Uuid) -> EngineConfig {
    EngineConfig::new(&db.url, sec_id)
}

async fn engine_with_two(
    db: &ratchet_template_db::TestDatabase,
    sec_id: Uuid,
) -> (ratchet_engine::Engine, ratchet_engine::RecoveryReport) {
    EngineBuilder::new(config(db, sec_id))
        .register::<ProvisionTwo>(Arc::new(()))
        .start()
        .await
        .expect("engine starts")
}

const EVERY_WIDGET_NODE: [&str; 3] = ["activate_widget", "charge_account", "reserve_widget"];

/// The commit records of a saga that ran both subsagas through, plus `extra`.
fn both_instances(extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["widget_0", "widget_1"]
        .iter()
        .flat_map(|w| EVERY_WIDGET_NODE.iter().map(move |n| format!("{w}/{n}")))
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
    all.sort();
    all
}

/// Both widgets active, charged once each.
fn provisioned_twice(state: &AccountState) -> bool {
    state.balance == 40
        && state.ledger == vec![-30, -30]
        && state.widgets.len() == 2
        && state.widgets.iter().all(|(_, s)| s == "active")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_subsaga_commit_under_distinct_paths() {
    let db = database().await;
    let (engine, _) = engine_with_two(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    let paths: Vec<(String, NodeKind)> = saga.nodes();
    let expected: Vec<(String, NodeKind)> = ["widget_0", "widget_1"]
        .iter()
        .flat_map(|w| {
            [(format!("{w}.params"), NodeKind::Constant)]
                .into_iter()
                .chain(
                    ["reserve_widget", "charge_account", "activate_widget"]
                        .iter()
                        .map(move |n| (format!("{w}/{n}"), NodeKind::Db)),
                )
                .chain([(w.to_string(), NodeKind::Subsaga)])
        })
        .chain([("tally".to_owned(), NodeKind::Db)])
        .collect();
    assert_eq!(paths, expected);
    // Every path resolves to its own steno node.
    let ids: std::collections::BTreeSet<_> = paths
        .iter()
        .map(|(path, _)| u32::from(saga.node_index(path).unwrap()))
        .collect();
    assert_eq!(ids.len(), paths.len());

    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    let SagaOutcome::Succeeded { output, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let (first, second): (Uuid, Uuid) = serde_json::from_value(output).unwrap();
    assert_ne!(first, second, "each subsaga made its own widget");
    let state = state(&engine, account).await;
    assert!(provisioned_twice(&state), "{state:?}");
    let (commits, compensations) = records(&engine, id).await;
    assert_eq!(commits, both_instances(&["tally"]));
    assert!(compensations.is_empty());
    assert_eq!(saga_state(&engine, id).await, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_second_instance_compensates_the_first_exactly_once() {
    let db = database().await;
    let (engine, _) = engine_with_two(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    // The second instance's charge commits, then fails: it is compensated inline, and the unwind undoes the
    // second instance's reservation and every commit of the first instance.
    engine.failpoints().arm(
        saga.id,
        "widget_1/charge_account",
        FaultPoint::AfterCommit,
        FaultEffect::PermanentError,
        1,
    );
    // steno's repeat injection on the first instance's charge: its undo runs twice, the refund happens once.
    saga.inject_repeat("widget_0/charge_account", 1, 2)
        .await
        .unwrap();
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "widget_1/charge_account"),
        "{outcome:?}"
    );
    // Refunded once each: a second refund would leave the balance above 100.
    assert_eq!(state(&engine, account).await, untouched());
    let (commits, compensations) = records(&engine, id).await;
    let mut committed = both_instances(&[]);
    committed.retain(|c| c != "widget_1/activate_widget");
    assert_eq!(commits, committed);
    let compensated: Vec<(String, bool)> = committed.into_iter().map(|c| (c, true)).collect();
    assert_eq!(compensations, compensated);
    assert_eq!(saga_state(&engine, id).await, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsaga_node_crashing_after_its_commit_is_recovered_by_a_second_engine() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let (first, _) = engine_with_two(&db, sec_id).await;
    let account = account(&first).await;
    let saga = first
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    first.failpoints().arm(
        saga.id,
        "widget_1/charge_account",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    // The crash left the second charge committed: the first instance's three nodes and that charge.
    let (commits, _) = records_in(&db, id).await;
    let mut so_far = both_instances(&[]);
    so_far.retain(|c| c != "widget_1/activate_widget");
    assert_eq!(commits, so_far);

    // The next incarnation of the executor recovers the saga: the charge is not run again (its log says
    // `succeeded`, written with its commit), the rest of the subsaga and the parent run once.
    let (second, report) = engine_with_two(&db, sec_id).await;
    assert_eq!(report.resumed, vec![id]);
    let outcome = tokio::time::timeout(Duration::from_secs(120), second.wait(id))
        .await
        .expect("the recovered saga comes to rest")
        .expect("the second engine resumed it");
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let state = state(&second, account).await;
    assert!(provisioned_twice(&state), "{state:?}");
    let (commits, compensations) = records(&second, id).await;
    assert_eq!(commits, both_instances(&["tally"]));
    assert!(compensations.is_empty());
    assert_eq!(saga_state(&second, id).await, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsaga_crashing_inside_a_compensation_is_unwound_by_a_second_engine() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let (first, _) = engine_with_two(&db, sec_id).await;
    let account = account(&first).await;
    let saga = first
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    // The second instance's activation fails before it commits; the unwind then crashes after the first
    // instance's refund has committed.
    first.failpoints().arm(
        saga.id,
        "widget_1/activate_widget",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    first.failpoints().arm(
        saga.id,
        "widget_0/charge_account",
        FaultPoint::AfterCompensation,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;

    let (second, report) = engine_with_two(&db, sec_id).await;
    assert_eq!(report.resumed, vec![id]);
    let outcome = tokio::time::timeout(Duration::from_secs(120), second.wait(id))
        .await
        .expect("the recovered saga comes to rest")
        .expect("the second engine resumed it");
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    // The refund that committed before the crash is not made again.
    assert_eq!(state(&second, account).await, untouched());
    let (commits, compensations) = records(&second, id).await;
    let mut committed = both_instances(&[]);
    committed.retain(|c| c != "widget_1/activate_widget");
    assert_eq!(commits, committed);
    let compensated: Vec<(String, bool)> = committed.into_iter().map(|c| (c, true)).collect();
    assert_eq!(compensations, compensated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_last_stage_of_subsagas_joins_their_outputs() {
    let db = database().await;
    let (engine, _) = engine_with_two(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionTwo>(two_params(account, true))
        .await
        .unwrap();
    assert_eq!(
        saga.nodes().last(),
        Some(&(ratchet_engine::JOIN_NODE.to_owned(), NodeKind::Join))
    );
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    let SagaOutcome::Succeeded { output, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let joined: std::collections::BTreeMap<String, Provisioned> =
        serde_json::from_value(output.clone()).unwrap();
    assert_eq!(
        joined.keys().collect::<Vec<_>>(),
        ["widget_0", "widget_1"],
        "{output}"
    );
    let state = state(&engine, account).await;
    assert!(provisioned_twice(&state), "{state:?}");
    assert_eq!(records(&engine, id).await.0, both_instances(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_node_list_lacks_its_subsaga_is_refused_before_anything_is_written() {
    let db = database().await;
    let (engine, _) = EngineBuilder::new(config(&db, Uuid::new_v4()))
        .register::<ForgetsItsSubsaga>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    let error = engine
        .create::<ForgetsItsSubsaga>(params(account))
        .await
        .err()
        .expect("the build is refused");
    assert!(
        matches!(&error, EngineError::BadDag { message, .. }
            if message.contains("widget/reserve_widget") && message.contains("subsaga")),
        "{error}"
    );
}

/// steno's own injected error fails a node without ratchet's failure (which names the node by path): the
/// outcome still names the node by its path, not by the name both instances share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_steno_injects_in_a_subsaga_is_reported_by_path() {
    let db = database().await;
    let (engine, _) = engine_with_two(&db, Uuid::new_v4()).await;
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    saga.inject_error("widget_1/charge_account").await.unwrap();
    let id = saga.id;
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "widget_1/charge_account"),
        "{outcome:?}"
    );
    assert_eq!(state(&engine, account).await, untouched());
    let (commits, compensations) = records(&engine, id).await;
    let expected = [
        "widget_0/activate_widget",
        "widget_0/charge_account",
        "widget_0/reserve_widget",
        "widget_1/reserve_widget",
    ];
    assert_eq!(commits, names(&expected));
    let compensated: Vec<(String, bool)> = expected.iter().map(|c| (c.to_string(), true)).collect();
    assert_eq!(compensations, compensated);
}

/// Fencing inside a subsaga: the old incarnation of an executor stops inside the second instance's charge
/// (after its prepare, before its writes); a new incarnation (same id) recovers the saga at a new generation
/// and finishes it; the old one, woken, commits nothing inside the subsaga and stops driving the saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_incarnation_fences_the_old_one_inside_a_subsaga() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let (old, _) = engine_with_two(&db, sec_id).await;
    let account = account(&old).await;
    let saga = old
        .create::<ProvisionTwo>(two_params(account, false))
        .await
        .unwrap();
    let id = saga.id;
    old.failpoints().arm(
        id,
        "widget_1/charge_account",
        FaultPoint::AfterPrepare,
        FaultEffect::Delay { millis: 600_000 },
        1,
    );
    let old_run = tokio::spawn(saga.run());
    until_delaying(&old, id).await;

    let (new, report) = engine_with_two(&db, sec_id).await;
    assert_eq!(report.resumed, vec![id]);
    let outcome = tokio::time::timeout(Duration::from_secs(120), new.wait(id))
        .await
        .expect("the new incarnation's saga comes to rest")
        .expect("the new incarnation resumed it");
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );

    old.failpoints().wake(id);
    let old_outcome = tokio::time::timeout(Duration::from_secs(90), old_run)
        .await
        .expect("the old incarnation stops")
        .unwrap()
        .unwrap();
    assert_eq!(old_outcome, SagaOutcome::Fenced);
    assert!(old.counters().snapshot().fenced >= 1);
    let state = state(&new, account).await;
    assert!(
        provisioned_twice(&state),
        "charged once per instance: {state:?}"
    );
    let (commits, compensations) = records(&new, id).await;
    assert_eq!(commits, both_instances(&["tally"]));
    assert!(compensations.is_empty());
    assert_eq!(saga_state(&new, id).await, "done");
}
