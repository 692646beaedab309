//! instance-create on plain steno, as Nexus writes it: the baseline for `ratchet_sagas::InstanceCreate`.
//!
//! Node for node the same DAG as ratchet's instance-create with one NIC, SNAT, `d` created disks, every disk
//! attached, a boot disk, and no start (see `lib.rs` for why the bench leaves `--start` out):
//!
//! ```text
//! create_instance_record -> create_nic_0 -> allocate_snat_ip -> create_disk_record_i (parallel)
//!   -> finalize_disk_i (parallel) -> attach_disk_0 .. attach_disk_{d-1} -> set_boot_disk -> move_to_stopped
//! ```
//!
//! Each action calls the same `ratchet_datastore` functions as ratchet's node (its prepare's reads, then its
//! commit's writes), in one serializable transaction of its own, retried on serialization failures: the same
//! SQL. Every id is chosen when the saga is built and carried in its parameters (Nexus mints most of them in
//! id-generating nodes, each two more log writes; leaving those out favours the baseline). Undos reverse
//! each action as ratchet's compensations do; the happy path the bench measures never runs them.

use crate::baseline::{Wrap, in_own_transaction};
use crate::chain::PlainCx;
use futures::FutureExt;
use ratchet_datastore::{self as ds, DiskState, InstanceState, IpAttachState, IpKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use steno::{ActionContext, ActionError, ActionRegistry, DagBuilder, Node, SagaDag, SagaName};
use uuid::Uuid;

/// Nexus's per-instance disk limit (as `ratchet_sagas::MAX_DISKS_PER_INSTANCE`).
const MAX_DISKS: u32 = 12;

/// The plain instance-create.
#[derive(Debug)]
pub(crate) struct PlainInstanceCreate;

impl steno::SagaType for PlainInstanceCreate {
    type ExecContextType = PlainCx;
}

/// One disk the saga creates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PlainDisk {
    pub(crate) disk_id: Uuid,
    pub(crate) volume_id: Uuid,
    pub(crate) name: String,
    pub(crate) size_bytes: i64,
}

/// Everything the saga needs, ids included.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PlainInstanceParams {
    pub(crate) instance_id: Uuid,
    pub(crate) project_id: Uuid,
    pub(crate) name: String,
    pub(crate) ncpus: i64,
    pub(crate) memory: i64,
    pub(crate) nic_id: Uuid,
    pub(crate) subnet_id: Uuid,
    pub(crate) snat_ip_id: Uuid,
    pub(crate) ip_pool_id: Uuid,
    pub(crate) disks: Vec<PlainDisk>,
}

type Cx = ActionContext<PlainInstanceCreate>;

macro_rules! plain_action {
    ($name:literal, $forward:ident, $undo:ident) => {
        steno::ActionFunc::new_action(concat!("plain_instance_create.", $name), $forward, $undo)
    };
}

struct Actions {
    instance: Arc<dyn steno::Action<PlainInstanceCreate>>,
    nic: Arc<dyn steno::Action<PlainInstanceCreate>>,
    snat: Arc<dyn steno::Action<PlainInstanceCreate>>,
    disk_record: Arc<dyn steno::Action<PlainInstanceCreate>>,
    finalize: Arc<dyn steno::Action<PlainInstanceCreate>>,
    attach: Arc<dyn steno::Action<PlainInstanceCreate>>,
    boot_disk: Arc<dyn steno::Action<PlainInstanceCreate>>,
    stopped: Arc<dyn steno::Action<PlainInstanceCreate>>,
}

fn actions() -> Actions {
    Actions {
        instance: plain_action!("create_instance_record", create_instance, delete_instance),
        nic: plain_action!("create_nic", create_nic, delete_nic),
        snat: plain_action!("allocate_snat_ip", allocate_snat, delete_snat),
        disk_record: plain_action!("create_disk_record", create_disk, delete_disk),
        finalize: plain_action!("finalize_disk", finalize_disk, nothing_to_undo),
        attach: plain_action!("attach_disk", attach_disk, detach_disk),
        boot_disk: plain_action!("set_boot_disk", set_boot_disk, clear_boot_disk),
        stopped: plain_action!("move_to_stopped", move_to_stopped, back_to_creating),
    }
}

