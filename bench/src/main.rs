//! `ratchet-bench [--quick] [--json FILE] [--with-dbos] [--database-url URL] [--data-dir DIR]`: exactly what
//! `ratchet bench` does. With no URL (and no `DATABASE_URL`), it runs the embedded PostgreSQL in `DIR`
//! (default `.ratchet`), as the CLI does.

use anyhow::{Context, bail};
use ratchet_embedded_pg::Cluster;
use ratchet_store::testing::DatabaseServer;
use std::io::Write;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RATCHET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let mut json: Option<PathBuf> = None;
    let mut with_dbos = false;
    let mut url: Option<String> = std::env::var("DATABASE_URL").ok();
    let mut data_dir = PathBuf::from(".ratchet");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--with-dbos" => with_dbos = true,
            "--json" => json = Some(args.next().context("--json needs a file")?.into()),
            "--database-url" => url = Some(args.next().context("--database-url needs a URL")?),
            "--data-dir" => data_dir = args.next().context("--data-dir needs a directory")?.into(),
            other => bail!(
                "unknown argument {other:?} (usage: ratchet-bench [--quick] [--json FILE] [--with-dbos] \
                 [--database-url URL] [--data-dir DIR])"
            ),
        }
    }
    let server = match url {
        Some(url) => DatabaseServer::External(url),
        None => {
            let cluster = Cluster::new(&data_dir)?;
            let starting = cluster.clone();
            tokio::task::spawn_blocking(move || starting.start()).await??;
            DatabaseServer::Embedded(cluster)
        }
    };
    let mut options = ratchet_bench::BenchOptions::new(quick);
    options.json = json;
    options.with_dbos = with_dbos;
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
