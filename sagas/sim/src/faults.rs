//! Fault knobs and request counters, shared between a running simulated service and the test (or harness)
//! that drives it.
//!
//! A [`Faults`] handle is cheap to clone and thread-safe; knobs can be turned while the service runs and take
//! effect on the next request. Every knob exists twice: globally ([`Faults::fail_before_apply`] and friends,
//! matching every operation of the service) and per operation ([`Faults::op`]). When both are set, the
//! per-operation knob is consulted (and consumed) first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

use serde::{Deserialize, Serialize};

/// A mutating operation of a simulated service. Faults and counters are per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Sled agent: `PUT /vmms/{propolis_id}`.
    VmmEnsure,
    /// Sled agent: `DELETE /vmms/{propolis_id}`.
    VmmUnregister,
    /// Pantry: `POST /disks/{disk_id}/attach`.
    DiskAttach,
    /// Pantry: `POST /disks/{disk_id}/snapshot`.
    DiskSnapshot,
    /// Pantry: `DELETE /disks/{disk_id}`.
    DiskDetach,
    /// Pantry: `DELETE /snapshots/{snapshot_id}`.
    SnapshotDelete,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 6] = [
        Operation::VmmEnsure,
        Operation::VmmUnregister,
        Operation::DiskAttach,
        Operation::DiskSnapshot,
        Operation::DiskDetach,
        Operation::SnapshotDelete,
    ];
    /// The sled agent's operations.
    pub const SLED_AGENT: [Operation; 2] = [Operation::VmmEnsure, Operation::VmmUnregister];
    /// The pantry's operations.
    pub const PANTRY: [Operation; 4] = [
        Operation::DiskAttach,
        Operation::DiskSnapshot,
        Operation::DiskDetach,
        Operation::SnapshotDelete,
    ];

    /// The operation's name, e.g. `"vmm_ensure"`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::VmmEnsure => "vmm_ensure",
            Operation::VmmUnregister => "vmm_unregister",
            Operation::DiskAttach => "disk_attach",
            Operation::DiskSnapshot => "disk_snapshot",
            Operation::DiskDetach => "disk_detach",
            Operation::SnapshotDelete => "snapshot_delete",
        }
    }

    /// Whether a request of this operation may be a compensation, naming in its `X-Compensates-Key` header
    /// the forward request it undoes: the removals (unregister, detach, delete). A request of another
    /// operation with that header is refused (400).
    pub fn can_compensate(self) -> bool {
        matches!(
            self,
            Operation::VmmUnregister | Operation::DiskDetach | Operation::SnapshotDelete
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}")]
pub struct UnknownOperation(pub String);

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| UnknownOperation(s.to_string()))
    }
}

/// What happened to the requests of one operation. Every well-formed request counts as `received`; it then
/// ends in exactly one of `failed_before_apply`, `applied`, `replayed`, `conflicted` (a semantic refusal, or
/// an idempotency key reused for a different request), `refused_tombstoned` (a key a compensation named),
/// unless the connection was closed during an injected delay. `responses_dropped` counts, in addition, the
/// answers thrown away by [`Faults::drop_response_after_apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounters {
    /// Well-formed requests for this operation that reached the service.
    pub received: u64,
    /// Requests answered 503 by [`Faults::fail_before_apply`], without being applied.
    pub failed_before_apply: u64,
    /// Requests with a new idempotency key that the service applied (and recorded under that key).
    pub applied: u64,
    /// Requests whose idempotency key was already recorded for the same request: answered from the record,
    /// not applied again.
    pub replayed: u64,
    /// Requests refused with 409, not applied: a semantic refusal, or an idempotency key reused for a
    /// different request. (Tombstone refusals are counted apart, in `refused_tombstoned`.)
    pub conflicted: u64,
    /// Requests refused with 409 `idempotency_key_compensated`, not applied: their idempotency key had been
    /// named by a compensation (a tombstone), whether or not a request under it had been applied before.
    pub refused_tombstoned: u64,
    /// Answers the server did not send because of [`Faults::drop_response_after_apply`].
    pub responses_dropped: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Knobs {
    fail_before_apply: u64,
    drop_response_after_apply: u64,
    /// Once a response of this operation has been dropped, this many retries *under the same idempotency
    /// key* are refused (503) before they are applied.
    fail_after_dropped: u64,
    /// The key whose retries are being refused, and how many refusals remain.
    refusing: Option<(Uuid, u64)>,
    delay: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    global: Knobs,
    per_op: HashMap<Operation, Knobs>,
    counters: HashMap<Operation, OpCounters>,
    /// The idempotency key of every applied request, by operation, in order.
    applied_keys: HashMap<Operation, Vec<Uuid>>,
}

