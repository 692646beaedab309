//! The node backend seam: the one held connection a database node's transaction runs on, whatever its type.
//!
//! A database node's transaction (its prepare, commit and compensation, the engine's commit record, events and
//! fence) runs on one connection from begin to commit. The engine and the store's statements for that
//! transaction are written once, over [`NodeConnection`]: begin (with statements of the same round trip),
//! execute, load, commit, roll back, and the transaction depth. Two connection types implement it:
//!
//! - diesel-async's `AsyncPgConnection` (the default, and the saga log's own connection);
//! - with the `async-bb8-diesel` feature, `async_bb8_diesel::Connection<C>`: Nexus's connection type (sync
//!   diesel run on tokio's blocking pool; `C` is `PgConnection`, or Nexus's `DTraceConnection<PgConnection>`),
//!   checked out of the host's bb8 pool of `async_bb8_diesel::ConnectionManager<C>`.
//!
//! The store's statements reach the seam as a [`Statement`]: a raw `sql_query` with its binds boxed and owned
//! (`'static`), which both diesel-async and sync diesel run unchanged (sync diesel runs it on a blocking
//! thread, so it must own its binds). Rows come back as `QueryableByName` structs. Nothing else of the store
//! is generic: the saga log (steno's events, saga rows, recovery, operators) stays on the engine's own pool.
//!
//! A connection the engine checks out for a node comes from a [`NodePool`]: the engine's own pool for
//! `AsyncPgConnection`, the host's pool for any other type (registered with the engine by connection type).

use crate::error::DbError;
use diesel::QueryResult;
use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use futures::future::BoxFuture;
use std::ops::DerefMut;

/// A statement the store runs on a node's connection: raw SQL with owned, boxed binds.
pub type Statement = BoxedSqlQuery<'static, Pg, SqlQuery>;

/// `sql` as a [`Statement`], to bind on.
pub fn statement(sql: impl Into<String>) -> Statement {
    diesel::sql_query(sql).into_boxed()
}

/// A connection a database node's transaction can run on: the backend seam (see the module doc).
///
/// Every method runs on this one connection; none of them checks one out. `begin_transaction_sql`,
/// `commit_transaction` and `rollback_transaction` go through diesel's transaction manager of the connection
/// (`AnsiTransactionManager`), so a node that calls its connection's own `transaction` inside the engine's gets
/// a savepoint, never a second `BEGIN`.
pub trait NodeConnection: Send + 'static {
    /// Runs `sql` (statements without results), as one round trip.
    fn batch_execute<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>>;

    /// Runs `statement`, returning the number of rows it affected.
    fn execute(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<usize>>;

    /// Runs `statement`, returning its rows.
    fn load<U>(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<Vec<U>>>
    where
        U: QueryableByName<Pg> + Send + 'static;

    /// Begins a transaction with `sql` (`BEGIN …`, and statements to run in the same round trip), at depth 0
    /// only.
    fn begin_transaction_sql<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>>;

    /// Commits the open transaction (or releases the innermost savepoint).
    fn commit_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>>;

    /// Rolls the open transaction back (or the innermost savepoint).
    fn rollback_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>>;

    /// How deep diesel's transaction nesting is: 1 inside the engine's transaction, `None` outside any (or
    /// when the transaction manager is broken).
    fn transaction_depth(&mut self) -> BoxFuture<'_, Option<u32>>;
}

/// One statement's single row (diesel's `get_result`): `NotFound` without one.
pub async fn get_result<U, C>(conn: &mut C, statement: Statement) -> QueryResult<U>
where
    U: QueryableByName<Pg> + Send + 'static,
    C: NodeConnection + ?Sized,
{
    conn.load::<U>(statement)
        .await?
        .into_iter()
        .next()
        .ok_or(diesel::result::Error::NotFound)
}

/// A connection checked out of a [`NodePool`]: it goes back to its pool when dropped.
pub type NodeCheckout<C> = Box<dyn DerefMut<Target = C> + Send>;

/// Where the engine checks out the connection of a database node's transaction, for connection type `C`.
pub trait NodePool<C: NodeConnection>: Send + Sync + 'static {
    /// One connection, held until the checkout is dropped. A pool that cannot give one in time fails with a
    /// transient error.
    fn checkout(&self) -> BoxFuture<'_, Result<NodeCheckout<C>, DbError>>;
}

mod diesel_async_backend {
    use super::{NodeCheckout, NodeConnection, NodePool, Statement};
    use crate::error::DbError;
    use crate::pool::DbPool;
    use diesel::QueryResult;
    use diesel::QueryableByName;
    use diesel::pg::Pg;
    use diesel_async::{
        AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
        TransactionManager,
    };
    use futures::FutureExt;
    use futures::future::BoxFuture;

    impl NodeConnection for AsyncPgConnection {
        fn batch_execute<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>> {
            SimpleAsyncConnection::batch_execute(self, sql).boxed()
        }

        fn execute(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<usize>> {
            RunQueryDsl::execute(statement, self).boxed()
        }

        fn load<U>(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<Vec<U>>>
        where
            U: QueryableByName<Pg> + Send + 'static,
        {
            RunQueryDsl::load::<U>(statement, self).boxed()
        }

        fn begin_transaction_sql<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>> {
            AnsiTransactionManager::begin_transaction_sql(self, sql).boxed()
        }

        fn commit_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::commit_transaction(
                self,
            )
            .boxed()
        }

        fn rollback_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::rollback_transaction(
                self,
            )
            .boxed()
        }

