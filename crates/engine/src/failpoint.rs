//! Failpoints at every phase boundary, armed per saga and node from code.
//!
//! Off by default and free when off: [`Failpoints::fire`] is one relaxed atomic load until something is armed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// Where in a node a fault fires.
///
/// In a plain steno action (`NodeRegistry::unchecked_steno_action`), which has no phases, four of them fire
/// (`run/unchecked.rs`): `BeforePrepare` and `BeforeCommit` before its body, `AfterCommit` after it (before
/// steno records its output), `InCompensation` after its undo's body (before steno records the undo).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPoint {
    /// Before the node's transaction (or call) begins.
    BeforePrepare,
    /// Inside the prepare phase, under its panic guard, right before the node's `prepare` runs: a `Panic`
    /// here is a panic in the node's own prepare.
    InPrepare,
    /// After prepare returned its plan, before any write.
    AfterPrepare,
    /// Inside the commit phase, under its panic guard, right before the node's `commit` (an external node's
    /// call) runs: a `Panic` here is a panic in the node's own commit.
    InCommit,
    /// Inside the post-commit phase (`finish`), which runs before `COMMIT`.
    InFinish,
    /// Inside the commit transaction, after the node's writes, before `COMMIT` (rolls back). For an external
    /// node: after the call succeeded, before its receipt is recorded.
    BeforeCommit,
    /// The reply to the node's `COMMIT`: [`FaultEffect::LoseReply`] here makes the engine see the `COMMIT`'s
    /// outcome as unknown although it landed (a reply lost on the wire).
    CommitReply,
    /// Right after `COMMIT` succeeded.
    AfterCommit,
    /// Inside the compensation transaction, after its writes (the compensation's own, its record, its log
    /// events), before its `COMMIT`. For an external node: after the compensating call succeeded, before its
    /// record commits.
    InCompensation,
    /// The reply to the compensation's `COMMIT`, as [`FaultPoint::CommitReply`] for the forward.
    CompensationReply,
    /// Right after the compensation committed.
    AfterCompensation,
    /// The node's forward failed for good (its error, typed or not, is in hand), before the engine hands the
    /// failure to steno, which records the node's `failed` event: a crash (or a process killed in a `Delay`)
    /// here loses the failure, and recovery runs the node again. Only `Crash` and `Delay` act here.
    AfterFailure,
}

