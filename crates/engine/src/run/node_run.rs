//! What database and external node execution share: finding the node's arguments, firing failpoints,
//! retrying, stopping when fenced or crashed, and encoding failures for steno.

use crate::error::{NodeError, NodeFailure, RunError, SagaError};
use crate::failpoint::{FaultEffect, FaultPoint};
use crate::run::saga_state::SagaCx;
use crate::saga::definition::{SagaDef, StenoSaga};
use crate::shutdown::{ActiveNode, panic_message};
use ratchet_store::RetryPolicy;
use serde::de::DeserializeOwned;
use std::panic::AssertUnwindSafe;
use steno::{ActionContext, ActionError};
use uuid::Uuid;

/// An injected crash of the executor (see [`NodeRun::fault`]'s `Crash`): every writer of this engine waits
/// forever from now on, and every session of this engine incarnation is ended from the server side.
pub(crate) async fn crash_executor(
    shared: &crate::engine::shared::EngineShared,
    saga_id: Uuid,
    node: &str,
    point: FaultPoint,
) {
    tracing::warn!(%saga_id, node, ?point,
        "executor crashed (injected): its sessions end without a word");
    shared.liveness.kill();
    let Some(application_name) = &shared.application_name else {
        tracing::info!(
            "the crashed executor runs on the embedder's pool: its sessions are left alone"
        );
        return;
    };
    match ratchet_store::terminate_sessions(&shared.database_url, application_name).await {
        Ok(ended) => tracing::info!(ended, "the crashed executor's sessions were ended"),
        Err(error) => {
            tracing::warn!(%error, "could not end the crashed executor's sessions")
        }
    }
}

/// Why an attempt at a phase stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The phase failed: retry if transient and budget remains, else fail.
    Node(RunError),
    /// The executor was fenced out of the saga: write nothing more, stop driving it.
    Fenced,
    /// A `Crash` fault fired: the executor dies.
    Crash,
    /// The engine is shutting down: stop at this phase boundary, write nothing more.
    Shutdown,
}

impl From<RunError> for Stop {
    fn from(error: RunError) -> Self {
        Stop::Node(error)
    }
}

/// A node's own phase failed: its typed error (if any) is encoded here, once.
impl<E: SagaError> From<NodeError<E>> for Stop {
    fn from(error: NodeError<E>) -> Self {
        Stop::Node(error.encode())
    }
}

impl From<diesel::result::Error> for Stop {
    fn from(error: diesel::result::Error) -> Self {
        Stop::Node(error.into())
    }
}

impl From<ratchet_store::DbError> for Stop {
    fn from(error: ratchet_store::DbError) -> Self {
        Stop::Node(error.into())
    }
}

/// One node's run: who it is, in which saga, with which arguments.
///
/// `S` is the root saga (steno's saga type is `StenoSaga<S>`); the node itself may belong to a subsaga nested
/// in it, whose parameters `params` then holds (steno hands an action inside a subsaga the subsaga's
/// parameters). `name` is the node's path (its steno label, see [`crate::SagaBuilder::subsaga`]): every
/// record, failpoint and steno node id of the node is found by it.
pub(crate) struct NodeRun<'a, S: SagaDef> {
    pub(crate) cx: &'a SagaCx<S>,
    pub(crate) name: String,
    pub(crate) node_id: u32,
    pub(crate) params: serde_json::Value,
    args: serde_json::Value,
    /// Counts this node as between phase boundaries, for a clean shutdown.
    active: ActiveNode<'a>,
    /// When steno started this action (or undo).
    pub(crate) began: chrono::DateTime<chrono::Utc>,
}

