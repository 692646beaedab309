//! Sleds and sled reservations (`sled_resource_vmm`: one row per VMM, its id the propolis id).
//!
//! A reservation is placed on a live sled whose free capacity covers it, in one statement, checking as Nexus's
//! `sled_reservation_create` does: the sum of the sled's reservations plus the new one must fit in its
//! `usable_hardware_threads`, its `usable_physical_ram` (RSS) and its `reservoir_size` (reservoir RAM). Among
//! the sleds that fit, the one with the most free hardware threads wins (Nexus picks at random; determinism
//! keeps the tests and the fault-injection matrix reproducible). Two concurrent reservations can both fit only
//! under READ COMMITTED; at SERIALIZABLE, which the engine uses, one of them fails with a serialization failure.

use crate::common::check_non_negative;
use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A `sled` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Sled {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub hostname: String,
    #[diesel(sql_type = BigInt)]
    pub usable_hardware_threads: i64,
    /// Bytes.
    #[diesel(sql_type = BigInt)]
    pub usable_physical_ram: i64,
    /// Bytes of the VMM reservoir (at most `usable_physical_ram`).
    #[diesel(sql_type = BigInt)]
    pub reservoir_size: i64,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const SLED_COLUMNS: &str = "id, hostname, usable_hardware_threads, usable_physical_ram, reservoir_size, \
     time_created, time_modified, time_deleted";

/// A `sled_resource_vmm` row: the resources reserved on a sled for one VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct SledResource {
    /// The propolis (VMM) id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub sled_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub instance_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub hardware_threads: i64,
    #[diesel(sql_type = BigInt)]
    pub rss_ram: i64,
    #[diesel(sql_type = BigInt)]
    pub reservoir_ram: i64,
}

const RESOURCE_COLUMNS: &str = "id, sled_id, instance_id, hardware_threads, rss_ram, reservoir_ram";