/// The fault knobs and counters of one simulated service. Clone it freely: clones share state.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<Inner>>,
}

/// How a request ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied,
    Replayed,
    Conflicted,
    Tombstoned,
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that matters.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The knobs of one operation only.
    pub fn op(&self, op: Operation) -> OpFaults {
        OpFaults {
            faults: self.clone(),
            op,
        }
    }

    /// The next `n` requests, of any operation, are answered 503 without being applied (the caller sees
    /// [`CallOutcomeError::Refused`](crate::CallOutcomeError::Refused)). Replaces any earlier global count.
    pub fn fail_before_apply(&self, n: u64) {
        self.lock().global.fail_before_apply = n;
    }

    /// The next `n` requests, of any operation, are handled (applied, and recorded under their idempotency
    /// key), but the server then closes the connection without answering (the caller sees
    /// [`CallOutcomeError::Unknown`](crate::CallOutcomeError::Unknown)). Replaces any earlier global count.
    pub fn drop_response_after_apply(&self, n: u64) {
        self.lock().global.drop_response_after_apply = n;
    }

    /// Every request, of any operation, waits `d` before it is handled, until cleared. The request is still
    /// handled after the wait even if the caller has given up.
    pub fn delay(&self, d: Duration) {
        self.lock().global.delay = Some(d);
    }

    /// Clears every knob, global and per operation. Counters are kept.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.global = Knobs::default();
        inner.per_op.clear();
    }

    /// The counters of one operation.
    pub fn counters(&self, op: Operation) -> OpCounters {
        self.lock().counters.get(&op).copied().unwrap_or_default()
    }

    /// The counters of every operation that has received a request.
    pub fn all_counters(&self) -> BTreeMap<Operation, OpCounters> {
        self.lock()
            .counters
            .iter()
            .map(|(op, c)| (*op, *c))
            .collect()
    }

    /// Shorthand for `counters(op).received`.
    pub fn received(&self, op: Operation) -> u64 {
        self.counters(op).received
    }

    /// Shorthand for `counters(op).applied`.
    pub fn applied(&self, op: Operation) -> u64 {
        self.counters(op).applied
    }

    /// Zeroes every counter (and forgets the applied keys).
    pub fn reset_counters(&self) {
        let mut inner = self.lock();
        inner.counters.clear();
        inner.applied_keys.clear();
    }

    /// The idempotency keys of the requests of `op` the service applied, in order: the service's books, for
    /// checking that a caller applied each of its calls at most once, under the key it should have used. A
    /// request in the generation form (no key) is booked under its resource's id (the propolis id), and only
    /// when it changed the state.
    pub fn applied_keys(&self, op: Operation) -> Vec<Uuid> {
        self.lock()
            .applied_keys
            .get(&op)
            .cloned()
            .unwrap_or_default()
    }

    /// Counts an applied request, and notes its key.
    pub(crate) fn record_applied(&self, op: Operation, key: Uuid) {
        self.record(op, Outcome::Applied);
        self.lock().applied_keys.entry(op).or_default().push(key);
    }

    /// Counts a received request and returns how long to delay it.
    pub(crate) fn on_received(&self, op: Operation) -> Option<Duration> {
        let mut inner = self.lock();
        inner.counters.entry(op).or_default().received += 1;
        inner
            .per_op
            .get(&op)
            .and_then(|k| k.delay)
            .or(inner.global.delay)
    }

    /// Consumes one "fail before apply" if one is armed for `op` (or for retries under `key`).
    pub(crate) fn take_fail_before_apply(&self, op: Operation, key: Uuid) -> bool {
        let mut inner = self.lock();
        let retry_refused = inner
            .per_op
            .get_mut(&op)
            .is_some_and(|k| match &mut k.refusing {
                Some((refused, left)) if *refused == key && *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            });
        let taken = retry_refused
            || take(inner.per_op.get_mut(&op).map(|k| &mut k.fail_before_apply))
            || take(Some(&mut inner.global.fail_before_apply));
        if taken {
            inner.counters.entry(op).or_default().failed_before_apply += 1;
        }
        taken
    }

    /// Consumes one "drop response" if one is armed for `op`; the dropped request was under `key`.
    pub(crate) fn take_drop_response(&self, op: Operation, key: Uuid) -> bool {
        let mut inner = self.lock();
        let taken = take(
            inner
                .per_op
                .get_mut(&op)
                .map(|k| &mut k.drop_response_after_apply),
        ) || take(Some(&mut inner.global.drop_response_after_apply));
        if taken {
            inner.counters.entry(op).or_default().responses_dropped += 1;
            if let Some(knobs) = inner.per_op.get_mut(&op) {
                let refusals = std::mem::take(&mut knobs.fail_after_dropped);
                if refusals > 0 {
                    knobs.refusing = Some((key, refusals));
                }
            }
        }
        taken
    }

    /// Counts how a request ended.
    pub(crate) fn record(&self, op: Operation, outcome: Outcome) {
        let mut inner = self.lock();
        let counters = inner.counters.entry(op).or_default();
        match outcome {
            Outcome::Applied => counters.applied += 1,
            Outcome::Replayed => counters.replayed += 1,
            Outcome::Conflicted => counters.conflicted += 1,
            Outcome::Tombstoned => counters.refused_tombstoned += 1,
        }
    }

    fn with_op(&self, op: Operation, f: impl FnOnce(&mut Knobs)) {
        f(self.lock().per_op.entry(op).or_default());
    }
}