impl<'a, S: SagaDef> NodeRun<'a, S> {
    /// Runs a node's optional step after its commit or its compensation (`step`, named `which`) here, once:
    /// with the saga's context read-only, no connection, and the receipt as recorded, decoded as `R`
    /// (`None`: no receipt was recorded). A receipt that no longer decodes skips the step, and a panic in it
    /// (or in the decoding) is caught; both are logged, never failing the node: what the step follows has
    /// committed, and the step is best effort by contract.
    pub(crate) fn after_step<T: SagaDef<Context = S::Context>, R: serde::de::DeserializeOwned>(
        &self,
        which: &'static str,
        receipt: Option<serde_json::Value>,
        step: impl FnOnce(&crate::AfterCommitCx<'_, T>, Option<&R>),
    ) {
        let cx = crate::AfterCommitCx {
            app: &*self.cx.app,
            saga_id: self.saga_id(),
            node_name: &self.name,
            log: self.logger(),
        };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let receipt = receipt.map(serde_json::from_value::<R>).transpose()?;
            step(&cx, receipt.as_ref());
            Ok::<(), serde_json::Error>(())
        }));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(saga_id = %self.saga_id(), node = %self.name, %error,
                "the recorded receipt does not decode: the node's {which} step is skipped"),
            Err(panic) => tracing::error!(saga_id = %self.saga_id(), node = %self.name,
                "the node's {which} step panicked ({}); what it follows stays committed",
                crate::shutdown::panic_message(panic.as_ref())),
        }
    }

    /// The saga's logger with this node's path attached (`node`): what the node's phases log with.
    pub(crate) fn logger(&self) -> slog::Logger {
        self.cx.logger.new(slog::o!("node" => self.name.clone()))
    }

    pub(crate) fn new(ctx: &'a ActionContext<StenoSaga<S>>) -> Result<NodeRun<'a, S>, RunError> {
        let cx = ctx.user_data();
        let name = ctx.node_label();
        let node_id = *cx.node_ids.get(&name).ok_or_else(|| {
            NodeError::permanent(format!("node {name:?} is not in the saga's DAG"))
        })?;
        let (params, args) = cx.node_input(ctx, &name).map_err(NodeError::permanent)?;
        Ok(NodeRun {
            cx,
            name,
            node_id,
            params,
            args,
            active: ActiveNode::enter(&cx.shared.shutdown),
            began: chrono::Utc::now(),
        })
    }

    /// A connection from the engine's pool (a pool timeout is a transient error).
    pub(crate) async fn connection(&self) -> Result<ratchet_store::PooledConnection<'_>, Stop> {
        self.alive()?;
        Ok(self
            .cx
            .shared
            .pool
            .get()
            .await
            .map_err(ratchet_store::DbError::from)?)
    }

    /// A connection of type `C` for a database node's transaction, from the pool registered for `C` (the
    /// engine's own pool for diesel-async's connection). A connection type no pool was registered for is a
    /// permanent error of the node.
    pub(crate) async fn node_connection<C: ratchet_store::NodeConnection>(
        &self,
    ) -> Result<ratchet_store::NodeCheckout<C>, Stop> {
        self.alive()?;
        let Some(pool) = self.cx.shared.node_pools.get::<C>() else {
            return Err(Stop::Node(NodeError::permanent(format!(
                "node {:?} runs on connections of type {}, and no pool of them was registered with the \
                 engine (EngineBuilder::node_pool)",
                self.name,
                std::any::type_name::<C>()
            ))));
        };
        Ok(pool.checkout().await?)
    }

    /// What a database node's transaction on connection type `C` runs with its `BEGIN`: the token that names
    /// it ([`ratchet_store::set_node_tx`]), and, on a connection of the host's pool (whose sessions ratchet did
    /// not set up), the session limits for this transaction.
    pub(crate) fn node_begin<C: ratchet_store::NodeConnection>(&self, token: Uuid) -> String {
        let set_token = ratchet_store::set_node_tx(token);
        if std::any::TypeId::of::<C>() == std::any::TypeId::of::<ratchet_store::DbConnection>() {
            set_token
        } else {
            let limits = self.cx.shared.node_session.set_local_statements();
            format!("{set_token}; {limits}")
        }
    }

    /// Counts this start of the node's `phase` ("forward" or "compensation") durably, in a saga this engine
    /// recovered, and refuses it once the [`crate::EngineConfig::start_limit`] is passed: a node that keeps
    /// killing its process (a deterministic panic under `panic = "abort"`) is given up on instead of crashing
    /// every executor that recovers it. A no-op without a limit, and for sagas this engine created.
    pub(crate) async fn count_start(&self, phase: &str) -> Result<(), RunError> {
        let Some(limit) = self.cx.shared.start_limit else {
            return Ok(());
        };
        if !self.cx.resumed {
            return Ok(());
        }
        let pool = &self.cx.shared.pool;
        let (saga_id, name) = (self.saga_id(), self.name.as_str());
        // Retried for as long as it takes (a database outage must not fail a node for want of a count);
        // `with_retries` makes each retry a phase boundary: a crash, a fence or a shutdown stops the node there.
        let forever = RetryPolicy {
            max_attempts: None,
            ..RetryPolicy::OPERATOR
        };
        let starts = with_retries(self, forever, "count start", |_| async {
            let mut conn = pool.get().await.map_err(ratchet_store::DbError::from)?;
            Ok::<_, Stop>(ratchet_store::count_start(&mut conn, saga_id, name, phase).await?)
        })
        .await?;
        let starts = u32::try_from(starts).unwrap_or(u32::MAX);
        if starts > limit {
            let message = format!(
                "node {name:?} ({phase}) was started {starts} times in recovered runs of this saga without \
                 reaching a result (limit {limit}): it is taken to crash its executor every time (a panic \
                 under panic = \"abort\"?), and is given up on"
            );
            tracing::error!(%saga_id, node = name, phase, starts, limit, "{message}");
            return Err(NodeError::permanent(message));
        }
        Ok(())
    }

    /// The parameters of the saga the node belongs to (the subsaga's, inside a subsaga).
    pub(crate) fn params<P: DeserializeOwned>(&self) -> Result<P, RunError> {
        crate::saga::phase::decode_params(&self.params)
    }

    /// The node value (its arguments) recorded in the DAG.
    pub(crate) fn node<N: DeserializeOwned>(&self) -> Result<N, RunError> {
        serde_json::from_value(self.args.clone()).map_err(|e| {
            NodeError::permanent(format!(
                "arguments of node {:?} do not decode: {e}",
                self.name
            ))
        })
    }

    pub(crate) fn saga_id(&self) -> Uuid {
        self.cx.saga_id
    }

    /// A phase boundary: stops the node if the executor died or is shutting down, then applies the fault armed
    /// at `point`, if any. A `Panic` fault panics only in `InFinish` (where the engine catches it); elsewhere
    /// it acts as a permanent error. A `Delay` sleeps (until its time is up or [`crate::Failpoints::wake`]),
    /// then lets the node go on.
    pub(crate) async fn fault(&self, point: FaultPoint) -> Result<(), Stop> {
        self.alive()?;
        match self.armed_fault(point) {
            Some(FaultEffect::Delay { millis }) => {
                tracing::info!(node = %self.name, ?point, millis, "fault point reached: delaying");
                let delay = std::time::Duration::from_millis(millis);
                self.cx.shared.failpoints.delay(self.saga_id(), delay).await;
                // A shutdown may have been requested while the node slept.
                self.alive()
            }
            Some(FaultEffect::ExhaustPool { millis }) => {
                tracing::info!(node = %self.name, ?point, millis, "fault point reached: exhausting the pool");
                exhaust_pool(&self.cx.shared.pool, millis).await;
                Ok(())
            }
            Some(FaultEffect::Crash) => {
                self.crash(point).await;
                Err(Stop::Crash)
            }
            Some(effect) => stop_for(effect, point).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// An injected crash, as close to a process's death as one process can make it: the executor stops
    /// writing (every writer waits forever from now on), and every session of this engine incarnation is
    /// ended from the server side, so that the transaction open here (if any) is rolled back by the server on
    /// a dropped connection, not by a `ROLLBACK` the engine sends. steno's tasks of this engine stay in
    /// memory, parked at their next phase boundary; the engine that recovers the saga claims it under a new
    /// epoch, so any of them that wakes is fenced.
    async fn crash(&self, point: FaultPoint) {
        crash_executor(&self.cx.shared, self.saga_id(), &self.name, point).await;
    }

    /// The [`FaultPoint::AfterFailure`] boundary of a forward that ends in `result`: when it failed, a `Crash`
    /// armed there kills the executor (the failure is never recorded) and a `Delay` pauses before steno
    /// hears of the failure. Nothing else is checked here: a node that failed is reported failed, even while
    /// the engine shuts down.
    pub(crate) async fn after_failure(&self, result: steno::ActionResult) -> steno::ActionResult {
        if result.is_ok() {
            return result;
        }
        match self.armed_fault(FaultPoint::AfterFailure) {
            Some(FaultEffect::Delay { millis }) => {
                tracing::info!(node = %self.name, point = ?FaultPoint::AfterFailure, millis,
                    "fault point reached: delaying");
                let delay = std::time::Duration::from_millis(millis);
                self.cx.shared.failpoints.delay(self.saga_id(), delay).await;
            }
            Some(FaultEffect::Crash) => {
                self.crash(FaultPoint::AfterFailure).await;
                self.stop_driving(&Stop::Crash).await;
            }
            _ => {}
        }
        result
    }

    /// [`NodeRun::fault`] for the synchronous post-commit phase, where a delay has no meaning (it is ignored).
    pub(crate) fn fault_in_finish(&self) -> Result<(), Stop> {
        self.alive()?;
        self.armed_fault(FaultPoint::InFinish)
            .and_then(|effect| stop_for(effect, FaultPoint::InFinish))
            .map_or(Ok(()), Err)
    }

    /// Whether a [`FaultEffect::LoseReply`] is armed at `point` (`CommitReply` or `CompensationReply`): the
    /// `COMMIT` that just landed must then be treated as if its reply had been lost.
    pub(crate) fn reply_lost(&self, point: FaultPoint) -> bool {
        matches!(self.armed_fault(point), Some(FaultEffect::LoseReply))
    }

    fn armed_fault(&self, point: FaultPoint) -> Option<FaultEffect> {
        self.cx
            .shared
            .failpoints
            .fire(self.saga_id(), &self.name, point)
    }

    /// Whether the node may go on past a phase boundary: `Stop::Crash` when the executor has died (so that
    /// nothing more commits), `Stop::Shutdown` when the engine is shutting down.
    pub(crate) fn alive(&self) -> Result<(), Stop> {
        if self.cx.shared.liveness.is_dead() {
            Err(Stop::Crash)
        } else if self.cx.shared.shutdown.is_requested() {
            Err(Stop::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Never returns: the executor stops driving this saga (fenced out, crashed, or shutting down). It neither
    /// fails nor unwinds the node: steno hears nothing more of it, and the saga stays as the database has it.
    pub(crate) async fn stop_driving(&self, stop: &Stop) -> ! {
        let saga_id = self.saga_id();
        match stop {
            Stop::Crash => {
                tracing::warn!(%saga_id, node = %self.name,
                    "executor crashed (injected): writing nothing more");
                self.cx.shared.liveness.kill();
            }
            Stop::Shutdown => {
                tracing::info!(%saga_id, node = %self.name,
                    "engine shutting down: the node stops at this phase boundary; the saga stays unfinished \
                     in the database for recovery");
            }
            Stop::Node(error) => {
                // Callers handle node errors themselves; parking is the safe answer if one ever gets here.
                tracing::error!(%saga_id, node = %self.name, %error,
                    "a node error reached stop_driving: the node stops driving its saga");
            }
            Stop::Fenced => {
                self.cx
                    .shared
                    .counters
                    .fenced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(%saga_id, node = %self.name, owner = ?self.cx.log.owner(),
                    "fenced out: another executor adopted this saga (or it was abandoned); this executor's \
                     write was refused and it stops driving the saga, without unwinding it");
                self.host_event(
                    slog::Level::Info,
                    "fenced",
                    "a write was refused: another executor owns the saga; this one stops driving it",
                );
                self.cx.log.fence().raise();
            }
        }
        self.active.release();
        futures::future::pending::<()>().await;
        unreachable!("a pending future never resolves")
    }

    /// One of ratchet's events about this node, to the embedder's `slog` logger if it gave one.
    pub(crate) fn host_event(&self, level: slog::Level, event: &'static str, message: &str) {
        self.cx
            .shared
            .host_log
            .event(level, event, self.saga_id(), Some(&self.name), message);
    }

    /// steno's error for a failed compensation. steno records only the error's message (in the node's
    /// `undo_failed` event); a typed error is noted with the saga's log, whose store adds it to that event
    /// and from which the saga's outcome reads it.
    pub(crate) fn undo_failure(&self, error: RunError) -> anyhow::Error {
        if let Some(typed) = error.saga_error() {
            self.cx
                .log
                .note_undo_error(self.node_id, typed.value.clone());
        }
        anyhow::Error::new(error)
    }

    /// steno's error for a failed node.
    pub(crate) fn failure(&self, phase: &str, error: &RunError) -> ActionError {
        ActionError::action_failed(NodeFailure {
            node: self.name.clone(),
            phase: phase.to_owned(),
            message: error.to_string(),
            saga_error: error.saga_error().map(|typed| typed.value.clone()),
        })
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or spends `policy`'s budget on transient failures.
/// A fence or a crash stops the node for good (the future never resolves).
pub(crate) async fn with_retries<S, T, F, Fut>(
    run: &NodeRun<'_, S>,
    policy: RetryPolicy,
    phase: &str,
    mut attempt: F,
) -> Result<T, RunError>
where
    S: SagaDef,
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, Stop>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt(attempts).await {
            Ok(value) => return Ok(value),
            Err(Stop::Node(error)) => {
                let delay = error
                    .is_transient()
                    .then(|| policy.delay(attempts))
                    .flatten();
                let Some(delay) = delay else {
                    tracing::warn!(node = %run.name, phase, attempts, %error, "phase failed");
                    return Err(error);
                };
                if let Err(stop) = run.alive() {
                    run.stop_driving(&stop).await;
                }
                tracing::info!(node = %run.name, phase, attempts, %error, ?delay, "transient failure, retrying");
                run.cx
                    .shared
                    .counters
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(delay).await;
            }
            Err(stop) => run.stop_driving(&stop).await,
        }
    }
}

/// Runs a node's `finish` with the `InFinish` failpoint, catching a panic.
pub(crate) fn finish_guarded<S: SagaDef, R, O>(
    run: &NodeRun<'_, S>,
    finish: fn(R) -> O,
    receipt: R,
) -> Result<O, Stop> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        run.fault_in_finish()?;
        Ok(finish(receipt))
    }))
    .unwrap_or_else(|panic| {
        Err(Stop::Node(NodeError::permanent(format!(
            "post-commit phase panicked: {}",
            panic_message(panic.as_ref())
        ))))
    })
}

