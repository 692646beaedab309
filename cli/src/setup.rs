//! What every command sets up before it does its work: the database it uses (the embedded cluster, started
//! and created on demand, or `--database-url`'s server), the executor it runs as, and the engine it starts.
//!
//! # One way to start an engine
//!
//! Every command that drives sagas (demo, recover, run, sagas retry-unwind, sagas adopt) starts its engine
//! through [`start_engine`], which does, in this order:
//! 1. the services the Nexus sagas call: given by address, they must answer
//!    ([`ServiceAddrs::check_reachable`]);
//! 2. stranded sagas: without reachable services of its own, the engine must not resume a Nexus saga, and the
//!    command fails, changing nothing ([`refuse_stranding`]; the dry runs of `sagas retry-unwind` and `sagas
//!    adopt` call it alone, to refuse as the real command would);
//! 3. the builder, with every saga of [`registry`] registered ([`engine_builder`]; `sagas adopt --dry-run`
//!    asks an unstarted one which sagas it could run);
//! 4. the start, which recovers this executor's unfinished sagas.
//!
//! The rest is the toolbox the commands share: [`open`] (executor and migrated database of a command that
//! drives sagas), [`read_only`] (a connection for a command that only reads), [`retrying`] (the CLI's own
//! database work, retried through transient failures).

use crate::cli::{Global, ServiceArgs};
use crate::registry::{self, ServiceAddrs};
use anyhow::{Context, bail};
use ratchet_embedded_pg::{Cluster, ClusterStatus};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, RecoveryReport};
use ratchet_sagas::NexusApp;
use ratchet_store::{create_database_if_missing, database_exists, establish, run_migrations};
use ratchet_template_db::DatabaseServer;
use std::sync::Arc;
use uuid::Uuid;

/// The database the embedded cluster's commands use.
pub(crate) const DATABASE: &str = "ratchet";

/// What creates the saga log's tables, for the refusals of the commands that only read.
pub(crate) const SCHEMA_CREATED_BY: &str = "The saga log's tables are created by any command that starts the \
     engine, e.g. `ratchet recover` (on a --database-url, with --sec-id UUID), `ratchet demo` or `ratchet run`";

pub(crate) fn cluster(global: &Global) -> anyhow::Result<Cluster> {
    Ok(Cluster::new(&global.data_dir)?)
}

pub(crate) async fn cluster_status(cluster: &Cluster) -> anyhow::Result<ClusterStatus> {
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
    Ok(database_exists(&cluster.url("postgres"), DATABASE).await?)
}

