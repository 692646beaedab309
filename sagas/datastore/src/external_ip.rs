//! IP pools, their ranges, and external IPs (an instance's SNAT and ephemeral addresses), allocated from the
//! pool in the insert statement.
//!
//! An external IP's `state` follows Nexus's `ip_attach_state`: `attaching → attached → detaching → detached`.
//! Instance-create allocates SNAT `attached` and ephemeral `attaching`, then completes the attach with
//! [`external_ip_set_state`]; `attaching` and `detaching` must not survive a saga ([`crate::invariants`]).

use crate::common::{OUTCOME_TAIL, Outcome, check_name, label_enum};
use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use crate::soft_delete::SoftDelete;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use uuid::Uuid;

label_enum! {
    /// `external_ip.kind` (Nexus also has `floating`, not modelled here).
    pub enum IpKind ("external IP kind") {
        /// The instance's source-NAT address (one per instance).
        Snat => "snat",
        /// The instance's ephemeral address (at most one per instance).
        Ephemeral => "ephemeral",
    }
}

label_enum! {
    /// `external_ip.state` (Nexus's `ip_attach_state`).
    pub enum IpAttachState ("external IP state") {
        Attaching => "attaching",
        Attached => "attached",
        Detaching => "detaching",
        Detached => "detached",
    }
}

/// An `ip_pool` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct IpPool {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Bool)]
    pub is_default: bool,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const POOL_COLUMNS: &str = "id, name, is_default, time_created, time_modified, time_deleted";

/// An `ip_pool_range` row: the addresses `first_address..=last_address` belong to the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct IpPoolRange {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub ip_pool_id: Uuid,
    #[diesel(sql_type = Text)]
    pub first_address: String,
    #[diesel(sql_type = Text)]
    pub last_address: String,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const RANGE_COLUMNS: &str = "id, ip_pool_id, host(first_address) AS first_address, \
     host(last_address) AS last_address, time_created, time_modified, time_deleted";

/// An `external_ip` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct ExternalIp {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub ip_pool_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub ip_pool_range_id: Uuid,
    /// The address, e.g. "203.0.113.7".
    #[diesel(sql_type = Text)]
    pub ip: String,
    #[diesel(sql_type = Text)]
    pub kind: IpKind,
    #[diesel(sql_type = Text)]
    pub state: IpAttachState,
    /// The instance.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub parent_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const EXTERNAL_IP_COLUMNS: &str = "id, ip_pool_id, ip_pool_range_id, host(ip) AS ip, kind, state, \
     parent_id, time_created, time_modified, time_deleted";

fn not_found(id: Uuid) -> DatastoreError {
    DatastoreError::NotFound {
        kind: "external_ip",
        id,
    }
}

/// Creates an IP pool. A live pool of the same name, a second live default pool, or an id already used is
/// `Conflict`.
pub async fn ip_pool_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
    is_default: bool,
) -> DatastoreResult<IpPool> {
    check_name("ip_pool", name)?;
    diesel::sql_query(format!(
        "INSERT INTO ip_pool (id, name, is_default, time_created, time_modified) \
         VALUES ($1, $2, $3, now(), now()) RETURNING {POOL_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(name)
    .bind::<Bool, _>(is_default)
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |index| match index {
            "lookup_pool_by_name" => format!("IP pool name {name:?} is already in use"),
            "one_default_ip_pool" => "there is already a default IP pool".to_owned(),
            _ => format!("IP pool {id} already exists"),
        })
    })
}

#[derive(diesel::QueryableByName)]
struct RangeInsertRow {
    #[diesel(sql_type = Bool)]
    pool_found: bool,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    overlapping_range: Option<Uuid>,
    #[diesel(embed)]
    row: Option<IpPoolRange>,
}

/// How many IP pool ranges were ever added (deleted ones included): a seed can use it to pick a block no
/// earlier range took.
pub async fn ip_pool_ranges_count(conn: &mut AsyncPgConnection) -> DatastoreResult<i64> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let row: Count = diesel::sql_query("SELECT count(*) AS count FROM ip_pool_range")
        .get_result(conn)
        .await?;
    Ok(row.count)
}

