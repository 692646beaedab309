//! One cell of the matrix: one saga, one node, one fault, on a fresh database, run to rest and checked.
//!
//! A *pair* cell ([`Cell::crash_in_compensation_of`]) injects two faults: an error right after node N's
//! `COMMIT` (which the engine compensates inline before steno unwinds the nodes before N), and a crash of the
//! engine inside the compensation of node M, where M is N itself or a node before N. A new engine then
//! recovers the unwind from the database. With M before N the saga must come to rest unwound; with M = N the
//! crash hits N's inline compensation before it commits, so the recovered saga finds N's commit (and its
//! `succeeded` event) standing and may go on to succeed: either outcome is clean, as for a single
//! `crash_in_compensation` at the last node.

use crate::HarnessError;
use crate::fault::{Expected, Fault};
use crate::real_crash::{self, Driven};
use crate::suite::SagaSuite;
use futures::future::BoxFuture;
use ratchet_engine::{
    Engine, EngineBuilder, EngineConfig, FaultEffect, FaultPoint, NodeKind, PreparedSaga, SagaDef,
    SagaOutcome,
};
use ratchet_store::{PoolConfig, RetryPolicy, get_saga, saga_history};
use ratchet_template_db::{DatabaseServer, TestDatabase};
use serde::Serialize;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a saga may take to come to rest before the cell fails.
pub(crate) const REST_TIMEOUT: Duration = Duration::from_secs(60);

/// Which cell.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub node: String,
    pub kind: NodeKind,
    pub fault: Fault,
    /// For a pair cell (`fault` is then `after_commit`): the node in whose compensation the engine crashes
    /// during the unwind the after-commit error caused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_in_compensation_of: Option<String>,
    /// The saga's last action node (an injected error there unwinds everything before it).
    #[serde(skip)]
    pub last_node: String,
    /// A fault point the cell's engines never fire (a mutation for the harness's own tests, see
    /// [`crate::Matrix::disable_point`]).
    #[serde(skip)]
    pub disabled_point: Option<FaultPoint>,
    /// When set, a crash cell runs its saga in this child program and kills it with `SIGKILL` (see
    /// [`crate::real_crash`]).
    #[serde(skip)]
    pub child: Option<crate::real_crash::ChildProgram>,
}

impl Cell {
    /// Whether the cell kills the engine, so that a new one must recover the saga.
    pub fn crashes(&self) -> bool {
        self.fault.crashes() || self.crash_in_compensation_of.is_some()
    }

    /// The cell's column label: the fault, or for a pair both faults.
    pub fn label(&self) -> String {
        match &self.crash_in_compensation_of {
            None => self.fault.name().to_owned(),
            Some(other) => format!("{} + crash_in_compensation of {other}", self.fault.name()),
        }
    }
}

/// A cell's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// At rest, as the fault dictates, nothing leaked.
    Pass,
    /// A known-defective saga's defect was seen, as expected.
    Detected,
    /// Something is wrong: see the problems.
    Fail,
    /// A known-defective saga's defect was *not* seen: the harness has lost its teeth.
    Missed,
    /// The suite declares the fault unreachable at this node (it calls no service to lose a response of):
    /// nothing was tested, and the table says so apart from passes.
    NotApplicable,
}

/// What one cell did.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    pub saga: String,
    #[serde(flatten)]
    pub cell: Cell,
    pub status: Status,
    pub expected: Expected,
    /// How the saga came to rest (after recovery and retry-unwind, where the fault calls for them).
    pub outcome: Option<SagaOutcome>,
    pub violations: Vec<String>,
    pub problems: Vec<String>,
    /// The saga's event history, for cells that did not pass.
    pub history: Option<serde_json::Value>,
    pub millis: u128,
    /// Set when the suite declared the fault unreachable at this node.
    #[serde(skip)]
    pub not_applicable: bool,
}

/// The engine configuration of a cell: short retries so that a matrix takes minutes, and a one-connection
/// pool for `pool_exhausted`.
pub(crate) fn cell_config(url: &str, sec_id: Uuid, fault: Fault) -> EngineConfig {
    let mut config = EngineConfig::new(url, sec_id);
    config.pool = PoolConfig {
        max_size: if fault == Fault::PoolExhausted { 1 } else { 4 },
        checkout_timeout: Duration::from_millis(if fault == Fault::PoolExhausted {
            300
        } else {
            5_000
        }),
        ..PoolConfig::default()
    };
    config.forward_retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(200),
        max_attempts: Some(10),
    };
    config.compensation_retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(200),
        max_attempts: Some(12),
    };
    config
}

