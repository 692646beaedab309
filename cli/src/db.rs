//! `ratchet db start | stop | status | url`: the embedded PostgreSQL (see [`crate::setup`]).

use crate::cli::{DbCommand, Global};
use crate::setup::{self, DATABASE};
use ratchet_embedded_pg::ClusterStatus;

pub async fn db(global: &Global, command: DbCommand) -> anyhow::Result<()> {
    let cluster = setup::cluster(global)?;
    match command {
        DbCommand::Start => {
            let url = setup::start_embedded(&cluster).await?;
            println!("PostgreSQL is running; its URL: {url}");
        }
        DbCommand::Stop => {
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            println!("PostgreSQL is stopped");
        }
        DbCommand::Status => {
            let status = setup::cluster_status(&cluster).await?;
            let status = match status {
                ClusterStatus::NotInitialized => "not initialised",
                ClusterStatus::Stopped => "stopped",
                ClusterStatus::Running => "running",
            };
            println!(
                "embedded PostgreSQL in {}: {status}",
                cluster.base_dir().display()
            );
        }
        DbCommand::Url => println!("{}", cluster.url(DATABASE)),
    }
    Ok(())
}
