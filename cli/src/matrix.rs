//! `ratchet matrix`: the fault-injection matrix on the embedded PostgreSQL (or `--database-url`'s server).
//!
//! On a terminal a progress bar counts the cells (and prints the ones that fail); otherwise each cell is one
//! line. The engine's log of the faults the matrix injects on purpose goes to a file (see `main`).

use crate::cli::{Global, MatrixArgs};
use crate::output::{Commentary, Progress};
use crate::setup;
use anyhow::{Context, bail};
use ratchet_fault_injection::{ChildProgram, Matrix, Status, add_nexus_suite, all_nexus_suites};

pub async fn matrix(global: &Global, args: &MatrixArgs) -> anyhow::Result<()> {
    // --pairs adds, for every database and external node N, an error right after N's COMMIT followed by a
    // crash in the compensation of N or of a node before it (see ratchet_fault_injection::Cell).
    let mut matrix = Matrix::new().pairs(args.pairs);
    if args.saga.is_empty() {
        matrix = all_nexus_suites(matrix);
    }
    for saga in &args.saga {
        matrix = add_nexus_suite(matrix, saga).map_err(anyhow::Error::msg)?;
    }
    if !args.fault.is_empty() {
        matrix = matrix.faults(&args.fault);
    }
    matrix = matrix.parallel(usize::from(args.parallel));
    if args.real_crash {
        // Each crash cell runs its saga in a child `ratchet matrix-child SPEC`, killed with SIGKILL at the
        // fault point (see ratchet_fault_injection::ChildProgram).
        let me = std::env::current_exe().context("finding this program, to run it as a child")?;
        matrix = matrix.real_crash(ChildProgram::new(me, &["matrix-child"]));
    }

    let server = setup::database_server(global).await?;
    quiet_injected_panics();
    println!("running the fault matrix (each cell on a fresh database)...");
    let mut progress: Option<Progress> = None;
    let report = matrix
        .run(&server, |cell, done, total| {
            let progress = progress.get_or_insert_with(|| {
                Progress::new(Some(total as u64), Commentary { json: false })
            });
            let mark = match cell.status {
                Status::Pass => "ok",
                Status::Detected => "detected (expected)",
                Status::Fail => "FAIL",
                Status::Missed => "MISSED DETECTION",
                Status::NotApplicable => "not applicable",
            };
            let line = format!(
                "[{done:>3}/{total}] {} / {} / {}: {mark} ({} ms)",
                cell.saga,
                cell.cell.node,
                cell.cell.label(),
                cell.millis
            );
            progress.message(format!("{} / {}", cell.saga, cell.cell.node));
            if matches!(cell.status, Status::Fail | Status::Missed) {
                progress.note(&line);
                progress.inc();
            } else {
                progress.step(line);
            }
        })
        .await?;
    drop(progress);
    println!("\n{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let failures = report.failures().len();
    if failures > 0 {
        bail!("{failures} cell(s) failed");
    }
    Ok(())
}

/// `ratchet matrix-child SPEC`: one real-crash cell's saga, run until the parent kills it.
pub async fn child(spec: &str) -> anyhow::Result<()> {
    all_nexus_suites(Matrix::new()).run_child(spec).await?;
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
