//! Launching DBOS with the chain registered, and running workflows on it.
//!
//! Every workflow is started with a fresh UUID as its workflow id (DBOS's idempotency key, and
//! the chain's saga id) and timed from the call to `run` until it returns, which is after DBOS has
//! recorded the workflow's outcome (`SUCCESS`) in `dbos.workflow_status`: start to durable
//! completion. `concurrency` tasks each take the next workflow as soon as their last one is done,
//! so exactly that many are in flight until the tail.

use crate::chain::{self, ChainWorkflow};
use dbos::{Config, DBOS, RunOptions};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The smallest pool DBOS is given: its own default.
const DBOS_DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How to launch DBOS for the benchmark.
#[derive(Debug, Clone)]
pub struct DbosSetup {
    /// The target database, for the application's pool (the steps' own transactions).
    pub database_url: String,
    /// The same database as DBOS connects to it (possibly with a different isolation level).
    pub dbos_url: String,
    /// Workflows in flight at once: sizes both pools.
    pub concurrency: u32,
}

impl DbosSetup {
    fn config(&self) -> Config {
        Config {
            app_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            // DBOS's default pool, grown when more workflows are in flight than it could serve
            // (each running workflow uses one connection at a time for its checkpoints, and the
            // background polling needs one or two).
            max_connections: DBOS_DEFAULT_MAX_CONNECTIONS.max(self.concurrency + 2),
            ..Config::new("dbos-peer", self.dbos_url.clone())
        }
    }
}

/// A launched DBOS instance with the chain registered, and the application pool its steps use.
pub struct Running {
    dbos: DBOS,
    pub workflow: ChainWorkflow,
    pool: PgPool,
}

/// Opens the application pool, registers the chain and launches DBOS (which migrates its system
/// schema in the target database if needed).
pub async fn launch(setup: &DbosSetup) -> anyhow::Result<Running> {
    let pool = PgPoolOptions::new()
        .max_connections(setup.concurrency)
        .connect(&setup.database_url)
        .await?;
    let dbos = DBOS::new(setup.config());
    let workflow = chain::register(&dbos, pool.clone())?;
    dbos.launch().await?;
    Ok(Running {
        dbos,
        workflow,
        pool,
    })
}

impl Running {
    /// Shuts DBOS down and closes every connection this instance opened.
    pub async fn shutdown(self) {
        let Running {
            dbos,
            workflow,
            pool,
        } = self;
        dbos.shutdown().await;
        // The workflow reference holds the instance too; both go before the pool closes.
        drop(workflow);
        drop(dbos);
        pool.close().await;
    }

    /// The application pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Runs one workflow under a fresh id; returns the id and how long it took to complete durably.
pub async fn run_one(workflow: &ChainWorkflow) -> anyhow::Result<(String, Duration)> {
    let id = Uuid::new_v4().to_string();
    let started = Instant::now();
    workflow
        .run_with(
            (),
            RunOptions {
                workflow_id: Some(&id),
                ..RunOptions::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("workflow {id} failed: {e}"))?;
    Ok((id, started.elapsed()))
}

/// What a batch of workflows produced.
pub struct Batch {
    /// Each workflow's id and latency, in completion order.
    pub workflows: Vec<(String, Duration)>,
    /// From the first start to the last completion.
    pub wall: Duration,
}

/// Runs `count` workflows with `concurrency` in flight at once.
pub async fn run_many(
    workflow: &ChainWorkflow,
    count: u32,
    concurrency: u32,
) -> anyhow::Result<Batch> {
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let workflow = workflow.clone();
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut done = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                done.push(run_one(&workflow).await?);
            }
            anyhow::Ok(done)
        });
    }
    let mut workflows = Vec::with_capacity(count as usize);
    while let Some(joined) = tasks.join_next().await {
        workflows.extend(joined??);
    }
    Ok(Batch {
        workflows,
        wall: started.elapsed(),
    })
}
