//! Snapshots: `creating → ready` (snapshot-create), `→ destroyed` (delete).

use crate::common::{OUTCOME_TAIL, Outcome, check_name, check_positive, label_enum};
use crate::error::{DatastoreError, DatastoreResult};
use crate::project_scoped_insert::{ProjectScopedInsert, RequiredRow};
use crate::soft_delete::SoftDelete;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

label_enum! {
    /// `snapshot.state`.
    pub enum SnapshotState ("snapshot state") {
        /// Being taken by snapshot-create; must not survive it.
        Creating => "creating",
        Ready => "ready",
        Faulted => "faulted",
        /// Deleted (`time_deleted` set).
        Destroyed => "destroyed",
    }
}

/// A `snapshot` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Snapshot {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub project_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub disk_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub volume_id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub state: SnapshotState,
    #[diesel(sql_type = BigInt)]
    pub size_bytes: i64,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const SNAPSHOT_COLUMNS: &str = "id, project_id, disk_id, volume_id, name, state, size_bytes, \
     time_created, time_modified, time_deleted";

fn not_found(id: Uuid) -> DatastoreError {
    DatastoreError::NotFound {
        kind: "snapshot",
        id,
    }
}

/// Inserts a snapshot of a disk in state `creating`. The project and the disk must be live (`NotFound`); the
/// name must be free among the project's live snapshots (`Conflict`).
pub async fn snapshot_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    project_id: Uuid,
    disk_id: Uuid,
    volume_id: Uuid,
    name: &str,
    size_bytes: i64,
) -> DatastoreResult<Snapshot> {
    check_name("snapshot", name)?;
    check_positive("size_bytes", size_bytes)?;
    ProjectScopedInsert {
        table: "snapshot",
        name_index: "lookup_snapshot_by_project",
        columns: "disk_id, volume_id, state, size_bytes, time_created, time_modified",
        values: "$4, $5, 'creating', $6, now(), now()",
        returning: SNAPSHOT_COLUMNS,
    }
    .run(
        conn,
        id,
        project_id,
        name,
        Some(RequiredRow {
            table: "disk",
            id_param: "$4",
            id: disk_id,
        }),
        |query| {
            query
                .bind::<SqlUuid, _>(disk_id)
                .bind::<SqlUuid, _>(volume_id)
                .bind::<BigInt, _>(size_bytes)
        },
    )
    .await
}

/// The live snapshot `id`. Reads only.
pub async fn snapshot_fetch(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Snapshot> {
    diesel::sql_query(format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM snapshot WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// `creating → ready`. Any other state is `InvalidState`.
pub async fn snapshot_finalize(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<Snapshot> {
    let outcome: Option<Outcome<Snapshot>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {SNAPSHOT_COLUMNS} FROM snapshot WHERE id = $1 AND time_deleted IS NULL), \
           upd AS ( \
             UPDATE snapshot SET state = 'ready', time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND state = 'creating' \
             RETURNING {SNAPSHOT_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated {
        Ok(row)
    } else {
        Err(DatastoreError::InvalidState {
            kind: "snapshot",
            id,
            state: row.state.to_string(),
            wanted: "creating".to_owned(),
        })
    }
}

/// Deletes a snapshot (from any state): `destroyed`, `time_deleted` set. Idempotent: an already-deleted
/// snapshot is returned as it is. An id that never existed is `NotFound`.
pub async fn snapshot_soft_delete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<Snapshot> {
    SoftDelete {
        table: "snapshot",
        columns: SNAPSHOT_COLUMNS,
        also_set: &["state = 'destroyed'"],
        guards: &[],
    }
    .run(conn, id)
    .await
}
