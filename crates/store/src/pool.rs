//! Connections: the pool every executor shares, and the embedded schema migrations.

use crate::DbError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use std::time::Duration;

/// One connection to the database.
pub type DbConnection = AsyncPgConnection;

/// The connection pool.
pub type DbPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// A connection checked out of the pool.
pub type PooledConnection<'a> =
    bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

/// The saga log's schema, compiled into the binary.
pub const SAGA_LOG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How to build a pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many connections at most.
    pub max_size: u32,
    /// How long a checkout may wait before it fails (a transient error: the pool is exhausted).
    pub checkout_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 16,
            checkout_timeout: Duration::from_secs(10),
        }
    }
}

/// Builds a pool for `url` and checks that one connection can be made, so that a wrong URL or a missing
/// database is reported here, by name, rather than as a timeout later.
pub async fn connect_pool(url: &str, config: &PoolConfig) -> Result<DbPool, DbError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    let pool = bb8::Pool::builder()
        .max_size(config.max_size)
        .connection_timeout(config.checkout_timeout)
        // No `SELECT 1` on checkout: it would cost a round trip and count as a transaction in
        // pg_stat_database. Broken connections are dropped by diesel-async's `has_broken` check instead.
        .test_on_check_out(false)
        .retry_connection(false)
        .build_unchecked(manager);
    // Surface a bad URL now, with the server's own words.
    drop(establish(url).await?);
    Ok(pool)
}

/// One connection outside any pool.
pub async fn establish(url: &str) -> Result<AsyncPgConnection, DbError> {
    use diesel_async::AsyncConnection;
    AsyncPgConnection::establish(url)
        .await
        .map_err(DbError::from)
}

/// Applies every pending embedded migration in `migrations` to the database at `url`.
///
/// diesel's migration harness is synchronous, so it runs on a blocking thread through diesel-async's
/// connection wrapper (which works on either tokio runtime flavour).
pub async fn run_migrations(
    url: &str,
    migrations: &'static EmbeddedMigrations,
) -> Result<(), DbError> {
    use diesel::Connection;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        conn.run_pending_migrations(StaticMigrations(migrations))
            .map(|_| ())
            .map_err(|error| DbError::Migration(error.to_string()))
    })
    .await
    .map_err(|error| DbError::Migration(format!("migration task failed: {error}")))?
}

/// A `&'static EmbeddedMigrations` as a migration source (diesel implements it only for the owned value, which
/// is not `Clone`).
pub struct StaticMigrations(pub &'static EmbeddedMigrations);

impl diesel::migration::MigrationSource<diesel::pg::Pg> for StaticMigrations {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<diesel::pg::Pg>>>> {
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(self.0)
    }
}
