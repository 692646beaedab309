//! Fences and the power-cut switch: in-memory flags an executor's writers consult.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raised when an executor finds it no longer owns a saga.
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Fence {
    /// Whether this executor has been fenced out of the saga.
    pub fn is_raised(&self) -> bool {
        AtomicBool::load(&self.fenced, Ordering::Acquire)
    }

    /// Records that this executor no longer owns the saga and wakes everything waiting on it.
    pub fn raise(&self) {
        self.fenced.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Resolves once the fence is raised.
    pub async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// A process-wide switch that simulates a power cut: once thrown, every database write of this executor
/// waits forever instead of happening. Used by the fault-injection harness's "crash" faults; never thrown in
/// production.
#[derive(Debug, Default)]
pub struct Liveness {
    dead: AtomicBool,
}

impl Liveness {
    /// Throws the switch.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
    }

    pub fn is_dead(&self) -> bool {
        AtomicBool::load(&self.dead, Ordering::Acquire)
    }

    /// Returns at once while alive; never returns once dead.
    pub async fn check(&self) {
        if self.is_dead() {
            futures::future::pending::<()>().await;
        }
    }
}
