//! A logger per saga: every phase a node runs (prepare, commit, compensation; an external node's call and
//! its compensation) gets the host's `slog` logger with the saga's id, the saga's name and the node's path
//! attached, as Nexus's actions log with their saga's logger. Attacked across a crash: the engine that
//! recovers the saga logs its compensations under the same saga id, through its own host logger.

mod common;

use common::{database, run_prepared_until_crash};
use ratchet_engine::{
    CallError, CallOnlyExternalNode, CommitTx, DbNode, EngineBuilder, EngineConfig, ExternalCx,
    FaultEffect, FaultPoint, NodeError, PrepareCx, SagaBuilder, SagaDef, SagaOutcome, Untyped,
};
use ratchet_template_db::TestDatabase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// One record the host's logger received: its message and every key-value pair (the logger's and the
/// record's).
#[derive(Clone, Debug)]
struct Logged {
    message: String,
    values: BTreeMap<String, String>,
}

/// A `slog` drain that keeps every record it gets.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Logged>>>);

struct Pairs(BTreeMap<String, String>);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut pairs = Pairs(BTreeMap::new());
        let _ = slog::KV::serialize(values, record, &mut pairs);
        let _ = slog::KV::serialize(&record.kv(), record, &mut pairs);
        self.0.lock().unwrap().push(Logged {
            message: record.msg().to_string(),
            values: pairs.0,
        });
        Ok(())
    }
}

impl Capture {
    /// The records whose message is `message`.
    fn with_message(&self, message: &str) -> Vec<Logged> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.message == message)
            .cloned()
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LoggedParams {
    /// Whether the last node fails (so that the saga unwinds through every compensation).
    fail_last: bool,
}

struct LoggingSaga;

impl SagaDef for LoggingSaga {
    const NAME: &'static str = "test-saga-logger";
    type Params = LoggedParams;
    type Context = ();
    type Error = Untyped;

    ratchet_engine::declare_saga_nodes! {
        db Write,
        external Call,
        db Last,
    }

    fn build(_: &LoggedParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("write", Write)
            .external("call", Call)
            .db("last", Last);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Write;

impl DbNode<LoggingSaga> for Write {
    const NAME: &'static str = "test.logger.write";
    type Plan = ();
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, LoggingSaga>) -> Result<(), NodeError> {
        slog::info!(cx.log(), "prepare"; "phase" => "prepare");
        Ok(())
    }
    async fn commit(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        slog::info!(tx.log(), "commit");
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        slog::info!(tx.log(), "compensate");
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Call;

impl CallOnlyExternalNode for Call {
    type Saga = LoggingSaga;
    const NAME: &'static str = "test.logger.call";
    type Receipt = ();
    type Output = ();

    async fn call(&self, cx: &ExternalCx<'_, LoggingSaga>) -> Result<(), CallError> {
        slog::info!(cx.log(), "call");
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(
        &self,
        cx: &ExternalCx<'_, LoggingSaga>,
        _: Option<()>,
    ) -> Result<(), CallError> {
        slog::info!(cx.log(), "call compensated");
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Last;

impl DbNode<LoggingSaga> for Last {
    const NAME: &'static str = "test.logger.last";
    type Plan = ();
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, LoggingSaga>) -> Result<(), NodeError> {
        if cx.params().fail_last {
            return Err(NodeError::permanent("the last node fails"));
        }
        Ok(())
    }
    async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
    fn finish((): ()) {}
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

/// An engine of executor `sec_id` whose host logger is `capture`.
async fn engine(db: &TestDatabase, sec_id: Uuid, capture: &Capture) -> ratchet_engine::Engine {
    let mut config = EngineConfig::new(&db.url, sec_id);
    config.log = Some(slog::Logger::root(
        capture.clone(),
        slog::o!("host" => "test"),
    ));
    let (engine, _) = EngineBuilder::new(config)
        .register::<LoggingSaga>(Arc::new(()))
        .start()
        .await
        .unwrap();
    engine
}

/// Checks that `capture` holds exactly one record `message`, logged with saga `id`'s id and name, node
/// `node`, and the host's own values.
fn assert_logged(capture: &Capture, message: &str, id: Uuid, node: &str) {
    let records = capture.with_message(message);
    assert_eq!(records.len(), 1, "{message:?}: {records:?}");
    let values = &records[0].values;
    let expected = [
        ("saga_id", id.to_string()),
        ("saga_name", LoggingSaga::NAME.to_owned()),
        ("node", node.to_owned()),
        ("host", "test".to_owned()),
    ];
    for (key, value) in expected {
        assert_eq!(
            values.get(key),
            Some(&value),
            "{message:?} lacks {key}={value}: {values:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_logs_with_the_saga_and_the_node_attached() {
    let db = database().await;
    let capture = Capture::default();
    let engine = engine(&db, Uuid::new_v4(), &capture).await;
    let (id, outcome) = engine
        .run::<LoggingSaga>(LoggedParams { fail_last: true })
        .await
        .unwrap();
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "last"),
        "{outcome:?}"
    );
    assert_logged(&capture, "prepare", id, "write");
    assert_logged(&capture, "commit", id, "write");
    assert_logged(&capture, "call", id, "call");
    assert_logged(&capture, "call compensated", id, "call");
    assert_logged(&capture, "compensate", id, "write");
    // The record's own values come through beside the saga's.
    assert_eq!(
        capture.with_message("prepare")[0].values.get("phase"),
        Some(&"prepare".to_owned())
    );
}

/// The executor dies right after `write` commits; the engine that recovers the saga (same executor id, its
/// own host logger) runs the rest, and its compensations log under the same saga id and node paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_saga_logs_with_the_same_saga_id_through_the_new_engines_logger() {
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let before = Capture::default();
    let first = engine(&db, sec_id, &before).await;
    let saga = first
        .create::<LoggingSaga>(LoggedParams { fail_last: true })
        .await
        .unwrap();
    first.failpoints().arm(
        saga.id,
        "write",
        FaultPoint::AfterCommit,
        FaultEffect::Crash,
        1,
    );
    let id = run_prepared_until_crash(&first, saga).await;
    assert_logged(&before, "commit", id, "write");
    assert!(before.with_message("compensate").is_empty());

    let after = Capture::default();
    let second = engine(&db, sec_id, &after).await;
    let outcome = second.wait(id).await.expect("the saga was resumed");
    assert!(
        matches!(&outcome, SagaOutcome::Unwound { node, .. } if node == "last"),
        "{outcome:?}"
    );
    assert!(
        after.with_message("commit").is_empty(),
        "the recovered saga committed `write` again"
    );
    assert_logged(&after, "call", id, "call");
    assert_logged(&after, "call compensated", id, "call");
    assert_logged(&after, "compensate", id, "write");
}
