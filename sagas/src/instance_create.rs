//! instance-create: Nexus's `instance_create` saga on typed nodes.
//!
//! Its node types are declared once, in DAG order and with what each commits, in the `declare_saga_nodes!`
//! list of `impl SagaDef for InstanceCreate`; `build` lays them out (one node a NIC, a disk, an IP), and each
//! node type's doc says what it does.
//!
//! Every id (instance, NICs, IPs, disks, volumes, propolis) is generated when the DAG is built and carried in
//! the node's arguments, so a replayed node writes the same rows. Each node's commit point is its one
//! transaction; `finish` only maps the receipt to the output.
//!
//! Each disk is attached by a disk-attach subsaga (`DiskAttach`, as Omicron's instance-create nests its
//! disk-attach subsagas): subsaga `attach_disk_{i}`, whose one node has path `attach_disk_{i}/attach_disk`
//! (its commit record, failpoints and idempotency are keyed by that path, so the instances never collide).
//!
//! The unwind runs in reverse: attach undos detach, disk-record undos delete the (detached) disks, and the
//! instance record is deleted last. In the legacy variant an attach that committed and then failed is never
//! undone by steno, so the disk-record undo meets an attached disk and fails: Omicron 10695.

use crate::app::NexusApp;
use crate::attach_nodes::{AttachDisk, MAX_DISKS_PER_INSTANCE};
use crate::disk_attach::{DiskAttach, DiskInstanceParams};
use crate::legacy;
use ratchet_datastore::{self as ds, InstanceState, IpAttachState, IpKind};
use ratchet_engine::{
    CallError, CallOnlyExternalNode, CommitOnlyDbNode, CommitTx, DbNode, ExternalCx, NodeError,
    PrepareCx, SagaBuilder, SagaDef,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Nexus's `MAX_NICS_PER_INSTANCE`.
pub const MAX_NICS_PER_INSTANCE: usize = 8;

/// The instance-create saga.
pub struct InstanceCreate;

/// A network interface to create.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NicSpec {
    pub name: String,
    pub subnet_id: Uuid,
}

/// A disk to create.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: i64,
}

/// What to create.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceCreateParams {
    pub project_id: Uuid,
    pub name: String,
    pub ncpus: i64,
    pub memory: i64,
    /// The first is the primary interface.
    pub nics: Vec<NicSpec>,
    /// The pool SNAT and the ephemeral IP come from.
    pub ip_pool_id: Uuid,
    /// Whether to allocate an ephemeral IP (every instance gets SNAT).
    pub external_ip: bool,
    /// Disks the saga creates.
    pub create_disks: Vec<DiskSpec>,
    /// Existing disks to attach.
    pub attach_disks: Vec<Uuid>,
    /// Make the first disk (created disks come first) the boot disk.
    pub boot_disk: bool,
    /// Go on to start the instance.
    pub start: bool,
    /// Attach disks with the pre-fix steno action (the `legacy` fixture) instead of the typed node.
    #[serde(default)]
    pub legacy_attach: bool,
}

impl SagaDef for InstanceCreate {
    const NAME: &'static str = "instance-create";
    type Params = InstanceCreateParams;
    type Context = NexusApp;
    type Error = ratchet_engine::Untyped;

    // The node types, in DAG order, with what each commits. `build` lays out one node a NIC, an IP or a disk
    // (a stage of parallel nodes for the disks it creates, then one to finalize them), and the boot disk,
    // the ephemeral IP and the start only when the parameters ask.
    ratchet_engine::declare_saga_nodes! {
        db CreateInstanceRecord,    // INSERT instance (creating)
        db CreateNic,               // INSERT network_interface, its IP allocated in the same statement
        db AllocateExternalIp,      // INSERT external_ip (snat, or ephemeral), attached: one transaction
        db CreateDiskRecord,        // INSERT volume + disk (creating)
        db FinalizeDisk,            // disk creating -> detached
        subsaga DiskAttach,         // one disk-attach subsaga a disk: its node attach_disk, the attach CTE
        // The pre-fix attach, a plain steno action, in place of AttachDisk in the legacy variant.
        unchecked legacy::LEGACY_ATTACH => legacy::legacy_attach_action(),
        db SetBootDisk,             // instance.boot_disk_id
        db MoveToStopped,           // instance creating -> no_vmm
        db ReserveSled,             // INSERT sled_resource_vmm on a sled with room
        external EnsureVmm,         // sled agent: PUT /vmms/{propolis_id}, by generation
        db MarkRunning,             // instance no_vmm -> vmm, active_propolis_id
    }