/// What a clean run must end as.
pub(crate) fn expected<T: SagaSuite>(suite: &T, cell: &Cell) -> Expected {
    if suite.expects_detection(&cell.node, cell.fault) {
        return Expected::Detection;
    }
    if let Some(other) = &cell.crash_in_compensation_of {
        return if *other == cell.node {
            Expected::SucceededOrUnwound
        } else {
            Expected::Unwound
        };
    }
    let is_last = cell.node == cell.last_node;
    match cell.fault {
        Fault::BeforePrepare
        | Fault::AfterPrepare
        | Fault::InCommit
        | Fault::AfterCommit
        | Fault::PanicInFinish
        | Fault::PanicInPrepare
        | Fault::CompensationTransient
        | Fault::CompensationReplyLost
        | Fault::UnknownThenRefused => Expected::Unwound,
        // A database node's commit panics before COMMIT: rolled back, the node fails. An external node's
        // call panics: its outcome is unknown, the call is retried by key and lands.
        Fault::PanicInCommit if cell.kind == NodeKind::External => Expected::Succeeded,
        Fault::PanicInCommit => Expected::Unwound,
        // The last node is unwound by an error right after its own commit, compensated inline; when that
        // compensation fails for good the engine lets the commit stand and the node succeed (the saga stays
        // consistent: every commit is part of a successful saga).
        Fault::CompensationPermanent | Fault::PanicInCompensation if is_last => Expected::Succeeded,
        Fault::CompensationPermanent | Fault::PanicInCompensation => Expected::Unwound,
        Fault::CrashInCompensation if is_last => Expected::SucceededOrUnwound,
        Fault::CrashInCompensation => Expected::Unwound,
        Fault::Repeat if is_last => Expected::Succeeded,
        Fault::Repeat => Expected::Unwound,
        Fault::CrashBeforeCommit
        | Fault::CrashAfterCommit
        | Fault::PoolExhausted
        | Fault::ResponseLost
        | Fault::CommitReplyLost => Expected::Succeeded,
    }
}

/// Everything one cell holds while it runs.
pub(crate) struct Running<'a, T: SagaSuite> {
    pub(crate) suite: &'a T,
    pub(crate) db: TestDatabase,
    pub(crate) fixture: T::Fixture,
    pub(crate) sec_id: Uuid,
    fault: Fault,
    disabled_point: Option<FaultPoint>,
}

impl<T: SagaSuite> Running<'_, T> {
    pub(crate) async fn engine(&self) -> Result<Engine, HarnessError> {
        start_engine(self.builder(), self.disabled_point).await
    }

    /// The cell's engine, registered, not started.
    fn builder(&self) -> EngineBuilder {
        let builder = EngineBuilder::new(cell_config(&self.db.url, self.sec_id, self.fault));
        self.suite.register(builder, &self.fixture)
    }
}

async fn start_engine(
    builder: EngineBuilder,
    disabled_point: Option<FaultPoint>,
) -> Result<Engine, HarnessError> {
    let (engine, _) = builder.start().await?;
    if let Some(point) = disabled_point {
        engine.failpoints().disable(point);
    }
    Ok(engine)
}

/// Runs one cell. Every failure it detects is a `Fail` with its reason.
pub(crate) async fn run_cell<T: SagaSuite>(
    suite: &T,
    server: &DatabaseServer,
    cell: Cell,
) -> CellResult {
    let started = Instant::now();
    let expected = expected(suite, &cell);
    let mut result = CellResult {
        saga: suite.label(),
        cell: cell.clone(),
        status: Status::Fail,
        expected,
        outcome: None,
        violations: Vec::new(),
        problems: Vec::new(),
        history: None,
        millis: 0,
        not_applicable: false,
    };
    match run_and_check(suite, server, &cell, expected, &mut result).await {
        Ok(()) => {}
        Err(error) => result.problems.push(error.to_string()),
    }
    let clean = result.problems.is_empty() && result.violations.is_empty();
    result.status = match (expected, clean) {
        _ if result.not_applicable => Status::NotApplicable,
        (Expected::Detection, false) => Status::Detected,
        (Expected::Detection, true) => Status::Missed,
        (_, true) => Status::Pass,
        (_, false) => Status::Fail,
    };
    if result.status == Status::Pass || result.status == Status::Detected {
        result.history = None;
    }
    result.millis = started.elapsed().as_millis();
    result
}

