//! Section 1: durable commits (and statements) per saga, per node.
//!
//! For each implementation and workload, three runs, each on a fresh database of its own with the world
//! already seeded: the executor started and stopped with 0, 1 and 2 sagas run one after the other. Each run's
//! counters are read settled before and after ([`settled_commits`]: durable commits, `xact_commit`), so
//! start-up and shutdown are counted alike in all three; a saga's cost is `run(1) - run(0)`, and whether
//! `run(2) - run(0) = 2 × (run(1) - run(0))` for durable commits is reported (`deterministic`: it fails
//! only when a transaction was retried, e.g. after a serialization failure between parallel nodes).

use crate::executor::{Implementation, Workload};
use crate::measure::{Commits, queries, settled_commits};
use crate::{Bench, BenchError};
use serde::Serialize;

/// The commits of one saga of one workload, both implementations and the floor.
#[derive(Clone, Debug, Serialize)]
pub struct CommitRow {
    pub workload: String,
    /// Nodes that commit something: the floor is one durable commit each.
    pub committing_nodes: usize,
    pub plain_steno: SagaCost,
    pub ratchet: SagaCost,
    /// Durable commits per saga at the floor (one per committing node).
    pub floor: f64,
    /// plain steno's commits over ratchet's.
    pub plain_over_ratchet: f64,
    /// ratchet's commits over the floor.
    pub ratchet_over_floor: f64,
}

/// What one saga cost one implementation.
#[derive(Clone, Debug, Serialize)]
pub struct SagaCost {
    /// Transactions that wrote (each one commit record, one fsync) per saga.
    pub commits: i64,
    pub commits_per_node: f64,
    /// `pg_stat_database.xact_commit` per saga (read-only and prepare-only transactions included).
    pub xact_commit: i64,
    /// Statements sent per saga (`BEGIN` and `COMMIT` included).
    pub statements: u64,
    /// Whether two sagas cost exactly twice one durable commits.
    pub deterministic: bool,
}

pub(crate) async fn measure(
    bench: &Bench<'_>,
    workload: Workload,
) -> Result<CommitRow, BenchError> {
    let plain = saga_cost(bench, Implementation::PlainSteno, workload).await?;
    let ratchet = saga_cost(bench, Implementation::Ratchet, workload).await?;
    let nodes = workload.committing_nodes();
    Ok(CommitRow {
        workload: workload.label(),
        committing_nodes: nodes,
        floor: nodes as f64,
        plain_over_ratchet: plain.commits as f64 / ratchet.commits as f64,
        ratchet_over_floor: ratchet.commits as f64 / nodes as f64,
        plain_steno: plain,
        ratchet,
    })
}

async fn saga_cost(
    bench: &Bench<'_>,
    implementation: Implementation,
    workload: Workload,
) -> Result<SagaCost, BenchError> {
    let zero = run_alone(bench, implementation, workload, 0).await?;
    let one = run_alone(bench, implementation, workload, 1).await?;
    let two = run_alone(bench, implementation, workload, 2).await?;
    let saga = one.0 - zero.0;
    let commits = saga.next_xid;
    let statements = one.1 - zero.1;
    let deterministic = (two.0 - zero.0).next_xid == 2 * commits;
    bench.say(&format!(
        "  {} / {}: {commits} durable commits, {} xact_commit, {statements} statements per saga{}",
        implementation.label(),
        workload.label(),
        saga.xact_commit,
        if deterministic {
            ""
        } else {
            " (2 sagas cost other than twice 1: a retried transaction)"
        }
    ));
    Ok(SagaCost {
        commits,
        commits_per_node: commits as f64 / workload.committing_nodes() as f64,
        xact_commit: saga.xact_commit,
        statements,
        deterministic,
    })
}

/// Runs `count` sagas alone on a fresh database, the executor started and stopped inside the measurement.
/// Returns (the counters' growth, statements).
async fn run_alone(
    bench: &Bench<'_>,
    implementation: Implementation,
    workload: Workload,
    count: usize,
) -> Result<(Commits, u64), BenchError> {
    let (db, world, before, executor) = bench.start_on_fresh_world(implementation).await?;
    let queries_before = queries();
    for i in 0..count {
        executor
            .run(workload, &world, &format!("commits-{i}"))
            .await?;
    }
    executor.stop().await;
    let statements = queries() - queries_before;
    let after = settled_commits(bench.server, &db.name).await?;
    bench.drop_database(&db).await;
    Ok((after - before, statements))
}
