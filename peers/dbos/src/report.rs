//! The one JSON line the benchmark prints on stdout, and the latency quantiles in it.
//!
//! The line's shape is fixed by `ratchet bench`, which reads it:
//! `{"impl":"dbos","version":"0.5.x","workflows":N,"concurrency":C,"wall_ms":..,"median_us":..,
//! "p99_us":..,"throughput_per_s":..,"xact_commits_per_workflow":..}` (plus `dbos_isolation`, which
//! it ignores), or on failure
//! `{"impl":"dbos","error":".."}`. Quantiles are nearest-rank, as in `bench/src/measure.rs`.

use serde::Serialize;
use std::time::Duration;

/// The implementation's name in the line.
const IMPL: &str = "dbos";

/// The `dbos` crate version this peer is built against: Cargo.toml pins it with `=`, so the two
/// cannot drift apart silently.
pub const DBOS_VERSION: &str = "0.5.0";

/// A successful run.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub version: &'static str,
    pub workflows: u32,
    pub concurrency: u32,
    pub wall_ms: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub throughput_per_s: f64,
    pub xact_commits_per_workflow: f64,
    /// Beyond the fields ratchet bench reads: the isolation level of DBOS's own connections.
    pub dbos_isolation: &'static str,
}

impl Report {
    /// The report of `latencies` (one per timed workflow) completed in `wall`.
    pub fn new(
        dbos_isolation: &'static str,
        concurrency: u32,
        mut latencies: Vec<Duration>,
        wall: Duration,
        xact_commits_per_workflow: f64,
    ) -> Report {
        let workflows = latencies.len() as u32;
        Report {
            implementation: IMPL,
            version: DBOS_VERSION,
            workflows,
            concurrency,
            wall_ms: wall.as_secs_f64() * 1e3,
            median_us: quantile_us(&mut latencies, 0.5),
            p99_us: quantile_us(&mut latencies, 0.99),
            throughput_per_s: f64::from(workflows) / wall.as_secs_f64(),
            xact_commits_per_workflow,
            dbos_isolation,
        }
    }
}

/// A failed run.
#[derive(Debug, Serialize)]
pub struct ErrorReport {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub error: String,
}

impl ErrorReport {
    pub fn new(error: &anyhow::Error) -> ErrorReport {
        ErrorReport {
            implementation: IMPL,
            error: format!("{error:#}"),
        }
    }
}

/// The `q` quantile of `samples` in microseconds, by nearest rank; 0 for no samples.
pub fn quantile_us(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(quantile_us(&mut samples, 0.5), 50.0);
        assert_eq!(quantile_us(&mut samples, 0.99), 99.0);
        assert_eq!(quantile_us(&mut [], 0.5), 0.0);
    }

    #[test]
    fn the_line_has_the_fields_ratchet_bench_reads() {
        let report = Report::new(
            "read-committed",
            8,
            vec![Duration::from_millis(2), Duration::from_millis(4)],
            Duration::from_millis(5),
            17.0,
        );
        let line = serde_json::to_value(&report).unwrap();
        assert_eq!(line["impl"], "dbos");
        assert_eq!(line["version"], DBOS_VERSION);
        assert_eq!(line["workflows"], 2);
        assert_eq!(line["concurrency"], 8);
        assert_eq!(line["wall_ms"], 5.0);
        assert_eq!(line["median_us"], 2000.0);
        assert_eq!(line["p99_us"], 4000.0);
        assert_eq!(line["throughput_per_s"], 400.0);
        assert_eq!(line["xact_commits_per_workflow"], 17.0);
        assert_eq!(line["dbos_isolation"], "read-committed");

        let error = serde_json::to_value(ErrorReport::new(&anyhow::anyhow!("boom"))).unwrap();
        assert_eq!(error, serde_json::json!({"impl": "dbos", "error": "boom"}));
    }
}
