//! What a support engineer reads first, with no one at the machine: counters, and the most recent outcomes.
//!
//! Both are in memory and per engine (per process): they answer "what has this executor been doing" cheaply,
//! without a query. The database answers "what happened to saga X" (`ratchet sagas show`). Every event these
//! count is also logged at info level (or above) with the saga id, so counters point at log lines.

use crate::engine::outcome::SagaOutcome;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// How many recent outcomes an engine keeps.
pub const RECENT_OUTCOMES: usize = 256;

/// Counters of one engine since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sagas created by this engine.
    pub started: AtomicU64,
    /// Sagas that came to rest with every node succeeded.
    pub succeeded: AtomicU64,
    /// Sagas that came to rest after a failure, every commit compensated.
    pub unwound: AtomicU64,
    /// Sagas that came to rest stuck (a compensation failed for good).
    pub stuck: AtomicU64,
    /// Sagas abandoned by this engine: unrecoverable at recovery or adoption, or by an operator.
    pub abandoned: AtomicU64,
    /// Node commits (database transactions committed, external calls applied and recorded).
    pub commits: AtomicU64,
    /// Compensations that undid a commit.
    pub compensations: AtomicU64,
    /// Retries of transient failures (prepare, commit, compensation, external calls).
    pub retries: AtomicU64,
    /// `COMMIT`s (of nodes and of compensations) whose outcome was unknown and had to be resolved from the
    /// database, and external calls whose outcome was unknown after every attempt.
    pub unknown_outcomes: AtomicU64,
    /// User phases that panicked (caught by the engine).
    pub panics: AtomicU64,
    /// Writes refused because another executor had adopted the saga (or it was abandoned): commit and
    /// compensation transactions, log events, state updates. Shared with the saga log store.
    pub fenced: Arc<AtomicU64>,
}

/// A point-in-time copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterValues {
    pub started: u64,
    pub succeeded: u64,
    pub unwound: u64,
    pub stuck: u64,
    pub abandoned: u64,
    pub commits: u64,
    pub compensations: u64,
    pub retries: u64,
    pub unknown_outcomes: u64,
    pub panics: u64,
    pub fenced: u64,
}

impl Counters {
    /// The counters' current values.
    pub fn snapshot(&self) -> CounterValues {
        let get = |counter: &AtomicU64| AtomicU64::load(counter, Ordering::Relaxed);
        CounterValues {
            started: get(&self.started),
            succeeded: get(&self.succeeded),
            unwound: get(&self.unwound),
            stuck: get(&self.stuck),
            abandoned: get(&self.abandoned),
            commits: get(&self.commits),
            compensations: get(&self.compensations),
            retries: get(&self.retries),
            unknown_outcomes: get(&self.unknown_outcomes),
            panics: get(&self.panics),
            fenced: get(&self.fenced),
        }
    }

    /// Counts a saga that came to rest (or stopped being driven here) with `outcome`.
    pub(crate) fn count_outcome(&self, outcome: &SagaOutcome) {
        let counter = match outcome {
            SagaOutcome::Succeeded { .. } => &self.succeeded,
            SagaOutcome::Unwound { .. } => &self.unwound,
            SagaOutcome::Stuck { .. } => &self.stuck,
            SagaOutcome::Abandoned { .. } => &self.abandoned,
            // Counted where they happen: each fenced write, and not at all for a shutdown.
            SagaOutcome::Fenced | SagaOutcome::Interrupted { .. } => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The embedder's `slog` logger, if it gave one ([`crate::EngineConfig::log`]): it receives steno's log and
/// ratchet's own events (commits, compensations, adoptions, fenced writes, unknown outcomes, stuck sagas),
/// each with `saga_id`, `node` (where there is one) and `event` keys. ratchet also emits every one of these as
/// a `tracing` event, as it does without a logger; the library installs no subscriber and no drain of its own.
#[derive(Clone, Default)]
pub(crate) struct HostLog(pub(crate) Option<slog::Logger>);

impl std::fmt::Debug for HostLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "HostLog(slog)"
        } else {
            "HostLog(none)"
        })
    }
}

