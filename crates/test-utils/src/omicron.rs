//! Omicron's saga log as Nexus has it today, before ratchet: its schema, and a steno `SecStore` that writes
//! rows exactly as Nexus's `CockroachDbSecStore` does. Tests use them to build a database holding plain steno
//! sagas in flight, then let ratchet's migrations upgrade it in place and ratchet's engine finish them.
//!
//! The schema here is written independently of ratchet's migrations on purpose: it is the starting point an
//! upgrade must accept, not what ratchet's first migration happens to create.
//!
//! What [`OmicronSecStore`] reproduces of Nexus's store:
//! - `saga_create` inserts the saga with `creator` = `current_sec` = the executor (SEC), the state steno gives
//!   (`running`), `adopt_generation` 1, `adopt_time` = `time_created`, and no abandonment metadata;
//! - `record_event` inserts one `saga_node_event` row, `ON CONFLICT DO NOTHING` (a retried insert is a no-op),
//!   whose `data` is the output for `succeeded`, the serialized error for `failed`, and `NULL` for every other
//!   event (`undo_failed` included: Nexus records no error for it), retrying failures forever;
//! - `saga_update` sets `saga_state` where the saga's `current_sec` is this executor (it does not check the
//!   generation), retrying failures forever.

use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_store::{DbPool, uuid_of};
use std::time::Duration;
use steno::{SagaCachedState, SagaCreateParams, SagaId, SagaNodeEvent, SagaNodeEventType};
use uuid::Uuid;

/// Omicron's `saga` and `saga_node_event` tables and their types, as Nexus's schema creates them, in
/// PostgreSQL's dialect (`STRING(n)` is `VARCHAR(n)`, `INT` is `BIGINT`, `CREATE TYPE` has no `IF NOT EXISTS`).
pub const OMICRON_SAGA_SCHEMA: &str = r#"
CREATE TYPE saga_state AS ENUM ('running', 'unwinding', 'done', 'abandoned');
CREATE TYPE saga_abandon_reason AS ENUM ('omdb', 'unrecoverable', 'orphaned');
CREATE TABLE saga (
    id UUID PRIMARY KEY,
    creator UUID NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    name VARCHAR(128) NOT NULL,
    saga_dag JSONB NOT NULL,
    saga_state saga_state NOT NULL,
    current_sec UUID,
    adopt_generation BIGINT NOT NULL,
    adopt_time TIMESTAMPTZ NOT NULL,
    abandon_time TIMESTAMPTZ,
    abandon_reason saga_abandon_reason,
    abandon_comment TEXT,
    CONSTRAINT abandoned_requires_metadata CHECK (
        saga_state != 'abandoned'
        OR (abandon_time IS NOT NULL AND abandon_reason IS NOT NULL AND abandon_comment IS NOT NULL)),
    CONSTRAINT not_abandoned_requires_no_metadata CHECK (
        saga_state = 'abandoned'
        OR (abandon_time IS NULL AND abandon_reason IS NULL AND abandon_comment IS NULL))
);
CREATE UNIQUE INDEX lookup_saga_by_sec ON saga (current_sec, id) WHERE saga_state != 'done';
CREATE TABLE saga_node_event (
    saga_id UUID NOT NULL,
    node_id BIGINT NOT NULL,
    event_type VARCHAR(31) NOT NULL,
    data JSONB,
    event_time TIMESTAMPTZ NOT NULL,
    creator UUID NOT NULL,
    PRIMARY KEY (saga_id, node_id, event_type)
);
"#;

/// A steno `SecStore` writing Omicron's tables the way Nexus's `CockroachDbSecStore` does (see the module
/// documentation).
#[derive(Clone)]
pub struct OmicronSecStore {
    sec_id: Uuid,
    pool: DbPool,
}

impl std::fmt::Debug for OmicronSecStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OmicronSecStore")
            .field("sec_id", &self.sec_id)
            .finish_non_exhaustive()
    }
}

impl OmicronSecStore {
    pub fn new(sec_id: Uuid, pool: DbPool) -> OmicronSecStore {
        OmicronSecStore { sec_id, pool }
    }