/// Starts the embedded cluster and makes sure its `ratchet` database exists. Returns that database's URL.
pub(crate) async fn start_embedded(cluster: &Cluster) -> anyhow::Result<String> {
    start_cluster(cluster).await?;
    create_database_if_missing(&cluster.url("postgres"), DATABASE).await?;
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
/// log (`ratchet_store::missing_schema`), naming what creates them.
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
    let mut conn = establish(&url).await?;
    let missing = ratchet_store::missing_schema(&mut conn)
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

/// For a command that drives sagas: this executor (refusing, before anything, on a `--database-url` without
/// an id), and its database's URL with every migration applied.
pub(crate) async fn open(global: &Global, command: &str) -> anyhow::Result<(String, Executor)> {
    let executor = executor(global, command, true)?;
    let url = database_url(global).await?;
    prepare_database(&url).await?;
    Ok((url, executor))
}

/// Applies the saga log's migrations and those of every registered saga's tables.
pub(crate) async fn prepare_database(url: &str) -> anyhow::Result<()> {
    retrying("applying the saga log's migrations", || async {
        Ok(run_migrations(url, &ratchet_store::SAGA_LOG_MIGRATIONS).await?)
    })
    .await?;
    for migrations in registry::saga_migrations() {
        retrying("applying the sagas' migrations", || async {
            Ok(run_migrations(url, migrations).await?)
        })
        .await?;
    }
    Ok(())
}

/// The unfinished sagas (running or unwinding) executor `sec` owns.
pub(crate) async fn unfinished_of(url: &str, sec: Uuid) -> anyhow::Result<usize> {
    retrying("counting the executor's unfinished sagas", || async {
        let mut conn = establish(url).await?;
        Ok(ratchet_store::list_unfinished(&mut conn, sec, 1000)
            .await?
            .len())
    })
    .await
}

/// What an engine's start must not strand, besides this executor's own unfinished sagas.
pub(crate) enum AlsoUnstranded {
    Nothing,
    /// Another executor's unfinished sagas (`sagas adopt --from`).
    Executor(Uuid),
    /// One saga (`sagas retry-unwind`).
    Saga(Uuid),
}

/// The services the Nexus sagas of an engine call, if it has them.
pub(crate) enum NexusServices {
    /// None: the Nexus sagas are not registered, and the engine must not resume one (see [`registry`]).
    Absent,
    /// Running elsewhere, at `--sled-agent ADDR --pantry ADDR` (`ratchet sim`).
    At(ServiceAddrs),
    /// Started in this process (`ratchet run` without addresses): new and empty, so not the services an
    /// earlier process's sagas called.
    InProcess(Arc<NexusApp>),
}

impl NexusServices {
    /// `--sled-agent ADDR --pantry ADDR`, or none.
    pub fn from_args(args: &ServiceArgs) -> NexusServices {
        match ServiceAddrs::from_args(args) {
            Some(addrs) => NexusServices::At(addrs),
            None => NexusServices::Absent,
        }
    }

    /// The Nexus sagas' context, with clients of these services.
    pub fn app(&self) -> Option<Arc<NexusApp>> {
        match self {
            NexusServices::Absent => None,
            NexusServices::At(addrs) => Some(addrs.app()),
            NexusServices::InProcess(app) => Some(Arc::clone(app)),
        }
    }
}

/// Fails, naming the missing options and changing nothing, if an engine of `executor` with `services` would
/// have to resume a Nexus saga it cannot run against the services that saga called: its own unfinished ones,
/// and those of `also` (see [`registry::refuse_stranded_nexus_sagas`]). Services given by address are the
/// ones to resume against: nothing is refused then.
pub(crate) async fn refuse_stranding(
    conn: &mut ratchet_store::DbConnection,
    executor: Uuid,
    services: &NexusServices,
    command: &str,
    also: &AlsoUnstranded,
) -> anyhow::Result<()> {
    let in_process = match services {
        NexusServices::At(_) => return Ok(()),
        NexusServices::Absent => false,
        NexusServices::InProcess(_) => true,
    };
    let (executors, sagas) = match also {
        AlsoUnstranded::Nothing => (vec![executor], vec![]),
        AlsoUnstranded::Executor(other) => (vec![executor, *other], vec![]),
        AlsoUnstranded::Saga(id) => (vec![executor], vec![*id]),
    };
    registry::refuse_stranded_nexus_sagas(conn, &executors, &sagas, command, in_process).await
}

/// An engine builder for `executor` on `url`, with every saga of [`registry`] registered (the Nexus sagas
/// when there are `services`), its configuration adjusted by `configure`.
pub(crate) fn engine_builder(
    url: &str,
    executor: Uuid,
    services: &NexusServices,
    configure: impl FnOnce(&mut EngineConfig),
) -> EngineBuilder {
    let mut config = EngineConfig::new(url, executor);
    configure(&mut config);
    registry::engine_builder(config, services.app().as_ref())
}

/// The one way a command starts an engine (see the module docs): checks the services, refuses before writing
/// anything if it would strand a Nexus saga, builds the engine with every saga registered, and starts it,
/// which recovers this executor's unfinished sagas. `command` names the command in a refusal.
pub(crate) async fn start_engine(
    url: &str,
    executor: &Executor,
    services: &NexusServices,
    command: &str,
    also: AlsoUnstranded,
    configure: impl FnOnce(&mut EngineConfig),
) -> anyhow::Result<(Engine, RecoveryReport)> {
    if let NexusServices::At(addrs) = services {
        addrs.check_reachable().await?;
    }
    // TODO-robustness A saga created after this check by another process with this executor id (or, for an
    // adoption, by the live source executor) would still be abandoned by the recovery below; running two
    // processes as one executor is already unsupported.
    let mut conn = retrying("connecting to the database", || async {
        Ok(establish(url).await?)
    })
    .await?;
    refuse_stranding(&mut conn, executor.id, services, command, &also).await?;
    drop(conn);
    Ok(engine_builder(url, executor.id, services, configure)
        .start()
        .await?)
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
