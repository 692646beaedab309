//! The fault points of the matrix: where each one fires, and what a clean run must then look like.

use ratchet_engine::NodeKind;
use serde::Serialize;

/// One fault, injected at one node per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
}

impl Fault {
    pub const ALL: [Fault; 13] = [
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
        }
    }

    /// Whether this fault applies to a node of this kind. Plain steno nodes (the legacy fixture) have none of
    /// ratchet's fault points: steno's own injections apply, and "after commit" and "pool exhausted" reach
    /// them through the fixture's own knobs and a one-connection pool.
    pub fn applies_to(self, kind: NodeKind) -> bool {
        match kind {
            NodeKind::Constant => false,
            NodeKind::Db => self != Fault::ResponseLost,
            NodeKind::External => true,
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

    /// Whether this fault is about the node's compensation, so an unwind must be made to reach it.
    pub fn needs_unwind(self) -> bool {
        matches!(
            self,
            Fault::CompensationTransient
                | Fault::CompensationPermanent
                | Fault::CrashInCompensation
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