    fn build(p: &InstanceCreateParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        if p.nics.len() > MAX_NICS_PER_INSTANCE {
            return Err(format!(
                "too many network interfaces: {} (at most {MAX_NICS_PER_INSTANCE})",
                p.nics.len()
            ));
        }
        let disks = p.create_disks.len() + p.attach_disks.len();
        if disks > MAX_DISKS_PER_INSTANCE as usize {
            return Err(format!(
                "too many disks: {disks} (at most {MAX_DISKS_PER_INSTANCE} per instance)"
            ));
        }
        if p.ncpus <= 0 || p.memory <= 0 {
            return Err(format!(
                "ncpus and memory must be positive (got {} and {})",
                p.ncpus, p.memory
            ));
        }
        let instance_id = Uuid::new_v4();
        dag.db(
            "create_instance_record",
            CreateInstanceRecord {
                instance_id,
                project_id: p.project_id,
                name: p.name.clone(),
                ncpus: p.ncpus,
                memory: p.memory,
            },
        );
        for (i, nic) in p.nics.iter().enumerate() {
            dag.db(
                &format!("create_nic_{i}"),
                CreateNic {
                    instance_id,
                    nic_id: Uuid::new_v4(),
                    subnet_id: nic.subnet_id,
                    name: nic.name.clone(),
                    slot: i as i16,
                    primary: i == 0,
                },
            );
        }
        let ip = |kind| AllocateExternalIp {
            ip_id: Uuid::new_v4(),
            instance_id,
            pool_id: p.ip_pool_id,
            kind,
        };
        dag.db("allocate_snat_ip", ip(IpKind::Snat));
        if p.external_ip {
            dag.db("allocate_ephemeral_ip", ip(IpKind::Ephemeral));
        }
        let created: Vec<Uuid> = p.create_disks.iter().map(|_| Uuid::new_v4()).collect();
        if !created.is_empty() {
            dag.stage(|stage| {
                for (i, (spec, disk_id)) in p.create_disks.iter().zip(&created).enumerate() {
                    stage.db(
                        &format!("create_disk_record_{i}"),
                        CreateDiskRecord {
                            disk_id: *disk_id,
                            volume_id: Uuid::new_v4(),
                            project_id: p.project_id,
                            name: spec.name.clone(),
                            size_bytes: spec.size_bytes,
                        },
                    );
                }
            });
            dag.stage(|stage| {
                for (i, disk_id) in created.iter().enumerate() {
                    stage.db(
                        &format!("finalize_disk_{i}"),
                        FinalizeDisk { disk_id: *disk_id },
                    );
                }
            });
        }
        let all_disks: Vec<Uuid> = created.iter().chain(&p.attach_disks).copied().collect();
        for (i, disk_id) in all_disks.iter().enumerate() {
            let name = format!("attach_disk_{i}");
            let attach = AttachDisk {
                instance_id,
                disk_id: *disk_id,
            };
            if p.legacy_attach {
                dag.constant(&legacy::arguments_node(&name), &attach);
                dag.stage(|stage| {
                    stage.unchecked_steno_action(&name, legacy::legacy_attach_action().as_ref());
                });
            } else {
                // Nexus nests one disk-attach subsaga a disk; its node is `attach_disk_{i}/attach_disk`.
                dag.subsaga::<DiskAttach>(
                    &name,
                    &DiskInstanceParams {
                        instance_id,
                        disk_id: *disk_id,
                    },
                );
            }
        }
        if let (true, Some(disk_id)) = (p.boot_disk, all_disks.first()) {
            dag.db(
                "set_boot_disk",
                SetBootDisk {
                    instance_id,
                    disk_id: *disk_id,
                },
            );
        }
        dag.db("move_to_stopped", MoveToStopped { instance_id });
        if p.start {
            let propolis_id = Uuid::new_v4();
            dag.db(
                "reserve_sled",
                ReserveSled {
                    propolis_id,
                    instance_id,
                    hardware_threads: p.ncpus,
                    reservoir_ram: p.memory,
                },
            )
            .external(
                "ensure_vmm",
                EnsureVmm {
                    propolis_id,
                    instance_id,
                },
            )
            .db(
                "mark_running",
                MarkRunning {
                    propolis_id,
                    instance_id,
                },
            );
        }
        Ok(())
    }
}

