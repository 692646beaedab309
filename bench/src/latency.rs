//! Section 2: latency and throughput, side by side.
//!
//! One cell is (implementation, workload, concurrency): a fresh database with a seeded world, the executor
//! started, `warmup` sagas run and thrown away, then `count` sagas run `concurrency` at a time. A saga's
//! latency is from asking the executor to create it to its coming to rest; throughput is `count` over the
//! wall time of the timed part. The cell's commits per saga (durable commits and `xact_commit` over the
//! whole cell, start-up and warm-up included, divided by every saga it ran) are there to set beside the DBOS
//! peer's.
//! The two cells of one concurrency are live together (each on its own database, each warmed up), and their
//! timed sagas run in rounds, the implementations taking turns, never at the same time: a change in the
//! machine's load during the pair (other jobs on a shared machine) then weighs on both alike. Throughput is
//! over the sum of a cell's rounds.

use crate::executor::{Executor, Implementation, Workload};
use crate::measure::{next_xid, quantile_us, settled_commits};
use crate::{Bench, BenchError};
use futures::StreamExt;
use serde::Serialize;
use std::time::{Duration, Instant};

/// One cell's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyCell {
    pub implementation: Implementation,
    pub workload: String,
    pub concurrency: usize,
    pub sagas: usize,
    /// Timed sagas that did not succeed (a node spent its retries on serialization failures and the saga
    /// unwound): counted in the latencies, as time to rest.
    pub unwound: usize,
    pub warmup: usize,
    pub wall_ms: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub sagas_per_sec: f64,
    /// Durable commits (transactions that wrote) over every saga the cell ran (start-up included).
    pub commits_per_saga: f64,
    /// `xact_commit` of the cell's database, likewise.
    pub xact_commit_per_saga: f64,
}

/// ratchet against plain steno at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPair {
    pub workload: String,
    pub concurrency: usize,
    pub ratchet: LatencyCell,
    pub plain_steno: LatencyCell,
    /// ratchet's median latency over plain steno's (target at concurrency 1: ≤ 1.0).
    pub median_ratio: f64,
    pub p99_ratio: f64,
    /// ratchet's throughput over plain steno's (target at concurrency 32: ≥ 1.2).
    pub throughput_ratio: f64,
}

pub(crate) async fn pair(
    bench: &Bench<'_>,
    workload: Workload,
    concurrency: usize,
    count: usize,
) -> Result<LatencyPair, BenchError> {
    let mut ratchet =
        LiveCell::start(bench, Implementation::Ratchet, workload, concurrency).await?;
    let mut plain =
        LiveCell::start(bench, Implementation::PlainSteno, workload, concurrency).await?;
    // The timed sagas in rounds, the two implementations taking turns (and turns going first), so that a
    // change in the machine's load during the pair weighs on both alike. Each round runs at least three
    // sagas per concurrent slot, so that the ramp up and down at its ends stays a small part of it.
    let rounds = (count / (3 * concurrency.max(1))).clamp(1, MAX_ROUNDS);
    for round in 0..rounds {
        let share = count / rounds + usize::from(round < count % rounds);
        let (first, second) = if round % 2 == 0 {
            (&mut ratchet, &mut plain)
        } else {
            (&mut plain, &mut ratchet)
        };
        first.timed(bench, share).await?;
        second.timed(bench, share).await?;
    }
    let ratchet = ratchet.finish(bench).await?;
    let plain = plain.finish(bench).await?;
    Ok(LatencyPair {
        workload: workload.label(),
        concurrency,
        median_ratio: ratchet.median_us / plain.median_us,
        p99_ratio: ratchet.p99_us / plain.p99_us,
        throughput_ratio: ratchet.sagas_per_sec / plain.sagas_per_sec,
        ratchet,
        plain_steno: plain,
    })
}

/// The most rounds a pair's timed sagas are split into.
const MAX_ROUNDS: usize = 4;

/// One implementation's cell while it runs: its database and executor, and what it has measured so far.
struct LiveCell {
    implementation: Implementation,
    workload: Workload,
    concurrency: usize,
    db: ratchet_template_db::TestDatabase,
    world: ratchet_sagas::World,
    executor: Executor,
    before: crate::measure::Commits,
    warmup: usize,
    latencies: Vec<Duration>,
    unwound: usize,
    timed: Duration,
    /// Transaction ids this cell used: the server's counter is shared, so it is read around each of this
    /// cell's phases (the other cell is idle meanwhile).
    xids: i64,
}

