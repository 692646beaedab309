//! Disks and their state machine (attach and detach are in [`crate::attach`]).
//!
//! ```text
//!            disk_finalize              instance_attach_disk
//! creating ────────────────▶ detached ◀──────────────────────▶ attached
//!    │                        │    ▲      instance_detach_disk
//!    │                        │    │
//!    │     disk_set_maintenance    disk_restore_detached
//!    │                        ▼    │
//!    │                      maintenance        (snapshot-create, guarded by state_generation)
//!    ▼
//! creating | detached | faulted ──disk_soft_delete──▶ destroyed (time_deleted set)
//! ```
//!
//! Every change bumps `state_generation`. A disk is attached exactly when `disk_state = 'attached'`, and then
//! `attach_instance_id` and `slot` are set; otherwise both are NULL ([`crate::invariants`] checks this).

use crate::common::{OUTCOME_TAIL, Outcome, check_name, check_positive, label_enum};
use crate::error::{DatastoreError, DatastoreResult};
use crate::project_scoped_insert::ProjectScopedInsert;
use crate::soft_delete::SoftDelete;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::sql_types::{BigInt, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

label_enum! {
    /// `disk.disk_state` (the subset of Nexus's `DiskState` labels these sagas use).
    pub enum DiskState ("disk state") {
        /// Being created (disk-create saga); finalized to `detached`.
        Creating => "creating",
        /// Usable, attached to nothing.
        Detached => "detached",
        /// Attached to `attach_instance_id` at `slot`.
        Attached => "attached",
        /// Held by a snapshot-create saga (pantry attached); back to `detached` when it is done.
        Maintenance => "maintenance",
        /// Broken (a failed delete's unwind, an expunged sled).
        Faulted => "faulted",
        /// Deleted (`time_deleted` set).
        Destroyed => "destroyed",
    }
}

/// A `disk` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Disk {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub project_id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub size_bytes: i64,
    #[diesel(sql_type = Text)]
    pub disk_state: DiskState,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub attach_instance_id: Option<Uuid>,
    /// The PCI slot, 0..=11, while attached.
    #[diesel(sql_type = Nullable<SmallInt>)]
    pub slot: Option<i16>,
    #[diesel(sql_type = BigInt)]
    pub state_generation: i64,
    #[diesel(sql_type = SqlUuid)]
    pub volume_id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

pub(crate) const DISK_COLUMNS: &str = "id, project_id, name, size_bytes, disk_state, \
     attach_instance_id, slot, state_generation, volume_id, time_created, time_modified, time_deleted";

/// The states a disk can be deleted from (Nexus's disk-create undo passes these; `disk_delete` passes
/// `detached` and `faulted`). An attached disk can never be deleted: detach it first.
const DELETABLE_STATES: &str = "creating, detached or faulted";

fn not_found(id: Uuid) -> DatastoreError {
    DatastoreError::NotFound { kind: "disk", id }
}

pub(crate) fn invalid_state(row: &Disk, wanted: &str) -> DatastoreError {
    DatastoreError::InvalidState {
        kind: "disk",
        id: row.id,
        state: row.disk_state.to_string(),
        wanted: wanted.to_owned(),
    }
}

/// Inserts a disk in state `creating` at generation 1. The project must be live (`NotFound`); the name must be
/// free among the project's live disks (`Conflict`).
pub async fn disk_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    project_id: Uuid,
    name: &str,
    size_bytes: i64,
    volume_id: Uuid,
) -> DatastoreResult<Disk> {
    check_name("disk", name)?;
    check_positive("size_bytes", size_bytes)?;
    ProjectScopedInsert {
        table: "disk",
        name_index: "lookup_disk_by_project",
        columns: "size_bytes, disk_state, state_generation, volume_id, time_created, time_modified",
        values: "$4, 'creating', 1, $5, now(), now()",
        returning: DISK_COLUMNS,
    }
    .run(conn, id, project_id, name, None, |query| {
        query
            .bind::<BigInt, _>(size_bytes)
            .bind::<SqlUuid, _>(volume_id)
    })
    .await
}

