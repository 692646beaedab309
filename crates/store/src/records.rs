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

/// Records that `node_name` committed with `receipt`. Fails with a unique violation if it already did: a
/// second commit of one node can never land.
pub async fn insert_commit_record(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
    receipt: serde_json::Value,
    owner: SagaOwner,
) -> QueryResult<()> {
    diesel::insert_into(saga_commit_record::table)
        .values(CommitRecord {
            saga_id,
            node_name: node_name.to_owned(),
            receipt,
            time_committed: Utc::now(),
            creator: owner.sec_id,
            adopt_generation: owner.generation,
        })
        .execute(conn)
        .await
        .map(|_| ())
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
