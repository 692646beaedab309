//! One steno SEC (saga execution coordinator) and the saga log store it writes through.
//!
//! # Design
//!
//! Every call into steno goes through [`Sec::call`], which turns steno's three ways of saying no into the
//! engine's errors: the engine took the client out for shutdown (`ShuttingDown`, without reaching steno),
//! steno's task panicked and its channel is closed (`SecGone`), or steno refused (`Steno`).
//!
//! # Invariants
//!
//! - Each SEC has its own store ([`PgSecStore`]): a stale execution parked in one SEC writes through its own
//!   SEC's registration, not through that of a newer one.
//! - Once [`Sec::take_client`] has run (shutdown), no call reaches steno again.
//! - [`Sec::unresolved`] counts the sagas started in this SEC whose steno future has not resolved: shutdown
//!   awaits steno's own shutdown only when it is zero.

use crate::engine::shared::EngineShared;
use crate::error::EngineError;
use crate::shutdown::steno_call;
use ratchet_store::PgSecStore;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// One steno SEC and the saga log store it writes through.
///
/// An engine has one, plus one more for each saga it re-drives that its first SEC already ran (steno keeps every
/// saga it ran in memory and refuses to resume an id it holds). Each has its own store, so that a stale
/// execution parked in one SEC writes through its own SEC's registration, not through that of a newer one.
pub(crate) struct Sec {
    client: Mutex<Option<Arc<steno::SecClient>>>,
    pub(crate) store: Arc<PgSecStore>,
    /// Sagas started in this SEC whose steno future has not resolved (running, or parked for good).
    pub(crate) unresolved: AtomicUsize,
}

impl Sec {
    pub(super) fn start(shared: &EngineShared, sec_id: Uuid) -> Arc<Sec> {
        let store = Arc::new(PgSecStore::new(
            shared.pool.clone(),
            sec_id,
            Arc::clone(&shared.liveness),
            Arc::clone(&shared.counters.fenced),
            shared.omicron_readable_log,
        ));
        let log = match &shared.host_log.0 {
            Some(host) => {
                host.new(slog::o!("component" => "steno", "sec_id" => sec_id.to_string()))
            }
            None => slog::Logger::root(crate::slog_bridge::TracingDrain, slog::o!()),
        };
        let client = steno::sec(log, Arc::clone(&store) as Arc<dyn steno::SecStore>);
        Arc::new(Sec {
            client: Mutex::new(Some(Arc::new(client))),
            store,
            unresolved: AtomicUsize::new(0),
        })
    }

    /// The client, unless the engine shut down.
    pub(crate) fn client(&self) -> Result<Arc<steno::SecClient>, EngineError> {
        lock(&self.client).clone().ok_or(EngineError::ShuttingDown)
    }

    /// Calls steno through this SEC's client: `ShuttingDown` once the engine took the client out, `SecGone` if
    /// steno panics (its channel to the SEC task is closed), `Steno` for steno's own refusals.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EngineError>
    where
        F: FnOnce(Arc<steno::SecClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, anyhow::Error>>,
    {
        let client = self.client()?;
        steno_call(what, call(client))
            .await?
            .map_err(|e| EngineError::Steno(format!("{e:#}")))
    }

    /// Takes the client out for shutdown: later calls fail with `ShuttingDown` without reaching steno.
    pub(crate) fn take_client(&self) -> Option<Arc<steno::SecClient>> {
        lock(&self.client).take()
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here is one insert, removal or clone.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