impl LiveCell {
    /// A fresh database with a seeded world, the executor started and warmed up.
    async fn start(
        bench: &Bench<'_>,
        implementation: Implementation,
        workload: Workload,
        concurrency: usize,
    ) -> Result<LiveCell, BenchError> {
        let xid = next_xid(bench.server).await?;
        let (db, world, before, executor) = bench.start_on_fresh_world(implementation).await?;
        // A full run warms at least one saga per concurrent slot (every pool connection opened and its
        // statements prepared); a quick run only a few.
        let warmup = if bench.options.quick {
            bench.options.warmup
        } else {
            bench.options.warmup.max(concurrency)
        };
        run_many(&executor, workload, &world, "warm", warmup, concurrency).await?;
        Ok(LiveCell {
            implementation,
            workload,
            concurrency,
            db,
            world,
            executor,
            before,
            warmup,
            latencies: Vec::new(),
            unwound: 0,
            timed: Duration::ZERO,
            xids: next_xid(bench.server).await? - xid,
        })
    }

    /// Runs `count` timed sagas.
    async fn timed(&mut self, bench: &Bench<'_>, count: usize) -> Result<(), BenchError> {
        let xid = next_xid(bench.server).await?;
        let started = Instant::now();
        let tag = format!("timed{}", self.latencies.len());
        let (latencies, unwound) = run_many(
            &self.executor,
            self.workload,
            &self.world,
            &tag,
            count,
            self.concurrency,
        )
        .await?;
        self.timed += started.elapsed();
        self.latencies.extend(latencies);
        self.unwound += unwound;
        self.xids += next_xid(bench.server).await? - xid;
        Ok(())
    }

    /// Stops the executor, reads the counters, drops the database.
    async fn finish(self, bench: &Bench<'_>) -> Result<LatencyCell, BenchError> {
        let LiveCell {
            implementation,
            workload,
            concurrency,
            db,
            executor,
            before,
            warmup,
            mut latencies,
            unwound,
            timed,
            mut xids,
            ..
        } = self;
        let xid = next_xid(bench.server).await?;
        executor.stop().await;
        xids += next_xid(bench.server).await? - xid;
        let after = settled_commits(bench.server, &db.name).await?;
        bench.drop_database(&db).await;
        let count = latencies.len();
        let ran = (warmup + count) as f64;
        let cell = LatencyCell {
            implementation,
            workload: workload.label(),
            concurrency,
            sagas: count,
            unwound,
            warmup,
            wall_ms: timed.as_secs_f64() * 1e3,
            median_us: quantile_us(&mut latencies, 0.5),
            p99_us: quantile_us(&mut latencies, 0.99),
            sagas_per_sec: count as f64 / timed.as_secs_f64(),
            commits_per_saga: xids as f64 / ran,
            xact_commit_per_saga: (after - before).xact_commit as f64 / ran,
        };
        bench.say(&format!(
            "  {} / {} / concurrency {concurrency}: median {:.0} us, p99 {:.0} us, {:.1} sagas/s, {} unwound",
            implementation.label(),
            cell.workload,
            cell.median_us,
            cell.p99_us,
            cell.sagas_per_sec,
            cell.unwound
        ));
        Ok(cell)
    }
}

/// Runs `count` sagas, `concurrency` at a time; returns each one's latency (to rest) and how many did not
/// succeed. Any other failure ends the run.
async fn run_many(
    executor: &Executor,
    workload: Workload,
    world: &ratchet_sagas::World,
    tag: &str,
    count: usize,
    concurrency: usize,
) -> Result<(Vec<Duration>, usize), BenchError> {
    let mut runs = futures::stream::iter(0..count)
        .map(|i| async move {
            let started = Instant::now();
            let result = executor.run(workload, world, &format!("{tag}-{i}")).await;
            (started.elapsed(), result)
        })
        .buffer_unordered(concurrency.max(1));
    let mut latencies = Vec::with_capacity(count);
    let mut unwound = 0;
    while let Some((latency, result)) = runs.next().await {
        match result {
            Ok(()) => {}
            Err(BenchError::SagaFailed { outcome, .. }) => {
                tracing::warn!(%outcome, "a saga under load did not succeed");
                unwound += 1;
            }
            Err(error) => return Err(error),
        }
        latencies.push(latency);
    }
    Ok((latencies, unwound))
}
