//! Section 4: the DBOS peer (`peers/dbos`, its own workspace, excluded from ours).
//!
//! The peer runs the same 5-step chain (`bench_chain_step`, one transaction per step) as a DBOS workflow. It
//! is a separate binary, invoked as `dbos-peer --database-url URL --workflows N --concurrency C`, which
//! prints one JSON line: `{"impl":"dbos","workflows":N,"concurrency":C,"wall_ms":…,"median_us":…,
//! "p99_us":…,"xact_commits_per_workflow":…}` or `{"impl":"dbos","error":"…"}`. Each run gets a fresh
//! database of the same server (with the chain's table already made) and is compared with ratchet's and plain
//! steno's chain cells of the same workflow count and concurrency.

use crate::latency::LatencyPair;
use crate::{Bench, BenchError};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// How to build the peer, for the report when it is not built.
pub const BUILD_PEER: &str = "cargo build --release --manifest-path peers/dbos/Cargo.toml";

/// What the peer section found.
#[derive(Clone, Debug, Serialize)]
pub struct PeerSection {
    /// `not requested`, `not built, …`, or `ran`.
    pub status: String,
    pub rows: Vec<PeerRow>,
}

/// The peer at one concurrency, next to ratchet's and plain steno's chain.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    pub concurrency: usize,
    pub workflows: usize,
    /// The peer's own line, or its error.
    pub dbos: Result<PeerFigures, String>,
    pub ratchet_median_us: f64,
    pub plain_steno_median_us: f64,
    pub ratchet_sagas_per_sec: f64,
    pub plain_steno_sagas_per_sec: f64,
    /// `xact_commit` per saga, as the peer counts its own.
    pub ratchet_xact_commit_per_saga: f64,
    pub plain_steno_xact_commit_per_saga: f64,
    /// DBOS's median over ratchet's (> 1: ratchet is faster).
    pub dbos_over_ratchet_median: Option<f64>,
    /// ratchet's throughput over DBOS's.
    pub ratchet_over_dbos_throughput: Option<f64>,
}

/// The peer's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PeerFigures {
    pub wall_ms: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub workflows_per_sec: f64,
    pub xact_commits_per_workflow: f64,
}

pub(crate) fn not_requested() -> PeerSection {
    PeerSection {
        status: "not requested (add --with-dbos)".to_owned(),
        rows: Vec::new(),
    }
}

pub(crate) async fn measure(
    bench: &Bench<'_>,
    binary: &Path,
    chain: &[LatencyPair],
) -> Result<PeerSection, BenchError> {
    if !binary.is_file() {
        return Ok(PeerSection {
            status: format!(
                "not built ({} missing), build with `{BUILD_PEER}`",
                binary.display()
            ),
            rows: Vec::new(),
        });
    }
    let mut rows = Vec::new();
    for pair in chain {
        let workflows = pair.ratchet.sagas;
        let db = bench.fresh_database().await?;
        let dbos = run_peer(binary, &db.url, workflows, pair.concurrency).await;
        bench.drop_database(&db).await;
        match &dbos {
            Ok(f) => bench.say(&format!(
                "  dbos / concurrency {}: median {:.0} us, p99 {:.0} us, {:.1} workflows/s",
                pair.concurrency, f.median_us, f.p99_us, f.workflows_per_sec
            )),
            Err(error) => bench.say(&format!(
                "  dbos / concurrency {}: {error}",
                pair.concurrency
            )),
        }
        rows.push(PeerRow {
            concurrency: pair.concurrency,
            workflows,
            dbos_over_ratchet_median: dbos
                .as_ref()
                .ok()
                .map(|f| f.median_us / pair.ratchet.median_us),
            ratchet_over_dbos_throughput: dbos
                .as_ref()
                .ok()
                .map(|f| pair.ratchet.sagas_per_sec / f.workflows_per_sec),
            dbos,
            ratchet_median_us: pair.ratchet.median_us,
            plain_steno_median_us: pair.plain_steno.median_us,
            ratchet_sagas_per_sec: pair.ratchet.sagas_per_sec,
            plain_steno_sagas_per_sec: pair.plain_steno.sagas_per_sec,
            ratchet_xact_commit_per_saga: pair.ratchet.xact_commit_per_saga,
            plain_steno_xact_commit_per_saga: pair.plain_steno.xact_commit_per_saga,
        });
    }
    Ok(PeerSection {
        status: "ran".to_owned(),
        rows,
    })
}

/// Runs the peer once; its error (or a bad line) as a message.
async fn run_peer(
    binary: &Path,
    url: &str,
    workflows: usize,
    concurrency: usize,
) -> Result<PeerFigures, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(binary)
            .arg("--database-url")
            .arg(url)
            .arg("--workflows")
            .arg(workflows.to_string())
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "the peer did not finish within 10 minutes".to_owned())?
    .map_err(|e| format!("the peer did not run: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    let Some(line) = line else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "the peer printed no JSON line (exit {}); stderr: {}",
            output.status,
            stderr.trim().lines().last().unwrap_or("")
        ));
    };
    parse_line(line)
}

fn parse_line(line: &str) -> Result<PeerFigures, String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("the peer's line is not JSON ({e}): {line}"))?;
    if let Some(error) = value.get("error") {
        return Err(format!(
            "the peer failed: {}",
            error.as_str().unwrap_or(&error.to_string())
        ));
    }
    let number = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("the peer's line has no number {key:?}: {line}"))
    };
    let wall_ms = number("wall_ms")?;
    let workflows = number("workflows")?;
    Ok(PeerFigures {
        wall_ms,
        median_us: number("median_us")?,
        p99_us: number("p99_us")?,
        workflows_per_sec: if wall_ms > 0.0 {
            workflows / (wall_ms / 1e3)
        } else {
            0.0
        },
        xact_commits_per_workflow: number("xact_commits_per_workflow")?,
    })
}

#[cfg(test)]
mod test {
    use super::parse_line;

    #[test]
    fn peer_lines_parse() {
        let figures = parse_line(
            r#"{"impl":"dbos","workflows":200,"concurrency":8,"wall_ms":1000.0,"median_us":50.5,"p99_us":90.0,"xact_commits_per_workflow":7.0}"#,
        )
        .unwrap();
        assert_eq!(figures.workflows_per_sec, 200.0);
        assert_eq!(figures.median_us, 50.5);
        let error = parse_line(r#"{"impl":"dbos","error":"no database"}"#).unwrap_err();
        assert!(error.contains("no database"), "{error}");
        assert!(parse_line(r#"{"impl":"dbos"}"#).is_err());
    }
}
