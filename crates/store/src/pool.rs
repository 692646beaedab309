//! Connections: the pool every executor shares, and the embedded schema migrations.

use crate::error::DbError;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
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

/// The same migrations as plain SQL, in order, each as (name, up.sql): for an embedder that applies them with
/// its own schema tooling (and starts the engine with `EngineConfig::run_migrations` off). Apply each in its
/// own transaction, in this order: the second adds the `stuck` value to the `saga_state` enum, which
/// PostgreSQL lets no statement use before the transaction that added it commits.
///
/// The first creates Omicron's `saga` and `saga_node_event` tables unless they exist (on Nexus's database it
/// does nothing); the others only add to them (columns, the `stuck` state) and add ratchet's own tables.
pub const MIGRATIONS_SQL: &[(&str, &str)] = &[
    (
        "2026-12-01-000001_omicron_saga_tables",
        include_str!("../migrations/2026-12-01-000001_omicron_saga_tables/up.sql"),
    ),
    (
        "2026-12-01-000002_saga_state_stuck",
        include_str!("../migrations/2026-12-01-000002_saga_state_stuck/up.sql"),
    ),
    (
        "2026-12-01-000003_ratchet_saga_log",
        include_str!("../migrations/2026-12-01-000003_ratchet_saga_log/up.sql"),
    ),
    (
        "2026-12-01-000004_saga_node_start",
        include_str!("../migrations/2026-12-01-000004_saga_node_start/up.sql"),
    ),
    (
        "2026-12-01-000005_saga_waiting",
        include_str!("../migrations/2026-12-01-000005_saga_waiting/up.sql"),
    ),
    (
        "2026-12-08-000006_omicron_readable_log",
        include_str!("../migrations/2026-12-08-000006_omicron_readable_log/up.sql"),
    ),
];

/// How to build a pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// How many connections at most.
    pub max_size: u32,
    /// How long a checkout may wait before it fails (a transient error: the pool is exhausted).
    pub checkout_timeout: Duration,
    /// The limits every session of the pool runs under.
    pub session: SessionLimits,
    /// The `application_name` of every session (letters, digits, `-`, `_`, `.`, `/` and `:`; anything else is
    /// replaced by `_`): it tells this pool's sessions apart in `pg_stat_activity`.
    pub application_name: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 16,
            checkout_timeout: Duration::from_secs(10),
            session: SessionLimits::default(),
            application_name: "ratchet".to_owned(),
        }
    }
}

/// Limits set on every session the pool opens, so that no transaction of this executor is held forever.
///
/// An executor frozen in the middle of a transaction (SIGSTOP, a hung host, a GC-like stall) keeps its
/// row locks, and the executor that adopts its sagas would wait behind them for as long as the freeze lasts.
/// With these limits the server itself ends the frozen session after `idle_in_transaction` (rolling its
/// transaction back and releasing its locks), and a statement that waits for a lock longer than
/// `lock_timeout` fails with a transient error, to be retried: an adopter makes progress within about
/// `idle_in_transaction` of its predecessor freezing. When the frozen process thaws, its connection is gone,
/// its `COMMIT` (if it was about to send one) has an unknown outcome, and the engine resolves it from the
/// database, where the adoption has fenced it out: it writes nothing.
///
/// The engine's own transactions are not meant to idle: no call to another service is made inside one,
/// and a node's phases run between its statements without waiting on anything else. So the defaults are
/// generous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// `idle_in_transaction_session_timeout`: a session idle inside a transaction this long is terminated.
    pub idle_in_transaction: Duration,
    /// `lock_timeout`: a statement waiting this long for a lock fails (a transient error).
    pub lock_timeout: Duration,
    /// `statement_timeout`, if any: a statement running this long fails (a transient error).
    pub statement_timeout: Option<Duration>,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_in_transaction: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            statement_timeout: None,
        }
    }
}

impl SessionLimits {
    /// The `SET` statements that put a session under these limits (session-wide, not `LOCAL`).
    pub fn set_statements(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        format!(
            "SET idle_in_transaction_session_timeout = {}; SET lock_timeout = {}; SET statement_timeout = {}",
            ms(self.idle_in_transaction),
            ms(self.lock_timeout),
            self.statement_timeout.map_or(0, ms),
        )
    }

