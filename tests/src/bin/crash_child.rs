//! A child process for the real-process tests: it runs the example saga with a pause at one fault point (so
//! the parent can `SIGKILL` it mid-saga, or let another process adopt the saga while it sleeps), recovers the
//! sagas of an executor id, or adopts them from another executor.
//!
//! ```text
//! ratchet-crash-child start   URL SEC_ID ACCOUNT NODE POINT   prints "saga <id>", then pauses at NODE/POINT
//! ratchet-crash-child pause   URL SEC_ID ACCOUNT NODE POINT   the same, but a line "wake" on stdin ends the
//!                                                              pause; prints "outcome <json>" and
//!                                                              "counters <json>" when the run returns
//! ratchet-crash-child start-unwinding URL SEC_ID ACCOUNT NODE POINT
//!                                                              as start, with activate_widget failing, so the
//!                                                              saga unwinds (pause in a compensation)
//! ratchet-crash-child order   URL SEC_ID ACCOUNT NODE POINT   as start, for the example's OrderWidget saga
//!                                                              refused with its typed error (ApiError)
//! ratchet-crash-child recover URL SEC_ID SAGA_ID              prints "outcome <json>" when the saga is at rest
//! ratchet-crash-child adopt   URL SEC_ID FROM_SEC SAGA_ID     adopts FROM_SEC's sagas; prints "adopted <json>",
//!                                                              then "outcome <json>" when SAGA_ID is at rest
//! ratchet-crash-child crashloop-start URL SEC_ID ACCOUNT      runs the crash-loop saga (prints "saga <id>"),
//!                                                              whose second node aborts the process
//! ratchet-crash-child crashloop-recover URL SEC_ID SAGA_ID LIMIT
//!                                                              recovers it with `start_limit` LIMIT; prints
//!                                                              "outcome <json>" if it comes to rest
//! ```
//!
//! The crash-loop saga stands for a node with a deterministic panic in a binary built with `panic = "abort"`
//! (Omicron's release profile): its prepare calls `std::process::abort()`, so every process that starts it
//! dies of SIGABRT, and every recovery starts it again.
//!
//! Progress goes to stdout, one line per event, so the parent can wait for "fault point reached".

use anyhow::{Context, bail};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint};
use ratchet_example_saga::{OrderParams, OrderWidget, ProvisionParams, ProvisionWidget};
use std::io::Write;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .with_env_filter("info")
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["start", url, sec_id, account, node, point] => {
            start(url, sec_id.parse()?, account.parse()?, node, point, false).await
        }
        ["pause", url, sec_id, account, node, point] => {
            start(url, sec_id.parse()?, account.parse()?, node, point, true).await
        }
        ["start-unwinding", url, sec_id, account, node, point] => {
            UNWIND.store(true, std::sync::atomic::Ordering::Relaxed);
            start(url, sec_id.parse()?, account.parse()?, node, point, false).await
        }
        ["order", url, sec_id, account, node, point] => {
            refused_order(url, sec_id.parse()?, account.parse()?, node, point).await
        }
        ["recover", url, sec_id, saga_id] => recover(url, sec_id.parse()?, saga_id.parse()?).await,
        ["adopt", url, sec_id, from, saga_id] => {
            adopt(url, sec_id.parse()?, from.parse()?, saga_id.parse()?).await
        }
        ["crashloop-start", url, sec_id, account] => {
            crash_loop::start(url, sec_id.parse()?, account.parse()?).await
        }
        ["crashloop-recover", url, sec_id, saga_id, limit] => {
            crash_loop::recover(url, sec_id.parse()?, saga_id.parse()?, limit.parse()?).await
        }
        _ => bail!(
            "usage: start|pause|start-unwinding|order URL SEC_ID ACCOUNT NODE POINT | recover URL SEC_ID SAGA_ID \
             | adopt URL SEC_ID FROM_SEC SAGA_ID | crashloop-start URL SEC_ID ACCOUNT \
             | crashloop-recover URL SEC_ID SAGA_ID LIMIT"
        ),
    }
}

