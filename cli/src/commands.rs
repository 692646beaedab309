//! The CLI's commands: the database they use, the executor they run as, the engine they start.

use crate::cli::{Command, DbCommand, DemoArgs, Global, RecoverArgs, SagasCommand, ServiceArgs};
use crate::engine_setup::{self, ServiceAddrs};
use crate::output::{Say, print_json};
use crate::sagas;
use anyhow::{Context, bail};
use ratchet_embedded_pg::{Cluster, ClusterStatus};
use ratchet_engine::{Engine, EngineConfig, FaultEffect, FaultPoint, RecoveryReport, SagaOutcome};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_store::pool;
use ratchet_store::saga::saga_history;
use ratchet_template_db::DatabaseServer;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The database the embedded cluster's commands use.
const DATABASE: &str = "ratchet";

/// What creates the saga log's tables, for the refusals of the commands that only read.
pub(crate) const SCHEMA_CREATED_BY: &str = "The saga log's tables are created by any command that starts the \
     engine, e.g. `ratchet recover` (on a --database-url, with --sec-id UUID), `ratchet demo` or `ratchet run`";

pub async fn dispatch(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Db(db) => self::db(global, db).await,
        Command::Demo(args) => demo(global, &args).await,
        Command::Recover(args) => recover(global, &args).await,
        Command::Sagas(SagasCommand::List(args)) => sagas::list(global, &args).await,
        Command::Sagas(SagasCommand::Show(args)) => sagas::show(global, &args).await,
        Command::Sagas(SagasCommand::RetryUnwind(args)) => sagas::retry_unwind(global, &args).await,
        Command::Sagas(SagasCommand::Abandon(args)) => sagas::abandon(global, &args).await,
        Command::Sagas(SagasCommand::Adopt(args)) => sagas::adopt(global, &args).await,
        Command::Run(args) => crate::run::run(global, &args.saga).await,
        Command::Sim => crate::sim::sim().await,
        Command::Check(args) => crate::sim::check(global, &args).await,
        Command::Matrix(args) => crate::matrix::matrix(global, &args).await,
        Command::MatrixChild { spec } => crate::matrix::child(&spec).await,
        Command::Bench(args) => crate::bench::bench(global, &args).await,
    }
}

async fn db(global: &Global, command: DbCommand) -> anyhow::Result<()> {
    let cluster = cluster(global)?;
    match command {
        DbCommand::Start => {
            let url = start_embedded(&cluster).await?;
            println!("PostgreSQL is running; its URL: {url}");
        }
        DbCommand::Stop => {
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            println!("PostgreSQL is stopped");
        }
        DbCommand::Status => {
            let status = cluster_status(&cluster).await?;
            let status = match status {
                ClusterStatus::NotInitialized => "not initialised",
                ClusterStatus::Stopped => "stopped",
                ClusterStatus::Running => "running",
            };
            println!(
                "embedded PostgreSQL in {}: {status}",
                cluster.base_dir().display()
            );
        }
        DbCommand::Url => println!("{}", cluster.url(DATABASE)),
    }
    Ok(())
}

pub(crate) fn cluster(global: &Global) -> anyhow::Result<Cluster> {
    Ok(Cluster::new(&global.data_dir)?)
}

async fn cluster_status(cluster: &Cluster) -> anyhow::Result<ClusterStatus> {
    let cluster = cluster.clone();
    Ok(tokio::task::spawn_blocking(move || cluster.status()).await??)
}

/// Starts the embedded cluster, saying so on stderr when it has to create it.
async fn start_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    if cluster_status(cluster).await? == ClusterStatus::NotInitialized {
        eprintln!(
            "creating a new embedded PostgreSQL cluster in {} (it keeps running after this command; \
             `ratchet db stop` stops it)",
            cluster.base_dir().display()
        );
    }
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start()).await??;
    Ok(())
}

/// The server for commands that make databases of their own (`matrix`, `bench`): `--database-url`'s (or
/// `DATABASE_URL`'s), else the embedded cluster, started on demand.
pub(crate) async fn database_server(global: &Global) -> anyhow::Result<DatabaseServer> {
    match &global.database_url {
        Some(url) => Ok(DatabaseServer::External(url.clone())),
        None => {
            let cluster = cluster(global)?;
            start_cluster(&cluster).await?;
            Ok(DatabaseServer::Embedded(cluster))
        }
    }
}