/// Runs one user phase (`what`: "prepare", "commit", "compensation") under a panic guard: a panic becomes a
/// permanent error naming it, and the engine goes on (it rolls the phase's transaction back and fails the
/// node, or, for a compensation, records the saga stuck). steno runs each node in a task of its own, so an
/// uncaught panic would end that task and leave the saga hanging, `running` or `unwinding`, for good.
///
/// Only unwinding panics can be caught. A binary built with `panic = "abort"` (Omicron's release profile)
/// dies instead; see the crate docs ("Panics") for what the engine does about a node that keeps crashing.
pub(crate) async fn catch_phase<S: SagaDef, T>(
    run: &NodeRun<'_, S>,
    what: &str,
    phase: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    use futures::FutureExt;
    match AssertUnwindSafe(phase).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            run.cx
                .shared
                .counters
                .panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let message = panic_message(panic.as_ref());
            tracing::error!(phase = what, panic = %message, "a node's phase panicked; the engine caught it");
            Err(Stop::Node(NodeError::permanent(format!(
                "the node's {what} panicked: {message}"
            ))))
        }
    }
}

pub(crate) fn encode<T: serde::Serialize>(
    what: &str,
    value: &T,
) -> Result<serde_json::Value, RunError> {
    serde_json::to_value(value)
        .map_err(|e| NodeError::permanent(format!("{what} does not encode: {e}")))
}

