//! The typed saga: create a widget. Each node is a `DbNode`: it reads in `prepare`, writes in `commit` on the
//! transaction the engine opened, computes its output in `finish` (pure: nothing fallible follows the
//! commit), and reverses its commit in `compensate`. The engine records each commit in the node's own
//! transaction, so a node that committed is never committed again, whatever crashes.

use crate::App;
use crate::storage::{StorageParams, WidgetStorage};
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{CommitTx, DbNode, NodeError, PrepareCx, SagaBuilder, SagaDef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The saga: `reserve_widget`, then the `widget-storage` subsaga as `provision_storage`, then
/// `activate_widget`, which reads the subsaga's output (the volume's id).
pub struct WidgetCreate;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WidgetParams {
    pub name: String,
}

impl SagaDef for WidgetCreate {
    /// Persisted in every saga row: keep it (and the node names) stable across releases.
    const NAME: &'static str = "widget-create";
    type Params = WidgetParams;
    type Context = App;
    type Error = ratchet_engine::Untyped;

    // Every node type the saga may use, once: recovery needs them without the parameters.
    ratchet_engine::declare_saga_nodes! {
        db ReserveWidget,
        subsaga WidgetStorage,
        db ActivateWidget,
    }

    fn build(params: &WidgetParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        if params.name.is_empty() {
            return Err("a widget needs a name".to_owned());
        }
        dag.db("reserve_widget", ReserveWidget);
        // A child saga, with its own parameters: one node of this DAG.
        dag.subsaga::<WidgetStorage>(
            "provision_storage",
            &StorageParams {
                widget_name: params.name.clone(),
            },
        );
        dag.db("activate_widget", ActivateWidget);
        Ok(())
    }
}

/// One row of `SELECT count(*) AS count`.
#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// Inserts the widget, `reserved`, and its audit row.
#[derive(Serialize, Deserialize)]
pub struct ReserveWidget;

impl DbNode<WidgetCreate> for ReserveWidget {
    /// The action name, persisted in the saga's DAG.
    const NAME: &'static str = "widget.reserve";
    /// The name to insert, checked free.
    type Plan = String;
    /// The widget's id: all the output and the compensation need.
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(&self, cx: &mut PrepareCx<'_, WidgetCreate>) -> Result<String, NodeError> {
        let name = cx.params().name.clone();
        let taken: Count =
            diesel::sql_query("SELECT count(*) AS count FROM widget WHERE name = $1")
                .bind::<Text, _>(&name)
                .get_result(cx.conn())
                .await?;
        if taken.count > 0 {
            // Permanent: the saga unwinds (nothing was committed yet).
            return Err(NodeError::permanent(format!("widget {name:?} exists")));
        }
        Ok(name)
    }

    async fn commit(&self, tx: &mut CommitTx<'_>, name: String) -> Result<Uuid, NodeError> {
        // Derived from (saga, node): the same id on every attempt.
        let id = tx.derived_id("widget");
        diesel::sql_query(
            "WITH w AS (INSERT INTO widget (id, name, state) VALUES ($1, $2, 'reserved') RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'widget reserved' FROM w",
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
            "WITH w AS (DELETE FROM widget WHERE id = $1 RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'widget released' FROM w",
        )
        .bind::<SqlUuid, _>(id)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

/// Marks the widget `active` on its volume, with its audit row.
#[derive(Serialize, Deserialize)]
pub struct ActivateWidget;

impl DbNode<WidgetCreate> for ActivateWidget {
    const NAME: &'static str = "widget.activate";
    /// The widget and its volume.
    type Plan = (Uuid, Uuid);
    type Receipt = Uuid;
    type Output = Uuid;

    async fn prepare(
        &self,
        cx: &mut PrepareCx<'_, WidgetCreate>,
    ) -> Result<(Uuid, Uuid), NodeError> {
        cx.context()
            .checkpoint("activate_widget", cx.saga_id())
            .await;
        // Earlier nodes' outputs, as `finish` computed them from their receipts: a subsaga's is its last
        // node's.
        Ok((
            cx.output("reserve_widget")?,
            cx.output("provision_storage")?,
        ))
    }

    async fn commit(
        &self,
        tx: &mut CommitTx<'_>,
        (id, volume): (Uuid, Uuid),
    ) -> Result<Uuid, NodeError> {
        diesel::sql_query(
            "WITH w AS (UPDATE widget SET state = 'active', volume_id = $2 WHERE id = $1 RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'widget activated' FROM w",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(volume)
        .execute(tx.conn())
        .await?;
        Ok(id)
    }

    fn finish(id: Uuid) -> Uuid {
        id
    }

    async fn compensate(&self, tx: &mut CommitTx<'_>, id: Uuid) -> Result<(), NodeError> {
        diesel::sql_query(
            "WITH w AS (UPDATE widget SET state = 'reserved', volume_id = NULL WHERE id = $1 RETURNING id) \
             INSERT INTO audit_event (subject_id, what) SELECT id, 'widget deactivated' FROM w",
        )
        .bind::<SqlUuid, _>(id)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}