async fn run_and_check<T: SagaSuite>(
    suite: &T,
    server: &DatabaseServer,
    cell: &Cell,
    expected: Expected,
    result: &mut CellResult,
) -> Result<(), HarnessError> {
    let db = server.fresh_database(&suite.migrations()).await?;
    let fixture = suite.fixture(&db.url).await?;
    let running = Running {
        suite,
        db,
        fixture,
        sec_id: Uuid::new_v4(),
        fault: cell.fault,
        disabled_point: cell.disabled_point,
    };
    let checked = drive_and_check(&running, cell, expected, result).await;
    let Running { db, fixture, .. } = running;
    drop(fixture);
    // The database goes whatever happened; a failure to drop it is only logged.
    if let Err(error) = server.drop_database(&db).await {
        tracing::warn!(database = %db.name, %error, "could not drop a cell's database");
    }
    checked
}

async fn drive_and_check<T: SagaSuite>(
    running: &Running<'_, T>,
    cell: &Cell,
    expected: Expected,
    result: &mut CellResult,
) -> Result<(), HarnessError> {
    let driven = match &cell.child {
        Some(child) if cell.crashes() => {
            real_crash::drive_in_child(running, cell, child, &mut result.problems).await?
        }
        _ => {
            let Some(driven) = drive_here(running, cell).await? else {
                result.not_applicable = true;
                result.problems.push(format!(
                    "not applicable: the suite has no way to inject {} at node {}",
                    cell.fault.name(),
                    cell.node
                ));
                return Ok(());
            };
            driven
        }
    };
    let Driven {
        engine,
        id,
        mut outcome,
        crashed,
    } = driven;
    if let (Some(other), false) = (&cell.crash_in_compensation_of, crashed) {
        // The pair did not test what it names: the unwind never reached that compensation.
        result.problems.push(format!(
            "fault not reached: the crash armed in the compensation of {other} never fired"
        ));
    }
    // A cell whose fault never fired tested nothing: its expected outcome is often what a run with no
    // fault gives, so it must not pass.
    if cell.crash_in_compensation_of.is_none()
        && let Some(missing) = not_reached(running, &engine, id, cell, crashed, &outcome)
    {
        result
            .problems
            .push(format!("fault not reached: {missing}"));
    }

    // A permanent compensation failure must leave the saga stuck; with the fault cleared, retry-unwind must
    // then finish it.
    if cell.fault.sticks() && expected == Expected::Unwound {
        if !matches!(outcome, SagaOutcome::Stuck { .. }) {
            result
                .problems
                .push(format!("expected the saga stuck, it ended {outcome:?}"));
        }
        let state = saga_state(&engine, id).await?;
        if state != "stuck" {
            result
                .problems
                .push(format!("expected the saga recorded stuck, it is {state}"));
        }
        engine.failpoints().clear(id);
        outcome = tokio::time::timeout(REST_TIMEOUT, engine.retry_unwind(id))
            .await
            .map_err(|_| HarnessError::Timeout("retry-unwind".to_owned()))??;
    }
    result.outcome = Some(outcome.clone());
    check_rest(running, &engine, id, cell, expected, &outcome, result).await
}

/// Runs the cell's saga in this process (a crash is the in-process one). `None` when the suite cannot inject
/// the cell's fault at its node.
async fn drive_here<T: SagaSuite>(
    running: &Running<'_, T>,
    cell: &Cell,
) -> Result<Option<Driven>, HarnessError> {
    if cell.crashes() {
        return drive_crashing(running, cell).await;
    }
    let engine = running.engine().await?;
    let saga = engine
        .create::<T::Saga>(running.suite.params(&running.fixture))
        .await?;
    let id = saga.id;
    let Some(injections) = arm(running, &engine, &saga, cell) else {
        return Ok(None);
    };
    for injection in injections {
        injection.await?;
    }
    let outcome = tokio::time::timeout(REST_TIMEOUT, saga.run())
        .await
        .map_err(|_| HarnessError::Timeout("the saga".to_owned()))??;
    Ok(Some(Driven {
        engine,
        id,
        outcome,
        crashed: false,
    }))
}

