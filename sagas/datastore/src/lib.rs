//! The Nexus-shaped datastore: the tables, state machines and queries that ratchet's instance-create,
//! disk-attach, disk-detach and snapshot-create sagas run against. A simplified but faithful copy of the parts
//! of Omicron's `nexus-db-queries` these sagas touch, on PostgreSQL via diesel-async, with Nexus's column names.
//!
//! # How it is called
//!
//! Every function takes a `&mut AsyncPgConnection` and runs its statement(s) on it **without** opening or
//! committing a transaction: the saga engine opens one SERIALIZABLE transaction around each node's commit (and
//! a READ ONLY one around its reads), so a node's writes commit together with the engine's own record of them.
//! Read functions (`*_fetch`, `*_of`, `*_on`, [`disks_attached_to`], [`check_invariants`]) only SELECT,
//! without locks.
//!
//! Every mutating operation is **one SQL statement** (CTEs), which returns the rows it wrote through
//! `RETURNING`. Nothing is re-read after a write. This is the lesson of omicron#10695: Nexus's
//! `instance_attach_disk` committed the attach and then re-fetched the disk on a second pool claim; when the
//! pool was exhausted the re-fetch failed after the commit, the saga recorded the node as failed, never ran its
//! undo, and wedged its unwind trying to delete a disk that was still attached. Here a statement that writes
//! nothing also returns what it found (the row's current state, "found" flags, counts), and the refusal is
//! computed from that in Rust, without a second query. Refusals are typed ([`DatastoreError`]); only
//! [`DatastoreError::Database`] can be transient ([`DatastoreError::is_transient`]). A saga node's phase
//! applies a datastore error with `?`: it converts into the engine's `NodeError`, transient or permanent by
//! that same rule.
//!
//! # Tables (migration `2026-11-21-200000_nexus_datastore`)
//!
//! | table | key columns | notes |
//! |-------|-------------|-------|
//! | `project` | id, name | name unique among live projects |
//! | `instance` | id, project_id, name, ncpus, memory, state, state_generation, boot_disk_id, active_propolis_id | name unique per project; `state = 'vmm'` iff `active_propolis_id` is set (CHECK) |
//! | `disk` | id, project_id, name, size_bytes, disk_state, attach_instance_id, slot, state_generation, volume_id | slot 0..=11 (CHECK), unique per instance among live disks |
//! | `vpc_subnet` | id, name, ipv4_block (INET, /16../29) | |
//! | `network_interface` | id, instance_id, subnet_id, name, ip (INET), slot 0..=7, is_primary | unique (subnet, ip), (instance, slot), (instance, name), one primary per instance |
//! | `ip_pool`, `ip_pool_range` | id, name, is_default; id, ip_pool_id, first_address, last_address | one live default pool; ranges do not overlap |
//! | `external_ip` | id, ip_pool_id, ip_pool_range_id, ip, kind (snat, ephemeral), state, parent_id | ip unique among live rows; one SNAT and one ephemeral per instance |
//! | `snapshot` | id, project_id, disk_id, volume_id, name, state, size_bytes | name unique per project |
//! | `volume` | id, data (JSONB) | |
//! | `sled`, `sled_resource_vmm` | id, hostname, usable_hardware_threads, usable_physical_ram, reservoir_size; id (= propolis id), sled_id, instance_id, hardware_threads, rss_ram, reservoir_ram | a reservation is a row, deleted outright |
//!
//! All tables but `sled_resource_vmm` soft-delete with `time_deleted`; uniqueness is by partial unique indexes
//! over the live rows (`WHERE time_deleted IS NULL`). As in Nexus there are no foreign keys: the queries check
//! the rows they depend on, and [`invariants`] checks what is left at rest. The SQL stays inside what
//! CockroachDB (Nexus's database) also runs: states are TEXT with CHECK constraints (a simplification of
//! Nexus's enum types, which this simulated datastore does not need; the saga log itself uses Omicron's enums),
//! no advisory locks, no LISTEN/NOTIFY, no stored functions. IP addresses are INET, bound as text (`$1::inet`) and
//! read back as text (`host(ip)`).
//!
//! # State machines
//!
//! - **Instance** ([`instance`]): `creating → no_vmm ⇄ vmm`, `creating | no_vmm → failed → no_vmm`,
//!   `no_vmm → creating` (only as the generation-guarded undo of instance-create's move-to-stopped), and
//!   `creating | no_vmm | failed → destroyed` (soft delete, which detaches the instance's disks in the same
//!   statement, as Nexus's detach-many does). Every change bumps `state_generation`; the guarded transitions
//!   take the generation the caller saw and refuse with [`DatastoreError::GenerationMismatch`] if it moved.
//! - **Disk** ([`disk`], [`attach`]): `creating → detached ⇄ attached`, `detached → maintenance → detached`
//!   (snapshot-create, guarded by `state_generation`), `creating | detached | faulted → destroyed`. An attached
//!   disk can never be deleted: that refusal ("disk cannot be deleted in state attached") is what wedged
//!   omicron#10695's unwind, and it is kept so that the harness can show the leak if an attach is ever lost.
//! - **External IP** ([`external_ip`]): `attaching → attached → detaching → detached`.
//! - **Snapshot** ([`snapshot`]): `creating → ready`, `→ destroyed`.
//!
//! # Attach and detach
//!
//! [`instance_attach_disk`] and [`instance_detach_disk`] are single CTEs in the shape of Nexus's
//! `collection_attach.rs` / `collection_detach.rs` (their shape is in [`attach`]'s docs). They lock the
//! instance and then the disk `FOR UPDATE`, compute whether the update may happen (instance live and without a
//! VMM, disk live and in an attachable state, fewer than `max_disks` attached, a free slot), perform it, and
//! return the instance as locked, the disk before, and the disk after. Because a data-modifying CTE and its
//! sibling SELECTs see the same snapshot, "before" is exactly what the guards judged. From those rows the
//! caller gets success, idempotent success (already attached to this instance / already detached), or the
//! precise refusal: [`DatastoreError::HotPlug`] (instance running), `InvalidState`, `Conflict` (attached to
//! another instance, boot disk), `Limit` (too many disks), `NotFound`.
//!
//! Invariants these statements maintain, and the schema backs:
//! - a disk is `attached` exactly when `attach_instance_id` and `slot` are set;
//! - at most 12 live disks per instance, in distinct slots 0..=11 (CHECK plus the unique index on
//!   `(attach_instance_id, slot)`, which also holds under READ COMMITTED races);
//! - disks are attached and detached only while the instance has no VMM;
//! - an instance's boot disk is attached to it: the boot disk cannot be detached unless the caller asks
//!   (`allow_boot_disk`), and then the same statement clears `boot_disk_id`.
//!
//! Locks are taken instance first, then disk, in every statement that takes both, so concurrent attach,
//! detach and boot-disk changes queue instead of deadlocking.
//!
//! # Allocation
//!
//! NIC addresses ([`network_interface_insert`]), external IPs ([`external_ip_allocate`]), disk slots and sled
//! placement ([`sled_reservation_create`]) are chosen inside the inserting statement: the lowest free
//! candidate from `generate_series` anti-joined with the live rows (Nexus's `NextItem`), or the sled with the
//! most free threads among those with room. Exhaustion is [`DatastoreError::Exhausted`], a per-instance cap is
//! [`DatastoreError::Limit`]. Unique indexes are the backstop for concurrent allocators (at SERIALIZABLE the
//! loser gets a serialization failure, which is transient).
//!
//! # Idempotence
//!
//! Undo actions must accept "already done", so the deletes (`*_soft_delete`, [`sled_reservation_delete`]),
//! [`instance_detach_disk`] (already detached), [`instance_attach_disk`] (already attached here),
//! [`instance_set_vmm`] / [`instance_clear_vmm`], [`external_ip_set_state`] (already in the target state),
//! [`external_ip_allocate`], [`volume_create`] and [`sled_reservation_create`] (same id) return the current row
//! instead of failing. [`disk_restore_detached`] returns `None` when the disk has moved on: its generation is
//! no longer the one the maintenance step wrote, so someone else owns it now.

