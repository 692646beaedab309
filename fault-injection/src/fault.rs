//! The fault points of the matrix: where each one fires, and what a clean run must then look like.

use ratchet_engine::NodeKind;
use serde::{Deserialize, Serialize};

/// One fault, injected at one node per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// steno's own injection: the action is replaced by an error and never runs.
    BeforePrepare,
    /// A permanent error after prepare, before any write.
    AfterPrepare,
    /// A permanent error inside the commit transaction, before `COMMIT` (it rolls back).
    InCommit,
    /// A permanent error right after `COMMIT`: the window of Omicron 10695.
    AfterCommit,
    /// A panic in the post-commit phase.
    PanicInFinish,
    /// The engine dies inside the commit transaction; a new engine recovers the saga.
    CrashBeforeCommit,
    /// The engine dies right after `COMMIT`; a new engine recovers the saga.
    CrashAfterCommit,
    /// The node's compensation fails once (transient), during an unwind.
    CompensationTransient,
    /// The node's compensation fails for good: the saga must be `stuck`, then `retry-unwind` finishes it.
    CompensationPermanent,
    /// The engine dies inside the node's compensation; a new engine recovers the unwind.
    CrashInCompensation,
    /// steno's repeat injection: the action twice, then (in an unwind) the undo twice.
    Repeat,
    /// Every pool connection is taken while the node runs (and the pool holds one connection).
    PoolExhausted,
    /// The service applies the node's call and drops the response.
    ResponseLost,
    /// The node's `COMMIT` lands and its reply is lost: the engine must resolve the outcome from the commit
    /// record (neither fail the node, leaking the commit, nor commit again).
    CommitReplyLost,
    /// The `COMMIT` of the node's compensation lands and its reply is lost, during an unwind.
    CompensationReplyLost,
    /// A panic in the node's prepare.
    PanicInPrepare,
    /// A panic in the node's commit (for an external node: in its call, whose outcome is then unknown).
    PanicInCommit,
    /// A panic in the node's compensation, during an unwind: the saga must be `stuck` (not hung), then
    /// `retry-unwind` finishes it.
    PanicInCompensation,
    /// The service applies the node's call and drops the response, then refuses every retry: the node must
    /// compensate by key before it fails.
    UnknownThenRefused,
}

impl Fault {
    pub const ALL: [Fault; 19] = [
        Fault::BeforePrepare,
        Fault::AfterPrepare,
        Fault::InCommit,
        Fault::AfterCommit,
        Fault::PanicInFinish,
        Fault::CrashBeforeCommit,
        Fault::CrashAfterCommit,
        Fault::CompensationTransient,
        Fault::CompensationPermanent,
        Fault::CrashInCompensation,
        Fault::Repeat,
        Fault::PoolExhausted,
        Fault::ResponseLost,
        Fault::CommitReplyLost,
        Fault::CompensationReplyLost,
        Fault::PanicInPrepare,
        Fault::PanicInCommit,
        Fault::PanicInCompensation,
        Fault::UnknownThenRefused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::BeforePrepare => "before_prepare",
            Fault::AfterPrepare => "after_prepare",
            Fault::InCommit => "in_commit",
            Fault::AfterCommit => "after_commit",
            Fault::PanicInFinish => "panic_in_finish",
            Fault::CrashBeforeCommit => "crash_before_commit",
            Fault::CrashAfterCommit => "crash_after_commit",
            Fault::CompensationTransient => "compensation_transient",
            Fault::CompensationPermanent => "compensation_permanent",
            Fault::CrashInCompensation => "crash_in_compensation",
            Fault::Repeat => "repeat",
            Fault::PoolExhausted => "pool_exhausted",
            Fault::ResponseLost => "response_lost",
            Fault::CommitReplyLost => "commit_reply_lost",
            Fault::CompensationReplyLost => "compensation_reply_lost",
            Fault::PanicInPrepare => "panic_in_prepare",
            Fault::PanicInCommit => "panic_in_commit",
            Fault::PanicInCompensation => "panic_in_compensation",
            Fault::UnknownThenRefused => "unknown_then_refused",
        }
    }

    /// A short column header for the printed matrix.
    pub fn short(self) -> &'static str {
        match self {
            Fault::BeforePrepare => "bPrep",
            Fault::AfterPrepare => "aPrep",
            Fault::InCommit => "inCmt",
            Fault::AfterCommit => "aCmt",
            Fault::PanicInFinish => "panic",
            Fault::CrashBeforeCommit => "crBC",
            Fault::CrashAfterCommit => "crAC",
            Fault::CompensationTransient => "cmpT",
            Fault::CompensationPermanent => "cmpP",
            Fault::CrashInCompensation => "crCmp",
            Fault::Repeat => "rept",
            Fault::PoolExhausted => "pool",
            Fault::ResponseLost => "lost",
            Fault::CommitReplyLost => "cRply",
            Fault::CompensationReplyLost => "pRply",
            Fault::PanicInPrepare => "pnPrp",
            Fault::PanicInCommit => "pnCmt",
            Fault::PanicInCompensation => "pnCmp",
            Fault::UnknownThenRefused => "unkRf",
        }
    }

    /// Whether this fault applies to a node of this kind. Plain steno nodes (the legacy fixture) have none of
    /// ratchet's fault points: steno's own injections apply, and "after commit" and "pool exhausted" reach
    /// them through the fixture's own knobs and a one-connection pool.
    pub fn applies_to(self, kind: NodeKind) -> bool {
        match kind {
            // A constant, a subsaga's own entry (its nodes are cells of their own, by path) and a join commit
            // nothing.
            NodeKind::Constant | NodeKind::Subsaga | NodeKind::Join => false,
            NodeKind::Db => !matches!(self, Fault::ResponseLost | Fault::UnknownThenRefused),
            // An external node's receipt is one statement, not a transaction of its own: its lost reply is
            // the `response_lost` cell's (the service's answer), and the record write retries until it lands.
            NodeKind::External => self != Fault::CommitReplyLost,
            NodeKind::Steno => matches!(
                self,
                Fault::BeforePrepare | Fault::AfterCommit | Fault::PoolExhausted | Fault::Repeat
            ),
        }
    }

    /// Whether this fault kills the engine, so that a new one must recover the saga.
    pub fn crashes(self) -> bool {
        matches!(
            self,
            Fault::CrashBeforeCommit | Fault::CrashAfterCommit | Fault::CrashInCompensation
        )
    }

    /// Whether this fault leaves the saga `stuck` until `retry-unwind` finishes it (a compensation that fails
    /// for good), when it hits a node before the last.
    pub fn sticks(self) -> bool {
        matches!(
            self,
            Fault::CompensationPermanent | Fault::PanicInCompensation
        )
    }

    /// Whether this fault is about the node's compensation, so an unwind must be made to reach it.
    pub fn needs_unwind(self) -> bool {
        matches!(
            self,
            Fault::CompensationTransient
                | Fault::CompensationPermanent
                | Fault::CrashInCompensation
                | Fault::CompensationReplyLost
                | Fault::PanicInCompensation
                | Fault::Repeat
        )
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// How a cell's saga should come to rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Succeeded,
    Unwound,
    /// Either is clean (a crash inside an inline compensation: the recovered node may replay its commit).
    SucceededOrUnwound,
    /// The saga under test is known to be defective here: the harness must see the leak or the stuck unwind.
    Detection,
}