/// Set by `start-unwinding`: the saga is made to unwind.
static UNWIND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn engine(url: &str, sec_id: Uuid) -> anyhow::Result<Engine> {
    let (engine, report) = EngineBuilder::new(EngineConfig::new(url, sec_id))
        .register::<ProvisionWidget>(Arc::new(()))
        .register::<OrderWidget>(Arc::new(()))
        .start()
        .await?;
    say(&format!("recovered {}", serde_json::to_string(&report)?));
    Ok(engine)
}

/// Runs an `OrderWidget` saga whose check refuses it with the saga's typed error, pausing at `node`/`point`
/// (for the parent's SIGKILL).
async fn refused_order(
    url: &str,
    sec_id: Uuid,
    account_id: Uuid,
    node: &str,
    point: &str,
) -> anyhow::Result<()> {
    let point: FaultPoint = serde_json::from_value(serde_json::Value::String(point.into()))
        .with_context(|| format!("unknown fault point {point:?}"))?;
    let engine = engine(url, sec_id).await?;
    let saga = engine
        .create::<OrderWidget>(OrderParams {
            account_id,
            price: 30,
            refuse: true,
            refuse_undo: false,
        })
        .await?;
    engine.failpoints().arm(
        saga.id,
        node,
        point,
        FaultEffect::Delay { millis: 600_000 },
        1,
    );
    say(&format!("saga {}", saga.id));
    let outcome = saga.run().await?;
    say(&format!("outcome {}", serde_json::to_string(&outcome)?));
    Ok(())
}

async fn start(
    url: &str,
    sec_id: Uuid,
    account_id: Uuid,
    node: &str,
    point: &str,
    wake_on_stdin: bool,
) -> anyhow::Result<()> {
    let point: FaultPoint = serde_json::from_value(serde_json::Value::String(point.into()))
        .with_context(|| format!("unknown fault point {point:?}"))?;
    let engine = engine(url, sec_id).await?;
    let saga = engine
        .create::<ProvisionWidget>(ProvisionParams {
            account_id,
            widget_name: format!("killed-{}", Uuid::new_v4().simple()),
            price: 30,
        })
        .await?;
    // Long enough that only the parent's SIGKILL ends it.
    engine.failpoints().arm(
        saga.id,
        node,
        point,
        FaultEffect::Delay { millis: 600_000 },
        1,
    );
    if UNWIND.load(std::sync::atomic::Ordering::Relaxed) {
        // The saga unwinds: its last node fails, so the pause comes in a compensation.
        engine.failpoints().arm(
            saga.id,
            "activate_widget",
            FaultPoint::BeforePrepare,
            FaultEffect::PermanentError,
            1,
        );
    }
    say(&format!("saga {}", saga.id));
    if wake_on_stdin {
        let (engine, id) = (engine.clone(), saga.id);
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "wake" {
                    say("waking");
                    engine.failpoints().wake(id);
                }
            }
        });
    }
    let outcome = saga.run().await?;
    say(&format!("outcome {}", serde_json::to_string(&outcome)?));
    say(&format!(
        "counters {}",
        serde_json::to_string(&engine.counters().snapshot())?
    ));
    Ok(())
}

async fn adopt(url: &str, sec_id: Uuid, from: Uuid, saga_id: Uuid) -> anyhow::Result<()> {
    let engine = engine(url, sec_id).await?;
    let report = engine.adopt(from).await?;
    say(&format!("adopted {}", serde_json::to_string(&report)?));
    let outcome = engine
        .wait(saga_id)
        .await
        .with_context(|| format!("saga {saga_id} was not adopted and resumed"))?;
    say(&format!("outcome {}", serde_json::to_string(&outcome)?));
    engine.shutdown().await;
    Ok(())
}

async fn recover(url: &str, sec_id: Uuid, saga_id: Uuid) -> anyhow::Result<()> {
    let engine = engine(url, sec_id).await?;
    let outcome = engine
        .wait(saga_id)
        .await
        .with_context(|| format!("saga {saga_id} was not resumed by this executor"))?;
    say(&format!("outcome {}", serde_json::to_string(&outcome)?));
    Ok(())
}