/// How the first engine of a crash cell ended.
enum FirstEngine {
    /// The crash fired.
    Crashed { id: Uuid },
    /// The saga came to rest without the crash firing.
    AtRest { id: Uuid, outcome: SagaOutcome },
}

/// A crash cell in this process. The first engine runs on a tokio runtime of its own, on a thread of its own;
/// when the crash fires (its sessions are ended from the server side, see the engine's `NodeRun::crash`), the
/// runtime is shut down, which aborts every task of that engine, steno's included, as a process's death
/// would. A new engine under the same executor id (a new epoch) then recovers the saga. (`Matrix::real_crash`
/// runs crash cells in a child process killed with SIGKILL instead.)
///
/// The first engine's runtime is not driven from the harness's task (`block_in_place` would stall the other
/// cells of that task meanwhile, and deadlock on anything one of them holds): the harness awaits the thread's
/// answer.
async fn drive_crashing<T: SagaSuite>(
    running: &Running<'_, T>,
    cell: &Cell,
) -> Result<Option<Driven>, HarnessError> {
    let builder = running.builder();
    let params = running.suite.params(&running.fixture);
    let disabled_point = running.disabled_point;
    let crashing = cell.clone();
    let (answer, first) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| HarnessError::Engine(format!("the crashing engine's runtime: {e}")))
            .and_then(|runtime| {
                let first = runtime.block_on(first_engine::<T::Saga>(
                    builder,
                    params,
                    disabled_point,
                    &crashing,
                ));
                // Every task of the first engine ends here, wherever it was.
                runtime.shutdown_background();
                first
            });
        let _ = answer.send(result);
    });
    let first = first
        .await
        .map_err(|_| HarnessError::Engine("the crashing engine's thread died".to_owned()))??;
    Ok(match first {
        FirstEngine::AtRest { id, outcome } => Some(Driven {
            engine: running.engine().await?,
            id,
            outcome,
            crashed: false,
        }),
        FirstEngine::Crashed { id } => {
            let (engine, outcome) = recover_saga(running, id).await?;
            Some(Driven {
                engine,
                id,
                outcome,
                crashed: true,
            })
        }
    })
}

