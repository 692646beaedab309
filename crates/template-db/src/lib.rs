//! Fresh databases on a PostgreSQL server, each cloned from a migrated template: the scratch databases of the
//! fault harness (one per matrix cell), of the benchmark (one per measurement) and of the tests (one per test,
//! through `ratchet-test-utils`).
//!
//! # Design
//!
//! A [`DatabaseServer`] is an embedded cluster (`ratchet-embedded-pg`) or an external server's URL. A fresh
//! database holds the saga log's schema plus the caller's migration sets; it is made by `CREATE DATABASE …
//! TEMPLATE`, from a template migrated once per set of migrations and named after the migrations' names. The
//! template is migrated under another name and then renamed into place (one statement), for concurrent
//! processes (nextest runs every test in a process of its own).
//!
//! It sits on the ground floor, beside the saga log it migrates, because the test kit (`ratchet-test-utils`,
//! on this floor) builds on it as well as the harness, the benchmark and the CLI above; nothing on a saga's
//! path uses it.

use diesel::migration::MigrationSource;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::EmbeddedMigrations;
use ratchet_embedded_pg::Cluster;
use ratchet_store::{DbError, SAGA_LOG_MIGRATIONS, establish, run_migrations};

/// A fresh, migrated database on a [`DatabaseServer`]: a test's, a matrix cell's or a benchmark run's.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    /// The database's connection URL.
    pub url: String,
    /// Its name.
    pub name: String,
}

/// A server fresh databases are made on: an embedded cluster, or an external server's URL.
#[derive(Clone, Debug)]
pub enum DatabaseServer {
    /// A private cluster, reached on its Unix socket.
    Embedded(Cluster),
    /// A server's URL (any database of it: fresh databases replace its name).
    External(String),
}

impl DatabaseServer {
    /// The URL of database `dbname` on this server.
    pub fn url(&self, dbname: &str) -> String {
        match self {
            DatabaseServer::Embedded(cluster) => cluster.url(dbname),
            DatabaseServer::External(url) => replace_database(url, dbname),
        }
    }

    /// Creates a fresh database holding the saga log's schema plus `extra` migration sets, cloned from a
    /// migrated template (made once per set of migrations).
    pub async fn fresh_database(
        &self,
        extra: &[&'static EmbeddedMigrations],
    ) -> Result<TestDatabase, DbError> {
        let mut sets = vec![&SAGA_LOG_MIGRATIONS];
        sets.extend_from_slice(extra);
        let template = ensure_template(self, &sets).await?;
        let name = format!("ratchet_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = establish(&self.url("postgres")).await?;
        diesel::sql_query(format!(
            "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
        ))
        .execute(&mut admin)
        .await?;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
        })
    }

    /// Creates a fresh, empty database (no saga log, no migrations table): for a test that builds a schema
    /// by hand, such as the one a database had before ratchet.
    pub async fn blank_database(&self) -> Result<TestDatabase, DbError> {
        let name = format!("ratchet_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = establish(&self.url("postgres")).await?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
        })
    }

    /// Drops a database made by [`DatabaseServer::fresh_database`], closing what is still connected to it.
    ///
    /// `WITH (FORCE)` is PostgreSQL 13+ only (CockroachDB has no such clause): test and harness tooling only,
    /// never on a saga's path.
    pub async fn drop_database(&self, database: &TestDatabase) -> Result<(), DbError> {
        let mut admin = establish(&self.url("postgres")).await?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            database.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// Replaces the database name in a `postgresql://…/name?…` URL.
fn replace_database(url: &str, dbname: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{dbname}?{query}"),
        None => format!("{base}/{dbname}"),
    }
}

/// Makes sure a template holding exactly `sets` exists and returns its name. The name is derived from the
/// migrations' names, so a new migration makes a new template.
//
// TODO-robustness A migration edited in place (same name, new SQL) reuses a stale template on a long-lived
// test server; stop the server (`ratchet db stop` for the CLI's, or remove the test cluster) after doing so.
async fn ensure_template(
    server: &DatabaseServer,
    sets: &[&'static EmbeddedMigrations],
) -> Result<String, DbError> {
    let mut names = Vec::new();
    for set in sets {
        let migrations = MigrationSource::<diesel::pg::Pg>::migrations(*set)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        names.extend(migrations.iter().map(|m| m.name().to_string()));
    }
    let fingerprint = names
        .iter()
        .flat_map(|n| n.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let template = format!("ratchet_tpl_{fingerprint:016x}");
    let mut admin = establish(&server.url("postgres")).await?;
    if database_exists(&mut admin, &template).await? {
        return Ok(template);
    }
    // Build under a private name, then publish with a rename, which is atomic and fails if another process
    // published first.
    let building = format!("ratchet_tplbuild_{}", uuid::Uuid::new_v4().simple());
    diesel::sql_query(format!("CREATE DATABASE \"{building}\""))
        .execute(&mut admin)
        .await?;
    for set in sets {
        run_migrations(&server.url(&building), set).await?;
    }
    let renamed = diesel::sql_query(format!(
        "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
    ))
    .execute(&mut admin)
    .await;
    if renamed.is_err() {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{building}\""))
            .execute(&mut admin)
            .await?;
        if !database_exists(&mut admin, &template).await? {
            renamed?;
        }
    }
    Ok(template)
}

async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> Result<bool, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let row: Count =
        diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(name)
            .get_result(conn)
            .await?;
    Ok(row.count > 0)
}

#[cfg(test)]
mod test {
    use super::replace_database;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            replace_database("postgresql://postgres@/ratchet?host=/tmp/s", "t1"),
            "postgresql://postgres@/t1?host=/tmp/s"
        );
        assert_eq!(
            replace_database("postgres://u:p@localhost:5432/db", "t2"),
            "postgres://u:p@localhost:5432/t2"
        );
        assert_eq!(
            replace_database("postgres://localhost", "t3"),
            "postgres://localhost/t3"
        );
    }
}
