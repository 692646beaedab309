//! What the benchmark measures with: durable commits (`pg_stat_database.xact_commit`), queries (diesel's
//! instrumentation), and latency percentiles.
//!
//! # Commits
//!
//! Two counters, both read by [`settled_commits`]:
//! - **durable commits**: transactions that wrote, i.e. were assigned a transaction id (only those write a
//!   commit record and wait for its fsync). Read as the growth of the server's next transaction id
//!   (`pg_snapshot_xmax(pg_current_snapshot())`, which does not itself take an id). It is server-wide, so the
//!   measured work must run alone on the server (the bench's own embedded cluster does); it is exact and
//!   deterministic.
//! - **`xact_commit`** of the measured database, as the issue asks. It also counts transactions that wrote
//!   nothing: every statement sent outside a transaction, and every *prepare* of a statement (the extended
//!   protocol's Parse … Sync is an implicit transaction), which diesel-async does once per distinct statement
//!   per connection. How many connections a run opens, and which statements each first sees, varies, so
//!   this counter is not deterministic; it is reported beside the first.
//!
//! PostgreSQL counts a database's committed transactions in `pg_stat_database.xact_commit`, but each backend
//! keeps its counts in memory and flushes them when it goes idle (at most once a second) or when it exits. A
//! reading is only exact once every backend that ran the measured work has flushed. [`settled_commits`] makes
//! sure of it: it terminates every backend connected to the measured database (a backend flushes its counts
//! as it exits, before it leaves `pg_stat_activity`), waits until none is left, drops its own stats snapshot
//! (`pg_stat_clear_snapshot()`), and reads the counter from a connection to *another* database, so that the
//! reading itself is not counted. The measured work therefore runs alone on a database of its own, and its
//! executor is started and stopped inside the measurement; the start-up cost is measured the same way with no
//! saga and subtracted (see `commits.rs`).
//!
//! # Queries
//!
//! Every connection this process opens gets a [`QueryCounter`] (diesel's default instrumentation): it counts
//! each statement sent (`BEGIN` and `COMMIT` included). While [`classify`] is on, it also counts separately
//! the statements that load saga logs for recovery, recognised by their SQL.

use crate::BenchError;
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::sql_types::{BigInt, Text};
use ratchet_store::establish;
use ratchet_template_db::DatabaseServer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static QUERIES: AtomicU64 = AtomicU64::new(0);
static RECOVERY_QUERIES: AtomicU64 = AtomicU64::new(0);
static CLASSIFY: AtomicBool = AtomicBool::new(false);

/// Counts the statements of one connection into the process-wide counters.
struct QueryCounter;

