//! snapshot-create: Nexus's `snapshot_create` saga (the pantry path) on typed nodes.
//!
//! Its node types are declared once, in DAG order (a chain) and with what each commits, in the
//! `declare_saga_nodes!` list of `impl SagaDef for SnapshotCreate`; each node type's doc says what it does.
//!
//! Undo, in reverse: the pantry snapshot is deleted and the disk detached from the pantry by key, the disk
//! goes back to `detached` (again only at the generation this saga wrote: a disk someone else has since
//! taken is left alone), and the snapshot record is deleted. A lost response from the pantry's detach is
//! retried with the same key until definite, so the disk never stays in `maintenance`.

use crate::app::NexusApp;
use crate::errors::call;
use ratchet_datastore::{self as ds, DiskState};
use ratchet_engine::{
    CallError, CallOnlyExternalNode, CommitOnlyDbNode, CommitTx, DbNode, ExternalCx, ExternalNode,
    NodeError, PrepareCx, SagaBuilder, SagaDef,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The snapshot-create saga.
pub struct SnapshotCreate;

/// Which disk to snapshot, and the snapshot's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    pub project_id: Uuid,
    pub disk_id: Uuid,
    pub name: String,
}

impl SagaDef for SnapshotCreate {
    const NAME: &'static str = "snapshot-create";
    type Params = SnapshotCreateParams;
    type Context = NexusApp;
    type Error = ratchet_engine::Untyped;

    // The node types, in DAG order (a chain), with what each commits.
    ratchet_engine::declare_saga_nodes! {
        db CreateSnapshotRecord,    // INSERT snapshot (creating)
        // disk detached -> maintenance, guarded by state_generation; the receipt carries the generation this
        // node wrote (no re-fetch: the 10695 shape of Nexus's ssc_attach_disk_to_pantry)
        db DiskToMaintenance,
        external PantryAttach,      // pantry: attach the disk's volume, keyed
        external PantrySnapshot,    // pantry: take the snapshot, keyed
        external PantryDetach,      // pantry: detach, keyed
        db CreateSnapshotVolume,    // INSERT volume for the snapshot
        db FinalizeSnapshot,        // snapshot creating -> ready
        // disk maintenance -> detached, only if its generation is still the one DiskToMaintenance wrote
        db RestoreDisk,
    }

    fn build(p: &SnapshotCreateParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        let snapshot_id = Uuid::new_v4();
        let volume_id = Uuid::new_v4();
        let disk_id = p.disk_id;
        dag.db(
            "create_snapshot_record",
            CreateSnapshotRecord {
                snapshot_id,
                volume_id,
                project_id: p.project_id,
                disk_id,
                name: p.name.clone(),
            },
        )
        .db("disk_to_maintenance", DiskToMaintenance { disk_id })
        .external("pantry_attach", PantryAttach { disk_id })
        .external(
            "pantry_snapshot",
            PantrySnapshot {
                disk_id,
                snapshot_id,
            },
        )
        .external("pantry_detach", PantryDetach { disk_id })
        .db(
            "create_volume_record",
            CreateSnapshotVolume { volume_id, disk_id },
        )
        .db("finalize_snapshot", FinalizeSnapshot { snapshot_id })
        .db("restore_disk", RestoreDisk { disk_id });
        Ok(())
    }
}

/// Inserts the snapshot record, `creating`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateSnapshotRecord {
    pub snapshot_id: Uuid,
    pub volume_id: Uuid,
    pub project_id: Uuid,
    pub disk_id: Uuid,
    pub name: String,
}

impl DbNode<SnapshotCreate> for CreateSnapshotRecord {
    const NAME: &'static str = "snapshot_create.create_snapshot_record";
    /// The disk's size.
    type Plan = i64;
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(&self, cx: &mut PrepareCx<'_, SnapshotCreate>) -> Result<i64, NodeError> {
        let disk = ds::disk_fetch(cx.conn(), self.disk_id).await?;
        if disk.disk_state != DiskState::Detached {
            return Err(NodeError::permanent(format!(
                "disk {} is in state {}: only a detached disk can be snapshotted through the pantry",
                disk.id, disk.disk_state
            )));
        }
        Ok(disk.size_bytes)
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, size_bytes: i64) -> Result<Uuid, NodeError> {
        let snapshot = ds::snapshot_create(
            tx.conn(),
            self.snapshot_id,
            self.project_id,
            self.disk_id,
            self.volume_id,
            &self.name,
            size_bytes,
        )
        .await?;
        Ok(snapshot.id)
    }

