//! `dbos-peer`: ratchet's 5-step database workflow on DBOS Transact for Rust (`dbos` 0.5), timed.
//!
//! ```text
//! dbos-peer --database-url URL --workflows N --concurrency C [--warmup W] [--monitor-database NAME]
//! ```
//!
//! W defaults to 20, as ratchet bench's own warm-up does.
//!
//! 1. Creates `bench_chain_step` in the target database if needed ([`chain`]).
//! 2. Launches DBOS against the same database (its system schema `dbos` goes there, DBOS's
//!    default), with the chain registered ([`driver`]).
//! 3. Runs W untimed workflows, then N timed ones with C in flight, each timed from start to
//!    durable completion; checks that all N left their rows and their `SUCCESS` status.
//! 4. Measures `xact_commit` per workflow run alone ([`commits`]).
//!
//! DBOS's own connections run at `READ COMMITTED` unless `--dbos-isolation server-default` is
//! given (see [`args::DbosIsolation`]); the steps' own transactions always run at the server's
//! default, as ratchet's do.
//! 5. Prints one JSON line on stdout ([`report`]); on failure `{"impl":"dbos","error":".."}` and
//!    exits non-zero. Logs go to stderr (level from `DBOS_PEER_LOG`, default `info`).

mod args;
mod chain;
mod commits;
mod driver;
mod report;
mod url;

use anyhow::Context;
use args::{Args, DbosIsolation};
use driver::DbosSetup;
use report::{ErrorReport, Report};
use sqlx::postgres::PgPoolOptions;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let level = std::env::var("DBOS_PEER_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();

    let outcome = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => run(&args).await,
        Err(error) => Err(error.into()),
    };
    let (line, code) = match outcome {
        Ok(report) => (serde_json::to_string(&report), ExitCode::SUCCESS),
        Err(error) => {
            tracing::error!("{error:#}");
            (
                serde_json::to_string(&ErrorReport::new(&error)),
                ExitCode::FAILURE,
            )
        }
    };
    match line {
        Ok(line) => println!("{line}"),
        // Only strings and numbers go in, so this cannot happen; if it did, say so rather than
        // print nothing.
        Err(error) => {
            println!(r#"{{"impl":"dbos","error":"could not encode the report: {error}"}}"#);
            return ExitCode::FAILURE;
        }
    }
    code
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let database_url = url::for_sqlx(&args.database_url);
    let dbos_url = match args.dbos_isolation {
        DbosIsolation::ReadCommitted => url::with_read_committed(&database_url),
        DbosIsolation::ServerDefault => database_url.clone(),
    };
    let setup = DbosSetup {
        database_url: database_url.clone(),
        dbos_url,
        concurrency: args.concurrency,
    };

    // The table, and the target database's name for the commit probe.
    let target = {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url)
            .await
            .context("connecting to --database-url")?;
        chain::create_table(&pool)
            .await
            .context("creating bench_chain_step")?;
        let target: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        target
    };
    let mut monitor =
        commits::Monitor::connect(&database_url, &args.monitor_database, &target).await?;

    // The timed run.
    let running = driver::launch(&setup).await.context("launching DBOS")?;
    tracing::info!(
        dbos_isolation = args.dbos_isolation.name(),
        warmup = args.warmup,
        workflows = args.workflows,
        concurrency = args.concurrency,
        "DBOS launched; running the chain"
    );
    driver::run_many(&running.workflow, args.warmup, args.concurrency)
        .await
        .context("warm-up")?;
    let batch = driver::run_many(&running.workflow, args.workflows, args.concurrency)
        .await
        .context("timed run")?;
    let (ids, latencies): (Vec<String>, Vec<_>) = batch.workflows.into_iter().unzip();
    chain::verify(running.pool(), &ids).await?;
    running.shutdown().await;
    tracing::info!(wall = ?batch.wall, "timed run done and verified; measuring commits per workflow");

    // The commit probe.
    let cost = commits::per_workflow(&setup, &mut monitor).await?;
    monitor.close().await?;
    tracing::info!(
        xact_commits_per_workflow = cost.xact_commits,
        write_transactions_per_workflow = cost.write_xacts,
        cold_xact_commits_per_workflow = cost.cold_xact_commits,
        launch_and_shutdown_commits = cost.launch_and_shutdown_commits,
        deterministic = cost.deterministic,
        "commits per workflow"
    );
    if !cost.deterministic {
        tracing::warn!(
            "the third batch of workflows did not cost exactly what the second did: the commit \
             figure is approximate"
        );
    }

    Ok(Report::new(
        args.dbos_isolation.name(),
        args.concurrency,
        latencies,
        batch.wall,
        cost.xact_commits,
    ))
}