/// The plain instance-create's action registry.
pub(crate) fn plain_instance_registry() -> Arc<ActionRegistry<PlainInstanceCreate>> {
    let a = actions();
    let mut registry = ActionRegistry::new();
    for action in [
        a.instance,
        a.nic,
        a.snat,
        a.disk_record,
        a.finalize,
        a.attach,
        a.boot_disk,
        a.stopped,
    ] {
        registry.register(action);
    }
    Arc::new(registry)
}

/// The plain instance-create's DAG for `params`.
pub(crate) fn plain_instance_dag(
    params: &PlainInstanceParams,
) -> Result<Arc<SagaDag>, crate::BenchError> {
    let a = actions();
    let node = |name: String, action: &Arc<dyn steno::Action<PlainInstanceCreate>>| {
        Node::action(name.clone(), name, action.as_ref())
    };
    let mut b = DagBuilder::new(SagaName::new("plain-instance-create"));
    b.append(node("create_instance_record".into(), &a.instance));
    b.append(node("create_nic_0".into(), &a.nic));
    b.append(node("allocate_snat_ip".into(), &a.snat));
    let disks = params.disks.len();
    if disks > 0 {
        b.append_parallel(
            (0..disks)
                .map(|i| node(format!("create_disk_record_{i}"), &a.disk_record))
                .collect(),
        );
        b.append_parallel(
            (0..disks)
                .map(|i| node(format!("finalize_disk_{i}"), &a.finalize))
                .collect(),
        );
        for i in 0..disks {
            b.append(node(format!("attach_disk_{i}"), &a.attach));
        }
        b.append(node("set_boot_disk".into(), &a.boot_disk));
    }
    b.append(node("move_to_stopped".into(), &a.stopped));
    let dag = b
        .build()
        .map_err(|e| crate::BenchError::Steno(e.to_string()))?;
    let params =
        serde_json::to_value(params).map_err(|e| crate::BenchError::Steno(e.to_string()))?;
    Ok(Arc::new(SagaDag::new(dag, params)))
}

fn params(ctx: &Cx) -> Result<PlainInstanceParams, ActionError> {
    ctx.saga_params::<PlainInstanceParams>()
}

/// The disk of node `…_{i}`.
fn disk_of(ctx: &Cx) -> Result<PlainDisk, ActionError> {
    let label = ctx.node_label();
    let p = params(ctx)?;
    label
        .rsplit('_')
        .next()
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| p.disks.get(i).cloned())
        .ok_or_else(|| ActionError::action_failed(format!("no disk for node {label:?}")))
}

fn anyhow_of(error: ActionError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

async fn create_instance(ctx: Cx) -> Result<Uuid, ActionError> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        let p = p.clone();
        async move {
            ds::project_fetch(conn, p.project_id).await?;
            let row = ds::instance_insert(
                conn,
                p.instance_id,
                p.project_id,
                &p.name,
                p.ncpus,
                p.memory,
            )
            .await?;
            Ok(row.id)
        }
        .boxed()
    })
    .await
}

async fn delete_instance(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::instance_soft_delete(conn, p.instance_id)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn create_nic(ctx: Cx) -> Result<String, ActionError> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        let p = p.clone();
        async move {
            ds::vpc_subnet_fetch(conn, p.subnet_id).await?;
            let nic = ds::network_interface_insert(
                conn,
                p.nic_id,
                p.instance_id,
                p.subnet_id,
                "net0",
                0,
                true,
            )
            .await?;
            Ok(nic.ip)
        }
        .boxed()
    })
    .await
}

async fn delete_nic(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::network_interface_soft_delete(conn, p.nic_id)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn allocate_snat(ctx: Cx) -> Result<String, ActionError> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        let p = p.clone();
        async move {
            let ip = ds::external_ip_allocate(
                conn,
                p.snat_ip_id,
                p.ip_pool_id,
                p.instance_id,
                IpKind::Snat,
                IpAttachState::Attached,
            )
            .await?;
            Ok(ip.ip)
        }
        .boxed()
    })
    .await
}

