//! The Nexus-shaped sagas on ratchet: instance-create, disk-attach, disk-detach and snapshot-create, the
//! simulated sled agent and pantry they call, and the invariant checker that proves nothing leaked.
//!
//! # Big theory statement
//!
//! Each saga mirrors its Nexus namesake node for node (see each module's diagram), on the datastore in
//! `ratchet-datastore` (Nexus's tables, states and attach/detach CTEs). Every node is a typed ratchet node, so
//! its commit point is one transaction (or one keyed call) and nothing fallible follows it:
//!
//! - every write's result comes from the write itself (`RETURNING`), never from a re-read: the Omicron 10695
//!   defect (attach, then re-fetch on a second connection) cannot be written with these types;
//! - every id is generated when the DAG is built and travels in the node's arguments, so a replayed node
//!   writes the same rows, and the engine's commit record makes it commit once;
//! - a node that finds the world already as it wants it (a disk already attached to this instance) commits
//!   nothing, and its compensation, which undoes only what the node itself did, does nothing;
//! - compensations reverse exactly their node's commit, in reverse DAG order, so that each undo finds the
//!   state its forward left (an attach is undone before the disk it attached is deleted).
//!
//! The `legacy` module keeps the pre-fix attach, written directly on steno, to show the harness catching the
//! leak it causes. [`check_nexus_invariants`] is the checker: the datastore's SQL rules plus the services' state;
//! [`instance_create_postcondition`] says what each saga promises once it is at rest.

mod app;
mod attach_nodes;
mod disk_attach;
mod errors;
mod instance_create;
mod invariants;
mod legacy;
mod postcondition;
mod snapshot_create;
mod world;

pub use app::{LegacyKnobs, NexusApp};
pub use attach_nodes::MAX_DISKS_PER_INSTANCE;
pub use disk_attach::{DiskAttach, DiskDetach, DiskInstanceParams};
pub use instance_create::{DiskSpec, InstanceCreate, InstanceCreateParams, NicSpec};
pub use invariants::{CheckError, check_nexus_invariants};
pub use postcondition::{InstanceCreateEnd, instance_create_postcondition};
pub use ratchet_datastore::MIGRATIONS as DATASTORE_MIGRATIONS;
pub use snapshot_create::{SnapshotCreate, SnapshotCreateParams};
pub use world::{
    Services, World, WorldSpec, detached_disk, seed_world, stopped_instance, take_or_seed_world,
};

use ratchet_engine::EngineBuilder;
use std::sync::Arc;

/// Registers every Nexus-shaped saga with an engine.
pub fn register_all(builder: EngineBuilder, app: &Arc<NexusApp>) -> EngineBuilder {
    builder
        .register::<InstanceCreate>(Arc::clone(app))
        .register::<DiskAttach>(Arc::clone(app))
        .register::<DiskDetach>(Arc::clone(app))
        .register::<SnapshotCreate>(Arc::clone(app))
}