/// Whether `ratchet` database exists on the embedded cluster (which must be running).
async fn embedded_database_exists(cluster: &Cluster) -> anyhow::Result<bool> {
    Ok(pool::database_exists(&cluster.url("postgres"), DATABASE).await?)
}

/// Starts the embedded cluster and makes sure its `ratchet` database exists. Returns that database's URL.
async fn start_embedded(cluster: &Cluster) -> anyhow::Result<String> {
    start_cluster(cluster).await?;
    pool::create_database_if_missing(&cluster.url("postgres"), DATABASE).await?;
    Ok(cluster.url(DATABASE))
}

/// `--database-url` (or `DATABASE_URL`), or the embedded cluster's database (started, and created, on demand),
/// for a command that writes.
pub(crate) async fn database_url(global: &Global) -> anyhow::Result<String> {
    match &global.database_url {
        Some(url) => Ok(url.clone()),
        None => start_embedded(&cluster(global)?).await,
    }
}

/// A connection for `command`, which only reads: to `--database-url`'s server, or to the embedded cluster if
/// it exists (started if stopped). Fails, creating nothing, when there is no cluster, no database or no saga
/// log (`ratchet_store::schema_check::missing`), naming what creates them.
pub(crate) async fn read_only(
    global: &Global,
    command: &str,
) -> anyhow::Result<(String, ratchet_store::DbConnection)> {
    let url = match &global.database_url {
        Some(url) => url.clone(),
        None => {
            let cluster = cluster(global)?;
            match cluster_status(&cluster).await? {
                ClusterStatus::NotInitialized => bail!(
                    "there is no embedded PostgreSQL in {}, and `ratchet {command}` does not create one: \
                     nothing was created. {SCHEMA_CREATED_BY} (or give --data-dir DIR, or --database-url URL)",
                    global.data_dir.display()
                ),
                ClusterStatus::Stopped => {
                    let starting = cluster.clone();
                    tokio::task::spawn_blocking(move || starting.start()).await??;
                }
                ClusterStatus::Running => {}
            }
            if !embedded_database_exists(&cluster).await? {
                bail!(
                    "the embedded PostgreSQL in {} has no `{DATABASE}` database, and `ratchet {command}` does \
                     not create it: nothing was created. {SCHEMA_CREATED_BY}",
                    cluster.base_dir().display()
                );
            }
            cluster.url(DATABASE)
        }
    };
    let mut conn = pool::establish(&url).await?;
    let missing = ratchet_store::schema_check::missing(&mut conn)
        .await
        .context("looking for the saga log's tables")?;
    if !missing.is_empty() {
        bail!(
            "this database has no saga log, or an older one (missing: {}), and `ratchet {command}` does not \
             create it: nothing was created. {SCHEMA_CREATED_BY}",
            missing.join(", ")
        );
    }
    Ok((url, conn))
}

/// The executor a command runs as, and where its id came from.
#[derive(Clone, Debug)]
pub(crate) struct Executor {
    pub id: Uuid,
    pub origin: String,
}