    /// The `SET LOCAL` statements that put one transaction under these limits, whatever its session's: for a
    /// transaction on a session ratchet did not open (a host's pool), sent with its `BEGIN`. (A `SET LOCAL` of
    /// `idle_in_transaction_session_timeout` holds while the transaction is open, which is when it matters.)
    /// Without a `statement_timeout` here, the session's stands.
    pub fn set_local_statements(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        let mut sql = format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}; SET LOCAL lock_timeout = {}",
            ms(self.idle_in_transaction),
            ms(self.lock_timeout),
        );
        if let Some(timeout) = self.statement_timeout {
            sql.push_str(&format!("; SET LOCAL statement_timeout = {}", ms(timeout)));
        }
        sql
    }
}

/// Builds a pool for `url` and checks that one connection can be made, so that a wrong URL or a missing
/// database is reported here, by name, rather than as a timeout later.
pub async fn connect_pool(url: &str, config: &PoolConfig) -> Result<DbPool, DbError> {
    let manager = session_manager(url, &config.session, &config.application_name);
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

/// The connection manager of a pool whose every session runs under `limits` and is named `application_name`
/// in `pg_stat_activity`: for a host that builds its own bb8 pool (its own size, timeouts, checks) and hands it
/// to the engine (`EngineBuilder::with_pool`). The limits cost one round trip when a connection is made, none
/// per checkout.
pub fn session_manager(
    url: &str,
    limits: &SessionLimits,
    application_name: &str,
) -> AsyncDieselConnectionManager<AsyncPgConnection> {
    let setup = format!(
        "{}; SET application_name = '{}'",
        limits.set_statements(),
        self::application_name(application_name)
    );
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup = Box::new(move |url| {
        let (url, setup) = (url.to_owned(), setup.clone());
        Box::pin(async move { establish_with(&url, &setup).await })
    });
    AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config)
}

/// One connection, set up with `setup` (one more round trip when it is made, none per checkout).
async fn establish_with(url: &str, setup: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(setup).await.map_err(|e| {
        diesel::ConnectionError::BadConnection(format!("setting up the session: {e}"))
    })?;
    Ok(conn)
}

