//! Attaching disks to instances and detaching them: one CTE each, in the shape of Nexus's
//! `collection_attach.rs` / `collection_detach.rs`, returning the rows the caller needs from the statement itself.
//!
//! Nexus's `instance_attach_disk` ran this CTE, committed, and then re-read the disk on a second pool claim to
//! build its return value; when the pool was exhausted that re-read failed after the attach had committed, the
//! saga node was recorded as failed, its undo (the detach) never ran, and the unwind wedged on deleting an
//! attached disk (omicron#10695, fixed by #10706). Here nothing runs after the write: the statement returns the
//! instance as it locked it and the disk as it wrote it, and when it writes nothing it returns what it found,
//! from which the refusal is computed without another query.
//!
//! Both statements have one shape (Nexus's, with the instance as the collection and the disk as the
//! resource); the SQL itself is written once, in `ATTACH_SQL` and `DETACH_SQL` below. `$1` is the instance,
//! `$2` the disk, `$3` the attach's max disks or the detach's `allow_boot_disk`:
//!
//! ```text
//! WITH collection_by_id  AS (<the live instance $1> FOR UPDATE),
//!      resource_by_id    AS (<the live disk $2> FOR UPDATE),
//!      resource_count    AS (<how many live disks are attached to $1>),            -- attach only
//!      collection_info   AS (<collection_by_id, if the instance's state allows the change>),
//!      resource_info     AS (<resource_by_id, if the disk's state allows the change>),
//!      free_slot         AS (<the lowest slot 0..=11 no live disk of $1 holds>),   -- attach only
//!      do_update         AS (SELECT <every guard above holds> AS ok),
//!      updated_resource  AS (UPDATE disk SET <attached in free_slot | detached>, <generation + 1>
//!                            WHERE id = $2 AND <ok> RETURNING *),
//!      cleared_boot_disk AS (UPDATE instance SET boot_disk_id = NULL
//!                            WHERE <$2 is its boot disk> AND <ok>)                  -- detach only
//! SELECT <collection_by_id> AS instance, <resource_by_id> AS disk_before, <updated_resource> AS disk_after
//!        [, <resource_count>, <whether free_slot has a row>]                        -- attach only
//! ```
//!
//! Differences from Nexus, all deliberate: a plain boolean expression instead of CockroachDB's
//! `IF(…, TRUE, FALSE)`; the rows come back as `to_jsonb` because the instance and the disk share column names
//! (Nexus's `LEFT JOIN`s return them positionally through diesel's typed query builder); the slot query also
//! gates the update (Nexus relies on the slot CHECK rejecting the out-of-range "no slot" value, which aborts
//! the transaction with a database error instead of a refusal).
//! The final SELECT names the instance before the disk, so the instance row is locked first, as in detach.

use crate::common::from_json;
use crate::disk::{Disk, DiskState, invalid_state as disk_invalid_state};
use crate::error::{DatastoreError, DatastoreResult};
use crate::instance::{Instance, InstanceState};
use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// How many disks an instance can have attached: slots 0..=11 (Nexus's `MAX_DISKS_PER_INSTANCE`).
pub const MAX_DISKS_PER_INSTANCE: u32 = 12;

#[derive(diesel::QueryableByName)]
struct AttachRow {
    #[diesel(sql_type = BigInt)]
    attached_count: i64,
    #[diesel(sql_type = Bool)]
    slot_available: bool,
    #[diesel(sql_type = Nullable<Jsonb>)]
    instance: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    disk_before: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    disk_after: Option<serde_json::Value>,
}

/// The attach statement (its shape is in the module docs).
const ATTACH_SQL: &str = "\
WITH \
  collection_by_id AS ( \
    SELECT * FROM instance WHERE id = $1 AND time_deleted IS NULL FOR UPDATE), \
  resource_by_id AS ( \
    SELECT * FROM disk WHERE id = $2 AND time_deleted IS NULL FOR UPDATE), \
  resource_count AS ( \
    SELECT count(*) AS attached_count FROM disk \
    WHERE attach_instance_id = $1 AND time_deleted IS NULL), \
  collection_info AS ( \
    SELECT id FROM collection_by_id \
    WHERE state IN ('creating', 'no_vmm') AND active_propolis_id IS NULL), \
  resource_info AS ( \
    SELECT id FROM resource_by_id \
    WHERE attach_instance_id IS NULL AND disk_state IN ('creating', 'detached')), \
  free_slot AS ( \
    SELECT s.slot FROM generate_series(0, 11) AS s(slot) \
    LEFT JOIN disk AS d \
      ON d.attach_instance_id = $1 AND d.time_deleted IS NULL AND d.slot = s.slot \
    WHERE d.id IS NULL \
    ORDER BY s.slot \
    LIMIT 1), \
  do_update AS ( \
    SELECT EXISTS (SELECT 1 FROM collection_info) \
       AND EXISTS (SELECT 1 FROM resource_info) \
       AND (SELECT attached_count FROM resource_count) < $3 \
       AND EXISTS (SELECT 1 FROM free_slot) AS ok), \
  updated_resource AS ( \
    UPDATE disk SET disk_state = 'attached', attach_instance_id = $1, \
                    slot = (SELECT slot FROM free_slot), \
                    state_generation = state_generation + 1, time_modified = now() \
    WHERE id = $2 AND time_deleted IS NULL AND (SELECT ok FROM do_update) \
    RETURNING *) \
SELECT (SELECT attached_count FROM resource_count) AS attached_count, \
       EXISTS (SELECT 1 FROM free_slot) AS slot_available, \
       (SELECT to_jsonb(c) FROM collection_by_id AS c) AS instance, \
       (SELECT to_jsonb(r) FROM resource_by_id AS r) AS disk_before, \
       (SELECT to_jsonb(u) FROM updated_resource AS u) AS disk_after";

