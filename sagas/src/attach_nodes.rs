//! The disk attach and detach nodes, shared by instance-create, disk-attach and disk-detach.
//!
//! Each is one database node around one CTE (`ratchet_datastore::instance_attach_disk` /
//! `instance_detach_disk`): the CTE's `RETURNING` row is the receipt, so nothing re-reads the disk after the
//! commit (the Omicron 10695 defect). Prepare reads the instance and the disk in the node's own read-only
//! transaction to refuse early with a clear message, and to notice a disk that is already where the saga
//! wants it: then the node commits nothing, and its compensation (which undoes only what *this* node did)
//! does nothing either.

use crate::app::NexusApp;
use ratchet_datastore::{self as ds, DiskState, InstanceState};
use ratchet_engine::{CommitTx, DbNode, NodeError, PrepareCx, SagaDef, Untyped};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Nexus's `MAX_DISKS_PER_INSTANCE`.
pub const MAX_DISKS_PER_INSTANCE: u32 = 12;

/// Instance states in which disks may be attached or detached: Nexus refuses hot-plug.
fn check_stopped(instance: &ds::Instance, verb: &str) -> Result<(), NodeError> {
    match instance.state {
        InstanceState::Creating | InstanceState::NoVmm => Ok(()),
        InstanceState::Vmm => Err(NodeError::permanent(format!(
            "cannot {verb} a disk while instance {} is running: stop it first (hot-plug is not supported)",
            instance.id
        ))),
        other => Err(NodeError::permanent(format!(
            "cannot {verb} a disk on instance {} in state {other}",
            instance.id
        ))),
    }
}

/// Attaches one disk to one instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachDisk {
    pub instance_id: Uuid,
    pub disk_id: Uuid,
}

/// What prepare found.
#[derive(Serialize, Deserialize)]
pub enum AttachPlan {
    Attach,
    /// Already attached to this instance, in this slot: nothing to do.
    AlreadyAttached(i16),
}

/// What the attach committed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Attached {
    pub disk_id: Uuid,
    pub slot: i16,
    /// Whether this node attached it (and so its compensation must detach it).
    pub attached_here: bool,
}

impl<S: SagaDef<Context = NexusApp, Error = Untyped>> DbNode<S> for AttachDisk {
    const NAME: &'static str = "nexus.attach_disk";
    type Plan = AttachPlan;
    type Receipt = Attached;
    /// The slot the disk occupies.
    type Output = i16;

    async fn prepare(&self, cx: &mut PrepareCx<'_, S>) -> Result<AttachPlan, NodeError> {
        let instance = ds::instance_fetch(cx.conn(), self.instance_id).await?;
        check_stopped(&instance, "attach")?;
        let disk = ds::disk_fetch(cx.conn(), self.disk_id).await?;
        match (disk.disk_state, disk.attach_instance_id, disk.slot) {
            (DiskState::Attached, Some(owner), Some(slot)) if owner == self.instance_id => {
                Ok(AttachPlan::AlreadyAttached(slot))
            }
            (DiskState::Attached, Some(owner), _) => Err(NodeError::permanent(format!(
                "disk {} is attached to another instance ({owner})",
                self.disk_id
            ))),
            (DiskState::Detached, _, _) => Ok(AttachPlan::Attach),
            (state, _, _) => Err(NodeError::permanent(format!(
                "disk {} cannot be attached in state {state}",
                self.disk_id
            ))),
        }
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, plan: AttachPlan) -> Result<Attached, NodeError> {
        match plan {
            AttachPlan::AlreadyAttached(slot) => Ok(Attached {
                disk_id: self.disk_id,
                slot,
                attached_here: false,
            }),
            AttachPlan::Attach => {
                let (_, disk) = ds::instance_attach_disk(
                    tx.conn(),
                    self.instance_id,
                    self.disk_id,
                    MAX_DISKS_PER_INSTANCE,
                )
                .await?;
                let slot = disk.slot.ok_or_else(|| {
                    NodeError::permanent(format!("disk {} was attached without a slot", disk.id))
                })?;
                Ok(Attached {
                    disk_id: disk.id,
                    slot,
                    attached_here: true,
                })
            }
        }
    }

    fn finish(receipt: Attached) -> i16 {
        receipt.slot
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Attached) -> Result<(), NodeError> {
        if receipt.attached_here {
            // The boot-disk node (later in the DAG) has already been undone, so detaching the boot disk is
            // allowed here.
            ds::instance_detach_disk(tx.conn(), self.instance_id, self.disk_id, true).await?;
        }
        Ok(())
    }
}

/// Detaches one disk from one instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetachDisk {
    pub instance_id: Uuid,
    pub disk_id: Uuid,
}

/// What prepare found.
#[derive(Serialize, Deserialize)]
pub enum DetachPlan {
    Detach,
    /// Already detached: nothing to do.
    AlreadyDetached,
}

/// What the detach committed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Detached {
    pub disk_id: Uuid,
    /// Whether this node detached it (and so its compensation must re-attach it).
    pub detached_here: bool,
}

impl<S: SagaDef<Context = NexusApp, Error = Untyped>> DbNode<S> for DetachDisk {
    const NAME: &'static str = "nexus.detach_disk";
    type Plan = DetachPlan;
    type Receipt = Detached;
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, S>) -> Result<DetachPlan, NodeError> {
        let instance = ds::instance_fetch(cx.conn(), self.instance_id).await?;
        check_stopped(&instance, "detach")?;
        let disk = ds::disk_fetch(cx.conn(), self.disk_id).await?;
        match (disk.disk_state, disk.attach_instance_id) {
            (DiskState::Detached, None) => Ok(DetachPlan::AlreadyDetached),
            (DiskState::Attached, Some(owner)) if owner == self.instance_id => {
                if instance.boot_disk_id == Some(self.disk_id) {
                    return Err(NodeError::permanent(format!(
                        "disk {} is the boot disk of instance {}: set another boot disk first",
                        self.disk_id, self.instance_id
                    )));
                }
                Ok(DetachPlan::Detach)
            }
            (DiskState::Attached, Some(owner)) => Err(NodeError::permanent(format!(
                "disk {} is attached to another instance ({owner}), not {}",
                self.disk_id, self.instance_id
            ))),
            (state, _) => Err(NodeError::permanent(format!(
                "disk {} cannot be detached in state {state}",
                self.disk_id
            ))),
        }
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, plan: DetachPlan) -> Result<Detached, NodeError> {
        let detached_here = match plan {
            DetachPlan::AlreadyDetached => false,
            DetachPlan::Detach => {
                ds::instance_detach_disk(tx.conn(), self.instance_id, self.disk_id, false).await?;
                true
            }
        };
        Ok(Detached {
            disk_id: self.disk_id,
            detached_here,
        })
    }

    fn finish(_: Detached) {}

    async fn compensate(&self, tx: &mut CommitTx<'_>, receipt: Detached) -> Result<(), NodeError> {
        if receipt.detached_here {
            ds::instance_attach_disk(
                tx.conn(),
                self.instance_id,
                self.disk_id,
                MAX_DISKS_PER_INSTANCE,
            )
            .await?;
        }
        Ok(())
    }
}
