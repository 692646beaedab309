//! The host's schema and pool: its own tables, ratchet's saga log applied by the host's own migration step,
//! and the bb8 pool of diesel-async connections that the host and the engine share.

use anyhow::Context;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ratchet_store::{DbPool, MIGRATIONS_SQL, SessionLimits, session_manager};
use std::time::Duration;

/// The host's own tables. A widget is created by the typed saga (`widget.rs`), a project by the plain steno
/// saga (`legacy.rs`); every change of either appends an `audit_event` row, deliberately not idempotent, so
/// that an effect applied twice shows as two rows.
const HOST_TABLES: &str = "
CREATE TABLE widget (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'active'))
);
CREATE TABLE project (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready'))
);
CREATE TABLE audit_event (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    subject_id UUID NOT NULL,
    what TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL DEFAULT now()
);
";

/// A later release's table: each widget's storage volume, made by the `widget-storage` subsaga (`storage.rs`).
const VOLUME_TABLE: &str = "
CREATE TABLE volume (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('allocated'))
);
ALTER TABLE widget ADD COLUMN volume_id UUID;
";

/// Every migration of the host, in order: ratchet's saga log (its plain SQL files, as ratchet ships them),
/// then the host's own tables. A new ratchet release may append to `MIGRATIONS_SQL`; the next start applies
/// what is new.
fn migrations() -> Vec<(String, &'static str)> {
    let ratchet = MIGRATIONS_SQL
        .iter()
        .map(|(name, sql)| (format!("ratchet/{name}"), *sql));
    let host = [
        ("host/0001_widget_project_audit".to_owned(), HOST_TABLES),
        ("host/0002_volume".to_owned(), VOLUME_TABLE),
    ];
    ratchet.chain(host).collect()
}

/// Applies every migration not applied yet, each in a transaction of its own with its row in the host's
/// version table (`host_schema_migration`). An advisory lock makes two processes starting at once apply
/// each migration once. Returns the names applied now.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .context("connecting to migrate")?;
    conn.batch_execute(
        "BEGIN; SELECT pg_advisory_xact_lock(8111);
         CREATE TABLE IF NOT EXISTS host_schema_migration (
             name TEXT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );
         COMMIT",
    )
    .await?;
    let mut applied = Vec::new();
    for (name, sql) in migrations() {
        conn.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(8111)")
            .await?;
        let result = apply_once(&mut conn, &name, sql).await;
        let end = if matches!(result, Ok(true)) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        conn.batch_execute(end).await?;
        if result.with_context(|| format!("migration {name}"))? {
            applied.push(name);
        }
    }
    Ok(applied)
}

/// Applies one migration inside the caller's transaction unless its row says it was; whether it applied it.
async fn apply_once(conn: &mut AsyncPgConnection, name: &str, sql: &str) -> anyhow::Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let found: Found =
        diesel::sql_query("SELECT count(*) AS count FROM host_schema_migration WHERE name = $1")
            .bind::<Text, _>(name)
            .get_result(conn)
            .await?;
    if found.count > 0 {
        return Ok(false);
    }
    conn.batch_execute(sql).await?;
    diesel::sql_query("INSERT INTO host_schema_migration (name) VALUES ($1)")
        .bind::<Text, _>(name)
        .execute(conn)
        .await?;
    Ok(true)
}

/// The host's pool: bb8, diesel-async connections, every session under ratchet's `SessionLimits` (an
/// `idle_in_transaction_session_timeout` and a `lock_timeout`, so that a frozen process cannot hold its
/// locks forever). The engine takes one connection for each node transaction, one for each log write.
pub async fn pool(url: &str) -> anyhow::Result<DbPool> {
    let manager = session_manager(url, &SessionLimits::default(), "embedding-example");
    let pool = bb8::Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .await
        .context("building the pool")?;
    Ok(pool)
}