/// Adds the IPv4 addresses `first..=last` to a live pool (`NotFound`). `InvalidArgument` unless both are IPv4
/// addresses with `first <= last`; `Conflict` if the range overlaps any live range of any pool (as in Nexus).
pub async fn ip_pool_range_add(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    pool_id: Uuid,
    first: &str,
    last: &str,
) -> DatastoreResult<IpPoolRange> {
    let parse = |address: &str| {
        address.parse::<Ipv4Addr>().map_err(|_| {
            DatastoreError::InvalidArgument(format!("{address:?} is not an IPv4 address"))
        })
    };
    if parse(first)? > parse(last)? {
        return Err(DatastoreError::InvalidArgument(format!(
            "IP range {first}..={last} is empty"
        )));
    }
    let row: RangeInsertRow = diesel::sql_query(format!(
        "WITH \
           pool AS (SELECT id FROM ip_pool WHERE id = $2 AND time_deleted IS NULL), \
           overlap AS (SELECT id FROM ip_pool_range \
                       WHERE time_deleted IS NULL \
                         AND first_address <= $4::inet AND last_address >= $3::inet), \
           ins AS ( \
             INSERT INTO ip_pool_range (id, ip_pool_id, first_address, last_address, time_created, \
                                        time_modified) \
             SELECT $1, $2, $3::inet, $4::inet, now(), now() \
             WHERE EXISTS (SELECT 1 FROM pool) AND NOT EXISTS (SELECT 1 FROM overlap) \
             RETURNING {RANGE_COLUMNS}) \
         SELECT EXISTS (SELECT 1 FROM pool) AS pool_found, \
                (SELECT id FROM overlap ORDER BY id LIMIT 1) AS overlapping_range, \
                ins.* \
         FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(pool_id)
    .bind::<Text, _>(first)
    .bind::<Text, _>(last)
    .get_result(conn)
    .await
    .map_err(|error| conflict_on_unique(error, |_| format!("IP pool range {id} already exists")))?;
    match row {
        RangeInsertRow {
            row: Some(range), ..
        } => Ok(range),
        RangeInsertRow {
            pool_found: false, ..
        } => Err(DatastoreError::NotFound {
            kind: "ip_pool",
            id: pool_id,
        }),
        RangeInsertRow {
            overlapping_range: Some(other),
            ..
        } => Err(DatastoreError::Conflict(format!(
            "IP range {first}..={last} overlaps range {other}"
        ))),
        RangeInsertRow { .. } => Err(DatastoreError::Conflict(format!(
            "IP pool range {id} was not inserted"
        ))),
    }
}

#[derive(diesel::QueryableByName)]
struct AllocateRow {
    #[diesel(sql_type = Bool)]
    already_exists: bool,
    #[diesel(sql_type = Bool)]
    pool_found: bool,
    #[diesel(sql_type = Bool)]
    parent_found: bool,
    #[diesel(sql_type = Bool)]
    kind_taken: bool,
    #[diesel(sql_type = Bool)]
    ip_available: bool,
    #[diesel(embed)]
    row: Option<ExternalIp>,
}

/// Allocates an external IP for an instance from a pool, in one statement: the lowest address of the pool's
/// live ranges that no live external IP holds.
///
/// Idempotent by id: if an external IP with `id` exists and matches (same pool, instance and kind, not
/// deleted), it is returned as it is (whatever its state now); if it does not match, `Conflict`. Otherwise the
/// pool (`NotFound`) and the instance (`NotFound`) must be live, the instance must not already have a live
/// address of this kind (`Conflict`), and the pool must have a free address (`Exhausted`).
pub async fn external_ip_allocate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    pool_id: Uuid,
    parent_instance_id: Uuid,
    kind: IpKind,
    state: IpAttachState,
) -> DatastoreResult<ExternalIp> {
    let row: AllocateRow = diesel::sql_query(format!(
        "WITH \
           existing AS (SELECT {EXTERNAL_IP_COLUMNS} FROM external_ip WHERE id = $1), \
           pool AS (SELECT id FROM ip_pool WHERE id = $2 AND time_deleted IS NULL), \
           parent AS (SELECT id FROM instance WHERE id = $3 AND time_deleted IS NULL), \
           same_kind AS (SELECT id FROM external_ip \
                         WHERE parent_id = $3 AND kind = $4 AND time_deleted IS NULL), \
           candidate AS ( \
             SELECT r.id AS ip_pool_range_id, r.first_address + g.n AS ip \
             FROM ip_pool_range AS r \
             CROSS JOIN LATERAL generate_series(0, r.last_address - r.first_address) AS g(n) \
             LEFT JOIN external_ip AS e \
               ON e.ip = r.first_address + g.n AND e.time_deleted IS NULL \
             WHERE r.ip_pool_id = $2 AND r.time_deleted IS NULL AND e.id IS NULL \
             ORDER BY r.first_address + g.n \
             LIMIT 1), \
           checks AS ( \
             SELECT EXISTS (SELECT 1 FROM existing) AS already_exists, \
                    EXISTS (SELECT 1 FROM pool) AS pool_found, \
                    EXISTS (SELECT 1 FROM parent) AS parent_found, \
                    EXISTS (SELECT 1 FROM same_kind) AS kind_taken, \
                    EXISTS (SELECT 1 FROM candidate) AS ip_available), \
           ins AS ( \
             INSERT INTO external_ip (id, ip_pool_id, ip_pool_range_id, ip, kind, state, parent_id, \
                                      time_created, time_modified) \
             SELECT $1, $2, c.ip_pool_range_id, c.ip, $4, $5, $3, now(), now() \
             FROM candidate AS c, checks AS k \
             WHERE NOT k.already_exists AND k.pool_found AND k.parent_found AND NOT k.kind_taken \
             RETURNING {EXTERNAL_IP_COLUMNS}) \
         SELECT k.*, x.* \
         FROM checks AS k \
         LEFT JOIN (SELECT * FROM ins UNION ALL SELECT * FROM existing) AS x ON TRUE"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(pool_id)
    .bind::<SqlUuid, _>(parent_instance_id)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(state)
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |index| match index {
            "one_ephemeral_ip_per_instance" | "one_snat_ip_per_instance" => {
                format!("instance {parent_instance_id} already has a {kind} IP")
            }
            _ => format!("external IP {id} already exists"),
        })
    })?;
    if row.already_exists {
        let existing = row.row.ok_or_else(|| not_found(id))?;
        let matches = existing.time_deleted.is_none()
            && existing.ip_pool_id == pool_id
            && existing.parent_id == Some(parent_instance_id)
            && existing.kind == kind;
        return if matches {
            Ok(existing)
        } else {
            Err(DatastoreError::Conflict(format!(
                "external IP {id} already exists and is not this allocation \
                 (pool {}, instance {:?}, kind {}, deleted {})",
                existing.ip_pool_id,
                existing.parent_id,
                existing.kind,
                existing.time_deleted.is_some()
            )))
        };
    }
    if let Some(ip) = row.row {
        return Ok(ip);
    }
    if !row.pool_found {
        return Err(DatastoreError::NotFound {
            kind: "ip_pool",
            id: pool_id,
        });
    }
    if !row.parent_found {
        return Err(DatastoreError::NotFound {
            kind: "instance",
            id: parent_instance_id,
        });
    }
    if row.kind_taken {
        return Err(DatastoreError::Conflict(format!(
            "instance {parent_instance_id} already has a {kind} IP"
        )));
    }
    if !row.ip_available {
        return Err(DatastoreError::Exhausted(format!(
            "IP pool {pool_id} has no free address"
        )));
    }
    Err(DatastoreError::Conflict(format!(
        "external IP {id} was not allocated"
    )))
}