    fn finish(snapshot_id: Uuid) -> Uuid {
        snapshot_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, snapshot_id: Uuid) -> Result<(), NodeError> {
        ds::snapshot_soft_delete(tx.conn(), snapshot_id).await?;
        Ok(())
    }
}

/// Puts the disk in `maintenance`, guarded by its generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskToMaintenance {
    pub disk_id: Uuid,
}

impl DbNode<SnapshotCreate> for DiskToMaintenance {
    const NAME: &'static str = "snapshot_create.disk_to_maintenance";
    /// The generation read.
    type Plan = i64;
    /// The generation written.
    type Receipt = i64;
    type Output = i64;

    async fn prepare(&self, cx: &mut PrepareCx<'_, SnapshotCreate>) -> Result<i64, NodeError> {
        let disk = ds::disk_fetch(cx.conn(), self.disk_id).await?;
        Ok(disk.state_generation)
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, generation: i64) -> Result<i64, NodeError> {
        let disk = ds::disk_set_maintenance(tx.conn(), self.disk_id, generation).await?;
        Ok(disk.state_generation)
    }

    fn finish(generation_written: i64) -> i64 {
        generation_written
    }

    async fn compensate(
        &self,
        tx: &mut CommitTx<'_>,
        generation_written: i64,
    ) -> Result<(), NodeError> {
        restore_detached(tx, self.disk_id, generation_written).await
    }
}

/// maintenance -> detached at `generation_written`; a disk that has moved on since is left alone.
async fn restore_detached(
    tx: &mut CommitTx<'_>,
    disk_id: Uuid,
    generation_written: i64,
) -> Result<(), NodeError> {
    let restored = ds::disk_restore_detached(tx.conn(), disk_id, generation_written).await?;
    if restored.is_none() {
        tracing::info!(%disk_id, generation_written,
            "disk is no longer at the generation this saga wrote: left as it is");
    }
    Ok(())
}

/// Attaches the disk's volume to the pantry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PantryAttach {
    pub disk_id: Uuid,
}

impl ExternalNode<SnapshotCreate> for PantryAttach {
    const NAME: &'static str = "snapshot_create.pantry_attach";
    /// The disk's volume.
    type Plan = serde_json::Value;
    type Receipt = ();
    type Output = ();

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, SnapshotCreate>,
    ) -> Result<serde_json::Value, NodeError> {
        let disk = ds::disk_fetch(cx.conn(), self.disk_id).await?;
        let volume = ds::volume_fetch(cx.conn(), disk.volume_id).await?;
        Ok(serde_json::json!({ "volume_id": volume.id, "data": volume.data }))
    }

    async fn call(
        &self,
        cx: &ExternalCx<'_, SnapshotCreate>,
        volume: &serde_json::Value,
    ) -> Result<(), CallError> {
        cx.context()
            .pantry
            .disk_attach(cx.idempotency_key(), self.disk_id, volume.clone())
            .await
            .map_err(call)?;
        Ok(())
    }

    fn finish((): ()) {}

    async fn compensate(
        &self,
        cx: &ExternalCx<'_, SnapshotCreate>,
        _: Option<()>,
    ) -> Result<(), CallError> {
        cx.context()
            .pantry
            // Names the attach's key: the pantry then refuses a late attach under it.
            .disk_detach(
                cx.compensation_key(),
                Some(cx.idempotency_key()),
                self.disk_id,
            )
            .await
            .map_err(call)?;
        Ok(())
    }
}

/// Takes the snapshot on the pantry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PantrySnapshot {
    pub disk_id: Uuid,
    pub snapshot_id: Uuid,
}

impl CallOnlyExternalNode for PantrySnapshot {
    type Saga = SnapshotCreate;
    const NAME: &'static str = "snapshot_create.pantry_snapshot";
    type Receipt = ();
    type Output = ();

    async fn call(&self, cx: &ExternalCx<'_, SnapshotCreate>) -> Result<(), CallError> {
        cx.context()
            .pantry
            .disk_snapshot(cx.idempotency_key(), self.disk_id, self.snapshot_id)
            .await
            .map_err(call)?;
        Ok(())
    }