/// The live disk `id` (`NotFound` when missing or deleted). Reads only.
pub async fn disk_fetch(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Disk> {
    diesel::sql_query(format!(
        "SELECT {DISK_COLUMNS} FROM disk WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// The live disks attached to an instance, by slot. Reads only.
pub async fn disks_attached_to(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
) -> DatastoreResult<Vec<Disk>> {
    Ok(diesel::sql_query(format!(
        "SELECT {DISK_COLUMNS} FROM disk \
         WHERE attach_instance_id = $1 AND time_deleted IS NULL ORDER BY slot, id"
    ))
    .bind::<SqlUuid, _>(instance_id)
    .load(conn)
    .await?)
}

/// One guarded state change of a live disk: `disk_state = from` (and, with `generation`, `state_generation =
/// generation`) → `to`, bumping the generation. Returns the [`Outcome`], `None` if the disk does not exist.
async fn disk_change_state(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: DiskState,
    to: DiskState,
    generation: Option<i64>,
) -> DatastoreResult<Option<Outcome<Disk>>> {
    Ok(diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {DISK_COLUMNS} FROM disk WHERE id = $1), \
           upd AS ( \
             UPDATE disk SET disk_state = $3, state_generation = state_generation + 1, \
                             time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND disk_state = $2 \
               AND attach_instance_id IS NULL \
               AND ($4 IS NULL OR state_generation = $4) \
             RETURNING {DISK_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(from)
    .bind::<Text, _>(to)
    .bind::<Nullable<BigInt>, _>(generation)
    .get_result(conn)
    .await
    .optional()?)
}

/// `creating → detached` (the end of disk-create), bumping the generation. Any other state is `InvalidState`.
pub async fn disk_finalize(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Disk> {
    let Outcome { updated, row } =
        disk_change_state(conn, id, DiskState::Creating, DiskState::Detached, None)
            .await?
            .ok_or_else(|| not_found(id))?;
    if updated {
        Ok(row)
    } else if row.time_deleted.is_some() {
        Err(not_found(id))
    } else {
        Err(invalid_state(&row, "creating"))
    }
}

/// `detached → maintenance` if the disk is still at `expected_generation`, bumping it. The returned disk
/// carries the generation this call wrote: pass it to [`disk_restore_detached`]. Refusals: `InvalidState`
/// (another state, e.g. attached), `GenerationMismatch` (detached, but changed since it was read).
pub async fn disk_set_maintenance(
    conn: &mut AsyncPgConnection,
    disk_id: Uuid,
    expected_generation: i64,
) -> DatastoreResult<Disk> {
    let Outcome { updated, row } = disk_change_state(
        conn,
        disk_id,
        DiskState::Detached,
        DiskState::Maintenance,
        Some(expected_generation),
    )
    .await?
    .ok_or_else(|| not_found(disk_id))?;
    if updated {
        Ok(row)
    } else if row.time_deleted.is_some() {
        Err(not_found(disk_id))
    } else if row.disk_state != DiskState::Detached || row.attach_instance_id.is_some() {
        Err(invalid_state(&row, "detached"))
    } else {
        Err(DatastoreError::GenerationMismatch {
            kind: "disk",
            id: disk_id,
            expected: expected_generation,
            found: row.state_generation,
        })
    }
}

/// `maintenance → detached`, but only if the disk is still at `generation_written` (what
/// [`disk_set_maintenance`] returned): `Ok(None)` otherwise, including when the disk is deleted, because then
/// someone else owns the disk and it must be left alone. Idempotent in that sense: a second call finds the
/// generation moved and does nothing. An id that never existed is `NotFound`.
pub async fn disk_restore_detached(
    conn: &mut AsyncPgConnection,
    disk_id: Uuid,
    generation_written: i64,
) -> DatastoreResult<Option<Disk>> {
    let Outcome { updated, row } = disk_change_state(
        conn,
        disk_id,
        DiskState::Maintenance,
        DiskState::Detached,
        Some(generation_written),
    )
    .await?
    .ok_or_else(|| not_found(disk_id))?;
    Ok(updated.then_some(row))
}

/// Deletes a disk: `destroyed`, `time_deleted` set, generation bumped. Only from `creating`, `detached` or
/// `faulted` and only when attached to nothing; an attached disk is `InvalidState` with state "attached", the
/// refusal Omicron's #10695 unwind hit ("disk cannot be deleted in state \"attached\""). Idempotent: an already
/// deleted disk is returned as it is. An id that never existed is `NotFound`.
pub async fn disk_soft_delete(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Disk> {
    let outcome: Option<Outcome<Disk>> = SoftDelete {
        table: "disk",
        columns: DISK_COLUMNS,
        also_set: &[
            "disk_state = 'destroyed'",
            "state_generation = state_generation + 1",
        ],
        guards: &[
            "disk_state IN ('creating', 'detached', 'faulted')",
            "attach_instance_id IS NULL",
        ],
    }
    .outcome(conn, id)
    .await?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated || row.time_deleted.is_some() {
        return Ok(row);
    }
    match row.attach_instance_id {
        Some(instance_id) if row.disk_state != DiskState::Attached => {
            Err(DatastoreError::Conflict(format!(
                "disk {id} cannot be deleted: it is {} but attached to instance {instance_id}",
                row.disk_state
            )))
        }
        _ => Err(invalid_state(&row, DELETABLE_STATES)),
    }
}
