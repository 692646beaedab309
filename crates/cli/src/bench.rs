//! `ratchet bench`: ratchet against a plain-steno baseline (and, with `--with-dbos`, the DBOS peer) on the
//! same PostgreSQL, side by side in one run. The benchmark itself is the `ratchet-bench` crate; this command
//! only picks the server, prints progress and the table, and writes the JSON. It asserts no timing: CI runs
//! `ratchet bench --quick` only to see that it completes.

use crate::args::Args;
use crate::commands;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

pub async fn bench(args: &Args) -> anyhow::Result<()> {
    args.only(&["--quick", "--json", "--with-dbos"])?;
    let server = commands::database_server(args).await?;
    let mut options = ratchet_bench::BenchOptions::new(args.flag("--quick"));
    options.json = args.value::<PathBuf>("--json")?;
    options.with_dbos = args.flag("--with-dbos");
    let progress = |line: &str| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    };
    let report = ratchet_bench::run(&server, &options, &progress).await?;
    println!("\n{}", report.table());
    if let Some(path) = &options.json {
        std::fs::write(path, report.to_json()?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
