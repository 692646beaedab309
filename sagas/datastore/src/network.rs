//! VPC subnets and instance network interfaces, with private IP allocation in the insert statement.
//!
//! A subnet's first [`NUM_INITIAL_RESERVED_IP_ADDRESSES`] addresses (the network address and four more) and its
//! broadcast address are reserved, as in Nexus; a NIC gets the lowest free address of the rest. The candidates
//! come from `generate_series` anti-joined with the subnet's live NICs (Nexus's `NextItem` shape), so a subnet
//! is bounded to /16 by the schema.

use crate::common::check_name;
use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use crate::instance::InstanceState;
use crate::soft_delete::SoftDelete;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use uuid::Uuid;

/// How many NICs an instance can have: slots 0..=7 (Nexus's `MAX_NICS_PER_INSTANCE`).
pub const MAX_NICS_PER_INSTANCE: i16 = 8;

/// Addresses at the start of every subnet that are never allocated (Nexus's
/// `NUM_INITIAL_RESERVED_IP_ADDRESSES`; the network address is the first of them).
pub const NUM_INITIAL_RESERVED_IP_ADDRESSES: i64 = 5;

/// A `vpc_subnet` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct VpcSubnet {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    /// CIDR notation, e.g. "172.30.0.0/24".
    #[diesel(sql_type = Text)]
    pub ipv4_block: String,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const SUBNET_COLUMNS: &str =
    "id, name, text(ipv4_block) AS ipv4_block, time_created, time_modified, time_deleted";

/// A `network_interface` row (an instance's NIC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct NetworkInterface {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub instance_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub subnet_id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The private IPv4 address, e.g. "172.30.0.5".
    #[diesel(sql_type = Text)]
    pub ip: String,
    #[diesel(sql_type = SmallInt)]
    pub slot: i16,
    #[diesel(sql_type = Bool)]
    pub is_primary: bool,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const NIC_COLUMNS: &str = "id, instance_id, subnet_id, name, host(ip) AS ip, slot, is_primary, \
     time_created, time_modified, time_deleted";

/// Parses "a.b.c.d/n" and checks it is an IPv4 network address with a /16 to /29 prefix.
fn parse_ipv4_block(block: &str) -> DatastoreResult<()> {
    let invalid =
        |why: &str| DatastoreError::InvalidArgument(format!("ipv4_block {block:?} {why}"));
    let (address, prefix) = block
        .split_once('/')
        .ok_or_else(|| invalid("is not in CIDR notation (a.b.c.d/n)"))?;
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| invalid("does not start with an IPv4 address"))?;
    let prefix: u32 = prefix
        .parse()
        .map_err(|_| invalid("has no valid prefix length"))?;
    if !(16..=29).contains(&prefix) {
        return Err(invalid("must have a prefix length from /16 to /29"));
    }
    let host_bits = u32::from(address) & (u32::MAX >> prefix);
    if host_bits != 0 {
        return Err(invalid("is not a network address (host bits are set)"));
    }
    Ok(())
}