/// The first engine of a crash cell: runs the saga with the crash armed until the crash fires or the saga is
/// at rest.
async fn first_engine<S: SagaDef>(
    builder: EngineBuilder,
    params: S::Params,
    disabled_point: Option<FaultPoint>,
    cell: &Cell,
) -> Result<FirstEngine, HarnessError> {
    let engine = start_engine(builder, disabled_point).await?;
    let saga = engine.create::<S>(params).await?;
    let id = saga.id;
    if let Some(injection) = arm_crash(&engine, &saga, cell) {
        injection.await?;
    }
    let run = tokio::spawn(saga.run());
    let deadline = Instant::now() + REST_TIMEOUT;
    while !engine.is_crashed() && !run.is_finished() {
        if Instant::now() > deadline {
            return Err(HarnessError::Timeout("the crash".to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if engine.is_crashed() {
        return Ok(FirstEngine::Crashed { id });
    }
    // The fault never fired (the node did not reach that point); the saga is at rest already.
    let outcome = run
        .await
        .map_err(|e| HarnessError::Engine(e.to_string()))??;
    Ok(FirstEngine::AtRest { id, outcome })
}

/// Arms a crash cell's crash (a pair's error after N's commit and crash in M's compensation; a single crash
/// fault at its point, with what makes the saga unwind for a crash in a compensation). Returns the steno
/// injection still to be sent, if any.
fn arm_crash<'a>(
    engine: &Engine,
    saga: &'a PreparedSaga,
    cell: &'a Cell,
) -> Option<BoxFuture<'a, Result<(), ratchet_engine::EngineError>>> {
    let failpoints = engine.failpoints();
    let (id, node) = (saga.id, cell.node.as_str());
    if let Some(other) = &cell.crash_in_compensation_of {
        // A pair: the error after N's commit starts the unwind; the crash then hits `other`'s compensation.
        failpoints.arm(
            id,
            node,
            FaultPoint::AfterCommit,
            FaultEffect::PermanentError,
            1,
        );
        failpoints.arm(id, other, FaultPoint::InCompensation, FaultEffect::Crash, 1);
        return None;
    }
    let point = match cell.fault {
        Fault::CrashBeforeCommit => FaultPoint::BeforeCommit,
        Fault::CrashAfterCommit => FaultPoint::AfterCommit,
        Fault::CrashInCompensation => FaultPoint::InCompensation,
        _ => return None,
    };
    failpoints.arm(id, node, point, FaultEffect::Crash, 1);
    if cell.fault == Fault::CrashInCompensation {
        return unwind_after(saga, engine, cell);
    }
    None
}

/// A new engine under the cell's executor id (a new epoch) recovers saga `id` from the database and runs it
/// to rest.
pub(crate) async fn recover_saga<T: SagaSuite>(
    running: &Running<'_, T>,
    id: Uuid,
) -> Result<(Engine, SagaOutcome), HarnessError> {
    let engine = running.engine().await?;
    let outcome = tokio::time::timeout(REST_TIMEOUT, engine.wait(id))
        .await
        .map_err(|_| HarnessError::Timeout("the recovered saga".to_owned()))?
        .ok_or_else(|| {
            HarnessError::Engine(format!(
                "saga {id} was not resumed by the recovering engine"
            ))
        })?;
    Ok((engine, outcome))
}

/// Why the cell's single fault did not fire, if it did not. Crash faults are seen by the engine dying; the
/// engine's own fault points by its failpoint registry; the services' lost responses by their counters;
/// steno's injected error by the node it failed. (steno's repeat injection and the plain steno nodes' knobs
/// are not observable here.)
fn not_reached<T: SagaSuite>(
    running: &Running<'_, T>,
    engine: &Engine,
    id: Uuid,
    cell: &Cell,
    crashed: bool,
    outcome: &SagaOutcome,
) -> Option<String> {
    let node = cell.node.as_str();
    if cell.fault.crashes() {
        return (!crashed).then(|| format!("the engine never crashed at {node}"));
    }
    if matches!(cell.fault, Fault::ResponseLost | Fault::UnknownThenRefused) {
        return (!running.suite.service_fault_fired(&running.fixture, node))
            .then(|| format!("the service never dropped a response to {node}"));
    }
    if cell.fault == Fault::BeforePrepare {
        return match outcome {
            SagaOutcome::Unwound { node: failed, .. } if failed == node => None,
            other => Some(format!(
                "steno's injected error at {node} did not fail it: {other:?}"
            )),
        };
    }
    if cell.kind == NodeKind::Steno {
        return None;
    }
    let point = armed_point(cell.fault)?;
    (!engine.failpoints().has_fired(id, node, point))
        .then(|| format!("the fault armed at {node} {point:?} never fired"))
}

/// The engine fault point a single (non-crash) fault is armed at, if any.
fn armed_point(fault: Fault) -> Option<FaultPoint> {
    Some(match fault {
        Fault::AfterPrepare => FaultPoint::AfterPrepare,
        Fault::InCommit => FaultPoint::BeforeCommit,
        Fault::AfterCommit => FaultPoint::AfterCommit,
        Fault::PanicInFinish => FaultPoint::InFinish,
        Fault::CompensationTransient
        | Fault::CompensationPermanent
        | Fault::PanicInCompensation => FaultPoint::InCompensation,
        Fault::CommitReplyLost => FaultPoint::CommitReply,
        Fault::CompensationReplyLost => FaultPoint::CompensationReply,
        Fault::PanicInPrepare => FaultPoint::InPrepare,
        Fault::PanicInCommit => FaultPoint::InCommit,
        Fault::PoolExhausted => FaultPoint::BeforePrepare,
        Fault::BeforePrepare
        | Fault::Repeat
        | Fault::ResponseLost
        | Fault::UnknownThenRefused
        | Fault::CrashBeforeCommit
        | Fault::CrashAfterCommit
        | Fault::CrashInCompensation => return None,
    })
}

/// steno injections still to be sent.
type Injections<'a> = Vec<BoxFuture<'a, Result<(), ratchet_engine::EngineError>>>;

/// Arms the cell's fault on `saga` (and what unwinds the saga, for compensation faults); returns the steno
/// injections to send before the saga starts, or `None` when the fault cannot reach the node.
fn arm<'a, T: SagaSuite>(
    running: &Running<'_, T>,
    engine: &Engine,
    saga: &'a PreparedSaga,
    cell: &'a Cell,
) -> Option<Injections<'a>> {
    let failpoints = engine.failpoints();
    let id = saga.id;
    let node = cell.node.as_str();
    let at = |point, effect| failpoints.arm(id, node, point, effect, 1);
    let plain = cell.kind == NodeKind::Steno;
    let mut injections: Injections<'a> = Vec::new();
    if cell.crashes() {
        injections.extend(arm_crash(engine, saga, cell));
        return Some(injections);
    }
    match cell.fault {
        Fault::BeforePrepare => injections.push(Box::pin(saga.inject_error(node))),
        Fault::AfterPrepare => at(FaultPoint::AfterPrepare, FaultEffect::PermanentError),
        Fault::InCommit => at(FaultPoint::BeforeCommit, FaultEffect::PermanentError),
        Fault::AfterCommit if plain => {
            if !running.suite.fail_after_commit(&running.fixture, node) {
                return None;
            }
        }
        Fault::AfterCommit => at(FaultPoint::AfterCommit, FaultEffect::PermanentError),
        Fault::PanicInFinish => at(FaultPoint::InFinish, FaultEffect::Panic),
        Fault::CompensationTransient => {
            at(FaultPoint::InCompensation, FaultEffect::TransientError);
            injections.extend(unwind_after(saga, engine, cell));
        }
        Fault::CompensationPermanent => {
            failpoints.arm(
                id,
                node,
                FaultPoint::InCompensation,
                FaultEffect::PermanentError,
                u32::MAX,
            );
            injections.extend(unwind_after(saga, engine, cell));
        }
        Fault::Repeat => {
            injections.push(Box::pin(saga.inject_repeat(node, 2, 2)));
            if cell.node != cell.last_node {
                injections.push(Box::pin(saga.inject_error(&cell.last_node)));
            }
        }
        // The engine's pool holds one connection (cell_config); a plain steno node holding it cannot get
        // a second. A ratchet node additionally finds it taken when it starts.
        Fault::PoolExhausted if plain => {}
        Fault::PoolExhausted => at(
            FaultPoint::BeforePrepare,
            FaultEffect::ExhaustPool { millis: 1_000 },
        ),
        Fault::ResponseLost => {
            if !running.suite.lose_response(&running.fixture, node) {
                return None;
            }
        }
        Fault::UnknownThenRefused => {
            if !running
                .suite
                .lose_response_then_refuse(&running.fixture, node)
            {
                return None;
            }
        }
        Fault::CommitReplyLost => at(FaultPoint::CommitReply, FaultEffect::LoseReply),
        Fault::CompensationReplyLost => {
            at(FaultPoint::CompensationReply, FaultEffect::LoseReply);
            injections.extend(unwind_after(saga, engine, cell));
        }
        Fault::PanicInPrepare => at(FaultPoint::InPrepare, FaultEffect::Panic),
        Fault::PanicInCommit => at(FaultPoint::InCommit, FaultEffect::Panic),
        Fault::PanicInCompensation => {
            at(FaultPoint::InCompensation, FaultEffect::Panic);
            injections.extend(unwind_after(saga, engine, cell));
        }
        // Armed above (`cell.crashes()`).
        Fault::CrashBeforeCommit | Fault::CrashAfterCommit | Fault::CrashInCompensation => {}
    }
    Some(injections)
}