/// Hands `value` from one phase to the next the only way the engine lets data travel between phases: through
/// its serialized form. Returns that form and the value rebuilt from it.
///
/// A plan or receipt is declared serializable data, but a type can still carry what serde skips (a
/// `#[serde(skip)]` pool or client, rebuilt as its default). Passed on in memory, that field would reach the
/// commit (or `finish`) and could write outside the node's transaction, with no record and no compensation.
/// Passed through its serialized form, it arrives as its default: the smuggled handle is gone before the next
/// phase runs. A value that does not survive the trip (a map with non-string keys, a field that cannot be
/// rebuilt) fails the node, permanently, naming what did not encode or decode.
pub(crate) fn pass_on<T: serde::Serialize + DeserializeOwned>(
    what: &str,
    value: T,
) -> Result<(serde_json::Value, T), RunError> {
    let encoded = encode(what, &value)?;
    drop(value);
    let rebuilt = decode(what, encoded.clone())?;
    Ok((encoded, rebuilt))
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, RunError> {
    serde_json::from_value(value)
        .map_err(|e| NodeError::permanent(format!("{what} does not decode: {e}")))
}

/// How an armed fault stops the node at `point`; `None` for effects that do not stop it.
fn stop_for(effect: FaultEffect, point: FaultPoint) -> Option<Stop> {
    let what = format!("injected at {point:?}");
    Some(match effect {
        FaultEffect::TransientError => Stop::Node(NodeError::transient(what)),
        FaultEffect::PermanentError => Stop::Node(NodeError::permanent(what)),
        FaultEffect::Panic if point.is_guarded() => panic!("{what}"),
        FaultEffect::Panic => Stop::Node(NodeError::permanent(format!("panic {what}"))),
        FaultEffect::Crash => Stop::Crash,
        // These slow the node down (handled in `fault`); they never stop it, and mean nothing in `finish`.
        // A lost reply is read where a `COMMIT`'s reply arrives ([`NodeRun::reply_lost`]).
        FaultEffect::Delay { .. } | FaultEffect::ExhaustPool { .. } | FaultEffect::LoseReply => {
            return None;
        }
    })
}

/// Takes every connection of `pool` (up to its configured size, waiting for busy ones up to the checkout
/// timeout) and holds them for `millis` in the background; returns once they are taken.
async fn exhaust_pool(pool: &ratchet_store::DbPool, millis: u64) {
    let mut held = Vec::new();
    for _ in 0..pool.config().max_size {
        match pool.get_owned().await {
            Ok(conn) => held.push(conn),
            Err(_) => break,
        }
    }
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        drop(held);
    });
}

