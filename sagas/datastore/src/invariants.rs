//! The invariants that must hold whenever no saga is running ("at rest"), each checked by one read-only SQL
//! query. The fault-injection harness runs [`check_invariants`] after every saga has come to rest; a leak a
//! fault causes (a disk left attached to a deleted instance, an IP stuck `attaching`) shows up here by rule
//! name.

use crate::error::DatastoreResult;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// One invariant: a stable snake_case name, what it means, and the query that lists its violations (one
/// `detail` text per offending row).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    sql: &'static str,
}

/// A row that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Violation {
    /// The rule's name, one of [`RULES`] (borrowed from the rule when the checker reports it; owned when read
    /// back from JSON).
    pub rule: std::borrow::Cow<'static, str>,
    /// Which row, and what is wrong with it.
    pub detail: String,
}

/// Every rule, in the order [`check_invariants`] reports them.
pub const RULES: &[Rule] = &[
    Rule {
        name: "disk_attached_to_non_live_instance",
        description: "a live disk names an instance that is missing, deleted or destroyed \
                      (the omicron#10695 leak); a failed instance keeps its disks until it is deleted",
        sql: "SELECT 'disk ' || d.id::text || ' (' || d.disk_state || ') is attached to instance ' \
                     || d.attach_instance_id::text || CASE \
                       WHEN i.id IS NULL THEN ', which does not exist' \
                       WHEN i.time_deleted IS NOT NULL THEN ', which is deleted' \
                       ELSE ', which is ' || i.state END AS detail \
              FROM disk AS d LEFT JOIN instance AS i ON i.id = d.attach_instance_id \
              WHERE d.time_deleted IS NULL AND d.attach_instance_id IS NOT NULL \
                AND (i.id IS NULL OR i.time_deleted IS NOT NULL OR i.state = 'destroyed') \
              ORDER BY d.id",
    },
    Rule {
        name: "disk_attachment_inconsistent",
        description: "a live disk is 'attached' without an instance or slot, or has an instance or slot \
                      while not 'attached'",
        sql: "SELECT 'disk ' || id::text || ' is ' || disk_state || ' with attach_instance_id ' \
                     || COALESCE(attach_instance_id::text, 'NULL') || ' and slot ' \
                     || COALESCE(slot::text, 'NULL') AS detail \
              FROM disk \
              WHERE time_deleted IS NULL AND ( \
                (disk_state = 'attached' AND (attach_instance_id IS NULL OR slot IS NULL)) \
                OR (disk_state <> 'attached' AND (attach_instance_id IS NOT NULL OR slot IS NOT NULL))) \
              ORDER BY id",
    },
    Rule {
        name: "disk_in_transitional_state",
        description: "a live disk is 'creating' or 'maintenance', states only a running saga may hold",
        sql: "SELECT 'disk ' || id::text || ' is ' || disk_state AS detail \
              FROM disk \
              WHERE time_deleted IS NULL AND disk_state IN ('creating', 'maintenance') \
              ORDER BY id",
    },
    Rule {
        name: "network_interface_without_live_instance",
        description: "a live NIC belongs to an instance that is missing or deleted",
        sql: "SELECT 'network interface ' || n.id::text || ' (' || host(n.ip) || ') belongs to instance ' \
                     || n.instance_id::text || CASE WHEN i.id IS NULL THEN ', which does not exist' \
                                                    ELSE ', which is deleted' END AS detail \
              FROM network_interface AS n LEFT JOIN instance AS i ON i.id = n.instance_id \
              WHERE n.time_deleted IS NULL AND (i.id IS NULL OR i.time_deleted IS NOT NULL) \
              ORDER BY n.id",
    },
    Rule {
        name: "external_ip_without_live_instance",
        description: "a live external IP has no parent, or its instance is missing or deleted",
        sql: "SELECT 'external IP ' || e.id::text || ' (' || e.kind || ' ' || host(e.ip) || ') ' || CASE \
                       WHEN e.parent_id IS NULL THEN 'has no instance' \
                       WHEN i.id IS NULL THEN 'belongs to instance ' || e.parent_id::text \
                                              || ', which does not exist' \
                       ELSE 'belongs to instance ' || e.parent_id::text || ', which is deleted' END \
                     AS detail \
              FROM external_ip AS e LEFT JOIN instance AS i ON i.id = e.parent_id \
              WHERE e.time_deleted IS NULL \
                AND (e.parent_id IS NULL OR i.id IS NULL OR i.time_deleted IS NOT NULL) \
              ORDER BY e.id",
    },
    Rule {
        name: "external_ip_in_transitional_state",
        description: "a live external IP is 'attaching' or 'detaching'",
        sql: "SELECT 'external IP ' || id::text || ' (' || kind || ' ' || host(ip) || ') is ' || state \
                     AS detail \
              FROM external_ip \
              WHERE time_deleted IS NULL AND state IN ('attaching', 'detaching') \
              ORDER BY id",
    },
    Rule {
        name: "sled_reservation_without_live_vmm",
        description: "a sled reservation's instance is missing or deleted, or is not running that VMM \
                      (state 'vmm' with active_propolis_id = the reservation's id)",
        sql: "SELECT 'sled reservation ' || r.id::text || ' on sled ' || r.sled_id::text \
                     || ' is for instance ' || r.instance_id::text || CASE \
                       WHEN i.id IS NULL THEN ', which does not exist' \
                       WHEN i.time_deleted IS NOT NULL THEN ', which is deleted' \
                       ELSE ', which is ' || i.state || ' with active_propolis_id ' \
                            || COALESCE(i.active_propolis_id::text, 'NULL') END AS detail \
              FROM sled_resource_vmm AS r LEFT JOIN instance AS i ON i.id = r.instance_id \
              WHERE i.id IS NULL OR i.time_deleted IS NOT NULL OR i.state <> 'vmm' \
                 OR i.active_propolis_id IS DISTINCT FROM r.id \
              ORDER BY r.id",
    },
    Rule {
        name: "instance_vmm_without_sled_reservation",
        description: "a live instance runs a VMM that has no sled reservation",
        sql: "SELECT 'instance ' || i.id::text || ' runs VMM ' || i.active_propolis_id::text \
                     || ', which has no sled reservation' AS detail \
              FROM instance AS i \
              WHERE i.time_deleted IS NULL AND i.active_propolis_id IS NOT NULL \
                AND NOT EXISTS (SELECT 1 FROM sled_resource_vmm AS r \
                                WHERE r.id = i.active_propolis_id AND r.instance_id = i.id) \
              ORDER BY i.id",
    },
    Rule {
        name: "snapshot_stuck_creating",
        description: "a live snapshot is 'creating'",
        sql: "SELECT 'snapshot ' || id::text || ' of disk ' || disk_id::text || ' is creating' AS detail \
              FROM snapshot \
              WHERE time_deleted IS NULL AND state = 'creating' \
              ORDER BY id",
    },
    Rule {
        name: "instance_stuck_creating",
        description: "a live instance is 'creating'",
        sql: "SELECT 'instance ' || id::text || ' (' || name || ') is creating' AS detail \
              FROM instance \
              WHERE time_deleted IS NULL AND state = 'creating' \
              ORDER BY id",
    },
    Rule {
        name: "boot_disk_not_attached",
        description: "a live instance's boot_disk_id names a disk that is not live and attached to it",
        sql: "SELECT 'instance ' || i.id::text || ' has boot disk ' || i.boot_disk_id::text || CASE \
                       WHEN d.id IS NULL THEN ', which does not exist or is deleted' \
                       ELSE ', which is ' || d.disk_state || ' to ' \
                            || COALESCE(d.attach_instance_id::text, 'no instance') END AS detail \
              FROM instance AS i \
              LEFT JOIN disk AS d ON d.id = i.boot_disk_id AND d.time_deleted IS NULL \
              WHERE i.time_deleted IS NULL AND i.boot_disk_id IS NOT NULL \
                AND (d.id IS NULL OR d.disk_state <> 'attached' \
                     OR d.attach_instance_id IS DISTINCT FROM i.id) \
              ORDER BY i.id",
    },
];

#[derive(diesel::QueryableByName)]
struct DetailRow {
    #[diesel(sql_type = Text)]
    detail: String,
}

/// Runs every rule in [`RULES`] and returns the violations, grouped by rule in that order. Reads only (safe in
/// a READ ONLY transaction); runs on `conn` without opening a transaction, so for one consistent snapshot call
/// it inside a REPEATABLE READ or SERIALIZABLE transaction.
pub async fn check_invariants(conn: &mut AsyncPgConnection) -> DatastoreResult<Vec<Violation>> {
    let mut violations = Vec::new();
    for rule in RULES {
        let rows: Vec<DetailRow> = diesel::sql_query(rule.sql).load(conn).await?;
        violations.extend(rows.into_iter().map(|row| Violation {
            rule: rule.name.into(),
            detail: row.detail,
        }));
    }
    Ok(violations)
}