/// This executor's id: `--sec-id` (or `RATCHET_SEC_ID`), or, with the embedded cluster, the one kept with it
/// (`DATA_DIR/sec-id`, made on first use), so that `recover` finds what an earlier command left whatever the
/// working directory. A command that drives sagas on a `--database-url` needs the id given: a default made
/// up there would be a new executor each time, and recovery would find nothing. With `create` false (a dry
/// run) no id file is made: a missing one is reported as a new executor.
pub(crate) fn executor(global: &Global, command: &str, create: bool) -> anyhow::Result<Executor> {
    if let Some(id) = global.sec_id {
        let origin = if global.sec_id_from_env {
            "from RATCHET_SEC_ID"
        } else {
            "from --sec-id"
        };
        return Ok(Executor {
            id,
            origin: origin.to_owned(),
        });
    }
    if global.database_url.is_some() {
        bail!(
            "`ratchet {command}` drives sagas on the server of --database-url (or DATABASE_URL) and needs this \
             executor's id there: pass --sec-id UUID (or set RATCHET_SEC_ID), the same one every time, so that \
             `ratchet recover` finds the sagas it leaves (a default id is kept only with the embedded cluster, \
             in DATA_DIR/sec-id). Nothing was changed"
        );
    }
    let dir = std::path::absolute(&global.data_dir)
        .with_context(|| format!("resolving {}", global.data_dir.display()))?;
    let path = dir.join("sec-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Executor {
            id: text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a UUID", path.display()))?,
            origin: format!("kept in {}", path.display()),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            if !create {
                return Ok(Executor {
                    id,
                    origin: format!("a new one: none is kept in {} yet", path.display()),
                });
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut file| {
                    std::io::Write::write_all(&mut file, id.to_string().as_bytes())
                });
            match written {
                Ok(()) => {
                    eprintln!(
                        "this executor's id is new: {id}, kept in {}",
                        path.display()
                    );
                    Ok(Executor {
                        id,
                        origin: format!("new, kept in {}", path.display()),
                    })
                }
                // Another command made it first: use its id.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    executor(global, command, create)
                }
                Err(error) => Err(error).with_context(|| format!("writing {}", path.display())),
            }
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
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

/// For a command that drives sagas: this executor (refusing, before anything, on a `--database-url` without
/// an id), and its database's URL with every migration applied.
pub(crate) async fn open(global: &Global, command: &str) -> anyhow::Result<(String, Executor)> {
    let executor = executor(global, command, true)?;
    let url = database_url(global).await?;
    prepare_database(&url).await?;
    Ok((url, executor))
}

/// An engine for `executor` with every saga of [`engine_setup`] registered (the Nexus sagas when the command
/// has `--sled-agent ADDR --pantry ADDR`), after its recovery of this executor's unfinished sagas. Without
/// those addresses it refuses, before writing anything, if it would have to resume a Nexus saga (its own, or
/// those of `also`): see [`engine_setup`]. `command` names the command in that refusal.
pub(crate) async fn start_engine(
    url: &str,
    executor: &Executor,
    services: &ServiceArgs,
    command: &str,
    also: Also,
) -> anyhow::Result<(Engine, RecoveryReport)> {
    let sec = executor.id;
    let services = ServiceAddrs::from_args(services);
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
        let mut conn = pool::establish(url).await?;
        engine_setup::refuse_stranded_nexus_sagas(&mut conn, &executors, &sagas, command, false)
            .await?;
    }
    let app = services.map(|s| s.app());
    let config = EngineConfig::new(url, sec);
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

/// The unfinished sagas (running or unwinding) executor `sec` owns.
pub(crate) async fn unfinished_of(url: &str, sec: Uuid) -> anyhow::Result<usize> {
    retrying("counting the executor's unfinished sagas", || async {
        let mut conn = pool::establish(url).await?;
        Ok(ratchet_store::saga::list_unfinished(&mut conn, sec, 1000)
            .await?
            .len())
    })
    .await
}

async fn demo(global: &Global, args: &DemoArgs) -> anyhow::Result<()> {
    let (url, executor) = open(global, "demo").await?;
    let (engine, _) = start_engine(&url, &executor, &args.services, "demo", Also::Nothing).await?;
    let mut conn = engine.pool().get().await?;
    let account = example::create_account(&mut conn, 100).await?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("widget-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let price = args.price;
    println!("account {account}: balance 100; provisioning {name:?} at price {price}");
    let saga = engine
        .create::<ProvisionWidget>(ProvisionParams {
            account_id: account,
            widget_name: name,
            price,
        })
        .await?;
    if let Some(node) = &args.fail_after_commit {
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
    sagas::print_history(&history, false);
    let state = example::account_state(&mut conn, account).await?;
    println!(
        "\naccount afterwards: balance {}, ledger {:?}, widgets {:?}",
        state.balance, state.ledger, state.widgets
    );
    drop(conn);
    engine.shutdown().await;
    Ok(())
}

/// What `recover --json` prints.
#[derive(serde::Serialize)]
struct RecoverOutput<'a> {
    executor: Uuid,
    /// The unfinished sagas this executor owned before it recovered.
    unfinished_owned: usize,
    recovery: &'a RecoveryReport,
    /// How each resumed saga came to rest (`null`: no longer tracked).
    outcomes: BTreeMap<Uuid, Option<SagaOutcome>>,
    /// Whether a saga ended stuck, abandoned, left alone or not at rest (the exit status is then 1).
    needs_operator: bool,
}

async fn recover(global: &Global, args: &RecoverArgs) -> anyhow::Result<()> {
    let json = args.output.json();
    let say = Say { json };
    let (url, executor) = open(global, "recover").await?;
    let sec = executor.id;
    let owned = unfinished_of(&url, sec).await?;
    say.line(format_args!(
        "executor {sec} ({}): owns {owned} unfinished saga(s) (running or unwinding)",
        executor.origin
    ));
    let (engine, report) =
        start_engine(&url, &executor, &args.services, "recover", Also::Nothing).await?;
    if report.resumed.is_empty() && report.abandoned.is_empty() && report.left_alone.is_empty() {
        engine.shutdown().await;
        if json {
            return print_json(&RecoverOutput {
                executor: sec,
                unfinished_owned: owned,
                recovery: &report,
                outcomes: BTreeMap::new(),
                needs_operator: false,
            });
        }
        println!("executor {sec}: nothing to recover (it has no running or unwinding saga)");
        return Ok(());
    }
    say.line(format_args!(
        "executor {sec}: resumed {} saga(s), abandoned {}, left alone {}",
        report.resumed.len(),
        report.abandoned.len(),
        report.left_alone.len()
    ));
    for (id, reason) in &report.abandoned {
        say.line(format_args!("  abandoned {id}: {reason}"));
    }
    for (id, reason) in &report.left_alone {
        say.line(format_args!(
            "  left alone {id} (unfinished, not driven): {reason}"
        ));
    }
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for id in &report.resumed {
        let outcome = sagas::wait_outcome(&engine, *id, say).await;
        let kind = match &outcome {
            Some(SagaOutcome::Succeeded { .. }) => "succeeded",
            Some(SagaOutcome::Unwound { .. }) => "unwound",
            Some(SagaOutcome::Stuck { .. }) => "stuck",
            // Another executor, or a newer incarnation of this one (a second `recover`), claimed the saga
            // after this one did: it drives the saga now, and this process wrote nothing more for it.
            Some(SagaOutcome::Fenced) => "taken over by a newer claim",
            Some(_) | None => "not at rest",
        };
        *tally.entry(kind).or_default() += 1;
        outcomes.insert(*id, outcome);
    }
    let summary: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
    say.line(format_args!(
        "recovered {} saga(s): {}; abandoned {}; left alone {}",
        report.resumed.len(),
        summary.join(", "),
        report.abandoned.len(),
        report.left_alone.len()
    ));
    engine.shutdown().await;
    // A script that runs `recover` after a restart learns from the exit status whether an operator is needed.
    let stuck = tally.get("stuck").copied().unwrap_or(0);
    let not_at_rest = tally.get("not at rest").copied().unwrap_or(0);
    let abandoned = report.abandoned.len();
    let left_alone = report.left_alone.len();
    let needs_operator = stuck + not_at_rest + abandoned + left_alone > 0;
    if json {
        print_json(&RecoverOutput {
            executor: sec,
            unfinished_owned: owned,
            recovery: &report,
            outcomes,
            needs_operator,
        })?;
    }
    if needs_operator {
        bail!(
            "recovery needs an operator: {stuck} saga(s) stuck (see `ratchet sagas list --state stuck`, fix the \
             cause, then `ratchet sagas retry-unwind ID`), {abandoned} abandoned (they could not be resumed), \
             {left_alone} left alone (this binary lacks their definitions: recover them with a binary that has \
             them, or `ratchet sagas abandon ID --reason TEXT`), {not_at_rest} not at rest"
        );
    }
    Ok(())
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
