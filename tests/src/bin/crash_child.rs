//! A child process for the real-process tests: it runs the example saga with a pause at one fault point (so
//! the parent can `SIGKILL` it mid-saga, or let another process adopt the saga while it sleeps), recovers the
//! sagas of an executor id, or adopts them from another executor.
//!
//! ```text
//! ratchet-crash-child start   URL SEC_ID ACCOUNT NODE POINT   prints "saga <id>", then pauses at NODE/POINT
//! ratchet-crash-child pause   URL SEC_ID ACCOUNT NODE POINT   the same, but a line "wake" on stdin ends the
//!                                                              pause; prints "outcome <json>" and
//!                                                              "counters <json>" when the run returns
//! ratchet-crash-child recover URL SEC_ID SAGA_ID              prints "outcome <json>" when the saga is at rest
//! ratchet-crash-child adopt   URL SEC_ID FROM_SEC SAGA_ID     adopts FROM_SEC's sagas; prints "adopted <json>",
//!                                                              then "outcome <json>" when SAGA_ID is at rest
//! ```
//!
//! Progress goes to stdout, one line per event, so the parent can wait for "fault point reached".

use anyhow::{Context, bail};
use ratchet_engine::example::{ProvisionParams, ProvisionWidget};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint};
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
        ["recover", url, sec_id, saga_id] => recover(url, sec_id.parse()?, saga_id.parse()?).await,
        ["adopt", url, sec_id, from, saga_id] => {
            adopt(url, sec_id.parse()?, from.parse()?, saga_id.parse()?).await
        }
        _ => bail!(
            "usage: start|pause URL SEC_ID ACCOUNT NODE POINT | recover URL SEC_ID SAGA_ID \
             | adopt URL SEC_ID FROM_SEC SAGA_ID"
        ),
    }
}

async fn engine(url: &str, sec_id: Uuid) -> anyhow::Result<Engine> {
    let (engine, report) = EngineBuilder::new(EngineConfig::new(url, sec_id))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await?;
    say(&format!("recovered {}", serde_json::to_string(&report)?));
    Ok(engine)
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
