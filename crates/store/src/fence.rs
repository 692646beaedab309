//! Fences and the stop switch: in-memory flags an executor's writers consult.

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

/// A process-wide switch that stops every database write of this executor: once thrown, each write of the saga
/// log waits forever instead of happening (actions check it at their phase boundaries, see the engine).
///
/// Two ways to throw it: [`Liveness::kill`] simulates a power cut (the fault-injection harness's "crash"
/// faults; never in production), and [`Liveness::stop`] is a clean shutdown of the engine. Either way the
/// executor writes nothing more, and what it was driving stays `running` in the database for the next start
/// to recover.
#[derive(Debug, Default)]
pub struct Liveness {
    dead: AtomicBool,
    stopped: AtomicBool,
}

impl Liveness {
    /// Throws the switch as a crash.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
    }

    /// Throws the switch as a clean shutdown.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether a crash was simulated.
    pub fn is_dead(&self) -> bool {
        AtomicBool::load(&self.dead, Ordering::Acquire)
    }

    /// Whether the engine shut down.
    pub fn is_stopped(&self) -> bool {
        AtomicBool::load(&self.stopped, Ordering::Acquire)
    }

    /// Returns at once while writes may happen; never returns once the switch is thrown.
    pub async fn check(&self) {
        if self.is_dead() || self.is_stopped() {
            futures::future::pending::<()>().await;
        }
    }
}