    fn finish((): ()) {}

    async fn compensate(
        &self,
        cx: &ExternalCx<'_, SnapshotCreate>,
        _: Option<()>,
    ) -> Result<(), CallError> {
        cx.context()
            .pantry
            // Names the snapshot's key: the pantry then refuses a late snapshot under it.
            .snapshot_delete(
                cx.compensation_key(),
                Some(cx.idempotency_key()),
                self.snapshot_id,
            )
            .await
            .map_err(call)?;
        Ok(())
    }
}

/// Detaches the disk from the pantry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PantryDetach {
    pub disk_id: Uuid,
}

impl CallOnlyExternalNode for PantryDetach {
    type Saga = SnapshotCreate;
    const NAME: &'static str = "snapshot_create.pantry_detach";
    type Receipt = ();
    type Output = ();

    async fn call(&self, cx: &ExternalCx<'_, SnapshotCreate>) -> Result<(), CallError> {
        cx.context()
            .pantry
            // A forward step of its own: it undoes no call of this node.
            .disk_detach(cx.idempotency_key(), None, self.disk_id)
            .await
            .map_err(call)?;
        Ok(())
    }

    fn finish((): ()) {}

    /// Nothing to reverse: a detached disk is what the unwind wants (pantry_attach's own compensation
    /// detaches again, which the pantry treats as done).
    async fn compensate(
        &self,
        _: &ExternalCx<'_, SnapshotCreate>,
        _: Option<()>,
    ) -> Result<(), CallError> {
        Ok(())
    }
}

/// Records the snapshot's volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateSnapshotVolume {
    pub volume_id: Uuid,
    pub disk_id: Uuid,
}

impl CommitOnlyDbNode for CreateSnapshotVolume {
    type Saga = SnapshotCreate;
    const NAME: &'static str = "snapshot_create.create_volume_record";
    type Receipt = Uuid;
    type Output = Uuid;

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<Uuid, NodeError> {
        let data = serde_json::json!({ "type": "snapshot", "of_disk": self.disk_id });
        let volume = ds::volume_create(tx.conn(), self.volume_id, &data).await?;
        Ok(volume.id)
    }

    fn finish(volume_id: Uuid) -> Uuid {
        volume_id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, volume_id: Uuid) -> Result<(), NodeError> {
        ds::volume_soft_delete(tx.conn(), volume_id).await?;
        Ok(())
    }
}

/// Marks the snapshot `ready`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinalizeSnapshot {
    pub snapshot_id: Uuid,
}

impl CommitOnlyDbNode for FinalizeSnapshot {
    type Saga = SnapshotCreate;
    const NAME: &'static str = "snapshot_create.finalize_snapshot";
    type Receipt = ();
    type Output = ();

    async fn commit(&self, tx: &mut CommitTx<'_>) -> Result<(), NodeError> {
        ds::snapshot_finalize(tx.conn(), self.snapshot_id).await?;
        Ok(())
    }

    fn finish((): ()) {}

    /// Nothing to reverse: the record's compensation deletes a ready snapshot as readily as a creating one.
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Returns the disk to `detached`, only at the generation `disk_to_maintenance` wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoreDisk {
    pub disk_id: Uuid,
}

impl DbNode<SnapshotCreate> for RestoreDisk {
    const NAME: &'static str = "snapshot_create.restore_disk";
    /// The generation `disk_to_maintenance` wrote.
    type Plan = i64;
    type Receipt = ();
    type Output = ();

    async fn prepare(&self, cx: &mut PrepareCx<'_, SnapshotCreate>) -> Result<i64, NodeError> {
        cx.output::<i64>("disk_to_maintenance")
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        generation_written: i64,
    ) -> Result<(), NodeError> {
        restore_detached(tx, self.disk_id, generation_written).await
    }

    fn finish((): ()) {}

    /// Nothing to reverse: `disk_to_maintenance`'s compensation finds the disk past the generation it wrote
    /// and leaves it detached, which is where the unwind wants it.
    async fn compensate(&self, _: &mut CommitTx<'_>, (): ()) -> Result<(), NodeError> {
        Ok(())
    }
}