impl HostLog {
    /// The logger of saga `saga_id`, of saga type `saga_name`: the embedder's, or (without one) a logger whose
    /// records go to `tracing` (the library installs no subscriber), with the saga's id and name attached.
    pub(crate) fn saga_logger(&self, saga_id: Uuid, saga_name: &'static str) -> slog::Logger {
        let base = match &self.0 {
            Some(log) => log.clone(),
            None => slog::Logger::root(crate::slog_bridge::TracingDrain, slog::o!()),
        };
        base.new(slog::o!("saga_id" => saga_id.to_string(), "saga_name" => saga_name))
    }

    /// One of ratchet's events, to the embedder's logger (a no-op without one).
    pub(crate) fn event(
        &self,
        level: slog::Level,
        event: &'static str,
        saga_id: Uuid,
        node: Option<&str>,
        message: &str,
    ) {
        let Some(log) = &self.0 else {
            return;
        };
        let saga_id = saga_id.to_string();
        let node = node.unwrap_or("").to_owned();
        match level {
            slog::Level::Critical | slog::Level::Error => {
                slog::error!(log, "{}", message; "event" => event, "saga_id" => saga_id, "node" => node)
            }
            slog::Level::Warning => {
                slog::warn!(log, "{}", message; "event" => event, "saga_id" => saga_id, "node" => node)
            }
            _ => {
                slog::info!(log, "{}", message; "event" => event, "saga_id" => saga_id, "node" => node)
            }
        }
    }
}

/// A node that waits for an unknown outcome to be resolved (see `commit_outcome.rs`): it neither fails nor
/// goes on until the database answers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaitingNode {
    pub saga_id: Uuid,
    pub node: String,
    /// What is being resolved: "commit" or "compensation".
    pub what: String,
    /// Why the outcome is unknown (the error the `COMMIT` met).
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// The nodes of one engine that wait for an unknown outcome to be resolved.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    nodes: Mutex<std::collections::BTreeMap<(Uuid, String), WaitingNode>>,
}

/// Takes a node off [`Waiting`] when dropped.
pub(crate) struct WaitingGuard<'a> {
    waiting: &'a Waiting,
    key: (Uuid, String),
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.waiting
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Waiting {
    pub(crate) fn enter(
        &self,
        saga_id: Uuid,
        node: &str,
        what: &str,
        reason: &str,
    ) -> WaitingGuard<'_> {
        let key = (saga_id, node.to_owned());
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key.clone(),
            WaitingNode {
                saga_id,
                node: node.to_owned(),
                what: what.to_owned(),
                reason: reason.to_owned(),
                since: Utc::now(),
            },
        );
        WaitingGuard { waiting: self, key }
    }

    pub(crate) fn snapshot(&self) -> Vec<WaitingNode> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.values().cloned().collect()
    }
}

/// One saga that came to rest in this engine (or that this engine stopped driving).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecentOutcome {
    pub saga_id: Uuid,
    pub saga_name: String,
    pub outcome: SagaOutcome,
    pub finished_at: DateTime<Utc>,
    /// From when this engine started (or resumed) the saga to `finished_at`; zero for sagas this engine did not
    /// run (abandoned by recovery or an operator).
    pub duration: Duration,
}

/// A bounded ring of the last [`RECENT_OUTCOMES`] outcomes, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentOutcomes {
    ring: Mutex<VecDeque<RecentOutcome>>,
}

impl RecentOutcomes {
    pub(crate) fn push(&self, outcome: RecentOutcome) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RECENT_OUTCOMES {
            ring.pop_front();
        }
        ring.push_back(outcome);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecentOutcome> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_ring_keeps_the_most_recent() {
        let ring = RecentOutcomes::default();
        for n in 0..(RECENT_OUTCOMES + 10) {
            ring.push(RecentOutcome {
                saga_id: Uuid::from_u128(n as u128),
                saga_name: "s".into(),
                outcome: SagaOutcome::Fenced,
                finished_at: Utc::now(),
                duration: Duration::ZERO,
            });
        }
        let kept = ring.snapshot();
        assert_eq!(kept.len(), RECENT_OUTCOMES);
        assert_eq!(kept[0].saga_id, Uuid::from_u128(10));
        assert_eq!(
            kept[RECENT_OUTCOMES - 1].saga_id,
            Uuid::from_u128((RECENT_OUTCOMES + 9) as u128)
        );
    }
}
