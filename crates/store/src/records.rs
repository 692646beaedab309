//! Commit and compensation records: the rows that make every node's commit and compensation exactly-once.
//!
//! These functions run *inside* a transaction the engine opened (a database node's commit or compensation
//! transaction) or as single statements for external nodes. None of them begins or ends a transaction.

use crate::event::EventRow;
use crate::owner::SagaOwner;
use crate::schema::{saga_commit_record, saga_compensation_record, saga_node_event};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// A row of `saga_commit_record`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = saga_commit_record)]
pub struct CommitRecord {
    pub saga_id: Uuid,
    pub node_name: String,
    pub receipt: serde_json::Value,
    pub time_committed: DateTime<Utc>,
    pub creator: Uuid,
    pub adopt_generation: i64,
}

/// A row of `saga_compensation_record`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = saga_compensation_record)]
pub struct CompensationRecord {
    pub saga_id: Uuid,
    pub node_name: String,
    pub had_commit: bool,
    pub time_compensated: DateTime<Utc>,
    pub creator: Uuid,
    pub adopt_generation: i64,
}

/// The receipt recorded for `node_name` of `saga_id`, if its commit happened.
pub async fn commit_receipt(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
) -> QueryResult<Option<serde_json::Value>> {
    saga_commit_record::table
        .filter(saga_commit_record::saga_id.eq(saga_id))
        .filter(saga_commit_record::node_name.eq(node_name))
        .select(saga_commit_record::receipt)
        .first(conn)
        .await
        .optional()
}

/// Whether `node_name` of `saga_id` has been compensated.
pub async fn is_compensated(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
) -> QueryResult<bool> {
    let row: Option<String> = saga_compensation_record::table
        .filter(saga_compensation_record::saga_id.eq(saga_id))
        .filter(saga_compensation_record::node_name.eq(node_name))
        .select(saga_compensation_record::node_name)
        .first(conn)
        .await
        .optional()?;
    Ok(row.is_some())
}

/// Records that `node_name` was compensated (`had_commit`: whether there was a commit to undo). Fails with a
/// unique violation if it already was.
pub async fn insert_compensation_record(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
    had_commit: bool,
    owner: SagaOwner,
) -> QueryResult<()> {
    diesel::insert_into(saga_compensation_record::table)
        .values(CompensationRecord {
            saga_id,
            node_name: node_name.to_owned(),
            had_commit,
            time_compensated: Utc::now(),
            creator: owner.sec_id,
            adopt_generation: owner.generation,
        })
        .execute(conn)
        .await
        .map(|_| ())
}

/// The count a fenced write returns: 1 when the executor owned the saga (and the rows were written), 0 when
/// it has been fenced out (and nothing was).
#[derive(QueryableByName)]
struct OwnerCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    owners: i64,
}

/// A raw statement, boxed so that binds can be added in a loop.
type BoxedQuery<'a> =
    diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery>;

/// Binds `events` as the six column arrays [`events_from_owner`] `unnest`s.
fn bind_event_arrays<'a>(query: BoxedQuery<'a>, events: &[EventRow]) -> BoxedQuery<'a> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz};
    type SqlUuid = diesel::sql_types::Uuid;
    query
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.saga_id).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(events.iter().map(|e| e.node_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Jsonb>>, _>(
            events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(events.iter().map(|e| e.event_time).collect::<Vec<_>>())
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.creator).collect::<Vec<_>>())
}

/// The events insert of a fenced write, its six arrays bound from `$first` on ([`bind_event_arrays`]): every
/// row, once per row of `owner` (so none when fenced out); an event already present is left as it is.
fn events_from_owner(first: usize) -> String {
    let [saga_id, node_id, event_type, data, event_time, creator] =
        std::array::from_fn::<usize, 6, _>(|i| first + i);
    format!(
        "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT e.* FROM owner, unnest(${saga_id}::UUID[], ${node_id}::BIGINT[], ${event_type}::TEXT[], \
         ${data}::JSONB[], ${event_time}::TIMESTAMPTZ[], ${creator}::UUID[]) \
         AS e (saga_id, node_id, event_type, data, event_time, creator) ON CONFLICT DO NOTHING"
    )
}

