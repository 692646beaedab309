//! Snapshots: `creating → ready` (snapshot-create), `→ destroyed` (delete).

use crate::common::{OUTCOME_TAIL, Outcome, check_name, check_positive, label_enum};
use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
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

#[derive(diesel::QueryableByName)]
struct InsertOutcome {
    #[diesel(sql_type = Bool)]
    project_found: bool,
    #[diesel(sql_type = Bool)]
    disk_found: bool,
    #[diesel(sql_type = Bool)]
    name_taken: bool,
    #[diesel(embed)]
    row: Option<Snapshot>,
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
    let outcome: InsertOutcome = diesel::sql_query(format!(
        "WITH \
           p AS (SELECT id FROM project WHERE id = $2 AND time_deleted IS NULL), \
           d AS (SELECT id FROM disk WHERE id = $3 AND time_deleted IS NULL), \
           taken AS (SELECT id FROM snapshot \
                     WHERE project_id = $2 AND name = $5 AND time_deleted IS NULL), \
           ins AS ( \
             INSERT INTO snapshot (id, project_id, disk_id, volume_id, name, state, size_bytes, \
                                   time_created, time_modified) \
             SELECT $1, $2, $3, $4, $5, 'creating', $6, now(), now() \
             WHERE EXISTS (SELECT 1 FROM p) AND EXISTS (SELECT 1 FROM d) \
               AND NOT EXISTS (SELECT 1 FROM taken) \
             RETURNING {SNAPSHOT_COLUMNS}) \
         SELECT EXISTS (SELECT 1 FROM p) AS project_found, \
                EXISTS (SELECT 1 FROM d) AS disk_found, \
                EXISTS (SELECT 1 FROM taken) AS name_taken, \
                ins.* \
         FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(project_id)
    .bind::<SqlUuid, _>(disk_id)
    .bind::<SqlUuid, _>(volume_id)
    .bind::<Text, _>(name)
    .bind::<BigInt, _>(size_bytes)
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |index| match index {
            "lookup_snapshot_by_project" => {
                format!("snapshot name {name:?} is already in use in project {project_id}")
            }
            _ => format!("snapshot {id} already exists"),
        })
    })?;
    match outcome {
        InsertOutcome { row: Some(row), .. } => Ok(row),
        InsertOutcome {
            project_found: false,
            ..
        } => Err(DatastoreError::NotFound {
            kind: "project",
            id: project_id,
        }),
        InsertOutcome {
            disk_found: false, ..
        } => Err(DatastoreError::NotFound {
            kind: "disk",
            id: disk_id,
        }),
        InsertOutcome {
            name_taken: true, ..
        } => Err(DatastoreError::Conflict(format!(
            "snapshot name {name:?} is already in use in project {project_id}"
        ))),
        InsertOutcome { .. } => Err(DatastoreError::Conflict(format!(
            "snapshot {id} was not inserted"
        ))),
    }
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
    let outcome: Option<Outcome<Snapshot>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {SNAPSHOT_COLUMNS} FROM snapshot WHERE id = $1), \
           upd AS ( \
             UPDATE snapshot SET state = 'destroyed', time_deleted = now(), time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL \
             RETURNING {SNAPSHOT_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    outcome
        .map(|outcome| outcome.row)
        .ok_or_else(|| not_found(id))
}