impl Instrumentation for QueryCounter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            QUERIES.fetch_add(1, Ordering::Relaxed);
            if CLASSIFY.load(Ordering::Relaxed) && is_recovery_load(&query.to_string()) {
                RECOVERY_QUERIES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether `sql` is one of recovery's loading queries: the page of unfinished sagas of an executor, or the
/// logs of many sagas at once (`saga_id = ANY(...)`). A single saga's own statements never match.
fn is_recovery_load(sql: &str) -> bool {
    // The ownership check reads the same row by the same columns, but never orders.
    let lists_unfinished = sql.contains("FROM \"saga\"")
        && sql.contains("\"current_sec\" =")
        && sql.contains("ORDER BY");
    let loads_logs = sql.contains("FROM \"saga_node_event\"") && sql.contains("= ANY(");
    lists_unfinished || loads_logs
}

/// Installs the query counter on every connection this process opens from now on. Idempotent.
pub fn install_query_counter() -> Result<(), BenchError> {
    diesel::connection::set_default_instrumentation(|| Some(Box::new(QueryCounter)))?;
    Ok(())
}

/// Statements sent so far by this process.
pub fn queries() -> u64 {
    QUERIES.load(Ordering::Relaxed)
}

/// Recovery loading statements counted while [`classify`] was on.
pub fn recovery_queries() -> u64 {
    RECOVERY_QUERIES.load(Ordering::Relaxed)
}

/// Turns the classification of recovery statements on or off (it formats every statement: off while timing).
pub fn classify(on: bool) {
    CLASSIFY.store(on, Ordering::Relaxed);
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// The two commit counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Commits {
    /// `pg_stat_database.xact_commit` of the measured database.
    pub xact_commit: i64,
    /// The server's next transaction id.
    pub next_xid: i64,
}

impl std::ops::Sub for Commits {
    type Output = Commits;

    fn sub(self, earlier: Commits) -> Commits {
        Commits {
            xact_commit: self.xact_commit - earlier.xact_commit,
            next_xid: self.next_xid - earlier.next_xid,
        }
    }
}

/// The counters of database `dbname`, once every backend connected to it has exited (and so flushed its
/// counts). Every connection to `dbname` is closed by this call.
pub async fn settled_commits(server: &DatabaseServer, dbname: &str) -> Result<Commits, BenchError> {
    // Here, not at the top: its `load` would shadow the atomics'.
    use diesel_async::RunQueryDsl;
    let mut admin = establish(&server.url("postgres")).await?;
    for _ in 0..500 {
        let left: Count = diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid)) AS count FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<Text, _>(dbname)
        .get_result(&mut admin)
        .await?;
        if left.count == 0 {
            diesel::sql_query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut admin)
                .await?;
            let commits: Count = diesel::sql_query(
                "SELECT xact_commit AS count FROM pg_stat_database WHERE datname = $1",
            )
            .bind::<Text, _>(dbname)
            .get_result(&mut admin)
            .await?;
            return Ok(Commits {
                xact_commit: commits.count,
                next_xid: next_xid_on(&mut admin).await?,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BenchError::Check(format!(
        "the backends connected to {dbname} did not exit within 5 s"
    )))
}

/// The server's next transaction id now (reading it takes none).
pub async fn next_xid(server: &DatabaseServer) -> Result<i64, BenchError> {
    let mut admin = establish(&server.url("postgres")).await?;
    next_xid_on(&mut admin).await
}

async fn next_xid_on(conn: &mut diesel_async::AsyncPgConnection) -> Result<i64, BenchError> {
    use diesel_async::RunQueryDsl;
    let next_xid: Count =
        diesel::sql_query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS count")
            .get_result(conn)
            .await?;
    Ok(next_xid.count)
}

/// The `q`-quantile (0..=1) of `samples` in microseconds, nearest rank; 0 for no samples.
pub fn quantile_us(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod test {
    use super::{is_recovery_load, quantile_us};
    use std::time::Duration;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(quantile_us(&mut samples, 0.5), 50.0);
        assert_eq!(quantile_us(&mut samples, 0.99), 99.0);
        assert_eq!(quantile_us(&mut samples, 1.0), 100.0);
        assert_eq!(quantile_us(&mut [], 0.5), 0.0);
    }

    #[test]
    fn recovery_loads_are_told_from_a_saga_own_statements() {
        assert!(is_recovery_load(
            "SELECT \"saga_node_event\".\"saga_id\" FROM \"saga_node_event\" WHERE (\"saga_node_event\".\"saga_id\" = ANY($1))"
        ));
        assert!(!is_recovery_load(
            "SELECT \"saga_node_event\".\"node_id\" FROM \"saga_node_event\" WHERE (\"saga_node_event\".\"saga_id\" = $1)"
        ));
        assert!(is_recovery_load(
            "SELECT \"saga\".\"id\" FROM \"saga\" WHERE ((\"saga\".\"current_sec\" = $1) AND (\"saga\".\"saga_state\" = ANY($2))) ORDER BY \"saga\".\"id\" LIMIT $3"
        ));
        assert!(!is_recovery_load(
            "SELECT \"saga\".\"id\" FROM \"saga\" WHERE ((\"saga\".\"id\" = $1) AND (\"saga\".\"current_sec\" = $2)) LIMIT $3 FOR SHARE"
        ));
    }
}