/// Decrements `counter` if it is positive; true if it did.
fn take(counter: Option<&mut u64>) -> bool {
    match counter {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// The knobs of one operation of one service; see [`Faults`] for what each does.
#[derive(Debug, Clone)]
pub struct OpFaults {
    faults: Faults,
    op: Operation,
}

impl OpFaults {
    /// The next `n` requests of this operation are answered 503 without being applied.
    pub fn fail_before_apply(&self, n: u64) -> &Self {
        self.faults.with_op(self.op, |k| k.fail_before_apply = n);
        self
    }

    /// The next `n` requests of this operation are handled, but their response is not sent.
    pub fn drop_response_after_apply(&self, n: u64) -> &Self {
        self.faults
            .with_op(self.op, |k| k.drop_response_after_apply = n);
        self
    }

    /// The next request of this operation is applied and its response dropped; the next `n` requests under
    /// the same idempotency key (its retries) are refused (503) before they are applied: an outcome unknown,
    /// then refusals that say nothing of it. Requests under other keys (a compensation) are not refused.
    pub fn drop_response_then_refuse(&self, n: u64) -> &Self {
        self.faults.with_op(self.op, |k| {
            k.drop_response_after_apply = 1;
            k.fail_after_dropped = n;
        });
        self
    }

    /// Every request of this operation waits `d` before it is handled, until cleared.
    pub fn delay(&self, d: Duration) -> &Self {
        self.faults.with_op(self.op, |k| k.delay = Some(d));
        self
    }

    /// Clears this operation's knobs (not the global ones).
    pub fn clear(&self) -> &Self {
        self.faults.lock().per_op.remove(&self.op);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_op_knobs_are_consumed_before_global_ones() {
        let faults = Faults::new();
        faults.fail_before_apply(1);
        faults.op(Operation::VmmEnsure).fail_before_apply(1);
        assert!(faults.take_fail_before_apply(Operation::VmmEnsure, Uuid::nil()));
        assert!(faults.take_fail_before_apply(Operation::VmmEnsure, Uuid::nil()));
        assert!(!faults.take_fail_before_apply(Operation::VmmEnsure, Uuid::nil()));
        assert_eq!(faults.counters(Operation::VmmEnsure).failed_before_apply, 2);
    }

    #[test]
    fn after_a_dropped_response_only_that_keys_retries_are_refused() {
        let faults = Faults::new();
        let (key, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        faults
            .op(Operation::DiskDetach)
            .drop_response_then_refuse(2);
        assert!(!faults.take_fail_before_apply(Operation::DiskDetach, key));
        assert!(faults.take_drop_response(Operation::DiskDetach, key));
        assert!(faults.take_fail_before_apply(Operation::DiskDetach, key));
        assert!(!faults.take_fail_before_apply(Operation::DiskDetach, other));
        assert!(faults.take_fail_before_apply(Operation::DiskDetach, key));
        assert!(!faults.take_fail_before_apply(Operation::DiskDetach, key));
        assert!(!faults.take_drop_response(Operation::DiskDetach, key));
        let counters = faults.counters(Operation::DiskDetach);
        assert_eq!(
            (counters.responses_dropped, counters.failed_before_apply),
            (1, 2)
        );
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.name().parse::<Operation>(), Ok(op));
        }
        assert!("nope".parse::<Operation>().is_err());
    }
}
