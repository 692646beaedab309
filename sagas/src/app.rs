//! What every Nexus-shaped saga's nodes share: clients of the sled agent and the pantry, and the knobs of the
//! legacy fixture.

use ratchet_sim::{PantryClient, SledAgentClient};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The application context of the Nexus-shaped sagas (steno's "exec context", Nexus's `SagaContext`).
#[derive(Debug)]
pub struct NexusApp {
    pub sled_agent: SledAgentClient,
    pub pantry: PantryClient,
    /// Knobs of the pre-fix `legacy` disk-attach, which exists only to be shown failing.
    pub legacy: LegacyKnobs,
    /// A mutant for the fault harness's own tests, never set otherwise: the sled agent's VMM ensure (a call
    /// idempotent by generation) then sends a newer generation on every attempt instead of the node's, as a
    /// client that mints a key per retry would make every retry a new request. The harness must catch it
    /// (the service's books show the call applied twice).
    pub fresh_request_per_attempt: std::sync::atomic::AtomicBool,
}

impl NexusApp {
    pub fn new(sled_agent: SledAgentClient, pantry: PantryClient) -> NexusApp {
        NexusApp {
            sled_agent,
            pantry,
            legacy: LegacyKnobs::default(),
            fresh_request_per_attempt: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Knobs of the legacy disk-attach.
#[derive(Debug, Default)]
pub struct LegacyKnobs {
    refetch_failures: AtomicU64,
    /// Only this node's re-fetch fails, when set.
    refetch_node: Mutex<Option<String>>,
}

impl LegacyKnobs {
    /// Makes the next `n` re-fetches (the second pool claim, after the attach committed) fail as a pool
    /// timeout would, for when pool exhaustion alone does not hit that window reliably.
    pub fn fail_refetch(&self, n: u64) {
        self.refetch_failures.store(n, Ordering::SeqCst);
    }

    /// Makes the next re-fetch of node `node` (only) fail.
    pub fn fail_refetch_at(&self, node: &str) {
        *self.refetch_node.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.to_owned());
        self.fail_refetch(1);
    }

    /// Whether this re-fetch (of node `node`) should fail: consumes one armed failure.
    pub(crate) fn take_refetch_failure(&self, node: &str) -> bool {
        let only = self.refetch_node.lock().unwrap_or_else(|p| p.into_inner());
        if only.as_deref().is_some_and(|only| only != node) {
            return false;
        }
        self.refetch_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}
