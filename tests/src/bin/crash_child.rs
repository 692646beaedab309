//! A child process for the real-process-kill tests: it runs the example saga with a pause at one fault point
//! (so the parent can `SIGKILL` it mid-saga), or it recovers the sagas of an executor id and waits for one.
//!
//! ```text
//! ratchet-crash-child start   URL SEC_ID ACCOUNT NODE POINT   prints "saga <id>", then pauses at NODE/POINT
//! ratchet-crash-child recover URL SEC_ID SAGA_ID              prints "outcome <json>" when the saga is at rest
//! ```
//!
//! Progress goes to stdout, one line per event, so the parent can wait for "fault point reached".

use anyhow::{Context, bail};
use ratchet_engine::example::{ProvisionParams, ProvisionWidget};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint};
use std::io::Write;
use std::sync::Arc;
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
            start(url, sec_id.parse()?, account.parse()?, node, point).await
        }
        ["recover", url, sec_id, saga_id] => recover(url, sec_id.parse()?, saga_id.parse()?).await,
        _ => bail!("usage: start URL SEC_ID ACCOUNT NODE POINT | recover URL SEC_ID SAGA_ID"),
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
    let outcome = saga.run().await?;
    say(&format!("outcome {}", serde_json::to_string(&outcome)?));
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