    /// Runs `write` until it succeeds, as Nexus's store does (its backoff retries forever).
    async fn retry_forever<F, Fut>(&self, what: &str, write: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            match write().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "{what}: retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// steno's state label as Omicron's `saga_state` enum spells it.
fn state_label(state: SagaCachedState) -> &'static str {
    match state {
        SagaCachedState::Running => "running",
        SagaCachedState::Unwinding => "unwinding",
        SagaCachedState::Done => "done",
    }
}

#[async_trait::async_trait]
impl steno::SecStore for OmicronSecStore {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query(
            "INSERT INTO saga (id, creator, time_created, name, saga_dag, saga_state, current_sec, \
                               adopt_generation, adopt_time) \
             VALUES ($1, $2, $3, $4, $5, $6::saga_state, $2, 1, $3)",
        )
        .bind::<SqlUuid, _>(uuid_of(params.id))
        .bind::<SqlUuid, _>(self.sec_id)
        .bind::<Timestamptz, _>(chrono::Utc::now())
        .bind::<Text, _>(params.name.to_string())
        .bind::<Jsonb, _>(&params.dag)
        .bind::<Text, _>(state_label(params.state))
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    async fn record_event(&self, event: SagaNodeEvent) {
        let data = match &event.event_type {
            SagaNodeEventType::Succeeded(output) => Some((**output).clone()),
            SagaNodeEventType::Failed(error) => serde_json::to_value(error).ok(),
            _ => None,
        };
        let saga_id = uuid_of(event.saga_id);
        let node_id = i64::from(u32::from(event.node_id));
        let label = event.event_type.label();
        let data = &data;
        self.retry_forever("recording saga event", || async move {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query(
                "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (saga_id, node_id, event_type) DO NOTHING",
            )
            .bind::<SqlUuid, _>(saga_id)
            .bind::<BigInt, _>(node_id)
            .bind::<Text, _>(label)
            .bind::<Nullable<Jsonb>, _>(data)
            .bind::<Timestamptz, _>(chrono::Utc::now())
            .bind::<SqlUuid, _>(self.sec_id)
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let saga_id = uuid_of(id);
        self.retry_forever("updating saga state", || async move {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query(
                "UPDATE saga SET saga_state = $2::saga_state, abandon_time = NULL, abandon_reason = NULL, \
                                 abandon_comment = NULL \
                 WHERE id = $1 AND current_sec = $3",
            )
            .bind::<SqlUuid, _>(saga_id)
            .bind::<Text, _>(state_label(update))
            .bind::<SqlUuid, _>(self.sec_id)
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .await;
    }
}

/// The labels Omicron's `saga_state` enum decodes (its diesel enum in `nexus/db-model`): one row holding any
/// other label fails every listing that reads it, whole.
pub const OMICRON_SAGA_STATES: &[&str] = &["running", "unwinding", "done", "abandoned"];

/// What Omicron's reader of a `saga_node_event` row accepts, as (event type, whether `data` is set): its
/// conversion into a steno event (steno 0.4, which Omicron pins) takes exactly these and refuses every other row,
/// `undo_failed` ones whatever their data. A `failed` row's data must also decode as steno's `ActionError`.
pub const OMICRON_EVENT_SHAPES: &[(&str, bool)] = &[
    ("started", false),
    ("succeeded", true),
    ("failed", true),
    ("undo_started", false),
    ("undo_finished", false),
];

/// Every row of `saga` and `saga_node_event` that Omicron's readers would refuse, described (empty when every
/// row parses): a `saga_state` outside [`OMICRON_SAGA_STATES`], abandonment metadata that does not match the
/// state (Omicron's validation of a saga row), an event outside [`OMICRON_EVENT_SHAPES`], a `failed` event whose
/// data is not an `ActionError`.
pub async fn rows_omicron_cannot_parse(
    conn: &mut diesel_async::AsyncPgConnection,
) -> Result<Vec<String>, diesel::result::Error> {
    #[derive(diesel::QueryableByName)]
    struct SagaRow {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        abandon_fields: i32,
    }
    #[derive(diesel::QueryableByName)]
    struct EventRow {
        #[diesel(sql_type = SqlUuid)]
        saga_id: Uuid,
        #[diesel(sql_type = BigInt)]
        node_id: i64,
        #[diesel(sql_type = Text)]
        event_type: String,
        #[diesel(sql_type = Nullable<Jsonb>)]
        data: Option<serde_json::Value>,
    }
    let mut problems = Vec::new();
    let sagas: Vec<SagaRow> = diesel::sql_query(
        "SELECT id, saga_state::TEXT AS state, \
                ((abandon_time IS NOT NULL)::INT + (abandon_reason IS NOT NULL)::INT \
                 + (abandon_comment IS NOT NULL)::INT) AS abandon_fields \
         FROM saga ORDER BY id",
    )
    .load(conn)
    .await?;
    for saga in sagas {
        if !OMICRON_SAGA_STATES.contains(&saga.state.as_str()) {
            problems.push(format!(
                "saga {}: state {:?} is not one of Omicron's",
                saga.id, saga.state
            ));
        }
        let abandoned = saga.state == "abandoned";
        if (abandoned && saga.abandon_fields != 3) || (!abandoned && saga.abandon_fields != 0) {
            problems.push(format!(
                "saga {}: state {:?} with {} of the 3 abandonment columns set",
                saga.id, saga.state, saga.abandon_fields
            ));
        }
    }
    let events: Vec<EventRow> = diesel::sql_query(
        "SELECT saga_id, node_id, event_type, data FROM saga_node_event ORDER BY saga_id, node_id",
    )
    .load(conn)
    .await?;
    for event in events {
        let shape = (event.event_type.as_str(), event.data.is_some());
        if !OMICRON_EVENT_SHAPES.contains(&shape) {
            problems.push(format!(
                "saga {} node {}: event {:?} with data {:?} is not one Omicron reads",
                event.saga_id, event.node_id, event.event_type, event.data
            ));
        } else if event.event_type == "failed" {
            let data = event.data.clone().unwrap_or_default();
            if let Err(error) = serde_json::from_value::<steno::ActionError>(data) {
                problems.push(format!(
                    "saga {} node {}: `failed` data is not an ActionError: {error}",
                    event.saga_id, event.node_id
                ));
            }
        }
    }
    Ok(problems)
}

/// Nexus's saga-recovery listing for executor `sec_id`, as Omicron writes it (unfinished sagas of that
/// executor, in pages by id) plus the predicate ratchet's adoption guide says it must add
/// ([`ratchet_store::NEXUS_RECOVERY_PREDICATE`]): the sagas Nexus's plain steno executor would resume. Fails,
/// as Omicron's does, on a row whose state it cannot decode.
pub async fn omicron_recovery_listing(
    conn: &mut diesel_async::AsyncPgConnection,
    sec_id: Uuid,
) -> Result<Vec<Uuid>, String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        state: String,
    }
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT id, saga_state::TEXT AS state FROM saga \
         WHERE saga_state IN ('running', 'unwinding') AND current_sec = $1 AND {} ORDER BY id",
        ratchet_store::NEXUS_RECOVERY_PREDICATE
    ))
    .bind::<SqlUuid, _>(sec_id)
    .load(conn)
    .await
    .map_err(|e| e.to_string())?;
    rows.into_iter()
        .map(|row| {
            if OMICRON_SAGA_STATES.contains(&row.state.as_str()) {
                Ok(row.id)
            } else {
                Err(format!("saga {}: unknown state {:?}", row.id, row.state))
            }
        })
        .collect()
}

/// Omicron's `sagas_reassign_sec`: every saga of executors `from` that is not `done` moves to executor `to`,
/// its `adopt_generation` bumped (one statement, as Nexus runs it when it expunges a Nexus). Returns how many.
pub async fn reassign_sec(
    conn: &mut diesel_async::AsyncPgConnection,
    from: &[Uuid],
    to: Uuid,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(
        "UPDATE saga SET current_sec = $2, adopt_generation = adopt_generation + 1, adopt_time = $3 \
         WHERE current_sec IS NOT NULL AND current_sec = ANY($1) AND saga_state != 'done'",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(from)
    .bind::<SqlUuid, _>(to)
    .bind::<Timestamptz, _>(chrono::Utc::now())
    .execute(conn)
    .await
}
