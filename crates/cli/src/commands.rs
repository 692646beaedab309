//! The CLI's commands.

use crate::args::Args;
use anyhow::{Context, bail};
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use ratchet_embedded_pg::{Cluster, ClusterStatus};
use ratchet_engine::example::{self, ProvisionParams, ProvisionWidget};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_store::saga::{SagaHistory, list_sagas, saga_history};
use ratchet_store::{SagaState, pool};
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// The database the embedded cluster's commands use.
const DATABASE: &str = "ratchet";

pub async fn dispatch(args: Args) -> anyhow::Result<()> {
    let words: Vec<&str> = args.positional().iter().map(String::as_str).collect();
    match words.as_slice() {
        ["db", "start"] => {
            args.only(&[])?;
            let cluster = cluster(&args)?;
            let url = start_embedded(&cluster).await?;
            println!("PostgreSQL is running; its URL: {url}");
            Ok(())
        }
        ["db", "stop"] => {
            args.only(&[])?;
            let cluster = cluster(&args)?;
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            println!("PostgreSQL is stopped");
            Ok(())
        }
        ["db", "status"] => {
            args.only(&[])?;
            let cluster = cluster(&args)?;
            let status = tokio::task::spawn_blocking({
                let cluster = cluster.clone();
                move || cluster.status()
            })
            .await??;
            let status = match status {
                ClusterStatus::NotInitialized => "not initialised",
                ClusterStatus::Stopped => "stopped",
                ClusterStatus::Running => "running",
            };
            println!(
                "embedded PostgreSQL in {}: {status}",
                cluster.base_dir().display()
            );
            Ok(())
        }
        ["db", "url"] => {
            args.only(&[])?;
            println!("{}", cluster(&args)?.url(DATABASE));
            Ok(())
        }
        ["demo"] => demo(&args).await,
        ["recover"] => recover(&args).await,
        ["sagas", "list"] => sagas_list(&args).await,
        ["sagas", "show", id] => sagas_show(&args, id).await,
        _ => bail!(
            "unknown command {:?} (see `ratchet --help`)",
            words.join(" ")
        ),
    }
}

fn data_dir(args: &Args) -> anyhow::Result<PathBuf> {
    Ok(args
        .value::<PathBuf>("--data-dir")?
        .unwrap_or_else(|| PathBuf::from(".ratchet")))
}

fn cluster(args: &Args) -> anyhow::Result<Cluster> {
    Ok(Cluster::new(&data_dir(args)?)?)
}

/// Starts the embedded cluster and makes sure its `ratchet` database exists. Returns that database's URL.
async fn start_embedded(cluster: &Cluster) -> anyhow::Result<String> {
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start()).await??;
    let mut admin = pool::establish(&cluster.url("postgres")).await?;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let count: Count =
        diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(DATABASE)
            .get_result(&mut admin)
            .await?;
    if count.count == 0 {
        diesel::sql_query(format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut admin)
            .await?;
    }
    Ok(cluster.url(DATABASE))
}