/// `name` with every character outside a safe set replaced, so that it can be quoted as is.
fn application_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_./:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Ends every session whose `application_name` is `name` (the server rolls back their open transactions
/// and closes their sockets, as when a process dies), from a connection of its own to `url`. Returns how
/// many it ended.
pub async fn terminate_sessions(url: &str, name: &str) -> Result<i64, DbError> {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Ended {
        #[diesel(sql_type = BigInt)]
        ended: i64,
    }
    let mut conn = establish(url).await?;
    let row: Ended = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<Text, _>(application_name(name))
    .get_result(&mut conn)
    .await?;
    Ok(row.ended)
}

/// One connection outside any pool, under the default [`SessionLimits`] (so that no session ratchet opens,
/// the CLI's included, can hold a transaction forever).
pub async fn establish(url: &str) -> Result<AsyncPgConnection, DbError> {
    establish_with(url, &SessionLimits::default().set_statements())
        .await
        .map_err(DbError::from)
}

/// Applies every pending embedded migration in `migrations` to the database at `url`, retrying transient
/// failures (a backend terminated, the server restarting, a serialization failure) with
/// [`RetryPolicy::OPERATOR`](crate::retry::RetryPolicy::OPERATOR): each migration runs in a transaction of
/// its own, so an attempt cut short leaves every migration applied or not, and the next attempt applies what
/// is pending.
///
/// **Executors that start together** (several processes on a fresh or upgraded database, hosts rolling out
/// at once) are serialized: the whole step runs under a session-level advisory lock,
/// `MIGRATION_LOCK`, taken on the connection that applies the migrations. A start that finds the schema
/// being built waits for the lock, then finds nothing pending (or only what is still missing) and applies
/// nothing twice. Without it, two `CREATE TYPE` or `CREATE TABLE IF NOT EXISTS` of the same name race in
/// PostgreSQL's catalog and one fails (`duplicate key value violates unique constraint
/// "pg_type_typname_nsp_index"`). The lock is the session's, so a process that dies holding it releases it
/// with its connection. Advisory locks are PostgreSQL's: on CockroachDB, migrations are the embedder's (the
/// CockroachDB files, [`COCKROACHDB_SCHEMA_SQL`](crate::cockroachdb::COCKROACHDB_SCHEMA_SQL), applied by its
/// own schema tooling), and this function is not used there.
///
/// diesel's migration harness is synchronous, so it runs on a blocking thread through diesel-async's
/// connection wrapper (which works on either tokio runtime flavour).
pub async fn run_migrations(
    url: &str,
    migrations: &'static EmbeddedMigrations,
) -> Result<(), DbError> {
    crate::retry::retry_transient(
        crate::retry::RetryPolicy::OPERATOR,
        "applying migrations",
        || async move {
            let url = url.to_owned();
            tokio::task::spawn_blocking(move || {
                use diesel::Connection;
                use diesel::connection::SimpleConnection;
                use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
                let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
                conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
                let applied = conn
                    .run_pending_migrations(StaticMigrations(migrations))
                    .map(|_| ())
                    .map_err(migration_error);
                // Closing the connection releases the lock too; unlocking first lets the next start in
                // without waiting for the server to notice the close.
                if let Err(error) =
                    conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                {
                    tracing::debug!(%error, "unlocking the migration lock failed; closing the session ends it");
                }
                applied
            })
            .await
            .map_err(|error| DbError::Migration(format!("migration task failed: {error}")))?
        },
    )
    .await
}

/// The key of the advisory lock [`run_migrations`] holds while it applies migrations: one key for every
/// migration set (the saga log's, a datastore's), since one process applies them one after another. Advisory
/// locks belong to a database, so starts on different databases of one server do not wait for each other.
pub(crate) const MIGRATION_LOCK: i64 = 0x7261_7463_6865_7401; // "ratchet", 1

/// A migration harness error as a [`DbError`]: a query's error keeps its kind (so that a transient one is
/// retried); anything else is a permanent migration error.
fn migration_error(error: Box<dyn std::error::Error + Send + Sync>) -> DbError {
    // diesel_migrations wraps a migration's query error in a type it does not export: read its message.
    let message = error.to_string();
    if crate::error::message_is_transient(&message) {
        return DbError::Pool(format!("a migration met a transient failure: {message}"));
    }
    match error.downcast::<diesel::result::Error>() {
        Ok(query) => DbError::Query(*query),
        Err(other) => match other.downcast::<diesel::ConnectionError>() {
            Ok(connect) => DbError::Connect(*connect),
            Err(other) => DbError::Migration(other.to_string()),
        },
    }
}

/// A `&'static EmbeddedMigrations` as a migration source (diesel implements it only for the owned value, which
/// is not `Clone`).
pub(crate) struct StaticMigrations(pub &'static EmbeddedMigrations);

impl diesel::migration::MigrationSource<diesel::pg::Pg> for StaticMigrations {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<diesel::pg::Pg>>>> {
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(self.0)
    }
}

/// Whether database `name` exists on the server whose `postgres` database `admin_url` names.
pub async fn database_exists(admin_url: &str, name: &str) -> Result<bool, DbError> {
    exists_on(&mut establish(admin_url).await?, name).await
}

async fn exists_on(admin: &mut AsyncPgConnection, name: &str) -> Result<bool, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let found: Count =
        diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(admin)
            .await?;
    Ok(found.count > 0)
}

/// Creates database `name` (a plain identifier: letters, digits and `_`) on the server whose `postgres`
/// database `admin_url` names, unless it exists. Returns whether it created it.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<bool, DbError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::BadName(name.to_owned()));
    }
    let mut admin = establish(admin_url).await?;
    if exists_on(&mut admin, name).await? {
        return Ok(false);
    }
    match diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between the check and the CREATE (executors starting together): it
        // exists, which is all the caller asked for.
        Err(error) if exists_on(&mut admin, name).await? => {
            tracing::debug!(%error, "the database was created by someone else meanwhile");
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use diesel::migration::MigrationSource;

    #[test]
    fn the_exported_sql_is_every_embedded_migration_in_order() {
        let embedded: Vec<String> =
            MigrationSource::<diesel::pg::Pg>::migrations(&StaticMigrations(&SAGA_LOG_MIGRATIONS))
                .unwrap()
                .iter()
                .map(|m| m.name().to_string())
                .collect();
        let exported: Vec<&str> = MIGRATIONS_SQL.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, exported);
    }
}