mod common;
mod error;
mod project_scoped_insert;
mod soft_delete;

mod attach;
mod disk;
mod external_ip;
mod instance;
mod invariants;
mod network;
mod project;
mod sled;
mod snapshot;
mod volume;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// The datastore's tables.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub use attach::{MAX_DISKS_PER_INSTANCE, instance_attach_disk, instance_detach_disk};
pub use common::UnknownLabel;
pub use disk::{
    Disk, DiskState, disk_create, disk_fetch, disk_finalize, disk_restore_detached,
    disk_set_maintenance, disk_soft_delete, disks_attached_to,
};
pub use error::{DatastoreError, DatastoreResult};
pub use external_ip::{
    ExternalIp, IpAttachState, IpKind, IpPool, IpPoolRange, external_ip_allocate,
    external_ip_set_state, external_ip_soft_delete, external_ips_of, ip_pool_create,
    ip_pool_range_add, ip_pool_ranges_count,
};
pub use instance::{
    Instance, InstanceAttachments, InstanceState, instance_clear_vmm, instance_fetch,
    instance_insert, instance_set_boot_disk, instance_set_vmm, instance_soft_delete,
    instance_transition, project_instance_attachments,
};
pub use invariants::{RULES, Rule, Violation, check_invariants};
pub use network::{
    MAX_NICS_PER_INSTANCE, NUM_INITIAL_RESERVED_IP_ADDRESSES, NetworkInterface, VpcSubnet,
    network_interface_insert, network_interface_soft_delete, network_interfaces_of,
    vpc_subnet_create, vpc_subnet_fetch,
};
pub use project::{Project, project_create, project_fetch};
pub use sled::{
    Sled, SledResource, sled_create, sled_reservation_create, sled_reservation_delete,
    sled_reservations_on,
};
pub use snapshot::{
    Snapshot, SnapshotState, snapshot_create, snapshot_fetch, snapshot_finalize,
    snapshot_soft_delete,
};
pub use volume::{Volume, volume_create, volume_fetch, volume_soft_delete};
