//! Durable commits per workflow: `pg_stat_database.xact_commit` around workflows run alone.
//!
//! # Why not simply "read, run one workflow, read"
//!
//! `xact_commit` is updated when a backend *flushes* its pending statistics, not when it commits.
//! A backend flushes on its own schedule: when it goes idle and its last flush is at least a second
//! old, otherwise up to ten seconds later; `pg_stat_force_next_flush()` only reaches the backend
//! that calls it; and every backend flushes as it exits. DBOS keeps a pool of connections (plus a
//! `LISTEN` connection) and polls the system database in the background about once a second (the
//! queue supervisor and the internal queue's worker), so a reading taken while it runs misses
//! some of its counts and includes some of its background work.
//!
//! # What this does instead (the scheme of ratchet's `bench/src/commits.rs`, made steady)
//!
//! A *bracket* of `k` workflows:
//! 1. a settled reading of the target database's `xact_commit` (see [`Monitor::settled`]);
//! 2. a fresh DBOS instance and application pool are launched, `k` workflows are run one after the
//!    other (each alone: nothing else is in flight), and the instance is held for a fixed time
//!    from launch (the same in every bracket, half-way between DBOS's one-second background
//!    ticks, so every bracket sees the same background polls), then shut down and every
//!    connection closed;
//! 3. a settled reading again.
//!
//! Brackets of 0, K, 2K and 3K workflows are run (K = [`PROBE_BATCH`]). One workflow costs
//! `(bracket(3K) - bracket(K)) / 2K`: the K workflows that open each bracket are left out, because
//! a workflow on fresh connections costs more than one on warm connections. sqlx prepares each
//! statement once per connection, and PostgreSQL counts the implicit transaction of each
//! `Parse`/`Sync` as a commit, as it counts each new session's start-up transaction. How many
//! connections a bracket opens depends on how DBOS's background tasks happen to interleave with
//! the workflows in its pool (4 to 6 sessions were seen), so the first workflows' cost varies from
//! run to run (measured 32 to 37 commits for a lone first workflow); a warm workflow's varies by a
//! few tenths at most, and is what every workflow but the first few of a running application
//! costs. `bracket(K) - bracket(0)` is logged too, as the cold figure, and the probe reports
//! whether the second and third K cost exactly the same.
//!
//! Autovacuum is the one other source of counts: its workers are backends of the target database
//! and their `VACUUM`/`ANALYZE` transactions count. The probe runs `VACUUM ANALYZE` first, so that
//! nothing the timed run wrote leaves a table due, and runs a bracket again (up to
//! [`BRACKET_ATTEMPTS`] times) when `pg_stat_all_tables` says autovacuum worked inside it.
//!
//! A settled reading waits until no backend is connected to the target database (each flushed its
//! counts as it exited), drops the monitor's statistics snapshot (`pg_stat_clear_snapshot()`),
//! and reads from a connection to *another* database on the same server (`postgres` by default),
//! so that the monitor's own statements are not counted. It reads twice, 50 ms apart, until both
//! agree, in case the last backend left `pg_stat_activity` just before its exit-time flush.
//!
//! DBOS's system schema (`dbos`) lives in the target database itself (the crate's default: the
//! system database is the one its URL names), so the one database's counter is the whole cost.
//!
//! Beside `xact_commit` (every committed transaction, read-only ones included), the probe reads
//! the server's next transaction id (`pg_snapshot_xmax(pg_current_snapshot())`), which only
//! advances for transactions that wrote something: the *write* transactions, each of which waits
//! for a WAL flush at commit. That counter is server-wide, so it is only meaningful on a server
//! nobody else writes to; it is logged, not part of the JSON line.

use crate::driver::{self, DbosSetup};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// K: the workflows a bracket adds over the previous one.
pub const PROBE_BATCH: u32 = 10;

/// How long a settled reading waits for the target database's backends to exit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Counters read at one settled moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// The target database's `xact_commit`.
    xact_commit: i64,
    /// The server's next transaction id.
    next_xid: i64,
    /// The target database's `sessions` (connections ever established).
    sessions: i64,
}

/// What one workflow cost, alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkflowCost {
    /// `xact_commit` per workflow on warm connections: `(bracket(3K) - bracket(K)) / 2K`.
    pub xact_commits: f64,
    /// Write transactions per workflow (server-wide transaction ids consumed), the same way.
    pub write_xacts: f64,
    /// `xact_commit` per workflow of the first K on a fresh instance: `bracket(K) - bracket(0)`.
    pub cold_xact_commits: f64,
    /// Whether the third K workflows cost exactly what the second K did (all counters).
    pub deterministic: bool,
    /// The fixed cost of a bracket with no workflow: launch, background polling and shutdown.
    pub launch_and_shutdown_commits: i64,
}