/// Creates a VPC subnet with an IPv4 block such as "172.30.0.0/24" (`InvalidArgument` unless a network address
/// with a /16 to /29 prefix; an id already used is `Conflict`).
pub async fn vpc_subnet_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
    ipv4_block: &str,
) -> DatastoreResult<VpcSubnet> {
    check_name("vpc_subnet", name)?;
    parse_ipv4_block(ipv4_block)?;
    diesel::sql_query(format!(
        "INSERT INTO vpc_subnet (id, name, ipv4_block, time_created, time_modified) \
         VALUES ($1, $2, $3::inet, now(), now()) RETURNING {SUBNET_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(name)
    .bind::<Text, _>(ipv4_block)
    .get_result(conn)
    .await
    .map_err(|error| conflict_on_unique(error, |_| format!("vpc_subnet {id} already exists")))
}

/// The live subnet `id`. Reads only.
pub async fn vpc_subnet_fetch(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<VpcSubnet> {
    diesel::sql_query(format!(
        "SELECT {SUBNET_COLUMNS} FROM vpc_subnet WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or(DatastoreError::NotFound {
        kind: "vpc_subnet",
        id,
    })
}

#[derive(Debug, diesel::QueryableByName)]
struct NicInsertRow {
    #[diesel(sql_type = Bool)]
    instance_found: bool,
    #[diesel(sql_type = Nullable<Text>)]
    instance_state: Option<InstanceState>,
    #[diesel(sql_type = Bool)]
    subnet_found: bool,
    #[diesel(sql_type = BigInt)]
    nic_count: i64,
    #[diesel(sql_type = Bool)]
    name_taken: bool,
    #[diesel(sql_type = Bool)]
    slot_taken: bool,
    #[diesel(sql_type = Bool)]
    primary_taken: bool,
    #[diesel(sql_type = Bool)]
    ip_available: bool,
    #[diesel(embed)]
    row: Option<NetworkInterface>,
}

/// Inserts a NIC for an instance with a private IP allocated in the same statement: the lowest free address of
/// the subnet (reserved addresses skipped). With `used` live NICs in the subnet, the lowest free address is one
/// of the first `used + 1` candidates (they cannot all be taken), so only those are generated and probed: the
/// statement's cost follows the NICs in the subnet, not its size (a /22 scanned whole, joined and sorted on
/// every insert, was most of the server's CPU under load). Refusals, in this order: the instance (`NotFound`) or subnet
/// (`NotFound`) is missing; the instance has a VMM or is failed (`InvalidState`: NICs change only in `creating`
/// or `no_vmm`); it has [`MAX_NICS_PER_INSTANCE`] NICs (`Limit`); the name, the slot or (for `is_primary`) the
/// primary role is taken (`Conflict`); the subnet has no free address (`Exhausted`).
pub async fn network_interface_insert(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    instance_id: Uuid,
    subnet_id: Uuid,
    name: &str,
    slot: i16,
    is_primary: bool,
) -> DatastoreResult<NetworkInterface> {
    check_name("network_interface", name)?;
    if !(0..MAX_NICS_PER_INSTANCE).contains(&slot) {
        return Err(DatastoreError::InvalidArgument(format!(
            "NIC slot must be 0 to {}, got {slot}",
            MAX_NICS_PER_INSTANCE - 1
        )));
    }
    let row: NicInsertRow = diesel::sql_query(format!(
        "WITH \
           inst AS (SELECT id, state FROM instance \
                    WHERE id = $2 AND time_deleted IS NULL FOR UPDATE), \
           subnet AS (SELECT id, host(ipv4_block)::inet AS base, \
                             (1::bigint << (32 - masklen(ipv4_block))) - 2 AS last, \
                             (SELECT count(*) FROM network_interface \
                              WHERE subnet_id = $3 AND time_deleted IS NULL) AS used \
                      FROM vpc_subnet WHERE id = $3 AND time_deleted IS NULL), \
           live AS (SELECT name, slot, is_primary FROM network_interface \
                    WHERE instance_id = $2 AND time_deleted IS NULL), \
           candidate AS ( \
             SELECT s.base + g.n AS ip \
             FROM subnet AS s \
             CROSS JOIN LATERAL generate_series($7::bigint, LEAST(s.last, $7 + s.used)) AS g(n) \
             WHERE NOT EXISTS (SELECT 1 FROM network_interface AS ni \
                               WHERE ni.subnet_id = s.id AND ni.time_deleted IS NULL \
                                 AND ni.ip = s.base + g.n) \
             ORDER BY g.n \
             LIMIT 1), \
           checks AS ( \
             SELECT EXISTS (SELECT 1 FROM inst) AS instance_found, \
                    (SELECT state FROM inst) AS instance_state, \
                    EXISTS (SELECT 1 FROM subnet) AS subnet_found, \
                    (SELECT count(*) FROM live) AS nic_count, \
                    EXISTS (SELECT 1 FROM live WHERE name = $4) AS name_taken, \
                    EXISTS (SELECT 1 FROM live WHERE slot = $5) AS slot_taken, \
                    ($6 AND EXISTS (SELECT 1 FROM live WHERE is_primary)) AS primary_taken, \
                    EXISTS (SELECT 1 FROM candidate) AS ip_available), \
           ins AS ( \
             INSERT INTO network_interface (id, instance_id, subnet_id, name, ip, slot, is_primary, \
                                            time_created, time_modified) \
             SELECT $1, $2, $3, $4, c.ip, $5, $6, now(), now() \
             FROM candidate AS c, checks AS k \
             WHERE k.instance_found AND k.instance_state IN ('creating', 'no_vmm') AND k.subnet_found \
               AND k.nic_count < $8 AND NOT k.name_taken AND NOT k.slot_taken \
               AND NOT k.primary_taken \
             RETURNING {NIC_COLUMNS}) \
         SELECT k.*, ins.* FROM checks AS k LEFT JOIN ins ON TRUE"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(instance_id)
    .bind::<SqlUuid, _>(subnet_id)
    .bind::<Text, _>(name)
    .bind::<SmallInt, _>(slot)
    .bind::<Bool, _>(is_primary)
    .bind::<BigInt, _>(NUM_INITIAL_RESERVED_IP_ADDRESSES)
    .bind::<BigInt, _>(i64::from(MAX_NICS_PER_INSTANCE))
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |index| match index {
            "network_interface_instance_id_name_key" => {
                format!("instance {instance_id} already has a NIC named {name:?}")
            }
            "network_interface_instance_id_slot_key" => {
                format!("instance {instance_id} already has a NIC in slot {slot}")
            }
            "network_interface_instance_id_primary_key" => {
                format!("instance {instance_id} already has a primary NIC")
            }
            _ => format!("network interface {id} already exists"),
        })
    })?;
    if let Some(nic) = row.row {
        return Ok(nic);
    }
    if !row.instance_found {
        return Err(DatastoreError::NotFound {
            kind: "instance",
            id: instance_id,
        });
    }
    if !row.subnet_found {
        return Err(DatastoreError::NotFound {
            kind: "vpc_subnet",
            id: subnet_id,
        });
    }
    if let Some(state) = row
        .instance_state
        .filter(|s| !matches!(s, InstanceState::Creating | InstanceState::NoVmm))
    {
        return Err(DatastoreError::InvalidState {
            kind: "instance",
            id: instance_id,
            state: state.to_string(),
            wanted: "creating or no_vmm".to_owned(),
        });
    }
    if row.nic_count >= i64::from(MAX_NICS_PER_INSTANCE) {
        return Err(DatastoreError::Limit(format!(
            "instance {instance_id} already has {} network interfaces (at most {MAX_NICS_PER_INSTANCE})",
            row.nic_count
        )));
    }
    if row.name_taken {
        return Err(DatastoreError::Conflict(format!(
            "instance {instance_id} already has a NIC named {name:?}"
        )));
    }
    if row.slot_taken {
        return Err(DatastoreError::Conflict(format!(
            "instance {instance_id} already has a NIC in slot {slot}"
        )));
    }
    if row.primary_taken {
        return Err(DatastoreError::Conflict(format!(
            "instance {instance_id} already has a primary NIC"
        )));
    }
    if !row.ip_available {
        return Err(DatastoreError::Exhausted(format!(
            "subnet {subnet_id} has no free IPv4 address"
        )));
    }
    Err(DatastoreError::Conflict(format!(
        "network interface {id} was not inserted: {row:?}"
    )))
}

/// Deletes a NIC (sets `time_deleted`, releasing its address). Idempotent: an already-deleted NIC is returned
/// as it is. An id that never existed is `NotFound`.
pub async fn network_interface_soft_delete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> DatastoreResult<NetworkInterface> {
    SoftDelete {
        table: "network_interface",
        columns: NIC_COLUMNS,
        also_set: &[],
        guards: &[],
    }
    .run(conn, id)
    .await
}

/// The live NICs of an instance, by slot. Reads only.
pub async fn network_interfaces_of(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
) -> DatastoreResult<Vec<NetworkInterface>> {
    Ok(diesel::sql_query(format!(
        "SELECT {NIC_COLUMNS} FROM network_interface \
         WHERE instance_id = $1 AND time_deleted IS NULL ORDER BY slot"
    ))
    .bind::<SqlUuid, _>(instance_id)
    .load(conn)
    .await?)
}

#[cfg(test)]
mod test {
    use super::parse_ipv4_block;

    #[test]
    fn ipv4_blocks_are_checked() {
        assert!(parse_ipv4_block("172.30.0.0/24").is_ok());
        assert!(parse_ipv4_block("10.0.0.8/29").is_ok());
        assert!(parse_ipv4_block("10.0.0.9/29").is_err());
        assert!(parse_ipv4_block("10.0.0.0/30").is_err());
        assert!(parse_ipv4_block("10.0.0.0/8").is_err());
        assert!(parse_ipv4_block("10.0.0.0").is_err());
        assert!(parse_ipv4_block("fd00::/64").is_err());
    }
}
