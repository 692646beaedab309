//! The baseline's saga log: a plain diesel `SecStore` in Omicron's style (nexus/db-queries `saga.rs` and
//! Nexus's `CockroachDbSecStore`).
//!
//! Every call is one statement on its own, outside any transaction, written on the same tables as ratchet's
//! store (`saga`, `saga_node_event`):
//! - `saga_create`: `INSERT INTO saga`;
//! - `record_event`: `INSERT INTO saga_node_event … ON CONFLICT DO NOTHING` (idempotent), for *every* event,
//!   so a node's `started` and `succeeded` are two durable commits around the action's own;
//! - `saga_update`: `UPDATE saga SET saga_state … WHERE id AND current_sec AND adopt_generation` (Omicron's
//!   generation check).
//!
//! `record_event` and `saga_update` cannot fail in steno's trait: like Omicron's store, they retry until the
//! write lands. This store has none of ratchet's fencing, held events or commit records: it is the baseline.

use crate::forward_retry::FORWARD_RETRY;
use chrono::Utc;
use diesel::sql_types::{BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_store::{DbError, DbPool, EventRow};
use std::time::Duration;
use steno::{SagaCachedState, SagaCreateParams, SagaId, SagaNodeEvent};
use uuid::Uuid;

/// The plain store of one baseline executor.
#[derive(Debug)]
pub(crate) struct BaselineSecStore {
    pool: DbPool,
    sec_id: Uuid,
}

impl BaselineSecStore {
    pub(crate) fn new(pool: DbPool, sec_id: Uuid) -> BaselineSecStore {
        BaselineSecStore { pool, sec_id }
    }

    async fn insert_saga(&self, params: &SagaCreateParams) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        let now = Utc::now();
        diesel::sql_query(
            "INSERT INTO saga (id, creator, time_created, name, saga_dag, definition_version, saga_state, \
                 current_sec, adopt_generation, adopt_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::saga_state, $2, 1, $3)",
        )
        .bind::<SqlUuid, _>(uuid_of(params.id))
        .bind::<SqlUuid, _>(self.sec_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(params.name.to_string())
        .bind::<Jsonb, _>(&params.dag)
        .bind::<Int4, _>(1)
        .bind::<Text, _>(params.state.to_string())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    async fn insert_event(&self, row: &EventRow) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query(
            "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind::<SqlUuid, _>(row.saga_id)
        .bind::<BigInt, _>(row.node_id)
        .bind::<Text, _>(&row.event_type)
        .bind::<Nullable<Jsonb>, _>(&row.data)
        .bind::<Timestamptz, _>(row.event_time)
        .bind::<SqlUuid, _>(row.creator)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    async fn update_state(&self, id: Uuid, state: &str) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query(
            "UPDATE saga SET saga_state = $2::saga_state, \
                 time_finished = CASE WHEN $2 = 'done' THEN now() ELSE time_finished END \
             WHERE id = $1 AND current_sec = $3 AND adopt_generation = $4",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(state)
        .bind::<SqlUuid, _>(self.sec_id)
        .bind::<BigInt, _>(1_i64)
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// Retries `write` until it succeeds (steno's `record_event` and `saga_update` cannot fail).
async fn until_it_lands<F, Fut>(what: &str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbError>>,
{
    let mut delay = Duration::from_millis(5);
    loop {
        match write().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, what, "baseline store: write failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[async_trait::async_trait]
impl steno::SecStore for BaselineSecStore {
    /// Retried on transient failures (serialization failures under load), as ratchet's store does.
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.insert_saga(&params).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => match FORWARD_RETRY.delay(attempt) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(error.into()),
                },
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn record_event(&self, event: SagaNodeEvent) {
        let row = match EventRow::new(&event, self.sec_id) {
            Ok(row) => row,
            Err(error) => {
                tracing::error!(%error, "baseline store: event cannot be encoded; dropped");
                return;
            }
        };
        until_it_lands("record_event", || self.insert_event(&row)).await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let state = update.to_string();
        until_it_lands("saga_update", || self.update_state(uuid_of(id), &state)).await;
    }
}

pub(crate) fn uuid_of(id: SagaId) -> Uuid {
    newtype_uuid::GenericUuid::into_untyped_uuid(id)
}
