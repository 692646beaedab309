//! Beginning and ending transactions by hand.
//!
//! The engine, not a node, begins and ends every transaction; nodes get the connection only while it is
//! inside one. These helpers go through diesel-async's transaction manager, so a node that calls
//! `conn.transaction(...)` inside ours gets a savepoint, never a second `BEGIN` or an early `COMMIT`.

use crate::backend::NodeConnection;
use diesel::result::Error as DieselError;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

/// `BEGIN` a serializable read-write transaction.
pub async fn begin_transaction(conn: &mut AsyncPgConnection) -> Result<(), DieselError> {
    AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN ISOLATION LEVEL SERIALIZABLE").await
}

/// `BEGIN` a serializable read-write transaction and run `then` (statements without results, such as a
/// `SAVEPOINT`) in the same round trip. If `then` fails, the transaction is rolled back before the error is
/// returned, so as not to leave the connection inside a transaction diesel does not know of.
pub async fn begin_transaction_then<C: NodeConnection + ?Sized>(
    conn: &mut C,
    then: &str,
) -> Result<(), DieselError> {
    begin_as_then(conn, "BEGIN ISOLATION LEVEL SERIALIZABLE", then).await
}

/// `BEGIN` a serializable read-only transaction (PostgreSQL rejects every write inside it) and run `then` in
/// the same round trip, as [`begin_transaction_then`].
pub async fn begin_read_only_transaction_then<C: NodeConnection + ?Sized>(
    conn: &mut C,
    then: &str,
) -> Result<(), DieselError> {
    begin_as_then(conn, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", then).await
}

async fn begin_as_then<C: NodeConnection + ?Sized>(
    conn: &mut C,
    begin: &str,
    then: &str,
) -> Result<(), DieselError> {
    let sql = format!("{begin}; {then}");
    match conn.begin_transaction_sql(&sql).await {
        Ok(()) => Ok(()),
        Err(error) => {
            // The BEGIN may have run and the statement after it failed: end that transaction. (If the
            // connection itself failed, this fails too, and the pool discards the connection.)
            if let Err(rollback) = conn.batch_execute("ROLLBACK").await {
                tracing::warn!(%rollback, "rollback after a failed BEGIN failed");
            }
            Err(error)
        }
    }
}

/// `COMMIT` the open transaction.
pub async fn commit_transaction<C: NodeConnection + ?Sized>(
    conn: &mut C,
) -> Result<(), DieselError> {
    conn.commit_transaction().await
}

/// `ROLLBACK` the open transaction. A failure to roll back leaves the connection marked broken, and the pool
/// then discards it, which rolls the transaction back on the server.
pub async fn rollback_transaction<C: NodeConnection + ?Sized>(conn: &mut C) {
    if let Err(error) = conn.rollback_transaction().await {
        tracing::warn!(%error, "rollback failed; the connection will be discarded");
    }
}

/// Runs `body` in a serializable read-write transaction: commits if it returns `Ok`, rolls back otherwise.
pub async fn in_transaction<T, E, F>(conn: &mut AsyncPgConnection, body: F) -> Result<T, E>
where
    E: From<DieselError>,
    F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> futures::future::BoxFuture<'c, Result<T, E>>,
{
    begin_transaction(conn).await?;
    match body(conn).await {
        Ok(value) => {
            commit_transaction(conn).await?;
            Ok(value)
        }
        Err(error) => {
            rollback_transaction(conn).await;
            Err(error)
        }
    }
}

/// How deep diesel's transaction nesting on `conn` is: 1 inside the engine's own transaction, more when a
/// caller began a nested transaction (a savepoint) and did not end it (a `conn.transaction(..)` future dropped
/// half-way does that), `None` outside any transaction.
pub fn transaction_depth(conn: &mut AsyncPgConnection) -> Option<u32> {
    <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(
        conn,
    )
    .transaction_depth()
    .ok()
    .flatten()
    .map(|depth| depth.get())
}
