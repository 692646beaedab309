//! The child saga: provision a widget's storage. `widget-create` nests it as a subsaga (one node of its DAG,
//! `provision_storage`); its own node's records are keyed by its path, `provision_storage/allocate_volume`,
//! and everything ratchet promises of a node holds inside it: the crash test kills the host while this node is
//! in flight, and the restart finishes it once.

use crate::App;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{CommitTx, DbNode, NodeError, PrepareCx, SagaBuilder, SagaDef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The saga: `allocate_volume`. Its context must be its parent's (`App`).
pub struct WidgetStorage;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StorageParams {
    /// The widget the volume is for (the volume is named after it).
    pub widget_name: String,
}

impl SagaDef for WidgetStorage {
    const NAME: &'static str = "widget-storage";
    type Params = StorageParams;
    type Context = App;
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        db AllocateVolume,
    }

    fn build(_: &StorageParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.db("allocate_volume", AllocateVolume);
        Ok(())
    }
}

/// Inserts the volume, `allocated`, and its audit row. Its output (the volume's id) is the subsaga's output.
#[derive(Serialize, Deserialize)]
pub struct AllocateVolume;

impl DbNode<WidgetStorage> for AllocateVolume {
    const NAME: &'static str = "storage.allocate_volume";
    type Plan = String;
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(&self, cx: &mut PrepareCx<'_, WidgetStorage>) -> Result<String, NodeError> {
        cx.context()
            .checkpoint("allocate_volume", cx.saga_id())
            .await;
        // Inside a subsaga, `params()` are the subsaga's own.
        Ok(cx.params().widget_name.clone())
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, name: String) -> Result<Uuid, NodeError> {
        // Derived from (saga, node path): the same id on every attempt, another one in another instance.
        let id = tx.derived_id("volume");
        diesel::sql_query(
            "WITH v AS (INSERT INTO volume (id, name, state) VALUES ($1, $2, 'allocated') RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'volume allocated' FROM v",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(name)
        .execute(tx.conn())
        .await?;
        Ok(id)
    }

    fn finish(id: Uuid) -> Uuid {
        id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, id: Uuid) -> Result<(), NodeError> {
        diesel::sql_query(
            "WITH v AS (DELETE FROM volume WHERE id = $1 RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'volume released' FROM v",
        )
        .bind::<SqlUuid, _>(id)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}