/// Makes the saga unwind through `cell.node`'s compensation: an error injected at the last node, or (when
/// the node is the last) an error right after its own commit, which the engine compensates inline.
pub(crate) fn unwind_after<'a>(
    saga: &'a PreparedSaga,
    engine: &Engine,
    cell: &'a Cell,
) -> Option<BoxFuture<'a, Result<(), ratchet_engine::EngineError>>> {
    if cell.node != cell.last_node {
        return Some(Box::pin(saga.inject_error(&cell.last_node)));
    }
    engine.failpoints().arm(
        saga.id,
        &cell.node,
        FaultPoint::AfterCommit,
        FaultEffect::PermanentError,
        1,
    );
    None
}

async fn saga_state(engine: &Engine, id: Uuid) -> Result<String, HarnessError> {
    let mut conn = engine
        .pool()
        .get()
        .await
        .map_err(ratchet_store::DbError::from)?;
    Ok(get_saga(&mut conn, id)
        .await
        .map_err(ratchet_store::DbError::from)?
        .map(|row| row.saga_state.to_string())
        .unwrap_or_else(|| "missing".to_owned()))
}

/// The checks at rest.
async fn check_rest<T: SagaSuite>(
    running: &Running<'_, T>,
    engine: &Engine,
    id: Uuid,
    cell: &Cell,
    expected: Expected,
    outcome: &SagaOutcome,
    result: &mut CellResult,
) -> Result<(), HarnessError> {
    let mut conn = engine
        .pool()
        .get()
        .await
        .map_err(ratchet_store::DbError::from)?;
    let history = saga_history(&mut conn, id)
        .await
        .map_err(ratchet_store::DbError::from)?
        .ok_or_else(|| HarnessError::Engine(format!("saga {id} has no row")))?;
    let succeeded = matches!(outcome, SagaOutcome::Succeeded { .. });
    let stuck = matches!(outcome, SagaOutcome::Stuck { .. }) || history.saga.saga_state == "stuck";
    let problems = &mut result.problems;

    match (expected, outcome) {
        (Expected::Succeeded | Expected::SucceededOrUnwound, SagaOutcome::Succeeded { .. }) => {}
        (Expected::Unwound | Expected::SucceededOrUnwound, SagaOutcome::Unwound { .. }) => {}
        (Expected::Detection, _) if stuck => problems.push(format!(
            "the saga is stuck: {}",
            history
                .saga
                .stuck_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        )),
        (Expected::Detection, _) => {}
        (expected, outcome) => problems.push(format!("expected {expected:?}, got {outcome:?}")),
    }
    if expected != Expected::Detection && history.saga.saga_state != "done" {
        problems.push(format!("the saga is {}, not done", history.saga.saga_state));
    }

    // Commit and compensation records: primary keys make each at most once; here, each where it belongs.
    let committed: Vec<&str> = history
        .commits
        .iter()
        .map(|c| c.node_name.as_str())
        .collect();
    let compensated: Vec<&str> = history
        .compensations
        .iter()
        .map(|c| c.node_name.as_str())
        .collect();
    if succeeded && !compensated.is_empty() {
        problems.push(format!(
            "the saga succeeded but compensated {compensated:?}"
        ));
    }
    if matches!(outcome, SagaOutcome::Unwound { .. }) {
        for node in &committed {
            if !compensated.contains(node) {
                problems.push(format!("node {node} committed and was never compensated"));
            }
        }
    }
    // The log invariant: a commit record with no compensation record implies the node's `succeeded` event
    // is in the log (the commit and the event land in one transaction; only a compensation withdraws it).
    // By path: the commit records of nodes inside subsagas are keyed by it.
    let node_ids: std::collections::BTreeMap<String, i64> =
        ratchet_store::node_paths(&history.saga.saga_dag)
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
    for node in committed.iter().filter(|node| !compensated.contains(node)) {
        let logged = node_ids.get(*node).is_some_and(|id| {
            history
                .events
                .iter()
                .any(|e| e.node_id == *id && e.event_type == "succeeded")
        });
        if !logged {
            problems.push(format!(
                "node {node} has a commit record and no compensation record, but no `succeeded` event in the log"
            ));
        }
    }
    let undo_failed = history
        .events
        .iter()
        .filter(|e| e.event_type == "undo_failed")
        .count();
    if undo_failed > 0 && !cell.fault.sticks() && expected != Expected::Detection {
        problems.push(format!(
            "{undo_failed} undo_failed event(s) with no such fault injected"
        ));
    }

    result.violations = running
        .suite
        .violations(&running.fixture, &mut conn)
        .await?;
    if !stuck {
        let outcome_problems = running
            .suite
            .check_outcome(&running.fixture, &mut conn, succeeded)
            .await?;
        result.problems.extend(outcome_problems);
    }
    if !result.problems.is_empty() || !result.violations.is_empty() {
        result.history = Some(serde_json::json!({
            "saga_state": history.saga.saga_state,
            "stuck_reason": history.saga.stuck_reason,
            "events": history.events.iter().map(|e| serde_json::json!({
                "node_id": e.node_id, "event_type": e.event_type, "data": e.data,
            })).collect::<Vec<_>>(),
            "commits": committed,
            "compensations": compensated,
        }));
    }
    Ok(())
}
