//! Instances and their state machine.
//!
//! ```text
//!            instance_transition              instance_set_vmm
//! creating ◀──────────────────▶ no_vmm ─────────────────────▶ vmm
//!     │   (back: only as the      ▲  │  ◀─────────────────────
//!     │    undo of move-to-stopped)  │  │     instance_clear_vmm
//!     │ instance_transition       │  │ instance_transition
//!     ▼                           │  ▼
//!   failed ───────────────────────┘ (failed → no_vmm)
//!
//! creating | no_vmm | failed ──instance_soft_delete──▶ destroyed (time_deleted set, attached disks detached)
//! ```
//!
//! Every change bumps `state_generation`; the guarded operations take the generation the caller last saw.

use crate::common::{OUTCOME_TAIL, Outcome, check_name, check_positive, label_enum};
use crate::error::{DatastoreError, DatastoreResult};
use crate::project_scoped_insert::ProjectScopedInsert;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

label_enum! {
    /// `instance.state` (Nexus's `instance_state_v2`).
    pub enum InstanceState ("instance state") {
        /// Being created by the instance-create saga.
        Creating => "creating",
        /// Stopped: no VMM. Disks attach and detach only in this state (and `creating`).
        NoVmm => "no_vmm",
        /// Running: `active_propolis_id` names the VMM.
        Vmm => "vmm",
        /// Failed; can be deleted or restarted.
        Failed => "failed",
        /// Deleted (`time_deleted` is set).
        Destroyed => "destroyed",
    }
}

/// An `instance` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Instance {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub project_id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub ncpus: i64,
    /// Bytes.
    #[diesel(sql_type = BigInt)]
    pub memory: i64,
    #[diesel(sql_type = Text)]
    pub state: InstanceState,
    #[diesel(sql_type = BigInt)]
    pub state_generation: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub boot_disk_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub active_propolis_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

pub(crate) const INSTANCE_COLUMNS: &str = "id, project_id, name, ncpus, memory, state, \
     state_generation, boot_disk_id, active_propolis_id, time_created, time_modified, time_deleted";

/// The states in which an instance has no VMM and can be reconfigured (disks, boot disk) or deleted.
const STOPPED_STATES: &str = "creating, no_vmm or failed";

fn not_found(id: Uuid) -> DatastoreError {
    DatastoreError::NotFound {
        kind: "instance",
        id,
    }
}

fn invalid_state(row: &Instance, wanted: &str) -> DatastoreError {
    DatastoreError::InvalidState {
        kind: "instance",
        id: row.id,
        state: row.state.to_string(),
        wanted: wanted.to_owned(),
    }
}

/// Inserts an instance in state `creating` at generation 1. The project must be live (`NotFound`); the name
/// must be free among the project's live instances (`Conflict`).
pub async fn instance_insert(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    project_id: Uuid,
    name: &str,
    ncpus: i64,
    memory: i64,
) -> DatastoreResult<Instance> {
    check_name("instance", name)?;
    check_positive("ncpus", ncpus)?;
    check_positive("memory", memory)?;
    ProjectScopedInsert {
        table: "instance",
        name_index: "lookup_instance_by_project",
        columns: "ncpus, memory, state, state_generation, time_created, time_modified",
        values: "$4, $5, 'creating', 1, now(), now()",
        returning: INSTANCE_COLUMNS,
    }
    .run(conn, id, project_id, name, None, |query| {
        query.bind::<BigInt, _>(ncpus).bind::<BigInt, _>(memory)
    })
    .await
}