impl FaultPoint {
    /// Whether the point lies inside a user phase's panic guard, where a `Panic` fault really panics.
    pub fn is_guarded(self) -> bool {
        matches!(
            self,
            FaultPoint::InPrepare
                | FaultPoint::InCommit
                | FaultPoint::InFinish
                | FaultPoint::InCompensation
        )
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultEffect {
    /// A transient error (the engine retries).
    TransientError,
    /// A permanent error.
    PermanentError,
    /// A panic. Inside a user phase's guard (`InPrepare`, `InCommit`, `InFinish`, `InCompensation`) it is a
    /// real panic, which the engine catches; elsewhere it acts as a permanent error.
    Panic,
    /// At `CommitReply` / `CompensationReply`: the `COMMIT` lands, and the engine is told its outcome is
    /// unknown (as when the connection drops before the reply). Elsewhere it has no effect.
    LoseReply,
    /// The executor dies as in a power cut: it rolls back what is open and writes nothing more.
    Crash,
    /// The node pauses for this long, then goes on (a slow node; lets a test kill a process mid-phase).
    Delay { millis: u64 },
    /// Every connection of the engine's pool is taken and held for this long, from this point: the node's
    /// own checkouts then wait or time out (transient errors) as under pool exhaustion.
    ExhaustPool { millis: u64 },
}

#[derive(Debug)]
struct Armed {
    effect: FaultEffect,
    remaining: u32,
}

/// The armed faults of one engine.
#[derive(Debug, Default)]
pub struct Failpoints {
    any_armed: AtomicBool,
    armed: Mutex<HashMap<(Uuid, String, FaultPoint), Armed>>,
    /// Sagas whose current (or next) `Delay` ends early: see [`Failpoints::wake`].
    woken: Mutex<HashSet<Uuid>>,
    wake: tokio::sync::Notify,
    /// How many nodes of each saga are sleeping in a `Delay` now.
    delaying: Mutex<HashMap<Uuid, usize>>,
    /// Every (saga, node, point) at which an armed fault fired: a harness checks its fault was reached.
    fired: Mutex<HashSet<(Uuid, String, FaultPoint)>>,
    /// Points that never fire (see [`Failpoints::disable`]).
    disabled: Mutex<HashSet<FaultPoint>>,
}

impl Failpoints {
    /// Arms a fault at `point` of node `node` of saga `saga_id`, for the next `times` passes.
    pub fn arm(
        &self,
        saga_id: Uuid,
        node: &str,
        point: FaultPoint,
        effect: FaultEffect,
        times: u32,
    ) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.insert(
            (saga_id, node.to_owned(), point),
            Armed {
                effect,
                remaining: times,
            },
        );
        self.any_armed.store(true, Ordering::Release);
    }

    /// Disarms every fault of saga `saga_id`.
    pub fn clear(&self, saga_id: Uuid) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.retain(|(id, _, _), _| *id != saga_id);
        self.woken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&saga_id);
    }

    /// Ends the `Delay` saga `saga_id` is sleeping in now, or, if none, its next one (one delay per call): lets a
    /// test hold a node at a fault point for as long as it needs, then release it.
    pub fn wake(&self, saga_id: Uuid) {
        self.woken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(saga_id);
        self.wake.notify_waiters();
    }

    /// Whether a node of saga `saga_id` is sleeping in a `Delay` now.
    pub fn is_delaying(&self, saga_id: Uuid) -> bool {
        self.delaying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&saga_id)
            .is_some_and(|n| *n > 0)
    }

    /// Sleeps for `duration`, or until [`Failpoints::wake`] for `saga_id`.
    pub(crate) async fn delay(&self, saga_id: Uuid, duration: std::time::Duration) {
        struct Delaying<'a>(&'a Failpoints, Uuid);
        impl Drop for Delaying<'_> {
            fn drop(&mut self) {
                let mut delaying = self.0.delaying.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = delaying.get_mut(&self.1) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        *self
            .delaying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(saga_id)
            .or_default() += 1;
        let _delaying = Delaying(self, saga_id);
        let sleep = tokio::time::sleep(duration);
        tokio::pin!(sleep);
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let woken = self
                .woken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&saga_id);
            if woken {
                tracing::info!(%saga_id, "delay woken early");
                return;
            }
            tokio::select! {
                () = &mut sleep => return,
                () = notified => {}
            }
        }
    }

    /// Whether a fault armed at `point` of `node` of saga `saga_id` has fired (at least once).
    pub fn has_fired(&self, saga_id: Uuid, node: &str, point: FaultPoint) -> bool {
        self.fired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(saga_id, node.to_owned(), point))
    }

    /// Makes `point` never fire on this engine, whatever is armed there: a mutation for the harness's own
    /// tests (a matrix whose fault point is never reached must say so, not pass). Never used in production.
    pub fn disable(&self, point: FaultPoint) {
        self.disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(point);
    }

    /// The effect to apply at this point now, if a fault is armed there.
    pub fn fire(&self, saga_id: Uuid, node: &str, point: FaultPoint) -> Option<FaultEffect> {
        if !self.any_armed.load(Ordering::Relaxed) {
            return None;
        }
        if self
            .disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&point)
        {
            return None;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let key = (saga_id, node.to_owned(), point);
        let fault = armed.get_mut(&key)?;
        let effect = fault.effect;
        fault.remaining = fault.remaining.saturating_sub(1);
        if fault.remaining == 0 {
            armed.remove(&key);
        }
        drop(armed);
        self.fired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((saga_id, node.to_owned(), point));
        tracing::info!(%saga_id, node, ?point, ?effect, "failpoint fired");
        Some(effect)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn faults_fire_the_armed_number_of_times() {
        let points = Failpoints::default();
        let saga = Uuid::new_v4();
        assert_eq!(points.fire(saga, "n", FaultPoint::AfterCommit), None);
        points.arm(
            saga,
            "n",
            FaultPoint::AfterCommit,
            FaultEffect::TransientError,
            2,
        );
        assert_eq!(points.fire(saga, "other", FaultPoint::AfterCommit), None);
        assert_eq!(
            points.fire(saga, "n", FaultPoint::AfterCommit),
            Some(FaultEffect::TransientError)
        );
        assert_eq!(
            points.fire(saga, "n", FaultPoint::AfterCommit),
            Some(FaultEffect::TransientError)
        );
        assert_eq!(points.fire(saga, "n", FaultPoint::AfterCommit), None);
        points.arm(
            saga,
            "n",
            FaultPoint::InCompensation,
            FaultEffect::PermanentError,
            u32::MAX,
        );
        points.clear(saga);
        assert_eq!(points.fire(saga, "n", FaultPoint::InCompensation), None);
    }

    #[tokio::test]
    async fn a_delay_ends_when_woken() {
        let points = std::sync::Arc::new(Failpoints::default());
        let saga = Uuid::new_v4();
        let sleeping = tokio::spawn({
            let points = std::sync::Arc::clone(&points);
            async move {
                points
                    .delay(saga, std::time::Duration::from_secs(600))
                    .await
            }
        });
        while !points.is_delaying(saga) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        points.wake(saga);
        tokio::time::timeout(std::time::Duration::from_secs(10), sleeping)
            .await
            .expect("woken")
            .unwrap();
        assert!(!points.is_delaying(saga));
        // A wake with no delay in progress ends the next one at once.
        points.wake(saga);
        points
            .delay(saga, std::time::Duration::from_secs(600))
            .await;
    }
}