/// Inserts the instance record, in state `creating`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateInstanceRecord {
    pub instance_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub ncpus: i64,
    pub memory: i64,
}

impl DbNode<InstanceCreate> for CreateInstanceRecord {
    const NAME: &'static str = "instance_create.create_instance_record";
    type Plan = ();
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(&self, cx: &mut PrepareCx<'_, InstanceCreate>) -> Result<(), NodeError> {
        ds::project_fetch(cx.conn(), self.project_id).await?;
        Ok(())
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<Uuid, NodeError> {
        let row = ds::instance_insert(
            tx.conn(),
            self.instance_id,
            self.project_id,
            &self.name,
            self.ncpus,
            self.memory,
        )
        .await?;
        Ok(row.id)
    }

    fn finish(instance_id: Uuid) -> Uuid {
        instance_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, instance_id: Uuid) -> Result<(), NodeError> {
        ds::instance_soft_delete(tx.conn(), instance_id).await?;
        Ok(())
    }
}

/// Creates one network interface; its IP is allocated in the same statement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateNic {
    pub instance_id: Uuid,
    pub nic_id: Uuid,
    pub subnet_id: Uuid,
    pub name: String,
    pub slot: i16,
    pub primary: bool,
}

impl DbNode<InstanceCreate> for CreateNic {
    const NAME: &'static str = "instance_create.create_nic";
    type Plan = ();
    /// The interface's IP.
    type Receipt = String;
    type Output = String;

    async fn prepare(&self, cx: &mut PrepareCx<'_, InstanceCreate>) -> Result<(), NodeError> {
        ds::vpc_subnet_fetch(cx.conn(), self.subnet_id).await?;
        Ok(())
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, (): ()) -> Result<String, NodeError> {
        let nic = ds::network_interface_insert(
            tx.conn(),
            self.nic_id,
            self.instance_id,
            self.subnet_id,
            &self.name,
            self.slot,
            self.primary,
        )
        .await?;
        Ok(nic.ip)
    }

    fn finish(ip: String) -> String {
        ip
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, _: String) -> Result<(), NodeError> {
        ds::network_interface_soft_delete(tx.conn(), self.nic_id).await?;
        Ok(())
    }
}

/// Allocates one external IP (SNAT, or ephemeral) for the instance, attached, in one transaction (Nexus
/// needs three commits for an ephemeral IP: allocate, begin attach, complete attach).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocateExternalIp {
    pub ip_id: Uuid,
    pub instance_id: Uuid,
    pub pool_id: Uuid,
    pub kind: IpKind,
}

impl CommitOnlyDbNode for AllocateExternalIp {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.allocate_external_ip";
    /// The address.
    type Receipt = String;
    type Output = String;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<String, NodeError> {
        let ip = ds::external_ip_allocate(
            tx.conn(),
            self.ip_id,
            self.pool_id,
            self.instance_id,
            self.kind,
            IpAttachState::Attached,
        )
        .await?;
        Ok(ip.ip)
    }

    fn finish(ip: String) -> String {
        ip
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, _: String) -> Result<(), NodeError> {
        ds::external_ip_soft_delete(tx.conn(), self.ip_id).await?;
        Ok(())
    }
}

/// Inserts a disk the saga creates (state `creating`) and its volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateDiskRecord {
    pub disk_id: Uuid,
    pub volume_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub size_bytes: i64,
}

