//! `ratchet bench`: ratchet against plain steno, side by side on the same PostgreSQL, in one run.
//!
//! # What it measures
//!
//! 1. **Durable commits per node** (`commits.rs`): `pg_stat_database.xact_commit` around one saga run alone,
//!    for the 5-node chain and for instance-create with 4 disks, against (a) plain steno with an
//!    Omicron-style diesel store (`baseline_store.rs`: `started` and `succeeded` each their own statement,
//!    around the action's own transaction), (b) ratchet, (c) the floor of one commit per committing node.
//!    Deterministic: the report says whether two sagas cost exactly twice one.
//! 2. **Latency and throughput** (`latency.rs`): instance-create at concurrency 1, 8 and 32, and the chain at
//!    1 and 8; median and p99 over [`BenchOptions::sagas`] sagas per cell after a warm-up.
//! 3. **Recovery** (`recovery.rs`): the time for a new engine to resume 100, 1,000 and 10,000 unfinished
//!    sagas, and the statements it issues to load them.
//! 4. **The DBOS peer** (`peer.rs`), with [`BenchOptions::with_dbos`]: the same chain as a DBOS workflow.
//!
//! Timings are noisy on a shared machine: compare only the ratios the report takes within one run. Nothing
//! here asserts a timing; the run fails only when a saga does not succeed or a count is not what it must be.
//!
//! # What the baseline is
//!
//! `baseline_instance.rs` is instance-create as plain steno actions calling the same `ratchet_datastore`
//! functions as ratchet's nodes, each action in a transaction of its own (retried on serialization
//! failures), and `chain.rs` holds both chains. Both implementations get a pool of the same size on a fresh
//! database of the same server, and the same seeded world.
//!
//! # Choices
//!
//! - instance-create runs without `--start`: the start adds a sled reservation, one HTTP call to the
//!   simulated sled agent (an external node, whose `started` must be durable before the call, so ratchet
//!   saves nothing there) and a state change; the call's latency is the simulator's, not either engine's.
//!   The 4 disks are created by the saga (`create_disks`), so every saga does the same work.
//! - The server is the embedded one (`fsync = on`, `default_transaction_isolation = serializable`, as the
//!   tests run), unless a URL is given; the report records the server's settings.
//! - Each measurement gets a fresh database cloned from a migrated template, dropped afterwards.
//! - Both implementations retry a transaction that meets a serialization failure with the same policy
//!   (`forward_retry::FORWARD_RETRY`). Under load a node can still spend it and its saga unwinds: such sagas are
//!   counted per cell (`unwound`) and their time to rest stays in the latencies.
//! - Recovery already loads logs in batches (`ratchet_store::list_unfinished` pages of 1,000 sagas,
//!   `load_logs` 1,000 sagas per query); the bench counts those statements to show it.

mod baseline;
mod baseline_instance;
mod baseline_store;
pub mod chain;
mod commits;
mod error;
mod executor;
mod forward_retry;
mod latency;
mod measure;
mod peer;
mod recovery;
mod report;

pub use commits::{CommitRow, SagaCost};
pub use error::BenchError;
pub use executor::{Implementation, Workload};
pub use latency::{LatencyCell, LatencyPair};
pub use peer::{BUILD_PEER, PeerFigures, PeerRow, PeerSection};
pub use recovery::RecoveryRow;
pub use report::{BenchReport, Machine};

use ratchet_sagas::{NexusApp, Services, World, WorldSpec};
use ratchet_template_db::{DatabaseServer, TestDatabase};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// A smoke run: fewer sagas per cell, recovery of 100 and 1,000 only.
    pub quick: bool,
    /// Where to write the report as JSON (the caller writes it: see [`BenchReport::to_json`]).
    pub json: Option<PathBuf>,
    /// Also run the DBOS peer.
    pub with_dbos: bool,
    /// The peer's binary.
    pub dbos_peer: PathBuf,
    /// Timed sagas per latency cell.
    pub sagas: usize,
    /// Untimed sagas first, per cell (in a full run, at least the cell's concurrency).
    pub warmup: usize,
    /// Sizes of the recovery runs.
    pub recovery_sizes: Vec<usize>,
    /// Connections per executor's pool (the same for both).
    pub pool_size: u32,
}

impl BenchOptions {
    /// The full run (`quick = false`) or the smoke run.
    pub fn new(quick: bool) -> BenchOptions {
        BenchOptions {
            quick,
            json: None,
            with_dbos: false,
            dbos_peer: PathBuf::from("peers/dbos/target/release/dbos-peer"),
            sagas: if quick { 10 } else { 200 },
            warmup: if quick { 4 } else { 20 },
            recovery_sizes: if quick {
                vec![100, 1_000]
            } else {
                vec![100, 1_000, 10_000]
            },
            pool_size: ratchet_store::PoolConfig::default().max_size,
        }
    }