/// A connection to another database on the target's server, from which the target is watched.
pub struct Monitor {
    conn: PgConnection,
    target: String,
}

impl Monitor {
    /// Connects to `monitor_database` on the server `database_url` names, to watch `target`.
    pub async fn connect(
        database_url: &str,
        monitor_database: &str,
        target: &str,
    ) -> anyhow::Result<Monitor> {
        if monitor_database == target {
            anyhow::bail!(
                "the commit probe must watch from another database than the target `{target}` \
                 (--monitor-database)"
            );
        }
        let options = PgConnectOptions::from_str(database_url)?.database(monitor_database);
        let conn = options.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "the commit probe could not connect to database `{monitor_database}` on the \
                 target's server (choose another with --monitor-database): {e}"
            )
        })?;
        Ok(Monitor {
            conn,
            target: target.to_owned(),
        })
    }

    /// The counters once no backend is connected to the target database and every count has
    /// been flushed.
    async fn settled(&mut self) -> anyhow::Result<Reading> {
        let started = Instant::now();
        loop {
            let connected: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&self.target)
                    .fetch_one(&mut self.conn)
                    .await?;
            if connected == 0 {
                break;
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                anyhow::bail!(
                    "{connected} backend(s) still connected to `{}` after {SETTLE_TIMEOUT:?}: the \
                     commit probe needs the target database to itself",
                    self.target
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut last = self.read().await?;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.read().await?;
            if now.xact_commit == last.xact_commit {
                return Ok(now);
            }
            last = now;
        }
        anyhow::bail!(
            "`xact_commit` of `{}` kept moving with no backend connected",
            self.target
        )
    }

    async fn read(&mut self) -> anyhow::Result<Reading> {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await?;
        let (xact_commit, sessions): (i64, i64) =
            sqlx::query_as("SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = $1")
                .bind(&self.target)
                .fetch_one(&mut self.conn)
                .await?;
        let next_xid: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8")
                .fetch_one(&mut self.conn)
                .await?;
        Ok(Reading {
            xact_commit,
            next_xid,
            sessions,
        })
    }

    /// Closes the monitor's connection.
    pub async fn close(self) -> anyhow::Result<()> {
        self.conn.close().await?;
        Ok(())
    }
}

/// Measures what one workflow costs alone: brackets of 3K, 2K, K and 0 workflows.
///
/// The largest bracket runs first and sets the hold every bracket uses ([`hold_after`] of twice
/// its workflows' time, so that a slower moment of a shared machine still fits). A bracket whose
/// workflows overrun it anyway holds to the next half-second mark instead and the figure is
/// reported as approximate, rather than failing the run.
pub async fn per_workflow(
    setup: &DbosSetup,
    monitor: &mut Monitor,
) -> anyhow::Result<WorkflowCost> {
    vacuum_analyze(&setup.database_url).await?;
    let k = PROBE_BATCH;
    let (three, hold) = bracket(setup, monitor, 3 * k, None).await?;
    let (two, hold_2k) = bracket(setup, monitor, 2 * k, Some(hold)).await?;
    let (one, hold_k) = bracket(setup, monitor, k, Some(hold)).await?;
    let (zero, hold_0) = bracket(setup, monitor, 0, Some(hold)).await?;
    let per = |a: Delta, b: Delta| Delta {
        xact_commit: a.xact_commit - b.xact_commit,
        write_xacts: a.write_xacts - b.write_xacts,
        sessions: a.sessions - b.sessions,
    };
    let (second, third, cold) = (per(two, one), per(three, two), per(one, zero));
    let warm = per(three, one);
    let same_hold = [hold_2k, hold_k, hold_0].iter().all(|h| *h == hold);
    let deterministic = same_hold && second == third;
    let k = f64::from(k);
    tracing::info!(
        hold = ?hold,
        same_hold,
        bracket_0 = ?zero,
        bracket_k = ?one,
        bracket_2k = ?two,
        bracket_3k = ?three,
        deterministic,
        "commit probe: brackets of 0, K = {k}, 2K and 3K workflows run one at a time"
    );
    Ok(WorkflowCost {
        xact_commits: warm.xact_commit as f64 / (2.0 * k),
        write_xacts: warm.write_xacts as f64 / (2.0 * k),
        cold_xact_commits: cold.xact_commit as f64 / k,
        deterministic,
        launch_and_shutdown_commits: zero.xact_commit,
    })
}