/// Attaches a disk to an instance, at the first free slot, in one statement (see the module docs). Returns the
/// instance (as locked; attaching does not change it) and the disk as written: `attached`, `attach_instance_id`
/// and `slot` set, generation bumped.
///
/// - The instance must be live (`NotFound`) and stopped: `creating` or `no_vmm`. With a VMM it is `HotPlug`;
///   in another state (`failed`) `InvalidState`.
/// - The disk must be live (`NotFound`) and `creating` or `detached` (Nexus's `ok_to_attach_disk_states`). A
///   disk already attached to *this* instance is success, returning the current rows (idempotent); attached to
///   another instance is `Conflict` naming it; any other state (`maintenance`, `faulted`) is `InvalidState`.
/// - Fewer than `max_disks` (1..=12) disks may be attached already, else `Limit`.
pub async fn instance_attach_disk(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
    disk_id: Uuid,
    max_disks: u32,
) -> DatastoreResult<(Instance, Disk)> {
    if max_disks == 0 || max_disks > MAX_DISKS_PER_INSTANCE {
        return Err(DatastoreError::InvalidArgument(format!(
            "max_disks must be 1 to {MAX_DISKS_PER_INSTANCE}, got {max_disks}"
        )));
    }
    let row: AttachRow = diesel::sql_query(ATTACH_SQL)
        .bind::<SqlUuid, _>(instance_id)
        .bind::<SqlUuid, _>(disk_id)
        .bind::<BigInt, _>(i64::from(max_disks))
        .get_result(conn)
        .await?;
    let instance: Instance =
        from_json("instance", row.instance)?.ok_or(DatastoreError::NotFound {
            kind: "instance",
            id: instance_id,
        })?;
    let before: Disk = from_json("disk", row.disk_before)?.ok_or(DatastoreError::NotFound {
        kind: "disk",
        id: disk_id,
    })?;
    if let Some(after) = from_json::<Disk>("disk", row.disk_after)? {
        return Ok((instance, after));
    }
    // Nothing was written: say why, from what the statement saw.
    match (before.disk_state, before.attach_instance_id) {
        (DiskState::Attached, Some(attached_to)) if attached_to == instance_id => {
            Ok((instance, before))
        }
        (_, Some(attached_to)) => Err(DatastoreError::Conflict(format!(
            "cannot attach disk {disk_id} to instance {instance_id}: it is attached to another instance, \
             {attached_to}"
        ))),
        (DiskState::Creating | DiskState::Detached, None) => {
            if instance.active_propolis_id.is_some() || instance.state == InstanceState::Vmm {
                Err(DatastoreError::HotPlug { instance_id })
            } else if !matches!(
                instance.state,
                InstanceState::Creating | InstanceState::NoVmm
            ) {
                Err(DatastoreError::InvalidState {
                    kind: "instance",
                    id: instance_id,
                    state: instance.state.to_string(),
                    wanted: "creating or no_vmm".to_owned(),
                })
            } else if row.attached_count >= i64::from(max_disks) || !row.slot_available {
                Err(DatastoreError::Limit(format!(
                    "cannot attach more than {max_disks} disks to instance {instance_id} \
                     ({} attached)",
                    row.attached_count
                )))
            } else {
                Err(DatastoreError::Conflict(format!(
                    "disk {disk_id} was not attached to instance {instance_id}"
                )))
            }
        }
        _ => Err(disk_invalid_state(&before, "creating or detached")),
    }
}

#[derive(diesel::QueryableByName)]
struct DetachRow {
    #[diesel(sql_type = Nullable<Jsonb>)]
    instance: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    disk_before: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    disk_after: Option<serde_json::Value>,
}

