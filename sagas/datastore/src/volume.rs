//! Volumes: the construction request (JSON) of a disk's or snapshot's storage.

use crate::common::{OUTCOME_TAIL, Outcome};
use crate::error::{DatastoreError, DatastoreResult};
use crate::soft_delete::SoftDelete;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel::sql_types::{Jsonb, Nullable, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A `volume` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Volume {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The volume construction request.
    #[diesel(sql_type = Jsonb)]
    pub data: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const VOLUME_COLUMNS: &str = "id, data, time_created, time_modified, time_deleted";

fn not_found(id: Uuid) -> DatastoreError {
    DatastoreError::NotFound { kind: "volume", id }
}

/// Creates a volume. Idempotent by id, as Nexus's `volume_create` is: if the volume exists, live and with the
/// same data, it is returned as it is; with other data, or deleted, it is `Conflict`.
pub async fn volume_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    data: &serde_json::Value,
) -> DatastoreResult<Volume> {
    let Outcome { updated, row }: Outcome<Volume> = diesel::sql_query(format!(
        "WITH \
           upd AS ( \
             INSERT INTO volume (id, data, time_created, time_modified) \
             VALUES ($1, $2, now(), now()) \
             ON CONFLICT (id) DO NOTHING \
             RETURNING {VOLUME_COLUMNS}), \
           cur AS (SELECT {VOLUME_COLUMNS} FROM volume WHERE id = $1) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Jsonb, _>(data)
    .get_result(conn)
    .await?;
    if updated || (row.time_deleted.is_none() && row.data == *data) {
        Ok(row)
    } else {
        Err(DatastoreError::Conflict(format!(
            "volume {id} already exists{}",
            if row.time_deleted.is_some() {
                " and is deleted"
            } else {
                " with other data"
            }
        )))
    }
}

/// The live volume `id`. Reads only.
pub async fn volume_fetch(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Volume> {
    diesel::sql_query(format!(
        "SELECT {VOLUME_COLUMNS} FROM volume WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// Deletes a volume (sets `time_deleted`). Idempotent: an already-deleted volume is returned as it is. An id
/// that never existed is `NotFound`.
pub async fn volume_soft_delete(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Volume> {
    SoftDelete {
        table: "volume",
        columns: VOLUME_COLUMNS,
        also_set: &[],
        guards: &[],
    }
    .run(conn, id)
    .await
}
