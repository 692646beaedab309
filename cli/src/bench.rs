//! `ratchet bench`: ratchet against a plain-steno baseline (and, with `--with-dbos`, the DBOS peer) on the
//! same PostgreSQL, side by side in one run. The benchmark itself is the `ratchet-bench` crate; this command
//! only picks the server, shows progress (a spinner with the current step on a terminal, plain lines
//! otherwise), prints the table and writes the JSON. It asserts no timing: CI runs `ratchet bench --quick`
//! only to see that it completes.

use crate::cli::{BenchArgs, Global};
use crate::output::{Commentary, Progress};
use crate::setup;
use anyhow::Context;

pub async fn bench(global: &Global, args: &BenchArgs) -> anyhow::Result<()> {
    let server = setup::database_server(global).await?;
    let mut options = ratchet_bench::BenchOptions::new(args.quick);
    options.json = args.json.clone();
    options.with_dbos = args.with_dbos;
    let bar = Progress::new(None, Commentary { json: false });
    let progress = |line: &str| {
        bar.note(line);
        bar.message(line.to_owned());
    };
    let report = ratchet_bench::run(&server, &options, &progress).await?;
    bar.finish();
    println!("\n{}", report.table());
    if let Some(path) = &options.json {
        std::fs::write(path, report.to_json()?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