/// One line on stdout, flushed at once (the parent reads it while this process runs).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A saga whose second node kills its process every time it starts.
mod crash_loop {
    use super::say;
    use diesel::sql_types::Uuid as SqlUuid;
    use diesel_async::RunQueryDsl;
    use ratchet_engine::{
        CommitTx, DbNode, EngineBuilder, EngineConfig, NodeError, NodeRegistry, PrepareCx,
        SagaBuilder, SagaDef,
    };
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;
    use uuid::Uuid;

    pub struct CrashLoop;

    impl SagaDef for CrashLoop {
        const NAME: &'static str = "test-crash-loop";
        type Params = Uuid;
        type Context = ();
        type Error = ratchet_engine::Untyped;
        fn register(registry: &mut NodeRegistry<Self>) {
            registry.db::<DebitOne>().db::<Detonate>();
        }
        fn build(_: &Uuid, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
            dag.db("debit", DebitOne).db("detonate", Detonate);
            Ok(())
        }
    }

    /// Takes 1 from the account (so that an unwind has something to give back).
    #[derive(Serialize, Deserialize)]
    pub struct DebitOne;

    impl DbNode<CrashLoop> for DebitOne {
        const NAME: &'static str = "test.debit_one";
        type Plan = Uuid;
        type Receipt = Uuid;
        type Output = ();
        async fn prepare(&self, cx: &mut PrepareCx<'_, CrashLoop>) -> Result<Uuid, NodeError> {
            Ok(*cx.params())
        }
        async fn commit(&self, tx: &mut CommitTx<'_>, account: Uuid) -> Result<Uuid, NodeError> {
            diesel::sql_query("UPDATE example_account SET balance = balance - 1 WHERE id = $1")
                .bind::<SqlUuid, _>(account)
                .execute(tx.conn())
                .await?;
            Ok(account)
        }
        fn finish(_: Uuid) {}
        async fn compensate(&self, tx: &mut CommitTx<'_>, account: Uuid) -> Result<(), NodeError> {
            diesel::sql_query("UPDATE example_account SET balance = balance + 1 WHERE id = $1")
                .bind::<SqlUuid, _>(account)
                .execute(tx.conn())
                .await?;
            Ok(())
        }
    }

    /// Aborts the process in its prepare: a deterministic panic under `panic = "abort"`.
    #[derive(Serialize, Deserialize)]
    pub struct Detonate;

    impl DbNode<CrashLoop> for Detonate {
        const NAME: &'static str = "test.detonate";
        type Plan = ();
        type Receipt = ();
        type Output = ();
        async fn prepare(&self, _: &mut PrepareCx<'_, CrashLoop>) -> Result<(), NodeError> {
            say("detonating");
            std::process::abort()
        }
        async fn commit(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
            Ok(())
        }
        fn finish((): ()) {}
        async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
            Ok(())
        }
    }

    fn builder(url: &str, sec_id: Uuid, limit: Option<u32>) -> EngineBuilder {
        let mut config = EngineConfig::new(url, sec_id);
        config.start_limit = limit;
        EngineBuilder::new(config).register::<CrashLoop>(Arc::new(()))
    }

    pub async fn start(url: &str, sec_id: Uuid, account: Uuid) -> anyhow::Result<()> {
        let (engine, _) = builder(url, sec_id, None).start().await?;
        let saga = engine.create::<CrashLoop>(account).await?;
        say(&format!("saga {}", saga.id));
        let outcome = saga.run().await?;
        say(&format!("outcome {}", serde_json::to_string(&outcome)?));
        Ok(())
    }

    pub async fn recover(url: &str, sec_id: Uuid, saga_id: Uuid, limit: u32) -> anyhow::Result<()> {
        let (engine, _) = builder(url, sec_id, Some(limit)).start().await?;
        let outcome = engine
            .wait(saga_id)
            .await
            .ok_or_else(|| anyhow::anyhow!("saga {saga_id} was not resumed by this executor"))?;
        say(&format!("outcome {}", serde_json::to_string(&outcome)?));
        Ok(())
    }
}
