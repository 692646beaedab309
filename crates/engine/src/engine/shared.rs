//! What every action of every saga of one engine shares ([`EngineShared`]): the pool, the failpoints, the
//! liveness flag, the counters, the retry policies, the shutdown state.

use crate::failpoint::Failpoints;
use crate::observe::{Counters, HostLog, RecentOutcomes, Waiting};
use crate::shutdown::ShutdownState;
use ratchet_store::{DbPool, Liveness, RetryPolicy};
use std::sync::Arc;

/// What every action of every saga of one engine shares.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) pool: DbPool,
    pub(crate) failpoints: Failpoints,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) counters: Counters,
    pub(crate) forward_retry: RetryPolicy,
    pub(crate) compensation_retry: RetryPolicy,
    pub(crate) shutdown: ShutdownState,
    pub(crate) recent: RecentOutcomes,
    pub(crate) waiting: Waiting,
    pub(crate) start_limit: Option<u32>,
    /// The database and the `application_name` of this engine's sessions: an injected crash ends them all
    /// from the server side, as a process's death would.
    pub(crate) database_url: String,
    /// `None` on a pool the embedder brought: its sessions are the embedder's.
    pub(crate) application_name: Option<String>,
    pub(crate) host_log: HostLog,
    /// Record stuck sagas and failed undos in forms Omicron's readers parse (`EngineConfig::omicron_readable_log`).
    pub(crate) omicron_readable_log: bool,
}
