//! The CLI's commands.

use crate::args::Args;
use crate::engine_setup::{self, SERVICE_OPTIONS, ServiceAddrs};
use crate::sagas;
use anyhow::{Context, bail};
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use ratchet_embedded_pg::{Cluster, ClusterStatus};
use ratchet_engine::example::{self, ProvisionParams, ProvisionWidget};
use ratchet_engine::{Engine, EngineConfig, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_store::pool;
use ratchet_store::saga::saga_history;
use ratchet_store::testing::DatabaseServer;
use std::path::PathBuf;
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
        ["sagas", "list"] => sagas::list(&args).await,
        ["sagas", "show", id] => sagas::show(&args, id).await,
        ["sagas", "retry-unwind", id] => sagas::retry_unwind(&args, id).await,
        ["sagas", "abandon", id] => sagas::abandon(&args, id).await,
        ["sagas", "adopt"] => sagas::adopt(&args).await,
        ["sagas", verb @ ("show" | "retry-unwind" | "abandon")] => {
            bail!("`ratchet sagas {verb}` needs a saga id: `ratchet sagas {verb} ID`")
        }
        ["run", saga] => crate::run::run(&args, saga).await,
        ["sim"] => crate::sim::sim(&args).await,
        ["check"] => crate::sim::check(&args).await,
        ["matrix"] => crate::matrix::matrix(&args).await,
        ["bench"] => crate::bench::bench(&args).await,
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

pub(crate) fn cluster(args: &Args) -> anyhow::Result<Cluster> {
    Ok(Cluster::new(&data_dir(args)?)?)
}

/// The server for commands that make databases of their own (`matrix`, `bench`): `--database-url`'s or
/// `DATABASE_URL`'s, else the embedded cluster, started on demand.
pub(crate) async fn database_server(args: &Args) -> anyhow::Result<DatabaseServer> {
    match (
        args.value::<String>("--database-url")?,
        std::env::var("DATABASE_URL"),
    ) {
        (Some(url), _) | (None, Ok(url)) => Ok(DatabaseServer::External(url)),
        (None, Err(_)) => {
            let cluster = cluster(args)?;
            let starting = cluster.clone();
            tokio::task::spawn_blocking(move || starting.start()).await??;
            Ok(DatabaseServer::Embedded(cluster))
        }
    }
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
pub(crate) async fn database_url(args: &Args) -> anyhow::Result<String> {
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
pub(crate) fn sec_id(args: &Args) -> anyhow::Result<Uuid> {
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

/// What an engine's start must not strand, besides this executor's own unfinished sagas.
pub(crate) enum Also {
    Nothing,
    /// Another executor's unfinished sagas (`sagas adopt --from`).
    Executor(Uuid),
    /// One saga (`sagas retry-unwind`).
    Saga(Uuid),
}

/// An engine for this executor with every saga of [`engine_setup`] registered (the Nexus sagas when the
/// command has `--sled-agent ADDR --pantry ADDR`), after its recovery of this executor's unfinished sagas.
/// Without those addresses it refuses, before writing anything, if it would have to resume a Nexus saga (its
/// own, or those of `also`): see [`engine_setup`]. `command` names the command in that refusal.
pub(crate) async fn engine(
    args: &Args,
    command: &str,
    also: Also,
) -> anyhow::Result<(Engine, ratchet_engine::RecoveryReport)> {
    let url = database_url(args).await?;
    let sec = sec_id(args)?;
    let services = ServiceAddrs::from_args(args)?;
    prepare_database(&url).await?;
    if let Some(services) = &services {
        services.check_reachable().await?;
    } else {
        let (executors, sagas) = match also {
            Also::Nothing => (vec![sec], vec![]),
            Also::Executor(other) => (vec![sec, other], vec![]),
            Also::Saga(id) => (vec![sec], vec![id]),
        };
        // TODO-robustness A saga created after this check by another process with this executor id (or, for
        // an adoption, by the live source executor) would still be abandoned by the recovery below; running
        // two processes as one executor is already unsupported.
        let mut conn = pool::establish(&url).await?;
        engine_setup::refuse_stranded_nexus_sagas(&mut conn, &executors, &sagas, command, false)
            .await?;
    }
    let app = services.map(|s| s.app());
    let config = EngineConfig::new(&url, sec);
    Ok(engine_setup::engine_builder(config, app.as_ref())
        .start()
        .await?)
}

/// Applies the saga log's migrations and those of every registered saga's tables.
pub(crate) async fn prepare_database(url: &str) -> anyhow::Result<()> {
    retrying("applying the saga log's migrations", || async {
        Ok(pool::run_migrations(url, &ratchet_store::SAGA_LOG_MIGRATIONS).await?)
    })
    .await?;
    for migrations in engine_setup::saga_migrations() {
        retrying("applying the sagas' migrations", || async {
            Ok(pool::run_migrations(url, migrations).await?)
        })
        .await?;
    }
    Ok(())
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    args.only(&[
        "--fail-after-commit",
        "--name",
        "--price",
        SERVICE_OPTIONS[0],
        SERVICE_OPTIONS[1],
    ])?;
    let fail_after = args.value::<String>("--fail-after-commit")?;
    let price = args.value::<i64>("--price")?.unwrap_or(30);
    let (engine, _) = engine(args, "demo", Also::Nothing).await?;
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
    println!("saga {id}: {}", sagas::describe(&outcome));
    let history = saga_history(&mut conn, id)
        .await?
        .context("the saga's row is gone")?;
    println!();
    sagas::print_history(&history);
    let state = example::account_state(&mut conn, account).await?;
    println!(
        "\naccount afterwards: balance {}, ledger {:?}, widgets {:?}",
        state.balance, state.ledger, state.widgets
    );
    Ok(())
}

async fn recover(args: &Args) -> anyhow::Result<()> {
    args.only(&SERVICE_OPTIONS)?;
    let (engine, report) = engine(args, "recover", Also::Nothing).await?;
    let sec = engine.sec_id();
    if report.resumed.is_empty() && report.abandoned.is_empty() {
        println!("executor {sec}: nothing to recover (it has no running or unwinding saga)");
        engine.shutdown().await;
        return Ok(());
    }
    println!(
        "executor {sec}: resumed {} saga(s), abandoned {}",
        report.resumed.len(),
        report.abandoned.len()
    );
    for (id, reason) in &report.abandoned {
        println!("  abandoned {id}: {reason}");
    }
    let mut tally: std::collections::BTreeMap<&str, usize> = Default::default();
    for id in &report.resumed {
        let kind = match sagas::print_outcome(&engine, *id).await {
            Some(SagaOutcome::Succeeded { .. }) => "succeeded",
            Some(SagaOutcome::Unwound { .. }) => "unwound",
            Some(SagaOutcome::Stuck { .. }) => "stuck",
            // Another executor, or a newer incarnation of this one (a second `recover`), claimed the saga
            // after this one did: it drives the saga now, and this process wrote nothing more for it.
            Some(SagaOutcome::Fenced) => "taken over by a newer claim",
            Some(_) | None => "not at rest",
        };
        *tally.entry(kind).or_default() += 1;
    }
    let tally_counts = tally;
    let tally: Vec<String> = tally_counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    println!(
        "recovered {} saga(s): {}; abandoned {}",
        report.resumed.len(),
        tally.join(", "),
        report.abandoned.len()
    );
    engine.shutdown().await;
    // A script that runs `recover` after a restart learns from the exit status whether an operator is needed.
    let stuck = tally_of(&tally_counts, "stuck");
    let not_at_rest = tally_of(&tally_counts, "not at rest");
    let abandoned = report.abandoned.len();
    if stuck + not_at_rest + abandoned > 0 {
        anyhow::bail!(
            "recovery needs an operator: {stuck} saga(s) stuck (see `ratchet sagas list --state stuck`, fix the \
             cause, then `ratchet sagas retry-unwind ID`), {abandoned} abandoned (their definitions cannot be \
             run by this binary), {not_at_rest} not at rest"
        );
    }
    Ok(())
}

fn tally_of(tally: &std::collections::BTreeMap<&str, usize>, kind: &str) -> usize {
    tally.get(kind).copied().unwrap_or(0)
}

/// How the CLI retries its own database work (set-up, reports): long enough to ride through a server restart.
const CLI_RETRY: ratchet_store::RetryPolicy = ratchet_store::RetryPolicy {
    initial: std::time::Duration::from_millis(50),
    max_delay: std::time::Duration::from_secs(2),
    max_attempts: Some(40),
};

/// Runs `attempt` until it succeeds or fails with an error that is not transient (anywhere in its chain: a
/// database error the store calls transient, or a connection that broke), as the engine does for its own
/// work: a backend terminated or a server restarted in the middle of a run must not fail the command whose
/// sagas all succeeded. Each attempt should take a fresh connection (a pooled one, or a new one), since the
/// one that failed may be dead.
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let delay = is_transient(&error)
                    .then(|| CLI_RETRY.delay(attempts))
                    .flatten();
                let Some(delay) = delay else {
                    return Err(error.context(format!("{what} failed")));
                };
                eprintln!("{what}: transient failure ({error:#}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether an error, anywhere in its chain, is one a retry may get past.
fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(db) = cause.downcast_ref::<ratchet_store::DbError>() {
            return db.is_transient();
        }
        if let Some(query) = cause.downcast_ref::<diesel::result::Error>() {
            return ratchet_store::is_transient_diesel(query);
        }
        if cause.downcast_ref::<diesel::ConnectionError>().is_some() {
            return true;
        }
        ratchet_store::message_is_transient(&cause.to_string())
    })
}
