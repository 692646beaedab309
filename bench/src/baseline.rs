//! The plain-steno executor the baseline sagas run on: one steno SEC over [`BaselineSecStore`], and the retry
//! loop its actions use for their own transactions.
//!
//! A baseline action is written as Nexus writes one: its reads and writes in one transaction of its own
//! (Nexus's `transaction_retry_wrapper`), retried on serialization failures, with the saga log's `started`
//! and `succeeded` events written by the store around it.

use crate::BenchError;
use crate::baseline_store::BaselineSecStore;
use crate::forward_retry::FORWARD_RETRY;
use ratchet_datastore::DatastoreError;
use ratchet_store::{DbConnection, DbPool, in_transaction};
use std::sync::Arc;
use steno::{ActionError, ActionRegistry, SagaDag, SagaId, SagaResult, SagaType, SecClient};
use uuid::Uuid;

/// One plain steno SEC.
pub(crate) struct BaselineSec {
    client: SecClient,
}

impl BaselineSec {
    pub(crate) fn start(pool: DbPool) -> BaselineSec {
        let store = Arc::new(BaselineSecStore::new(pool, Uuid::new_v4()));
        let log = slog::Logger::root(ratchet_engine::slog_bridge::TracingDrain, slog::o!());
        BaselineSec {
            client: steno::sec(log, store),
        }
    }

    /// Creates saga `id` and runs it to rest; fails unless it succeeded.
    pub(crate) async fn run<T: SagaType>(
        &self,
        id: Uuid,
        cx: Arc<T::ExecContextType>,
        dag: Arc<SagaDag>,
        registry: Arc<ActionRegistry<T>>,
        saga: &'static str,
    ) -> Result<(), BenchError> {
        let saga_id: SagaId = newtype_uuid::GenericUuid::from_untyped_uuid(id);
        let future = self
            .client
            .saga_create(saga_id, cx, dag, registry)
            .await
            .map_err(|e| BenchError::Steno(format!("{e:#}")))?;
        self.client
            .saga_start(saga_id)
            .await
            .map_err(|e| BenchError::Steno(format!("{e:#}")))?;
        let result: SagaResult = future.await;
        match result.kind {
            Ok(_) => Ok(()),
            Err(error) => Err(BenchError::SagaFailed {
                implementation: "plain steno",
                saga,
                outcome: format!(
                    "node {} failed: {}",
                    error.error_node_name.as_ref(),
                    error.error_source
                ),
            }),
        }
    }

    pub(crate) async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

/// How a baseline action's statements are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// `BEGIN ISOLATION LEVEL SERIALIZABLE` … `COMMIT`: several statements, one transaction.
    Transaction,
    /// One statement, committed on its own (autocommit): one round trip, one transaction.
    Autocommit,
}

/// Runs `body` on a connection of `pool`, as one transaction of its own (see [`Wrap`]), retrying it whole on
/// transient failures (serialization failures under concurrency), as Nexus's actions do.
pub(crate) async fn in_own_transaction<T, F>(
    pool: &DbPool,
    wrap: Wrap,
    mut body: F,
) -> Result<T, ActionError>
where
    F: for<'c> FnMut(
        &'c mut DbConnection,
    ) -> futures::future::BoxFuture<'c, Result<T, DatastoreError>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome: Result<T, ActionTxError> = async {
            let mut conn = pool.get().await.map_err(ratchet_store::DbError::from)?;
            Ok(match wrap {
                Wrap::Transaction => in_transaction(&mut conn, |conn| body(conn)).await?,
                Wrap::Autocommit => body(&mut conn).await?,
            })
        }
        .await;
        let error = match outcome {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match FORWARD_RETRY.delay(attempt) {
            Some(delay) if is_transient(&error) => tokio::time::sleep(delay).await,
            _ => return Err(ActionError::action_failed(error.to_string())),
        }
    }
}

/// Errors of a baseline action's transaction.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionTxError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Db(#[from] ratchet_store::DbError),
}

fn is_transient(error: &ActionTxError) -> bool {
    match error {
        ActionTxError::Datastore(error) => error.is_transient(),
        ActionTxError::Db(error) => error.is_transient(),
    }
}
