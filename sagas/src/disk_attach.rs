//! disk-attach and disk-detach: one node each, around the attach and detach CTEs, on a stopped instance.
//!
//! Nexus does these as API calls on one CTE each; as sagas they compose with the others and go through the
//! same fault matrix. Attaching a disk already attached to the same instance, and detaching a disk already
//! detached, succeed without writing (and their compensations then do nothing).

use crate::app::NexusApp;
use crate::attach_nodes::{AttachDisk, DetachDisk};
use ratchet_engine::{SagaBuilder, SagaDef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which disk, which instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskInstanceParams {
    pub instance_id: Uuid,
    pub disk_id: Uuid,
}

/// The disk-attach saga.
pub struct DiskAttach;

impl SagaDef for DiskAttach {
    const NAME: &'static str = "disk-attach";
    type Params = DiskInstanceParams;
    type Context = NexusApp;
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        db AttachDisk,
    }

    fn build(p: &DiskInstanceParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db(
            "attach_disk",
            AttachDisk {
                instance_id: p.instance_id,
                disk_id: p.disk_id,
            },
        );
        Ok(())
    }
}

/// The disk-detach saga.
pub struct DiskDetach;

impl SagaDef for DiskDetach {
    const NAME: &'static str = "disk-detach";
    type Params = DiskInstanceParams;
    type Context = NexusApp;
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        db DetachDisk,
    }

    fn build(p: &DiskInstanceParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db(
            "detach_disk",
            DetachDisk {
                instance_id: p.instance_id,
                disk_id: p.disk_id,
            },
        );
        Ok(())
    }
}