/// The live instance `id` (`NotFound` when missing or deleted). Reads only.
pub async fn instance_fetch(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Instance> {
    diesel::sql_query(format!(
        "SELECT {INSTANCE_COLUMNS} FROM instance WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or_else(|| not_found(id))
}

/// Deletes an instance: state `destroyed`, `time_deleted` set, generation bumped, and, in the same statement,
/// every disk still attached to it detached (Nexus's detach-many in `project_delete_instance`, which is what
/// lets instance-create's unwind end with no disk attached to a deleted instance).
///
/// Only an instance without a VMM (`creating`, `no_vmm`, `failed`) can be deleted (`InvalidState`). Idempotent:
/// an already-deleted instance is returned as it is. An id that never existed is `NotFound`.
pub async fn instance_soft_delete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<Instance> {
    let outcome: Option<Outcome<Instance>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {INSTANCE_COLUMNS} FROM instance WHERE id = $1 FOR UPDATE), \
           upd AS ( \
             UPDATE instance SET state = 'destroyed', time_deleted = now(), time_modified = now(), \
                                 state_generation = state_generation + 1 \
             WHERE id = $1 AND time_deleted IS NULL AND active_propolis_id IS NULL \
               AND state IN ('creating', 'no_vmm', 'failed') \
             RETURNING {INSTANCE_COLUMNS}), \
           detached AS ( \
             UPDATE disk SET disk_state = 'detached', attach_instance_id = NULL, slot = NULL, \
                             state_generation = state_generation + 1, time_modified = now() \
             WHERE attach_instance_id = $1 AND time_deleted IS NULL AND EXISTS (SELECT 1 FROM upd) \
             RETURNING id) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated || row.time_deleted.is_some() {
        Ok(row)
    } else {
        Err(invalid_state(&row, STOPPED_STATES))
    }
}

/// Moves an instance between the states without a VMM: `creating → no_vmm`, `creating → failed`,
/// `no_vmm → failed`, `failed → no_vmm`, and `no_vmm → creating`, which exists only as the compensation of
/// instance-create's move-to-stopped (guarded by the generation that step wrote, so it cannot revert anything
/// that happened since). Other pairs are `InvalidArgument`; the VMM and deletion have their own functions. One guarded UPDATE: it applies only if the instance is in `from` at `expected_generation`, and
/// bumps the generation. Refusals name what the statement found: `InvalidState` (another state) or
/// `GenerationMismatch` (right state, generation moved).
pub async fn instance_transition(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    expected_generation: i64,
    from: InstanceState,
    to: InstanceState,
) -> DatastoreResult<Instance> {
    use InstanceState::{Creating, Failed, NoVmm};
    if !matches!(
        (from, to),
        (Creating, NoVmm)
            | (NoVmm, Creating)
            | (Creating, Failed)
            | (NoVmm, Failed)
            | (Failed, NoVmm)
    ) {
        return Err(DatastoreError::InvalidArgument(format!(
            "instance_transition cannot move an instance from {from} to {to} \
             (use instance_set_vmm, instance_clear_vmm or instance_soft_delete)"
        )));
    }
    let outcome: Option<Outcome<Instance>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {INSTANCE_COLUMNS} FROM instance WHERE id = $1 AND time_deleted IS NULL), \
           upd AS ( \
             UPDATE instance SET state = $4, state_generation = state_generation + 1, \
                                 time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND state = $3 AND state_generation = $2 \
             RETURNING {INSTANCE_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(expected_generation)
    .bind::<Text, _>(from)
    .bind::<Text, _>(to)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated {
        Ok(row)
    } else if row.state != from {
        Err(invalid_state(&row, from.label()))
    } else {
        Err(generation_mismatch(&row, expected_generation))
    }
}

fn generation_mismatch(row: &Instance, expected: i64) -> DatastoreError {
    DatastoreError::GenerationMismatch {
        kind: "instance",
        id: row.id,
        expected,
        found: row.state_generation,
    }
}

/// `no_vmm → vmm` with `active_propolis_id = propolis_id`, guarded by `expected_generation`, bumping it.
/// Idempotent: an instance already in `vmm` with this propolis is returned as it is.
pub async fn instance_set_vmm(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    expected_generation: i64,
    propolis_id: Uuid,
) -> DatastoreResult<Instance> {
    let outcome: Option<Outcome<Instance>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {INSTANCE_COLUMNS} FROM instance WHERE id = $1 AND time_deleted IS NULL), \
           upd AS ( \
             UPDATE instance SET state = 'vmm', active_propolis_id = $3, \
                                 state_generation = state_generation + 1, time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND state = 'no_vmm' AND state_generation = $2 \
             RETURNING {INSTANCE_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(expected_generation)
    .bind::<SqlUuid, _>(propolis_id)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated || (row.state == InstanceState::Vmm && row.active_propolis_id == Some(propolis_id)) {
        Ok(row)
    } else if row.state != InstanceState::NoVmm {
        Err(invalid_state(&row, "no_vmm"))
    } else {
        Err(generation_mismatch(&row, expected_generation))
    }
}

/// `vmm → no_vmm`, clearing `active_propolis_id`, but only if the active VMM is `propolis_id` (the fence: a
/// newer VMM is left alone, `Conflict`). Bumps the generation. Idempotent: an instance already without a VMM
/// (`no_vmm` or `failed`) is returned as it is.
pub async fn instance_clear_vmm(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    propolis_id: Uuid,
) -> DatastoreResult<Instance> {
    let outcome: Option<Outcome<Instance>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {INSTANCE_COLUMNS} FROM instance WHERE id = $1 AND time_deleted IS NULL), \
           upd AS ( \
             UPDATE instance SET state = 'no_vmm', active_propolis_id = NULL, \
                                 state_generation = state_generation + 1, time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND state = 'vmm' AND active_propolis_id = $2 \
             RETURNING {INSTANCE_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(propolis_id)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    match row.state {
        _ if updated => Ok(row),
        InstanceState::NoVmm | InstanceState::Failed => Ok(row),
        InstanceState::Vmm => Err(DatastoreError::Conflict(format!(
            "instance {id}'s active VMM is {}, not {propolis_id}",
            row.active_propolis_id
                .map_or_else(|| "none".to_owned(), |p| p.to_string())
        ))),
        InstanceState::Creating | InstanceState::Destroyed => Err(invalid_state(&row, "vmm")),
    }
}

#[derive(diesel::QueryableByName)]
struct BootDiskOutcome {
    #[diesel(sql_type = Bool)]
    disk_found: bool,
    #[diesel(sql_type = Nullable<Text>)]
    disk_state: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    disk_attach_instance_id: Option<Uuid>,
    #[diesel(embed)]
    outcome: Outcome<Instance>,
}

/// Sets (or with `None` clears) the instance's boot disk. The instance must have no VMM (`creating`, `no_vmm`,
/// `failed`; else `InvalidState`); a disk must be live (`NotFound`) and attached to this instance (else
/// `Conflict`). The instance row, then the disk row, are locked for the statement (the order attach and detach
/// use), so a concurrent detach of the disk waits for the statement, also at READ COMMITTED.
pub async fn instance_set_boot_disk(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
    disk_id: Option<Uuid>,
) -> DatastoreResult<Instance> {
    let result: Option<BootDiskOutcome> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {INSTANCE_COLUMNS} FROM instance \
                   WHERE id = $1 AND time_deleted IS NULL FOR UPDATE), \
           d AS (SELECT id, disk_state, attach_instance_id FROM disk \
                 WHERE id = $2 AND time_deleted IS NULL AND EXISTS (SELECT 1 FROM cur) FOR UPDATE), \
           upd AS ( \
             UPDATE instance SET boot_disk_id = $2, time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND active_propolis_id IS NULL \
               AND state IN ('creating', 'no_vmm', 'failed') \
               AND ($2 IS NULL OR EXISTS (SELECT 1 FROM d \
                                          WHERE disk_state = 'attached' AND attach_instance_id = $1)) \
             RETURNING {INSTANCE_COLUMNS}) \
         SELECT EXISTS (SELECT 1 FROM d) AS disk_found, \
                (SELECT disk_state FROM d) AS disk_state, \
                (SELECT attach_instance_id FROM d) AS disk_attach_instance_id, \
                x.* \
         FROM ({OUTCOME_TAIL}) AS x"
    ))
    .bind::<SqlUuid, _>(instance_id)
    .bind::<Nullable<SqlUuid>, _>(disk_id)
    .get_result(conn)
    .await
    .optional()?;
    let BootDiskOutcome {
        disk_found,
        disk_state,
        disk_attach_instance_id,
        outcome: Outcome { updated, row },
    } = result.ok_or_else(|| not_found(instance_id))?;
    if updated {
        return Ok(row);
    }
    if row.active_propolis_id.is_some()
        || !matches!(
            row.state,
            InstanceState::Creating | InstanceState::NoVmm | InstanceState::Failed
        )
    {
        return Err(invalid_state(&row, STOPPED_STATES));
    }
    match disk_id {
        Some(disk_id) if !disk_found => Err(DatastoreError::NotFound {
            kind: "disk",
            id: disk_id,
        }),
        Some(disk_id) => Err(DatastoreError::Conflict(format!(
            "disk {disk_id} cannot be the boot disk of instance {instance_id}: it is {} and attached to {}",
            disk_state.as_deref().unwrap_or("unknown"),
            disk_attach_instance_id
                .map_or_else(|| "no instance".to_owned(), |i| format!("instance {i}")),
        ))),
        None => Err(DatastoreError::Conflict(format!(
            "the boot disk of instance {instance_id} was not cleared"
        ))),
    }
}

/// One live instance of a project and its live attached disks: how many, in how many distinct slots (a load
/// run's "every instance complete or gone" check).
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, Serialize, Deserialize)]
pub struct InstanceAttachments {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = BigInt)]
    pub attached: i64,
    #[diesel(sql_type = BigInt)]
    pub slots: i64,
}

/// Every live instance of `project_id`, with its attached disks counted.
pub async fn project_instance_attachments(
    conn: &mut AsyncPgConnection,
    project_id: Uuid,
) -> DatastoreResult<Vec<InstanceAttachments>> {
    Ok(diesel::sql_query(
        "SELECT i.id, i.state, count(d.id) AS attached, count(DISTINCT d.slot) AS slots \
         FROM instance i LEFT JOIN disk d ON d.attach_instance_id = i.id AND d.time_deleted IS NULL \
         WHERE i.project_id = $1 AND i.time_deleted IS NULL GROUP BY i.id, i.state",
    )
    .bind::<SqlUuid, _>(project_id)
    .load(conn)
    .await?)
}