/// Moves a live external IP from state `from` to `to`. Idempotent: an IP already in `to` is returned as it is;
/// any other state is `InvalidState`.
pub async fn external_ip_set_state(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: IpAttachState,
    to: IpAttachState,
) -> DatastoreResult<ExternalIp> {
    let outcome: Option<Outcome<ExternalIp>> = diesel::sql_query(format!(
        "WITH \
           cur AS (SELECT {EXTERNAL_IP_COLUMNS} FROM external_ip \
                   WHERE id = $1 AND time_deleted IS NULL), \
           upd AS ( \
             UPDATE external_ip SET state = $3, time_modified = now() \
             WHERE id = $1 AND time_deleted IS NULL AND state = $2 \
             RETURNING {EXTERNAL_IP_COLUMNS}) \
         {OUTCOME_TAIL}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(from)
    .bind::<Text, _>(to)
    .get_result(conn)
    .await
    .optional()?;
    let Outcome { updated, row } = outcome.ok_or_else(|| not_found(id))?;
    if updated || row.state == to {
        Ok(row)
    } else {
        Err(DatastoreError::InvalidState {
            kind: "external_ip",
            id,
            state: row.state.to_string(),
            wanted: from.to_string(),
        })
    }
}

/// Deletes an external IP (sets `time_deleted`, releasing the address). Idempotent: an already-deleted IP is
/// returned as it is. An id that never existed is `NotFound`.
pub async fn external_ip_soft_delete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<ExternalIp> {
    SoftDelete {
        table: "external_ip",
        columns: EXTERNAL_IP_COLUMNS,
        also_set: &[],
        guards: &[],
    }
    .run(conn, id)
    .await
}

/// The live external IPs of an instance, SNAT first. Reads only.
pub async fn external_ips_of(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
) -> DatastoreResult<Vec<ExternalIp>> {
    Ok(diesel::sql_query(format!(
        "SELECT {EXTERNAL_IP_COLUMNS} FROM external_ip \
         WHERE parent_id = $1 AND time_deleted IS NULL ORDER BY kind DESC, id"
    ))
    .bind::<SqlUuid, _>(instance_id)
    .load(conn)
    .await?)
}