/// Registers a sled. An id already used is `Conflict`.
pub async fn sled_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    hostname: &str,
    usable_hardware_threads: i64,
    usable_physical_ram: i64,
    reservoir_size: i64,
) -> DatastoreResult<Sled> {
    check_non_negative("usable_hardware_threads", usable_hardware_threads)?;
    check_non_negative("usable_physical_ram", usable_physical_ram)?;
    check_non_negative("reservoir_size", reservoir_size)?;
    if reservoir_size > usable_physical_ram {
        return Err(DatastoreError::InvalidArgument(format!(
            "reservoir_size {reservoir_size} exceeds usable_physical_ram {usable_physical_ram}"
        )));
    }
    diesel::sql_query(format!(
        "INSERT INTO sled (id, hostname, usable_hardware_threads, usable_physical_ram, reservoir_size, \
                           time_created, time_modified) \
         VALUES ($1, $2, $3, $4, $5, now(), now()) RETURNING {SLED_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(hostname)
    .bind::<BigInt, _>(usable_hardware_threads)
    .bind::<BigInt, _>(usable_physical_ram)
    .bind::<BigInt, _>(reservoir_size)
    .get_result(conn)
    .await
    .map_err(|error| conflict_on_unique(error, |_| format!("sled {id} already exists")))
}

#[derive(diesel::QueryableByName)]
struct ReservationRow {
    #[diesel(sql_type = Bool)]
    already_exists: bool,
    #[diesel(sql_type = Bool)]
    instance_found: bool,
    #[diesel(sql_type = Bool)]
    sled_available: bool,
    #[diesel(embed)]
    row: Option<SledResource>,
}

/// Reserves resources for VMM `propolis_id` of an instance on a sled that has room (see the module docs), in
/// one statement. The instance must be live (`NotFound`); no sled with room is `Exhausted`.
///
/// Idempotent by `propolis_id`: an existing reservation for the same instance is returned as it is (on the
/// sled it was placed on); one for another instance is `Conflict`.
pub async fn sled_reservation_create(
    conn: &mut AsyncPgConnection,
    propolis_id: Uuid,
    instance_id: Uuid,
    hardware_threads: i64,
    rss_ram: i64,
    reservoir_ram: i64,
) -> DatastoreResult<SledResource> {
    check_non_negative("hardware_threads", hardware_threads)?;
    check_non_negative("rss_ram", rss_ram)?;
    check_non_negative("reservoir_ram", reservoir_ram)?;
    let row: ReservationRow = diesel::sql_query(format!(
        "WITH \
           existing AS (SELECT {RESOURCE_COLUMNS} FROM sled_resource_vmm WHERE id = $1), \
           inst AS (SELECT id FROM instance WHERE id = $2 AND time_deleted IS NULL), \
           usage AS ( \
             SELECT sled_id, sum(hardware_threads) AS threads, sum(rss_ram) AS rss, \
                    sum(reservoir_ram) AS reservoir \
             FROM sled_resource_vmm GROUP BY sled_id), \
           candidate AS ( \
             SELECT s.id FROM sled AS s LEFT JOIN usage AS u ON u.sled_id = s.id \
             WHERE s.time_deleted IS NULL \
               AND COALESCE(u.threads, 0) + $3 <= s.usable_hardware_threads \
               AND COALESCE(u.rss, 0) + $4 <= s.usable_physical_ram \
               AND COALESCE(u.reservoir, 0) + $5 <= s.reservoir_size \
             ORDER BY s.usable_hardware_threads - COALESCE(u.threads, 0) DESC, s.id \
             LIMIT 1), \
           checks AS ( \
             SELECT EXISTS (SELECT 1 FROM existing) AS already_exists, \
                    EXISTS (SELECT 1 FROM inst) AS instance_found, \
                    EXISTS (SELECT 1 FROM candidate) AS sled_available), \
           ins AS ( \
             INSERT INTO sled_resource_vmm (id, sled_id, instance_id, hardware_threads, rss_ram, \
                                            reservoir_ram) \
             SELECT $1, c.id, $2, $3, $4, $5 \
             FROM candidate AS c, checks AS k \
             WHERE NOT k.already_exists AND k.instance_found \
             RETURNING {RESOURCE_COLUMNS}) \
         SELECT k.*, x.* \
         FROM checks AS k \
         LEFT JOIN (SELECT * FROM ins UNION ALL SELECT * FROM existing) AS x ON TRUE"
    ))
    .bind::<SqlUuid, _>(propolis_id)
    .bind::<SqlUuid, _>(instance_id)
    .bind::<BigInt, _>(hardware_threads)
    .bind::<BigInt, _>(rss_ram)
    .bind::<BigInt, _>(reservoir_ram)
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |_| {
            format!("sled reservation {propolis_id} already exists")
        })
    })?;
    if row.already_exists {
        let existing = row.row.ok_or(DatastoreError::NotFound {
            kind: "sled_resource_vmm",
            id: propolis_id,
        })?;
        return if existing.instance_id == instance_id {
            Ok(existing)
        } else {
            Err(DatastoreError::Conflict(format!(
                "sled reservation {propolis_id} belongs to instance {}, not {instance_id}",
                existing.instance_id
            )))
        };
    }
    match row {
        ReservationRow {
            row: Some(resource),
            ..
        } => Ok(resource),
        ReservationRow {
            instance_found: false,
            ..
        } => Err(DatastoreError::NotFound {
            kind: "instance",
            id: instance_id,
        }),
        ReservationRow {
            sled_available: false,
            ..
        } => Err(DatastoreError::Exhausted(format!(
            "no sled has room for {hardware_threads} hardware threads, {rss_ram} bytes of RSS and \
             {reservoir_ram} bytes of reservoir"
        ))),
        ReservationRow { .. } => Err(DatastoreError::Conflict(format!(
            "sled reservation {propolis_id} was not made"
        ))),
    }
}

/// Releases the reservation of VMM `propolis_id` (deletes the row, as Nexus does). Idempotent: returns the
/// deleted row, or `None` if there was none.
pub async fn sled_reservation_delete(
    conn: &mut AsyncPgConnection,
    propolis_id: Uuid,
) -> DatastoreResult<Option<SledResource>> {
    Ok(diesel::sql_query(format!(
        "DELETE FROM sled_resource_vmm WHERE id = $1 RETURNING {RESOURCE_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(propolis_id)
    .get_result(conn)
    .await
    .optional()?)
}

/// The reservations on a sled. Reads only.
pub async fn sled_reservations_on(
    conn: &mut AsyncPgConnection,
    sled_id: Uuid,
) -> DatastoreResult<Vec<SledResource>> {
    Ok(diesel::sql_query(format!(
        "SELECT {RESOURCE_COLUMNS} FROM sled_resource_vmm WHERE sled_id = $1 ORDER BY id"
    ))
    .bind::<SqlUuid, _>(sled_id)
    .load(conn)
    .await?)
}
