//! A clean shutdown, and calls into steno's SEC that cannot panic the engine.
//!
//! # Shutdown
//!
//! [`crate::Engine::shutdown`] goes through three steps:
//! 1. *Stop taking work*: `create`, `adopt`, `retry_unwind` and `recover` return
//!    [`crate::EngineError::ShuttingDown`].
//! 2. *Let in-flight nodes reach a phase boundary*: every node checks the flag at each of its phase boundaries
//!    (the failpoint sites: before prepare, after prepare, before `COMMIT`, after `COMMIT`, in and after a
//!    compensation, and before every retry). A node that sees it stops driving its saga there, exactly as a
//!    crashed executor would but without dying: an open transaction is rolled back, nothing more is written,
//!    and the future never resolves. A node between two boundaries finishes its phase first (a commit in
//!    progress commits, with its log events). The engine counts the nodes between boundaries and waits for
//!    that count to reach zero.
//! 3. *Write nothing more*: the saga log store's writes then wait forever ([`ratchet_store::Liveness::stop`]),
//!    so steno's own bookkeeping for a node that returned just before waits with them. Every saga
//!    that was not at rest stays `running` (or `unwinding`) in the database, and the next start of an engine
//!    with this executor id recovers it; waiters get [`crate::SagaOutcome::Interrupted`].
//!
//! steno's `SecClient::shutdown` is *not* awaited while sagas are parked: it waits for every saga's future,
//! which for a parked saga never resolves, and it `expect`s the SEC task to be alive. The engine instead drops
//! its clients (steno's `Drop` sends the SEC a shutdown message with `try_send`, which cannot panic); when no
//! saga is parked in a SEC, the engine awaits `shutdown` under a timeout.
//!
//! TODO-robustness Plain steno actions ([`crate::NodeRegistry::unchecked_steno_action`], the legacy comparison fixture)
//! have no phase boundaries: a shutdown neither waits for nor stops them, and only the store's writes for them
//! stop. They are not used by ratchet's own sagas.
//!
//! # The channel to steno
//!
//! steno's `SecClient` panics when its channel to the SEC task is closed (the task is gone: it panicked, or
//! the runtime is shutting down), and the future of a saga panics when the SEC drops it. The engine makes
//! every such call through [`steno_call`], which turns a panic into [`crate::EngineError::SecGone`], and takes
//! the client out of its slot on shutdown so that later calls fail with `ShuttingDown` without reaching
//! steno.

use crate::error::EngineError;
use futures::FutureExt;
use ratchet_store::Fence;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The engine's shutdown state, shared by every node.
#[derive(Debug, Default)]
pub(crate) struct ShutdownState {
    requested: AtomicBool,
    /// Nodes between two phase boundaries.
    active: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Raised once every in-flight node has reached a boundary and writes have stopped.
    stopped: Fence,
}

impl ShutdownState {
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Step 1. Returns whether this call made the request (a second call only waits).
    pub(crate) fn request(&self) -> bool {
        !self.requested.swap(true, Ordering::SeqCst)
    }

    /// A node starts running between boundaries. Its first boundary check comes after this, so either
    /// [`ShutdownState::idle`] sees it or it sees the request (both are `SeqCst`).
    pub(crate) fn enter_node(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn leave_node(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Step 2: resolves once no node is between two boundaries.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Step 3 is done: wake everything waiting for a saga's outcome.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.raise();
    }

    pub(crate) async fn stopped(&self) {
        self.stopped.raised().await
    }
}

/// One node between boundaries, for [`ShutdownState`]'s count: released when the node stops driving its saga
/// (it parks) or when it returns, whichever comes first.
pub(crate) struct ActiveNode<'a> {
    state: &'a ShutdownState,
    counted: AtomicBool,
}

impl<'a> ActiveNode<'a> {
    pub(crate) fn enter(state: &'a ShutdownState) -> ActiveNode<'a> {
        state.enter_node();
        ActiveNode {
            state,
            counted: AtomicBool::new(true),
        }
    }

    pub(crate) fn release(&self) {
        if self.counted.swap(false, Ordering::SeqCst) {
            self.state.leave_node();
        }
    }
}

impl Drop for ActiveNode<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Runs one call into steno, turning a panic (steno's client panics when the SEC task is gone) into
/// [`EngineError::SecGone`].
pub(crate) async fn steno_call<T>(
    what: &str,
    call: impl Future<Output = T>,
) -> Result<T, EngineError> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(what, %message, "steno's SEC is gone");
            EngineError::SecGone(format!("{what}: {message}"))
        })
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}

#[cfg(test)]
mod test {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_active_nodes() {
        let state = ShutdownState::default();
        state.idle().await;
        let node = ActiveNode::enter(&state);
        assert!(state.request());
        assert!(!state.request());
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), state.idle());
        assert!(waiting.await.is_err(), "a node is still active");
        node.release();
        node.release();
        drop(node);
        state.idle().await;
        assert_eq!(state.active.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error() {
        let result = steno_call("test", async { panic!("channel closed") }).await;
        let error: Result<(), _> = result;
        assert!(
            matches!(error, Err(EngineError::SecGone(ref m)) if m.contains("channel closed")),
            "{error:?}"
        );
    }
}