/// Vacuums and analyzes the target database, so that autovacuum has nothing due on the tables the
/// timed run filled: an autovacuum worker's `ANALYZE` inside a bracket would count as that
/// bracket's commits (it is a backend of the target database).
async fn vacuum_analyze(database_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// The hold for a bracket whose workflows took `elapsed`: the first half-second mark (n + 0.5 s,
/// half-way between DBOS's one-second background ticks) at least `elapsed` and at least 2.5 s.
fn hold_after(elapsed: Duration) -> Duration {
    let whole = elapsed.as_secs_f64().ceil().max(2.0);
    Duration::from_secs_f64(whole + 0.5)
}

/// What a bracket changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delta {
    xact_commit: i64,
    write_xacts: i64,
    sessions: i64,
}

/// How often a bracket is tried when autovacuum ran inside it.
const BRACKET_ATTEMPTS: u32 = 3;

/// What one bracket changed, the hold it kept, and whether autovacuum worked inside it.
struct Bracket {
    delta: Delta,
    hold: Duration,
    autovacuumed: bool,
}

/// [`bracket_once`], again when autovacuum ran inside it (its counts would be the bracket's).
async fn bracket(
    setup: &DbosSetup,
    monitor: &mut Monitor,
    count: u32,
    hold: Option<Duration>,
) -> anyhow::Result<(Delta, Duration)> {
    let mut attempt = 1;
    loop {
        let bracket = bracket_once(setup, monitor, count, hold).await?;
        if !bracket.autovacuumed || attempt == BRACKET_ATTEMPTS {
            if bracket.autovacuumed {
                tracing::warn!(
                    count,
                    "autovacuum ran inside the bracket {BRACKET_ATTEMPTS} times: its counts are in \
                     the figure"
                );
            }
            return Ok((bracket.delta, bracket.hold));
        }
        tracing::info!(
            count,
            attempt,
            "autovacuum ran inside the bracket; running it again"
        );
        attempt += 1;
    }
}

/// How many times autovacuum has vacuumed or analyzed a table of the target database.
///
/// `pg_stat_all_tables` only covers the database it is read in, so this opens a short connection
/// to the target; it is made outside the settled readings, so its own counts are in neither.
async fn autovacuum_runs(database_url: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(database_url).await?;
    let runs: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::int8 FROM pg_stat_all_tables",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(runs)
}

/// One bracket of `count` workflows run alone, held `hold` from launch to shutdown if they fit in
/// it. With no hold given, the bracket chooses one ([`hold_after`] of twice its workflows' time).
/// Returns what the bracket changed and the hold it kept.
async fn bracket_once(
    setup: &DbosSetup,
    monitor: &mut Monitor,
    count: u32,
    hold: Option<Duration>,
) -> anyhow::Result<Bracket> {
    let autovacuum_before = autovacuum_runs(&setup.database_url).await?;
    let before = monitor.settled().await?;
    let running = driver::launch(setup).await?;
    let launched = Instant::now();
    for _ in 0..count {
        driver::run_one(&running.workflow).await?;
    }
    let elapsed = launched.elapsed();
    let hold = match hold {
        Some(hold) if elapsed < hold => hold,
        Some(hold) => {
            tracing::warn!(
                count,
                ?elapsed,
                ?hold,
                "the bracket's workflows overran the commit probe's hold (a busy machine?): it \
                 holds longer, and the commit figure is approximate"
            );
            hold_after(elapsed)
        }
        None => hold_after(elapsed * 2),
    };
    tokio::time::sleep(hold - elapsed).await;
    running.shutdown().await;
    let after = monitor.settled().await?;
    let delta = Delta {
        xact_commit: after.xact_commit - before.xact_commit,
        write_xacts: after.next_xid - before.next_xid,
        sessions: after.sessions - before.sessions,
    };
    let autovacuum_after = autovacuum_runs(&setup.database_url).await?;
    tracing::debug!(count, ?delta, "bracket");
    Ok(Bracket {
        delta,
        hold,
        autovacuumed: autovacuum_after != autovacuum_before,
    })
}

#[cfg(test)]
mod tests {
    use super::hold_after;
    use std::time::Duration;

    #[test]
    fn holds_end_half_way_between_background_ticks() {
        assert_eq!(hold_after(Duration::ZERO), Duration::from_millis(2500));
        assert_eq!(
            hold_after(Duration::from_millis(2100)),
            Duration::from_millis(3500)
        );
        assert_eq!(
            hold_after(Duration::from_secs(3)),
            Duration::from_millis(3500)
        );
    }
}