impl CommitOnlyDbNode for CreateDiskRecord {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.create_disk_record";
    type Receipt = Uuid;
    type Output = Uuid;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<Uuid, NodeError> {
        let volume = serde_json::json!({ "type": "blank", "size_bytes": self.size_bytes });
        ds::volume_create(tx.conn(), self.volume_id, &volume).await?;
        let disk = ds::disk_create(
            tx.conn(),
            self.disk_id,
            self.project_id,
            &self.name,
            self.size_bytes,
            self.volume_id,
        )
        .await?;
        Ok(disk.id)
    }

    fn finish(disk_id: Uuid) -> Uuid {
        disk_id
    }

    /// Nexus's `project_delete_disk_no_auth`: refuses a disk that is attached. With typed nodes the attach
    /// has always been undone first; with the legacy attach it may not have been (10695).
    async fn compensate(&self, tx: &mut CommitTx<'_>, disk_id: Uuid) -> Result<(), NodeError> {
        ds::disk_soft_delete(tx.conn(), disk_id).await?;
        ds::volume_soft_delete(tx.conn(), self.volume_id).await?;
        Ok(())
    }
}

/// Moves a created disk from `creating` to `detached`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinalizeDisk {
    pub disk_id: Uuid,
}

impl CommitOnlyDbNode for FinalizeDisk {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.finalize_disk";
    type Receipt = i64;
    /// The disk's generation after finalizing.
    type Output = i64;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<i64, NodeError> {
        let disk = ds::disk_finalize(tx.conn(), self.disk_id).await?;
        Ok(disk.state_generation)
    }

    fn finish(generation: i64) -> i64 {
        generation
    }

    /// Nothing to reverse: the disk record's compensation deletes a detached disk as readily as a creating one.
    async fn compensate(&self, _: &mut CommitTx<'_>, _: i64) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Sets the instance's boot disk (which must be attached to it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetBootDisk {
    pub instance_id: Uuid,
    pub disk_id: Uuid,
}

impl CommitOnlyDbNode for SetBootDisk {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.set_boot_disk";
    type Receipt = Uuid;
    type Output = Uuid;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<Uuid, NodeError> {
        ds::instance_set_boot_disk(tx.conn(), self.instance_id, Some(self.disk_id)).await?;
        Ok(self.disk_id)
    }

    fn finish(disk_id: Uuid) -> Uuid {
        disk_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, _: Uuid) -> Result<(), NodeError> {
        ds::instance_set_boot_disk(tx.conn(), self.instance_id, None).await?;
        Ok(())
    }
}

/// Moves the instance from `creating` to `no_vmm` (Nexus's "stopped").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveToStopped {
    pub instance_id: Uuid,
}

impl DbNode<InstanceCreate> for MoveToStopped {
    const NAME: &'static str = "instance_create.move_to_stopped";
    /// The instance's generation, read in this node's transaction.
    type Plan = i64;
    /// The generation written.
    type Receipt = i64;
    type Output = i64;

    async fn prepare(&self, cx: &mut PrepareCx<'_, InstanceCreate>) -> Result<i64, NodeError> {
        let instance = ds::instance_fetch(cx.conn(), self.instance_id).await?;
        Ok(instance.state_generation)
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, generation: i64) -> Result<i64, NodeError> {
        let instance = ds::instance_transition(
            tx.conn(),
            self.instance_id,
            generation,
            InstanceState::Creating,
            InstanceState::NoVmm,
        )
        .await?;
        Ok(instance.state_generation)
    }

    fn finish(generation: i64) -> i64 {
        generation
    }

    /// Back to `creating`, so that the unwind's earlier undos see the instance as the saga left it. The
    /// generation is read in this transaction: later nodes' compensations (mark_running's) have moved it on
    /// since this node's commit, so the receipt's generation would be stale (the fault matrix found this).
    async fn compensate(&self, tx: &mut CommitTx<'_>, _: i64) -> Result<(), NodeError> {
        let instance = ds::instance_fetch(tx.conn(), self.instance_id).await?;
        if instance.state == InstanceState::NoVmm {
            ds::instance_transition(
                tx.conn(),
                self.instance_id,
                instance.state_generation,
                InstanceState::NoVmm,
                InstanceState::Creating,
            )
            .await?;
        }
        Ok(())
    }
}

/// Reserves room for the instance's VMM on a sled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReserveSled {
    pub propolis_id: Uuid,
    pub instance_id: Uuid,
    pub hardware_threads: i64,
    /// The guest's memory, from the sled's reservoir (the VMM's own overhead is not modelled).
    pub reservoir_ram: i64,
}

impl CommitOnlyDbNode for ReserveSled {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.reserve_sled";
    /// The sled chosen.
    type Receipt = Uuid;
    type Output = Uuid;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<Uuid, NodeError> {
        let reservation = ds::sled_reservation_create(
            tx.conn(),
            self.propolis_id,
            self.instance_id,
            self.hardware_threads,
            0,
            self.reservoir_ram,
        )
        .await?;
        Ok(reservation.sled_id)
    }

