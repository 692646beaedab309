//! Quiesce: the engine stops taking new sagas, says which sagas it still drives, and says when it drives none,
//! as Nexus's quiesce does before an upgrade hands its work to a new release.
//!
//! # Design
//!
//! [`Engine::quiesce`] sets a flag *while holding the lock of [`Engine::live`]* (the sagas this engine drives,
//! entered there by [`Engine::create`] before the saga's row exists), and takes its report under the same lock;
//! `create` checks the flag under that lock before it enters its saga. So every create is ordered against the
//! quiesce: one entered before is in the report (and runs to rest: [`crate::PreparedSaga::run`] still starts it),
//! one after is refused with [`EngineError::Quiescing`]. None slips through unreported.
//!
//! Sagas this executor is handed meanwhile (a recovery pass picking up sagas Omicron reassigned here, an
//! adoption, a retry-unwind) are existing work, not new: they are still taken, and show up in
//! [`Engine::quiesce_status`]. [`Engine::quiesced`] resolves once the engine is quiescing, drives no saga, and
//! no claim (recovery pass, adoption, retry-unwind) is in progress.
//!
//! # Invariants
//!
//! - Once `quiesce` returned, `create` refuses every saga; every saga created before is in its report.
//! - Every removal from [`Engine::live`] goes through [`Engine::release_live`], which wakes the waiters of
//!   [`Engine::quiesced`].

use crate::engine::Engine;
use crate::engine::sec::lock;
use crate::error::EngineError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use uuid::Uuid;

/// The engine's quiesce state.
#[derive(Debug, Default)]
pub(crate) struct QuiesceState {
    /// Set (under the lock of [`Engine::live`]) by [`Engine::quiesce`]; never cleared.
    requested: AtomicBool,
    /// Woken whenever a saga leaves [`Engine::live`] and whenever a claim of this engine ends.
    changed: tokio::sync::Notify,
    /// Claims of this engine in progress ([`ClaimTurn`]).
    claims: AtomicUsize,
}

impl QuiesceState {
    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }
}

/// What an engine still drives, and whether it takes new sagas.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuiesceStatus {
    /// Whether [`Engine::quiesce`] was called (new sagas are refused).
    pub quiescing: bool,
    /// The sagas this engine drives (created or resumed here and not yet at rest), with their definition's
    /// name.
    pub running: Vec<(Uuid, String)>,
}

impl QuiesceStatus {
    /// Quiescing, and nothing left running.
    pub fn is_quiesced(&self) -> bool {
        self.quiescing && self.running.is_empty()
    }
}

impl Engine {
    /// Stops taking new sagas ([`Engine::create`] is refused with [`EngineError::Quiescing`] from now on) and
    /// reports the sagas still running here; every saga created before this call is among them. Those sagas
    /// go on to rest; await [`Engine::quiesced`] to know when none is left. Calling it again only reports.
    pub fn quiesce(&self) -> QuiesceStatus {
        let running = {
            let live = lock(&self.live);
            if !self.quiesce.requested.swap(true, Ordering::SeqCst) {
                tracing::info!(sec_id = %self.sec_id, running = live.len(),
                    "quiescing: new sagas are refused; the running ones go on to rest");
            }
            live.iter().map(|(id, name)| (*id, name.clone())).collect()
        };
        QuiesceStatus {
            quiescing: true,
            running,
        }
    }

    /// Whether new sagas are refused, and which sagas this engine still drives.
    pub fn quiesce_status(&self) -> QuiesceStatus {
        let live = lock(&self.live);
        QuiesceStatus {
            quiescing: self.quiesce.requested.load(Ordering::SeqCst),
            running: live.iter().map(|(id, name)| (*id, name.clone())).collect(),
        }
    }

    /// Resolves once the engine is quiescing ([`Engine::quiesce`]), drives no saga, and no claim of it
    /// (recovery pass, adoption, retry-unwind) is in progress. (Before `quiesce` is called it waits for that
    /// call too.)
    pub async fn quiesced(&self) {
        loop {
            let changed = self.quiesce.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let claiming = self.quiesce.claims.load(Ordering::SeqCst) > 0;
            if !claiming && self.quiesce_status().is_quiesced() {
                return;
            }
            // A claim in progress ends with a wake-up too ([`ClaimTurn`]); `enable` came before the checks, so
            // no wake-up between them is lost.
            changed.await;
        }
    }

    /// Refuses a new saga once the engine is quiescing. Call with the lock of [`Engine::live`] held, and enter
    /// the saga under that same lock.
    pub(crate) fn refuse_if_quiescing(&self) -> Result<(), EngineError> {
        if self.quiesce.requested.load(Ordering::SeqCst) {
            Err(EngineError::Quiescing)
        } else {
            Ok(())
        }
    }

    /// Takes this engine's turn to claim sagas under a new epoch (see [`Engine::recovering`]); the turn's end
    /// wakes the waiters of [`Engine::quiesced`].
    pub(crate) async fn claim_turn(&self) -> ClaimTurn<'_> {
        let guard = self.recovering.write().await;
        self.quiesce.claims.fetch_add(1, Ordering::SeqCst);
        ClaimTurn {
            guard: Some(guard),
            quiesce: &self.quiesce,
        }
    }

    /// Removes saga `id` from [`Engine::live`] and wakes the waiters of [`Engine::quiesced`].
    pub(crate) fn release_live(&self, id: &Uuid) {
        lock(&self.live).remove(id);
        self.quiesce.notify();
    }
}

/// One claim's turn ([`Engine::claim_turn`]): released, then the waiters of [`Engine::quiesced`] woken.
pub(crate) struct ClaimTurn<'a> {
    guard: Option<tokio::sync::RwLockWriteGuard<'a, ()>>,
    quiesce: &'a QuiesceState,
}

impl Drop for ClaimTurn<'_> {
    fn drop(&mut self) {
        // Released first: a waiter woken by the notification must find the claim over.
        drop(self.guard.take());
        self.quiesce.claims.fetch_sub(1, Ordering::SeqCst);
        self.quiesce.notify();
    }
}