/// The error of a node that ended the engine's transaction itself (a `COMMIT`, `ROLLBACK` or `BEGIN` sent
/// through the connection of [`CommitTx`](crate::CommitTx) or [`PrepareCx`](crate::PrepareCx)): whatever it
/// wrote before that is outside the engine's guarantees, so the engine says so as loudly as it can and fails
/// the node (or, from a compensation, makes the saga stuck). The message carries
/// [`records::ESCAPED_WRITES`](ratchet_store::ESCAPED_WRITES), by which the saga's diagnosis lists
/// the node.
pub(crate) fn foreign_transaction<S: SagaDef>(
    run: &NodeRun<'_, S>,
    phase: &str,
    found: &str,
) -> RunError {
    let message = format!(
        "node {:?} ended the engine's transaction during its {phase} (transaction control sent through the \
         node's connection; the transaction token now reads {found:?}): {}: what it wrote before that may be \
         committed outside the engine, with no record and no compensation",
        run.name,
        ratchet_store::ESCAPED_WRITES,
    );
    tracing::error!(saga_id = %run.saga_id(), node = %run.name, "{message}");
    NodeError::permanent(message)
}

/// Before the engine ends a node's transaction on a path where it will not write the node's record (a phase
/// that failed or panicked, a fault, a read-only prepare): checks that the transaction is still the one the
/// engine began, named by `token` (see [`records::NODE_TX_SETTING`](ratchet_store::NODE_TX_SETTING)).
/// If it is not, the node ended it itself: returns the node's error naming that ([`foreign_transaction`]).
/// The success paths of a commit check the same token in the statement that writes the record.
///
/// TODO-robustness A transaction a failed statement has aborted cannot be read (PostgreSQL runs nothing there
/// but its end), nor can a broken connection: then nothing is found, and the caller's own reason stands. So a
/// node that ends the engine's transaction, begins another and leaves that one aborted is not caught here.
pub(crate) async fn check_token<S: SagaDef, C: ratchet_store::NodeConnection>(
    run: &NodeRun<'_, S>,
    conn: &mut C,
    token: Uuid,
    phase: &str,
) -> Option<RunError> {
    match ratchet_store::node_tx_token(conn).await {
        Ok(found) if found != token.to_string() => Some(foreign_transaction(run, phase, &found)),
        Ok(_) => None,
        Err(error) => {
            tracing::debug!(%error, "the node's transaction could not be checked; its own reason stands");
            None
        }
    }
}

/// [`check_token`] on a path that stops with `stop`: a node that ended the engine's transaction itself turns
/// `stop` (its own error) into that reason, so the attempt is not retried (a retry would apply the escaped
/// writes again) and the node fails naming it.
pub(crate) async fn unless_foreign<S: SagaDef, C: ratchet_store::NodeConnection>(
    run: &NodeRun<'_, S>,
    conn: &mut C,
    token: Uuid,
    phase: &str,
    stop: Stop,
) -> Stop {
    if matches!(stop, Stop::Crash) {
        // The executor dies here: it checks nothing.
        return stop;
    }
    match check_token(run, conn, token, phase).await {
        Some(foreign) => Stop::Node(foreign),
        None => stop,
    }
}
