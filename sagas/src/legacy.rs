//! The `legacy` disk-attach: the pre-fix Nexus action, written directly on steno, kept to be shown failing.
//!
//! This is `sic_attach_disk_to_instance` as it was before Omicron PR 10706:
//!
//! 1. claim a pool connection and run the attach CTE on it (autocommit: the attach is now durable);
//! 2. while still holding that claim, claim a *second* connection and re-fetch the disk;
//! 3. fail if the re-fetch fails.
//!
//! Under pool exhaustion step 2 fails after step 1 committed. steno marks the node failed and never runs its
//! undo, so the disk stays attached; the unwind then reaches the disk record's undo, which refuses to delete
//! an attached disk, and the saga is stuck (10695). The fault-injection harness and `ratchet run
//! --legacy-attach` use it to show that leak next to the typed node's fix. It is never on the default path.
//!
//! [`LegacyKnobs::fail_refetch`](crate::LegacyKnobs::fail_refetch) makes the second claim fail on demand,
//! for when pool exhaustion alone does not hit the window.

use crate::app::NexusApp;
use crate::attach_nodes::{AttachDisk, MAX_DISKS_PER_INSTANCE};
use crate::instance_create::InstanceCreate;
use ratchet_datastore as ds;
use ratchet_engine::StenoSaga;
use std::sync::Arc;
use steno::{ActionContext, ActionError, ActionFunc};

/// The legacy action's name in the DAG.
pub const LEGACY_ATTACH: &str = "instance_create.legacy_attach_disk";

/// The constant node that carries a legacy attach node's arguments (steno actions have none of their own).
pub fn arguments_node(node_name: &str) -> String {
    format!("{node_name}_args")
}

/// The legacy attach as a steno action.
pub fn legacy_attach_action() -> Arc<dyn steno::Action<StenoSaga<InstanceCreate>>> {
    ActionFunc::new_action(LEGACY_ATTACH, legacy_attach, legacy_attach_undo)
}

type Cx = ActionContext<StenoSaga<InstanceCreate>>;

fn arguments(ctx: &Cx) -> Result<AttachDisk, ActionError> {
    ctx.lookup::<AttachDisk>(&arguments_node(&ctx.node_label()))
}

fn app(ctx: &Cx) -> &NexusApp {
    ctx.user_data().context()
}

async fn legacy_attach(ctx: Cx) -> Result<(), ActionError> {
    let args = arguments(&ctx)?;
    let pool = ctx.user_data().unchecked_pool();
    // Claim #1.
    let mut conn = pool
        .get()
        .await
        .map_err(|e| ActionError::action_failed(format!("all claims are used: {e}")))?;
    // The attach CTE, committed on its own (autocommit).
    ds::instance_attach_disk(
        &mut conn,
        args.instance_id,
        args.disk_id,
        MAX_DISKS_PER_INSTANCE,
    )
    .await
    .map_err(|e| ActionError::action_failed(e.to_string()))?;
    // Claim #2, while #1 is still held, to build a richer return value: fallible work after the commit.
    if app(&ctx).legacy.take_refetch_failure(&ctx.node_label()) {
        return Err(ActionError::action_failed(
            "all claims are used (injected by LegacyKnobs::fail_refetch)".to_owned(),
        ));
    }
    let mut second = pool
        .get()
        .await
        .map_err(|e| ActionError::action_failed(format!("all claims are used: {e}")))?;
    ds::disk_fetch(&mut second, args.disk_id)
        .await
        .map_err(|e| ActionError::action_failed(e.to_string()))?;
    drop(conn);
    Ok(())
}

async fn legacy_attach_undo(ctx: Cx) -> Result<(), anyhow::Error> {
    let args = arguments(&ctx)?;
    let mut conn = ctx.user_data().unchecked_pool().get().await?;
    ds::instance_detach_disk(&mut conn, args.instance_id, args.disk_id, true).await?;
    Ok(())
}