/// The detach statement (its shape is in the module docs).
const DETACH_SQL: &str = "\
WITH \
  collection_by_id AS ( \
    SELECT * FROM instance WHERE id = $1 AND time_deleted IS NULL FOR UPDATE), \
  resource_by_id AS ( \
    SELECT * FROM disk WHERE id = $2 AND time_deleted IS NULL FOR UPDATE), \
  collection_info AS ( \
    SELECT id FROM collection_by_id \
    WHERE state IN ('creating', 'no_vmm', 'failed') AND active_propolis_id IS NULL \
      AND ($3 OR boot_disk_id IS NULL OR boot_disk_id <> $2)), \
  resource_info AS ( \
    SELECT id FROM resource_by_id WHERE attach_instance_id = $1 AND disk_state = 'attached'), \
  do_update AS ( \
    SELECT EXISTS (SELECT 1 FROM collection_info) \
       AND EXISTS (SELECT 1 FROM resource_info) AS ok), \
  updated_resource AS ( \
    UPDATE disk SET disk_state = 'detached', attach_instance_id = NULL, slot = NULL, \
                    state_generation = state_generation + 1, time_modified = now() \
    WHERE id = $2 AND time_deleted IS NULL AND (SELECT ok FROM do_update) \
    RETURNING *), \
  cleared_boot_disk AS ( \
    UPDATE instance SET boot_disk_id = NULL, time_modified = now() \
    WHERE id = $1 AND boot_disk_id = $2 AND (SELECT ok FROM do_update) \
    RETURNING id) \
SELECT (SELECT to_jsonb(c) FROM collection_by_id AS c) AS instance, \
       (SELECT to_jsonb(r) FROM resource_by_id AS r) AS disk_before, \
       (SELECT to_jsonb(u) FROM updated_resource AS u) AS disk_after";

/// Detaches a disk from an instance in one statement (the attach statement's mirror): the disk goes to
/// `detached` with `attach_instance_id` and `slot` NULL, generation bumped, and is returned as written.
///
/// - The instance must be live (`NotFound`) and without a VMM: `creating`, `no_vmm` or `failed` (Nexus's
///   `ok_to_detach_instance_states`). With a VMM it is `HotPlug`; otherwise `InvalidState`.
/// - The disk must be live (`NotFound`). Already `detached` is success, returning it (idempotent, as an undo
///   must be); attached to another instance is `Conflict`; any other state is `InvalidState`.
/// - The instance's boot disk is refused (`Conflict`, "boot disk cannot be detached") unless `allow_boot_disk`,
///   in which case the same statement also clears `instance.boot_disk_id`, so the instance never names a
///   detached boot disk (instance-create's own unwind uses this).
pub async fn instance_detach_disk(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
    disk_id: Uuid,
    allow_boot_disk: bool,
) -> DatastoreResult<Disk> {
    let row: DetachRow = diesel::sql_query(DETACH_SQL)
        .bind::<SqlUuid, _>(instance_id)
        .bind::<SqlUuid, _>(disk_id)
        .bind::<Bool, _>(allow_boot_disk)
        .get_result(conn)
        .await?;
    let instance: Instance =
        from_json("instance", row.instance)?.ok_or(DatastoreError::NotFound {
            kind: "instance",
            id: instance_id,
        })?;
    let before: Disk = from_json("disk", row.disk_before)?.ok_or(DatastoreError::NotFound {
        kind: "disk",
        id: disk_id,
    })?;
    if let Some(after) = from_json::<Disk>("disk", row.disk_after)? {
        return Ok(after);
    }
    match (before.disk_state, before.attach_instance_id) {
        (DiskState::Detached, None) => Ok(before),
        (DiskState::Attached, Some(attached_to)) if attached_to == instance_id => {
            if instance.active_propolis_id.is_some() || instance.state == InstanceState::Vmm {
                Err(DatastoreError::HotPlug { instance_id })
            } else if !matches!(
                instance.state,
                InstanceState::Creating | InstanceState::NoVmm | InstanceState::Failed
            ) {
                Err(DatastoreError::InvalidState {
                    kind: "instance",
                    id: instance_id,
                    state: instance.state.to_string(),
                    wanted: "creating, no_vmm or failed".to_owned(),
                })
            } else if instance.boot_disk_id == Some(disk_id) && !allow_boot_disk {
                Err(DatastoreError::Conflict(format!(
                    "boot disk cannot be detached: disk {disk_id} is the boot disk of instance {instance_id}"
                )))
            } else {
                Err(DatastoreError::Conflict(format!(
                    "disk {disk_id} was not detached from instance {instance_id}"
                )))
            }
        }
        (_, Some(attached_to)) if attached_to != instance_id => {
            Err(DatastoreError::Conflict(format!(
                "cannot detach disk {disk_id} from instance {instance_id}: it is attached to another \
                 instance, {attached_to}"
            )))
        }
        _ => Err(disk_invalid_state(&before, "attached or detached")),
    }
}
