//! What every action of every saga of one engine shares ([`EngineShared`]): the pool, the failpoints, the
//! liveness flag, the counters, the retry policies, the shutdown state.

use crate::failpoint::Failpoints;
use crate::observe::{Counters, HostLog, RecentOutcomes, Waiting};
use crate::shutdown::ShutdownState;
use ratchet_store::{DbPool, Liveness, NodeConnection, NodePool, RetryPolicy, SessionLimits};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// What every action of every saga of one engine shares.
#[derive(Debug)]
pub(crate) struct EngineShared {
    pub(crate) pool: DbPool,
    /// Where database nodes' transactions get their connections, by connection type.
    pub(crate) node_pools: NodePools,
    /// The limits a database node's transaction on a host's pool sets for itself (`SET LOCAL`).
    pub(crate) node_session: SessionLimits,
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

/// The pools database nodes' transactions check their connections out of, one a connection type: the
/// engine's own pool for diesel-async's connection, and what the host registered
/// ([`crate::EngineBuilder::node_pool`]) for any other (Nexus's `async_bb8_diesel::Connection<C>`).
#[derive(Default, Clone)]
pub(crate) struct NodePools(HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>);

impl NodePools {
    /// Registers `pool` for connection type `C`, replacing any earlier one.
    pub(crate) fn insert<C: NodeConnection>(&mut self, pool: Arc<dyn NodePool<C>>) {
        self.0.insert(
            TypeId::of::<C>(),
            (std::any::type_name::<C>(), Arc::new(pool)),
        );
    }

    /// Whether a pool is registered for connection type `C`.
    pub(crate) fn contains<C: NodeConnection>(&self) -> bool {
        self.0.contains_key(&TypeId::of::<C>())
    }

    /// The pool registered for connection type `C`.
    pub(crate) fn get<C: NodeConnection>(&self) -> Option<Arc<dyn NodePool<C>>> {
        let (_, pool) = self.0.get(&TypeId::of::<C>())?;
        pool.downcast_ref::<Arc<dyn NodePool<C>>>().cloned()
    }
}

impl std::fmt::Debug for NodePools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.values().map(|(name, _)| name))
            .finish()
    }
}