/// In one statement: if `owner` still owns `saga_id`, takes the share lock on its row, records that
/// `node_name` committed with `receipt`, and inserts `events` (the node's `started` and `succeeded`, and any
/// held-back event that lands with them). Returns `false`, having written nothing, when the executor has been
/// fenced out. Fails with a unique violation if the node's commit was already recorded: a second commit of
/// one node can never land.
pub async fn record_commit_if_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
    receipt: serde_json::Value,
    owner: SagaOwner,
    events: &[EventRow],
) -> QueryResult<bool> {
    write_if_owner(conn, saga_id, owner, Some((node_name, receipt)), events).await
}

/// In one statement: if `owner` still owns `saga_id`, takes the share lock on its row and inserts `events`
/// (an event already present is left as it is). Returns `false`, having written nothing, when the executor
/// has been fenced out.
pub async fn insert_events_if_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
    events: &[EventRow],
) -> QueryResult<bool> {
    write_if_owner(conn, saga_id, owner, None, events).await
}

/// The one fenced write behind [`record_commit_if_owner`] (`commit`: the node and its receipt) and
/// [`insert_events_if_owner`] (`None`). Binds `$1`–`$3` for [`crate::owner::OWNER_CTE`], then the commit
/// record's `$4`–`$6` if any, then the event arrays.
async fn write_if_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
    commit: Option<(&str, serde_json::Value)>,
    events: &[EventRow],
) -> QueryResult<bool> {
    use diesel::sql_types::{BigInt, Jsonb, Text, Timestamptz};
    use std::sync::LazyLock;
    static WITH_COMMIT_RECORD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {owner_cte}, commit_record AS (\
             INSERT INTO saga_commit_record \
             (saga_id, node_name, receipt, time_committed, creator, adopt_generation) \
             SELECT id, $4, $5, $6, $2, $3 FROM owner), events AS ({events}) \
             SELECT count(*) AS owners FROM owner",
            owner_cte = crate::owner::OWNER_CTE,
            events = events_from_owner(7),
        )
    });
    static EVENTS_ONLY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {owner_cte}, events AS ({events}) SELECT count(*) AS owners FROM owner",
            owner_cte = crate::owner::OWNER_CTE,
            events = events_from_owner(4),
        )
    });
    let sql = if commit.is_some() {
        &WITH_COMMIT_RECORD
    } else {
        &EVENTS_ONLY
    };
    let mut query = diesel::sql_query(sql.as_str())
        .into_boxed()
        .bind::<diesel::sql_types::Uuid, _>(saga_id)
        .bind::<diesel::sql_types::Uuid, _>(owner.sec_id)
        .bind::<BigInt, _>(owner.generation);
    if let Some((node_name, receipt)) = commit {
        query = query
            .bind::<Text, _>(node_name.to_owned())
            .bind::<Jsonb, _>(receipt)
            .bind::<Timestamptz, _>(Utc::now());
    }
    let row: OwnerCount = bind_event_arrays(query, events).get_result(conn).await?;
    Ok(row.owners > 0)
}

/// Inserts log events; an event already present (same saga, node and type) is left as it is.
pub async fn insert_events(conn: &mut AsyncPgConnection, rows: &[EventRow]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(saga_node_event::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(|_| ())
}

/// Removes one log event. Used only when a commit's own `succeeded` event must be withdrawn because the node
/// is being compensated before steno learned that it succeeded (see the engine's after-commit path).
pub async fn delete_event(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_id: u32,
    event_type: &str,
) -> QueryResult<()> {
    diesel::delete(
        saga_node_event::table
            .filter(saga_node_event::saga_id.eq(saga_id))
            .filter(saga_node_event::node_id.eq(i64::from(node_id)))
            .filter(saga_node_event::event_type.eq(event_type)),
    )
    .execute(conn)
    .await
    .map(|_| ())
}