    fn check(&self) -> Result<(), BenchError> {
        if self.sagas == 0 {
            return Err(BenchError::Options(
                "sagas per cell must be at least 1".to_owned(),
            ));
        }
        if self.pool_size == 0 {
            return Err(BenchError::Options(
                "the pool needs at least 1 connection".to_owned(),
            ));
        }
        if let Some(size) = self.recovery_sizes.iter().find(|n| **n == 0) {
            return Err(BenchError::Options(format!("cannot recover {size} sagas")));
        }
        Ok(())
    }
}

/// The concurrencies of instance-create's latency cells.
pub const INSTANCE_CONCURRENCY: [usize; 3] = [1, 8, 32];
/// The concurrencies of the chain's cells (and the peer's).
pub const CHAIN_CONCURRENCY: [usize; 2] = [1, 8];
/// Disks per instance-create.
pub const DISKS: usize = 4;

/// One run's shared state.
pub(crate) struct Bench<'a> {
    pub(crate) server: &'a DatabaseServer,
    pub(crate) options: &'a BenchOptions,
    services: Services,
    progress: &'a (dyn Fn(&str) + Send + Sync),
}

impl Bench<'_> {
    pub(crate) fn say(&self, line: &str) {
        (self.progress)(line);
    }

    pub(crate) fn app(&self) -> Arc<NexusApp> {
        Arc::clone(&self.services.app)
    }

    /// A fresh database with the saga log, the datastore's and the chain's tables.
    pub(crate) async fn fresh_database(&self) -> Result<TestDatabase, BenchError> {
        Ok(self
            .server
            .fresh_database(&[&ratchet_sagas::DATASTORE_MIGRATIONS, &chain::MIGRATIONS])
            .await?)
    }

    /// A fresh database with a seeded world (its seeding connection closed).
    pub(crate) async fn fresh_world(&self) -> Result<(TestDatabase, World), BenchError> {
        let db = self.fresh_database().await?;
        let mut conn = ratchet_store::establish(&db.url).await?;
        let world = ratchet_sagas::seed_world(&mut conn, &WorldSpec::default()).await?;
        Ok((db, world))
    }

    /// A measurement's start: a fresh database with a seeded world, its counters read settled, then
    /// `implementation` started on it.
    pub(crate) async fn start_on_fresh_world(
        &self,
        implementation: Implementation,
    ) -> Result<(TestDatabase, World, measure::Commits, executor::Executor), BenchError> {
        let (db, world) = self.fresh_world().await?;
        let before = measure::settled_commits(self.server, &db.name).await?;
        let executor =
            executor::Executor::start(implementation, &db.url, self.options.pool_size, &self.app())
                .await?;
        Ok((db, world, before, executor))
    }

    /// Drops a database the bench made; a failure only costs disk space, so it is logged, not fatal.
    pub(crate) async fn drop_database(&self, db: &TestDatabase) {
        if let Err(error) = self.server.drop_database(db).await {
            tracing::warn!(%error, database = %db.name, "could not drop a bench database");
        }
    }
}

/// Runs the whole benchmark on `server`, reporting progress lines through `progress`.
pub async fn run(
    server: &DatabaseServer,
    options: &BenchOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<BenchReport, BenchError> {
    options.check()?;
    measure::install_query_counter()?;
    let services = Services::start().map_err(|e| BenchError::Services(e.to_string()))?;
    let bench = Bench {
        server,
        options,
        services,
        progress,
    };
    let started = Instant::now();
    let machine = report::machine(&bench).await?;

    bench.say("1/4 durable commits per saga (each saga alone on a fresh database)");
    let mut commits = Vec::new();
    for workload in [Workload::Chain, Workload::InstanceCreate { disks: DISKS }] {
        commits.push(commits::measure(&bench, workload).await?);
    }

    bench.say(&format!(
        "2/4 latency and throughput ({} sagas per cell after a warm-up)",
        options.sagas
    ));
    let mut instance_create = Vec::new();
    for concurrency in INSTANCE_CONCURRENCY {
        instance_create.push(
            latency::pair(
                &bench,
                Workload::InstanceCreate { disks: DISKS },
                concurrency,
                options.sagas,
            )
            .await?,
        );
    }
    let mut chain = Vec::new();
    for concurrency in CHAIN_CONCURRENCY {
        chain.push(latency::pair(&bench, Workload::Chain, concurrency, options.sagas).await?);
    }

    bench.say("3/4 recovery");
    let mut recovery = Vec::new();
    for &sagas in &options.recovery_sizes {
        recovery.push(recovery::measure(&bench, sagas).await?);
    }

    let peer = if options.with_dbos {
        bench.say("4/4 the DBOS peer");
        peer::measure(&bench, &options.dbos_peer, &chain).await?
    } else {
        bench.say("4/4 the DBOS peer: not requested (--with-dbos)");
        peer::not_requested()
    };

    Ok(BenchReport {
        machine,
        quick: options.quick,
        sagas_per_cell: options.sagas,
        pool_size: options.pool_size,
        commits,
        instance_create,
        chain,
        recovery,
        peer,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}