        fn transaction_depth(&mut self) -> BoxFuture<'_, Option<u32>> {
            std::future::ready(crate::transaction::transaction_depth(self)).boxed()
        }
    }

    impl NodePool<AsyncPgConnection> for DbPool {
        fn checkout(&self) -> BoxFuture<'_, Result<NodeCheckout<AsyncPgConnection>, DbError>> {
            async move {
                let conn = self.get_owned().await.map_err(DbError::from)?;
                Ok(Box::new(conn) as NodeCheckout<AsyncPgConnection>)
            }
            .boxed()
        }
    }
}

#[cfg(feature = "async-bb8-diesel")]
mod async_bb8_diesel_backend {
    //! Nexus's connection type. Each call runs sync diesel on tokio's blocking pool (async-bb8-diesel's
    //! `run`), on the connection the node's transaction holds. A panic on the blocking thread (a node's
    //! closure, or a poisoned connection mutex after one) comes back as a broken-transaction-manager error,
    //! never as a panic of the engine's runner.
    use super::{NodeCheckout, NodeConnection, NodePool, Statement};
    use crate::error::DbError;
    use async_bb8_diesel::{AsyncConnection, Connection, ConnectionManager};
    use diesel::QueryableByName;
    use diesel::connection::{AnsiTransactionManager, LoadConnection, TransactionManager};
    use diesel::pg::Pg;
    use diesel::r2d2::R2D2Connection;
    use diesel::result::Error as DieselError;
    use diesel::{QueryResult, RunQueryDsl};
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use std::panic::AssertUnwindSafe;

    /// The sync connection types the backend runs on: PostgreSQL, with diesel's ANSI transaction manager.
    pub trait SyncPgConnection:
        R2D2Connection
        + LoadConnection
        + diesel::Connection<Backend = Pg, TransactionManager = AnsiTransactionManager>
        + Send
        + 'static
    {
    }

    impl<C> SyncPgConnection for C where
        C: R2D2Connection
            + LoadConnection
            + diesel::Connection<Backend = Pg, TransactionManager = AnsiTransactionManager>
            + Send
            + 'static
    {
    }

    /// Runs `work` on the sync connection on a blocking thread; a panic there is an error here.
    fn on_blocking<C, R, F>(conn: &Connection<C>, work: F) -> BoxFuture<'_, QueryResult<R>>
    where
        C: SyncPgConnection,
        R: Send + 'static,
        F: FnOnce(&mut C) -> QueryResult<R> + Send + 'static,
    {
        AssertUnwindSafe(conn.run(work))
            .catch_unwind()
            .map(|result| result.unwrap_or(Err(DieselError::BrokenTransactionManager)))
            .boxed()
    }

    impl<C: SyncPgConnection> NodeConnection for Connection<C> {
        fn batch_execute<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>> {
            let sql = sql.to_owned();
            on_blocking(self, move |conn| conn.batch_execute(&sql))
        }

        fn execute(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<usize>> {
            on_blocking(self, move |conn| statement.execute(conn))
        }

        fn load<U>(&mut self, statement: Statement) -> BoxFuture<'_, QueryResult<Vec<U>>>
        where
            U: QueryableByName<Pg> + Send + 'static,
        {
            on_blocking(self, move |conn| statement.load::<U>(conn))
        }

        fn begin_transaction_sql<'c>(&'c mut self, sql: &'c str) -> BoxFuture<'c, QueryResult<()>> {
            let sql = sql.to_owned();
            on_blocking(self, move |conn| {
                AnsiTransactionManager::begin_transaction_sql(conn, &sql)
            })
        }

        fn commit_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            on_blocking(self, |conn| {
                <AnsiTransactionManager as TransactionManager<C>>::commit_transaction(conn)
            })
        }

        fn rollback_transaction(&mut self) -> BoxFuture<'_, QueryResult<()>> {
            on_blocking(self, |conn| {
                <AnsiTransactionManager as TransactionManager<C>>::rollback_transaction(conn)
            })
        }

        fn transaction_depth(&mut self) -> BoxFuture<'_, Option<u32>> {
            on_blocking(self, |conn| {
                Ok(
                    <AnsiTransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
                        conn,
                    )
                    .transaction_depth()
                    .ok()
                    .flatten()
                    .map(|depth| depth.get()),
                )
            })
            .map(|depth| depth.ok().flatten())
            .boxed()
        }
    }

    impl<C: SyncPgConnection> NodePool<Connection<C>> for bb8::Pool<ConnectionManager<C>> {
        fn checkout(&self) -> BoxFuture<'_, Result<NodeCheckout<Connection<C>>, DbError>> {
            async move {
                let conn = self
                    .get_owned()
                    .await
                    .map_err(|error| DbError::Pool(error.to_string()))?;
                Ok(Box::new(conn) as NodeCheckout<Connection<C>>)
            }
            .boxed()
        }
    }
}

#[cfg(feature = "async-bb8-diesel")]
pub use async_bb8_diesel_backend::SyncPgConnection;
