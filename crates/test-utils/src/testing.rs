//! The test suite's database server and fresh databases on it (the machinery is `ratchet-template-db`'s).
//!
//! The server is `DATABASE_URL`'s when that is set; otherwise a private embedded cluster under the temp
//! directory (`$RATCHET_TEST_PG_DIR` overrides where), started by whichever test process gets there first and
//! left running for the others (nextest runs every test in its own process).

use diesel_migrations::EmbeddedMigrations;
use ratchet_embedded_pg::Cluster;
use ratchet_store::DbError;
use ratchet_template_db::{DatabaseServer, TestDatabase};
use std::path::PathBuf;

/// The test suite's server: `DATABASE_URL`'s, or the shared embedded test cluster, started if need be.
pub async fn test_server() -> Result<DatabaseServer, DbError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(DatabaseServer::External(url));
    }
    let dir = std::env::var_os("RATCHET_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            std::env::temp_dir().join(format!("ratchet-test-pg-{uid}"))
        });
    let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster, DbError> {
        let cluster = Cluster::new(&dir).map_err(|e| DbError::Pool(e.to_string()))?;
        cluster.start().map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(cluster)
    })
    .await
    .map_err(|e| DbError::Pool(format!("starting the test server: {e}")))??;
    Ok(DatabaseServer::Embedded(cluster))
}

/// Creates a fresh database holding the saga log's schema plus `extra` migration sets (a datastore's own), on
/// the test server.
pub async fn fresh_database(
    extra: &[&'static EmbeddedMigrations],
) -> Result<TestDatabase, DbError> {
    test_server().await?.fresh_database(extra).await
}
