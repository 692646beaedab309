//! The report: the machine, every figure, and the ratios, as a table and as JSON.

use crate::commits::CommitRow;
use crate::latency::LatencyPair;
use crate::peer::PeerSection;
use crate::recovery::RecoveryRow;
use crate::{Bench, BenchError};
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use std::fmt::Write;

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub quick: bool,
    pub sagas_per_cell: usize,
    pub pool_size: u32,
    pub commits: Vec<CommitRow>,
    pub instance_create: Vec<LatencyPair>,
    pub chain: Vec<LatencyPair>,
    pub recovery: Vec<RecoveryRow>,
    pub peer: PeerSection,
    pub total_seconds: f64,
}

/// Where the run ran.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub load_average: String,
    pub postgres: String,
    /// `fsync`, `synchronous_commit`, `default_transaction_isolation`, `wal_sync_method`.
    pub settings: Vec<(String, String)>,
}

pub(crate) async fn machine(bench: &Bench<'_>) -> Result<Machine, BenchError> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let mut conn = ratchet_store::establish(&bench.server.url("postgres")).await?;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let mut setting = async |name: &str| -> Result<String, BenchError> {
        let row: Setting = diesel::sql_query("SELECT current_setting($1) AS value")
            .bind::<Text, _>(name)
            .get_result(&mut conn)
            .await?;
        Ok(row.value)
    };
    let postgres = setting("server_version").await?;
    let mut settings = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "default_transaction_isolation",
        "wal_sync_method",
    ] {
        settings.push((name.to_owned(), setting(name).await?));
    }
    Ok(Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        load_average: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        postgres,
        settings,
    })
}

impl BenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The report as text tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} ({} cores), Linux {}, load {} at start; PostgreSQL {} ({})",
            m.cpu,
            m.cores,
            m.kernel,
            m.load_average,
            m.postgres,
            m.settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "{} run: {} timed sagas per latency cell, pool of {} per executor, {:.0} s in all\n",
            if self.quick { "quick" } else { "full" },
            self.sagas_per_cell,
            self.pool_size,
            self.total_seconds
        );

        let _ = writeln!(
            out,
            "1. durable commits (transactions that wrote) per saga, each saga alone; xact_commit in brackets; ? = a transaction was retried"
        );
        let _ = writeln!(
            out,
            "{:<26} {:>5} | {:>12} {:>9} | {:>12} {:>9} | {:>5} | {:>11} {:>12}",
            "workload",
            "nodes",
            "plain steno",
            "per node",
            "ratchet",
            "per node",
            "floor",
            "plain/ratch",
            "ratchet/floor"
        );
        for r in &self.commits {
            let flag = |c: &crate::SagaCost| if c.deterministic { "" } else { "?" };
            let _ = writeln!(
                out,
                "{:<26} {:>5} | {:>14}{:1} {:>9.2} | {:>14}{:1} {:>9.2} | {:>5} | {:>10.2}x {:>12.2}x",
                r.workload,
                r.committing_nodes,
                format!("{} [{}]", r.plain_steno.commits, r.plain_steno.xact_commit),
                flag(&r.plain_steno),
                r.plain_steno.commits_per_node,
                format!("{} [{}]", r.ratchet.commits, r.ratchet.xact_commit),
                flag(&r.ratchet),
                r.ratchet.commits_per_node,
                r.floor,
                r.plain_over_ratchet,
                r.ratchet_over_floor
            );
        }
        let _ = writeln!(
            out,
            "statements per saga: {}",
            self.commits
                .iter()
                .map(|r| format!(
                    "{}: plain steno {}, ratchet {}",
                    r.workload, r.plain_steno.statements, r.ratchet.statements
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );

        let _ = writeln!(
            out,
            "\n2. latency and throughput (ratio = ratchet / plain steno; latency: lower is better, throughput: \
             higher is better)"
        );
        let _ = writeln!(
            out,
            "{:<26} {:>4} | {:>10} {:>10} {:>8} {:>4} | {:>10} {:>10} {:>8} {:>4} | {:>7} {:>7} {:>7} | {:>6} {:>6}",
            "workload",
            "conc",
            "ratchet p50",
            "p99",
            "sagas/s",
            "unw",
            "plain p50",
            "p99",
            "sagas/s",
            "unw",
            "p50 r",
            "p99 r",
            "tput r",
            "dur r",
            "dur p"
        );
        for p in self.instance_create.iter().chain(&self.chain) {
            let _ = writeln!(
                out,
                "{:<26} {:>4} | {:>8.2}ms {:>8.2}ms {:>8.1} {:>4} | {:>8.2}ms {:>8.2}ms {:>8.1} {:>4} | {:>6.2}x {:>6.2}x {:>6.2}x | {:>6.1} {:>6.1}",
                p.workload,
                p.concurrency,
                p.ratchet.median_us / 1e3,
                p.ratchet.p99_us / 1e3,
                p.ratchet.sagas_per_sec,
                p.ratchet.unwound,
                p.plain_steno.median_us / 1e3,
                p.plain_steno.p99_us / 1e3,
                p.plain_steno.sagas_per_sec,
                p.plain_steno.unwound,
                p.median_ratio,
                p.p99_ratio,
                p.throughput_ratio,
                p.ratchet.commits_per_saga,
                p.plain_steno.commits_per_saga
            );
        }

        let _ = writeln!(
            out,
            "\n3. recovery (ratchet; 5-step chains crashed after step 3)"
        );
        let _ = writeln!(
            out,
            "{:>7} | {:>11} {:>11} | {:>15} {:>12} | {:>15}",
            "sagas", "resumed", "at rest", "load statements", "per saga", "stmts per saga"
        );
        for r in &self.recovery {
            let _ = writeln!(
                out,
                "{:>7} | {:>9.0}ms {:>9.0}ms | {:>15} {:>12.4} | {:>15.1}",
                r.sagas,
                r.resumed_ms,
                r.at_rest_ms,
                r.load_statements,
                r.load_statements_per_saga,
                r.statements_per_saga
            );
        }

        let _ = writeln!(out, "\n4. DBOS peer (5-step chain): {}", self.peer.status);
        for r in &self.peer.rows {
            match &r.dbos {
                Ok(f) => {
                    let _ = writeln!(
                        out,
                        "  concurrency {}, {} workflows: dbos p50 {:.2}ms p99 {:.2}ms {:.1}/s {:.1} xact/wf | \
                         ratchet p50 {:.2}ms {:.1}/s {:.1} xact | plain steno p50 {:.2}ms {:.1}/s {:.1} xact | \
                         dbos/ratchet p50 {:.2}x, ratchet/dbos throughput {:.2}x",
                        r.concurrency,
                        r.workflows,
                        f.median_us / 1e3,
                        f.p99_us / 1e3,
                        f.workflows_per_sec,
                        f.xact_commits_per_workflow,
                        r.ratchet_median_us / 1e3,
                        r.ratchet_sagas_per_sec,
                        r.ratchet_xact_commit_per_saga,
                        r.plain_steno_median_us / 1e3,
                        r.plain_steno_sagas_per_sec,
                        r.plain_steno_xact_commit_per_saga,
                        r.dbos_over_ratchet_median.unwrap_or(f64::NAN),
                        r.ratchet_over_dbos_throughput.unwrap_or(f64::NAN)
                    );
                }
                Err(error) => {
                    let _ = writeln!(
                        out,
                        "  concurrency {}, {} workflows: dbos failed: {error}",
                        r.concurrency, r.workflows
                    );
                }
            }
        }
        out
    }
}