async fn delete_snat(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::external_ip_soft_delete(conn, p.snat_ip_id)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn create_disk(ctx: Cx) -> Result<Uuid, ActionError> {
    let p = params(&ctx)?;
    let disk = disk_of(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        let disk = disk.clone();
        async move {
            let volume = serde_json::json!({ "type": "blank", "size_bytes": disk.size_bytes });
            ds::volume_create(conn, disk.volume_id, &volume).await?;
            let row = ds::disk_create(
                conn,
                disk.disk_id,
                p.project_id,
                &disk.name,
                disk.size_bytes,
                disk.volume_id,
            )
            .await?;
            Ok(row.id)
        }
        .boxed()
    })
    .await
}

async fn delete_disk(ctx: Cx) -> Result<(), anyhow::Error> {
    let disk = disk_of(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        let disk = disk.clone();
        async move {
            ds::disk_soft_delete(conn, disk.disk_id).await?;
            ds::volume_soft_delete(conn, disk.volume_id).await?;
            Ok(())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn finalize_disk(ctx: Cx) -> Result<i64, ActionError> {
    let disk = disk_of(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            let row = ds::disk_finalize(conn, disk.disk_id).await?;
            Ok(row.state_generation)
        }
        .boxed()
    })
    .await
}

async fn nothing_to_undo(_: Cx) -> Result<(), anyhow::Error> {
    Ok(())
}

async fn attach_disk(ctx: Cx) -> Result<i16, ActionError> {
    let p = params(&ctx)?;
    let disk = disk_of(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            // The same reads as ratchet's prepare, then the attach CTE.
            let instance = ds::instance_fetch(conn, p.instance_id).await?;
            let current = ds::disk_fetch(conn, disk.disk_id).await?;
            if let (DiskState::Attached, Some(owner), Some(slot)) =
                (current.disk_state, current.attach_instance_id, current.slot)
                && owner == instance.id
            {
                return Ok(slot);
            }
            let (_, attached) =
                ds::instance_attach_disk(conn, p.instance_id, disk.disk_id, MAX_DISKS).await?;
            Ok(attached.slot.unwrap_or(-1))
        }
        .boxed()
    })
    .await
}

async fn detach_disk(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    let disk = disk_of(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::instance_detach_disk(conn, p.instance_id, disk.disk_id, true)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn set_boot_disk(ctx: Cx) -> Result<Uuid, ActionError> {
    let p = params(&ctx)?;
    let disk = p
        .disks
        .first()
        .map(|d| d.disk_id)
        .ok_or_else(|| ActionError::action_failed("no disk to boot from".to_owned()))?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::instance_set_boot_disk(conn, p.instance_id, Some(disk)).await?;
            Ok(disk)
        }
        .boxed()
    })
    .await
}

async fn clear_boot_disk(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            ds::instance_set_boot_disk(conn, p.instance_id, None)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}

async fn move_to_stopped(ctx: Cx) -> Result<i64, ActionError> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            let instance = ds::instance_fetch(conn, p.instance_id).await?;
            let moved = ds::instance_transition(
                conn,
                p.instance_id,
                instance.state_generation,
                InstanceState::Creating,
                InstanceState::NoVmm,
            )
            .await?;
            Ok(moved.state_generation)
        }
        .boxed()
    })
    .await
}

async fn back_to_creating(ctx: Cx) -> Result<(), anyhow::Error> {
    let p = params(&ctx)?;
    in_own_transaction(&ctx.user_data().pool, Wrap::Transaction, |conn| {
        async move {
            let instance = ds::instance_fetch(conn, p.instance_id).await?;
            if instance.state == InstanceState::NoVmm {
                ds::instance_transition(
                    conn,
                    p.instance_id,
                    instance.state_generation,
                    InstanceState::NoVmm,
                    InstanceState::Creating,
                )
                .await?;
            }
            Ok(())
        }
        .boxed()
    })
    .await
    .map_err(anyhow_of)
}