/// `--database-url`, `DATABASE_URL`, or the embedded cluster (started on demand).
async fn database_url(args: &Args) -> anyhow::Result<String> {
    if let Some(url) = args.value::<String>("--database-url")? {
        return Ok(url);
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    start_embedded(&cluster(args)?).await
}

/// This executor's id: `--sec-id`, or one kept in the data directory so that `recover` finds what an earlier
/// run left.
fn sec_id(args: &Args) -> anyhow::Result<Uuid> {
    if let Some(id) = args.value::<Uuid>("--sec-id")? {
        return Ok(id);
    }
    let dir = data_dir(args)?;
    let path = dir.join("sec-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a UUID", path.display())),
        Err(_) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let id = Uuid::new_v4();
            std::fs::write(&path, id.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

async fn engine(args: &Args) -> anyhow::Result<(Engine, ratchet_engine::RecoveryReport)> {
    let url = database_url(args).await?;
    pool::run_migrations(&url, &example::MIGRATIONS)
        .await
        .context("applying the example saga's migrations")?;
    let config = EngineConfig::new(url, sec_id(args)?);
    Ok(EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await?)
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    args.only(&["--fail-after-commit", "--name", "--price"])?;
    let fail_after = args.value::<String>("--fail-after-commit")?;
    let price = args.value::<i64>("--price")?.unwrap_or(30);
    let (engine, _) = engine(args).await?;
    let mut conn = engine.pool().get().await?;
    let account = example::create_account(&mut conn, 100).await?;
    let name = args
        .value::<String>("--name")?
        .unwrap_or_else(|| format!("widget-{}", &Uuid::new_v4().simple().to_string()[..8]));
    println!("account {account}: balance 100; provisioning {name:?} at price {price}");
    let saga = engine
        .create::<ProvisionWidget>(ProvisionParams {
            account_id: account,
            widget_name: name,
            price,
        })
        .await?;
    if let Some(node) = &fail_after {
        engine.failpoints().arm(
            saga.id,
            node,
            FaultPoint::AfterCommit,
            FaultEffect::PermanentError,
            1,
        );
        println!("a failure is injected right after {node}'s COMMIT");
    }
    let id = saga.id;
    let outcome = saga.run().await?;
    println!("saga {id}: {}", describe(&outcome));
    let history = saga_history(&mut conn, id)
        .await?
        .context("the saga's row is gone")?;
    print_history(&history);
    let state = example::account_state(&mut conn, account).await?;
    println!(
        "\naccount afterwards: balance {}, ledger {:?}, widgets {:?}",
        state.balance, state.ledger, state.widgets
    );
    Ok(())
}

fn describe(outcome: &SagaOutcome) -> String {
    match outcome {
        SagaOutcome::Succeeded { output } => format!("succeeded, output {output}"),
        SagaOutcome::Unwound { node, error } => {
            format!("unwound cleanly after {node} failed: {error}")
        }
        SagaOutcome::Stuck {
            node,
            error,
            undo_node,
            undo_error,
        } => {
            format!(
                "STUCK: {node} failed ({error}), then the compensation of {undo_node} failed ({undo_error})"
            )
        }
        SagaOutcome::Fenced => "fenced out: another executor owns it".to_owned(),
    }
}

fn print_history(history: &SagaHistory) {
    let saga = &history.saga;
    println!(
        "\nsaga {} ({}) state {}",
        saga.id, saga.name, saga.saga_state
    );
    if let (Some(node), Some(reason)) = (&saga.stuck_node, &saga.stuck_reason) {
        println!("  stuck at {node}: {reason}");
    }
    if let Some(reason) = &saga.abandon_reason {
        println!("  abandoned: {reason}");
    }
    let names = node_names(&saga.saga_dag);
    println!("\n  {:<12} {:<18} {:<14} data", "time", "node", "event");
    for event in &history.events {
        let node = names
            .get(&event.node_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", event.node_id));
        let data = event
            .data
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        println!(
            "  {:<12} {:<18} {:<14} {}",
            event.event_time.format("%H:%M:%S%.3f"),
            node,
            event.event_type,
            data
        );
    }
    println!("\n  commit records:");
    for record in &history.commits {
        println!("    {:<18} receipt {}", record.node_name, record.receipt);
    }
    println!("  compensation records:");
    for record in &history.compensations {
        println!(
            "    {:<18} had commit: {}",
            record.node_name, record.had_commit
        );
    }
}

/// Node id to name, from the persisted DAG (petgraph's serialized graph: `graph.nodes[i]`).
fn node_names(dag: &serde_json::Value) -> std::collections::BTreeMap<i64, String> {
    let mut names = std::collections::BTreeMap::new();
    if let Some(nodes) = dag.pointer("/graph/nodes").and_then(|n| n.as_array()) {
        for (index, node) in nodes.iter().enumerate() {
            let name = node
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|inner| inner.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    node.as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_else(|| format!("#{index}"))
                        .to_lowercase()
                });
            names.insert(index as i64, name);
        }
    }
    names
}

async fn recover(args: &Args) -> anyhow::Result<()> {
    args.only(&[])?;
    let (engine, report) = engine(args).await?;
    println!(
        "executor {}: resumed {} saga(s), abandoned {}",
        engine.sec_id(),
        report.resumed.len(),
        report.abandoned.len()
    );
    for (id, reason) in &report.abandoned {
        println!("  abandoned {id}: {reason}");
    }
    for id in &report.resumed {
        match engine.wait(*id).await {
            Some(outcome) => println!("  {id}: {}", describe(&outcome)),
            None => println!("  {id}: no longer tracked"),
        }
    }
    Ok(())
}

async fn sagas_list(args: &Args) -> anyhow::Result<()> {
    args.only(&["--state"])?;
    let state = args
        .value::<String>("--state")?
        .map(|s| s.parse::<SagaState>().map_err(anyhow::Error::msg))
        .transpose()?;
    let url = database_url(args).await?;
    pool::run_migrations(&url, &ratchet_store::SAGA_LOG_MIGRATIONS).await?;
    let mut conn = pool::establish(&url).await?;
    let rows = list_sagas(&mut conn, state, 1000).await?;
    println!(
        "{:<36}  {:<20} {:<10} {:<26} executor",
        "id", "name", "state", "created"
    );
    for row in rows {
        println!(
            "{:<36}  {:<20} {:<10} {:<26} {}",
            row.id,
            row.name,
            row.saga_state,
            row.time_created.format("%Y-%m-%d %H:%M:%S%.3f"),
            row.current_sec.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

async fn sagas_show(args: &Args, id: &str) -> anyhow::Result<()> {
    args.only(&[])?;
    let id: Uuid = id
        .parse()
        .with_context(|| format!("{id:?} is not a saga id (a UUID)"))?;
    let url = database_url(args).await?;
    pool::run_migrations(&url, &ratchet_store::SAGA_LOG_MIGRATIONS).await?;
    let mut conn = pool::establish(&url).await?;
    let history = saga_history(&mut conn, id)
        .await?
        .with_context(|| format!("no saga with id {id}"))?;
    print_history(&history);
    Ok(())
}
