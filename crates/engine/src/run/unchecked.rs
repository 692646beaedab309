//! Plain steno actions ([`NodeRegistry::unchecked_steno_action`]): registered behind a thin guard that runs
//! the action as it is and gives the fault-injection harness its points around it.
//!
//! # Design
//!
//! A plain action has no phases, no transaction and no record: the guard adds none. It only gives the
//! failpoints ([`crate::Failpoints`], keyed by the node's path: its name, for a node of a DAG built with
//! steno's `DagBuilder`) three points, so that the faults the matrix injects into typed nodes reach plain ones
//! too:
//!
//! - [`FaultPoint::BeforePrepare`] and [`FaultPoint::BeforeCommit`] (the matrix's crash before a commit):
//!   before the action's body runs, whose commit, if any, is inside it;
//! - [`FaultPoint::AfterCommit`]: after its body returned its output, before steno records it (a crash here
//!   leaves the action's effect done and unrecorded: recovery runs it again, steno's at-least-once);
//! - [`FaultPoint::InCompensation`]: after its undo's body returned, before steno records the undo.
//!
//! A `Crash` there crashes the executor as inside a typed node (its sessions ended from the server side) and
//! the action never returns; an error effect fails the action (or its undo: the saga then ends stuck), as
//! steno's own injections do; a `Delay` sleeps; the other effects do nothing here. With nothing armed, the
//! guard costs one map lookup per action.

use crate::engine::shared::EngineShared;
use crate::failpoint::{FaultEffect, FaultPoint};
use crate::run::node_run::crash_executor;
use crate::run::saga_state::SagaCx;
use crate::saga::definition::{SagaDef, StenoSaga};
use crate::saga::registry::{NodeRegistry, UncheckedAction};
use std::fmt;
use std::sync::Arc;
use steno::{ActionContext, ActionError};
use uuid::Uuid;

impl<S: SagaDef> NodeRegistry<S> {
    /// **Unchecked**: a plain steno action, registered as is. It gets none of ratchet's guarantees: no commit
    /// record, no exactly-once replay, no compensation after a failure, no read-only prepare, no panic guard,
    /// no fencing of its own writes (only of steno's log events). Its commit point is wherever its code puts
    /// it, and a fallible step after it leaks exactly as in plain steno (Omicron issue 10695). It exists for
    /// incremental adoption (a saga ported node by node, a plain steno saga recovered beside typed ones) and
    /// for the pre-fix comparison fixtures. `name` must be the action's own name (what it was made with). The
    /// failpoints reach it before and after its body and after its undo (see `run/unchecked.rs`).
    pub fn unchecked_steno_action(
        &mut self,
        name: &'static str,
        action: Arc<dyn steno::Action<StenoSaga<S>>>,
    ) -> &mut Self {
        if self.claim::<(S, UncheckedAction<S>)>(name) {
            self.actions
                .register(Arc::new(GuardedStenoAction { inner: action }));
        }
        self
    }
}

/// A plain steno action, behind the failpoints' guard.
struct GuardedStenoAction<S: SagaDef> {
    inner: Arc<dyn steno::Action<StenoSaga<S>>>,
}

impl<S: SagaDef> fmt::Debug for GuardedStenoAction<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStenoAction")
            .field("action", &self.inner.name())
            .finish()
    }
}

/// Which node of which saga the guard runs, taken from steno's context before the action consumes it.
struct Guarded {
    shared: Arc<EngineShared>,
    saga_id: Uuid,
    path: String,
}

impl Guarded {
    fn of<S: SagaDef>(ctx: &ActionContext<StenoSaga<S>>) -> Guarded {
        let cx: &SagaCx<S> = ctx.user_data();
        Guarded {
            shared: Arc::clone(&cx.shared),
            saga_id: cx.saga_id,
            path: cx.plain_path(&ctx.node_label()),
        }
    }

    /// What the guard does at a fault point: go on, or fail with this message.
    async fn at(&self, point: FaultPoint) -> Result<(), String> {
        let (shared, saga_id, path) = (&self.shared, self.saga_id, self.path.as_str());
        at_point(shared, saga_id, path, point).await
    }
}

async fn at_point(
    shared: &EngineShared,
    saga_id: Uuid,
    path: &str,
    point: FaultPoint,
) -> Result<(), String> {
    match shared.failpoints.fire(saga_id, path, point) {
        None => Ok(()),
        Some(FaultEffect::Crash) => {
            crash_executor(shared, saga_id, path, point).await;
            // The executor is dead: steno hears nothing more of this action.
            std::future::pending::<()>().await;
            Ok(())
        }
        Some(FaultEffect::Delay { millis }) => {
            shared
                .failpoints
                .delay(saga_id, std::time::Duration::from_millis(millis))
                .await;
            Ok(())
        }
        Some(
            effect @ (FaultEffect::TransientError
            | FaultEffect::PermanentError
            | FaultEffect::Panic),
        ) => Err(format!(
            "injected {effect:?} at {point:?} of plain action {path:?}"
        )),
        Some(_) => Ok(()),
    }
}

impl<S: SagaDef> steno::Action<StenoSaga<S>> for GuardedStenoAction<S> {
    fn do_it(
        &self,
        ctx: ActionContext<StenoSaga<S>>,
    ) -> futures::future::BoxFuture<'_, steno::ActionResult> {
        Box::pin(async move {
            let guarded = Guarded::of(&ctx);
            for point in [FaultPoint::BeforePrepare, FaultPoint::BeforeCommit] {
                guarded
                    .at(point)
                    .await
                    .map_err(ActionError::action_failed)?;
            }
            let output = self.inner.do_it(ctx).await?;
            guarded
                .at(FaultPoint::AfterCommit)
                .await
                .map_err(ActionError::action_failed)?;
            Ok(output)
        })
    }

    fn undo_it(
        &self,
        ctx: ActionContext<StenoSaga<S>>,
    ) -> futures::future::BoxFuture<'_, steno::UndoResult> {
        Box::pin(async move {
            let guarded = Guarded::of(&ctx);
            self.inner.undo_it(ctx).await?;
            guarded
                .at(FaultPoint::InCompensation)
                .await
                .map_err(anyhow::Error::msg)
        })
    }

    fn name(&self) -> steno::ActionName {
        self.inner.name()
    }
}
