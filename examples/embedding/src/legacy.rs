//! A plain steno saga, not yet ported to typed nodes: create a project. This is the incremental-adoption
//! path: the host's existing steno actions, registered as they are with `unchecked`, recovered by the same
//! engine beside the typed sagas.
//!
//! These actions get none of ratchet's guarantees (no commit record, no exactly-once replay, no compensation
//! of a failure after a write): exactly as in plain steno, an action that crashes after its write runs again
//! after a restart, so each must be idempotent on its own, and it takes its own connection from the pool.
//! Here each action is one idempotent statement.

use crate::App;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_engine::{SagaBuilder, SagaDef, StenoSaga, derived_id, steno_action_params};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use steno::{ActionContext, ActionError, ActionFunc};
use uuid::Uuid;

/// The saga: `create_project`, then `publish_project`.
pub struct ProjectCreate;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProjectParams {
    pub name: String,
}

const CREATE_PROJECT: &str = "project.create";
const PUBLISH_PROJECT: &str = "project.publish";

fn create_project_action() -> Arc<dyn steno::Action<StenoSaga<ProjectCreate>>> {
    ActionFunc::new_action(CREATE_PROJECT, create_project, create_project_undo)
}

fn publish_project_action() -> Arc<dyn steno::Action<StenoSaga<ProjectCreate>>> {
    ActionFunc::new_action(PUBLISH_PROJECT, publish_project, publish_project_undo)
}

impl SagaDef for ProjectCreate {
    const NAME: &'static str = "project-create";
    type Params = ProjectParams;
    type Context = App;
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        unchecked CREATE_PROJECT => create_project_action(),
        unchecked PUBLISH_PROJECT => publish_project_action(),
    }

    fn build(_: &ProjectParams, dag: &mut SagaBuilder<Self>) -> Result<(), String> {
        dag.stage(|s| {
            s.unchecked_steno_action("create_project", create_project_action().as_ref());
        })
        .stage(|s| {
            s.unchecked_steno_action("publish_project", publish_project_action().as_ref());
        });
        Ok(())
    }
}

type Cx = ActionContext<StenoSaga<ProjectCreate>>;

fn failed(error: impl std::fmt::Display) -> ActionError {
    ActionError::action_failed(error.to_string())
}

/// Inserts the project, `creating`, and its audit row: the project's id is derived from the saga's, and the
/// audit row is written only by the insert that created the project, so a re-run changes nothing.
async fn create_project(ctx: Cx) -> Result<Uuid, ActionError> {
    // The saga's parameters: `ctx.saga_params()` reads them for sagas this release creates; this also reads
    // those an earlier release created (in an envelope with the typed nodes' arguments).
    let params = steno_action_params::<ProjectCreate>(&ctx)?;
    let saga = ctx.user_data();
    let id = derived_id(saga.saga_id(), "create_project", "project");
    let mut conn = saga.unchecked_pool().get().await.map_err(failed)?;
    diesel::sql_query(
        "WITH p AS (INSERT INTO project (id, name, state) VALUES ($1, $2, 'creating') \
                    ON CONFLICT (id) DO NOTHING RETURNING id) \
         INSERT INTO audit_event (subject_id, what) SELECT id, 'project created' FROM p",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(params.name)
    .execute(&mut conn)
    .await
    .map_err(failed)?;
    Ok(id)
}

async fn create_project_undo(ctx: Cx) -> Result<(), anyhow::Error> {
    let id: Uuid = ctx.lookup("create_project")?;
    let mut conn = ctx.user_data().unchecked_pool().get().await?;
    diesel::sql_query("DELETE FROM project WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Marks the project `ready`, with its audit row (only on the update that changed it).
async fn publish_project(ctx: Cx) -> Result<(), ActionError> {
    let saga = ctx.user_data();
    let id: Uuid = ctx.lookup("create_project")?;
    let mut conn = saga.unchecked_pool().get().await.map_err(failed)?;
    diesel::sql_query(
        "WITH p AS (UPDATE project SET state = 'ready' WHERE id = $1 AND state = 'creating' RETURNING id) \
         INSERT INTO audit_event (subject_id, what) SELECT id, 'project published' FROM p",
    )
    .bind::<SqlUuid, _>(id)
    .execute(&mut conn)
    .await
    .map_err(failed)?;
    drop(conn);
    // The crash test parks here: the write is durable, and steno has not recorded the action done. The
    // restarted process runs the action again, and the `state = 'creating'` guard makes the re-run a no-op.
    saga.context()
        .checkpoint("publish_project", saga.saga_id())
        .await;
    Ok(())
}

async fn publish_project_undo(ctx: Cx) -> Result<(), anyhow::Error> {
    let id: Uuid = ctx.lookup("create_project")?;
    let mut conn = ctx.user_data().unchecked_pool().get().await?;
    diesel::sql_query("UPDATE project SET state = 'creating' WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(&mut conn)
        .await?;
    Ok(())
}