    fn finish(sled_id: Uuid) -> Uuid {
        sled_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, _: Uuid) -> Result<(), NodeError> {
        ds::sled_reservation_delete(tx.conn(), self.propolis_id).await?;
        Ok(())
    }
}

/// Asks the sled agent to run the instance's VMM: an external node in the form Nexus's sled agent takes
/// calls, idempotent by propolis id and generation (no idempotency key). Its compensation unregisters the VMM
/// and fences the generation the ensure carried, so a late duplicate of the ensure is refused: the
/// tombstone, by generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnsureVmm {
    pub propolis_id: Uuid,
    pub instance_id: Uuid,
}

/// The generation of the VMM's runtime state that instance-create registers.
const FIRST_VMM_GENERATION: u64 = 1;

impl CallOnlyExternalNode for EnsureVmm {
    type Saga = InstanceCreate;
    const NAME: &'static str = "instance_create.ensure_vmm";
    /// The VMM's generation on the sled agent.
    type Receipt = u64;
    type Output = u64;

    async fn call(&self, cx: &ExternalCx<'_, InstanceCreate>) -> Result<u64, CallError> {
        let app = cx.context();
        let generation = if app
            .fresh_request_per_attempt
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The harness's mutant (`NexusApp::fresh_request_per_attempt`), never set otherwise: every attempt a newer
            // generation, as a caller minting a fresh key on every retry would.
            static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            FIRST_VMM_GENERATION + 1 + ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        } else {
            FIRST_VMM_GENERATION
        };
        let vmm = app
            .sled_agent
            .vmm_ensure_at_generation(self.propolis_id, self.instance_id, generation)
            .await
            .map_err(crate::errors::call)?;
        Ok(vmm.generation)
    }

    fn finish(generation: u64) -> u64 {
        generation
    }

    async fn compensate(
        &self,
        cx: &ExternalCx<'_, InstanceCreate>,
        receipt: Option<u64>,
    ) -> Result<(), CallError> {
        // Fences the generation the ensure carried (the receipt's, or the first when the outcome was never
        // recorded): the sled agent then refuses a late ensure of it.
        cx.context()
            .sled_agent
            .vmm_unregister_fencing(self.propolis_id, receipt.unwrap_or(FIRST_VMM_GENERATION))
            .await
            .map_err(crate::errors::call)?;
        Ok(())
    }
}

/// Records the running VMM: instance `no_vmm` -> `vmm`, with its active propolis id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarkRunning {
    pub propolis_id: Uuid,
    pub instance_id: Uuid,
}

impl DbNode<InstanceCreate> for MarkRunning {
    const NAME: &'static str = "instance_create.mark_running";
    type Plan = i64;
    type Receipt = i64;
    type Output = i64;

    async fn prepare(&self, cx: &mut PrepareCx<'_, InstanceCreate>) -> Result<i64, NodeError> {
        let instance = ds::instance_fetch(cx.conn(), self.instance_id).await?;
        Ok(instance.state_generation)
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, generation: i64) -> Result<i64, NodeError> {
        let instance =
            ds::instance_set_vmm(tx.conn(), self.instance_id, generation, self.propolis_id).await?;
        Ok(instance.state_generation)
    }

    fn finish(generation: i64) -> i64 {
        generation
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, _: i64) -> Result<(), NodeError> {
        ds::instance_clear_vmm(tx.conn(), self.instance_id, self.propolis_id).await?;
        Ok(())
    }
}
