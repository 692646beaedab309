//! A host service that adopts ratchet: the smallest complete picture (see `README.md` beside this crate).
//!
//! ```text
//! embedding-example --database-url URL --executor-id UUID [--log-file PATH]
//!                   [--create-widget NAME] [--create-project NAME]
//! ```
//!
//! At start it applies its migrations (its own tables and ratchet's), builds its pool and its logger, starts
//! the engine on them (which resumes every unfinished saga of this executor id), serves its status on
//! loopback, and creates the sagas asked for on the command line (a real host creates them from its API
//! requests). It runs until SIGTERM or SIGINT, then shuts the engine down.
//!
//! Progress goes to stdout, one line per event, for the crash test (`tests/sigkill.rs`):
//!
//! ```text
//! listening ADDR                 the status endpoint: GET /counters, GET /recent
//! recovered {RecoveryReport}     what the engine resumed at start
//! created NAME SAGA_ID           a saga this process created
//! paused NODE SAGA_ID            the crash test's hook (EMBEDDING_PAUSE_AT) parked a node
//! outcome SAGA_ID {SagaOutcome}  a saga came to rest
//! shutdown {ShutdownReport}      the engine shut down
//! ```

mod legacy;
mod logging;
mod schema;
mod status;
mod storage;
mod widget;

use anyhow::{Context, bail};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, SagaDef, SagaOutcome};
use std::io::Write;
use std::sync::Arc;
use uuid::Uuid;

/// What the host's sagas share: their `SagaDef::Context`. A real host keeps its clients of other services
/// and its configuration here, never a database pool (typed nodes get their connection from the engine).
pub struct App {
    /// The crash test's hook: the names of the nodes that park when they start (see [`App::checkpoint`]),
    /// from `EMBEDDING_PAUSE_AT` (comma-separated). Empty in normal operation. A real host has no such thing.
    pause_at: Vec<String>,
}

impl App {
    /// Parks forever if `node` is named in `EMBEDDING_PAUSE_AT`, after saying so on stdout: the crash test
    /// waits for that line, then kills the process with the node in flight.
    pub async fn checkpoint(&self, node: &str, saga_id: Uuid) {
        if self.pause_at.iter().any(|n| n == node) {
            say(&format!("paused {node} {saga_id}"));
            std::future::pending::<()>().await;
        }
    }
}

struct Args {
    database_url: String,
    executor_id: Uuid,
    log_file: Option<String>,
    widgets: Vec<String>,
    projects: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;

    // 1. The host's logger. ratchet and steno log into it: no subscriber, no drain of their own.
    let log = logging::json_lines_logger(args.log_file.as_deref())?;
    slog::info!(log, "starting"; "executor_id" => %args.executor_id);

    // 2. The host's schema: its own tables and ratchet's saga log, applied by the host's own migration step.
    let applied = schema::migrate(&args.database_url).await?;
    slog::info!(log, "migrations applied"; "applied" => applied.join(","));

    // 3. The host's pool, which the engine shares.
    let pool = schema::pool(&args.database_url).await?;

    // 4. The engine, on that pool and logger, with its own migrations off (the host applied them in step 2:
    //    the engine only checks, at start, that its tables are there). Every saga definition is registered
    //    before `start`, which resumes this executor's unfinished sagas before it returns.
    let app = Arc::new(App {
        pause_at: std::env::var("EMBEDDING_PAUSE_AT")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    });
    let mut config = EngineConfig::for_host_pool(args.executor_id);
    config.log = Some(log.new(slog::o!("component" => "ratchet")));
    let (engine, recovered) = EngineBuilder::new(config)
        .with_pool(pool)
        .register::<widget::WidgetCreate>(Arc::clone(&app))
        .register::<legacy::ProjectCreate>(Arc::clone(&app))
        .start()
        .await
        .context("starting the saga engine")?;

    // 5. The counters, on the host's own (here: loopback) endpoint.
    let addr = status::serve(engine.clone()).await?;
    say(&format!("listening {addr}"));

    // 6. What recovery resumed finishes in the background; report each one as it comes to rest.
    say(&format!("recovered {}", serde_json::to_string(&recovered)?));
    for id in recovered.resumed.iter().copied() {
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Some(outcome) = engine.wait(id).await {
                report(id, &outcome);
            }
        });
    }

    // 7. New sagas: a typed one and a plain steno one, side by side.
    for name in args.widgets {
        start::<widget::WidgetCreate>(&engine, widget::WidgetParams { name }).await?;
    }
    for name in args.projects {
        start::<legacy::ProjectCreate>(&engine, legacy::ProjectParams { name }).await?;
    }

    // 8. Until told to stop; then stop cleanly (what is not at rest stays in the database for the next start).
    wait_for_signal().await?;
    let stopped = engine.shutdown().await;
    say(&format!("shutdown {}", serde_json::to_string(&stopped)?));
    Ok(())
}

/// Creates a saga of `S` and runs it in the background, reporting its outcome.
async fn start<S: SagaDef>(engine: &Engine, params: S::Params) -> anyhow::Result<()> {
    let saga = engine.create::<S>(params).await?;
    let id = saga.id;
    say(&format!("created {} {id}", S::NAME));
    tokio::spawn(async move {
        match saga.run().await {
            Ok(outcome) => report(id, &outcome),
            Err(error) => say(&format!("error {id} {error}")),
        }
    });
    Ok(())
}

fn report(id: Uuid, outcome: &SagaOutcome) {
    let json = serde_json::to_string(outcome).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    say(&format!("outcome {id} {json}"));
}

/// One progress line on stdout, flushed at once (the crash test reads it while this process runs).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        database_url: String::new(),
        executor_id: Uuid::nil(),
        log_file: None,
        widgets: Vec::new(),
        projects: Vec::new(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--database-url" => args.database_url = value,
            "--executor-id" => args.executor_id = value.parse().context("--executor-id")?,
            "--log-file" => args.log_file = Some(value),
            "--create-widget" => args.widgets.push(value),
            "--create-project" => args.projects.push(value),
            other => bail!("unknown option {other}"),
        }
    }
    if args.database_url.is_empty() || args.executor_id.is_nil() {
        // The executor id must be stable across restarts (Nexus: the zone's id): recovery resumes the
        // unfinished sagas of this id, and of no other.
        bail!(
            "usage: embedding-example --database-url URL --executor-id UUID [--log-file PATH] \
               [--create-widget NAME]... [--create-project NAME]..."
        );
    }
    Ok(args)
}
