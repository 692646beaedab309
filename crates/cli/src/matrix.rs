//! `ratchet matrix`: the fault-injection matrix on the embedded PostgreSQL (or `--database-url`'s server).

use crate::args::Args;
use crate::commands;
use anyhow::{Context, bail};
use ratchet_fault_injection::{Fault, Matrix, Status, nexus};
use std::io::Write;

pub async fn matrix(args: &Args) -> anyhow::Result<()> {
    args.only(&["--saga", "--fault", "--json", "--parallel", "--pairs"])?;
    // --pairs adds, for every database and external node N, an error right after N's COMMIT followed by a
    // crash in the compensation of N or of a node before it (see ratchet_fault_injection::cell).
    let mut matrix = Matrix::new().pairs(args.flag("--pairs"));
    let sagas = args.values("--saga")?;
    if sagas.is_empty() {
        matrix = nexus::all_suites(matrix);
    }
    for saga in &sagas {
        matrix = nexus::add_suite(matrix, saga).map_err(anyhow::Error::msg)?;
    }
    let faults = args
        .values("--fault")?
        .iter()
        .map(|f| f.parse::<Fault>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !faults.is_empty() {
        matrix = matrix.faults(&faults);
    }
    matrix = matrix.parallel(args.value::<usize>("--parallel")?.unwrap_or(4));

    let server = commands::database_server(args).await?;
    quiet_injected_panics();
    println!("running the fault matrix (each cell on a fresh database)...");
    let report = matrix
        .run(&server, |cell, done, total| {
            let mark = match cell.status {
                Status::Pass => "ok",
                Status::Detected => "detected (expected)",
                Status::Fail => "FAIL",
                Status::Missed => "MISSED DETECTION",
                Status::NotApplicable => "not applicable",
            };
            println!(
                "[{done:>3}/{total}] {} / {} / {}: {mark} ({} ms)",
                cell.saga,
                cell.cell.node,
                cell.cell.label(),
                cell.millis
            );
            let _ = std::io::stdout().flush();
        })
        .await?;
    println!("\n{}", report.table());
    if let Some(path) = args.value::<std::path::PathBuf>("--json")? {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let failures = report.failures().len();
    if failures > 0 {
        bail!("{failures} cell(s) failed");
    }
    Ok(())
}

/// Every `panic_in_finish` cell panics on purpose (the engine catches it); the default hook would print each
/// one, with a backtrace under `RUST_BACKTRACE`, in the middle of the matrix. Those stay quiet; any other
/// panic still goes to the default hook.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|message| message.starts_with("injected at "));
        if !injected {
            default(info);
        }
    }));
}
