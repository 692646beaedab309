//! Running a database node: forward (prepare, commit, finish in one transaction) and undo (compensate).
//!
//! The commit point of every database node is the one `commit_transaction` call in [`attempt_forward`].
//! Before it, any failure rolls everything back and the node fails (or retries) with nothing to undo. After
//! it, nothing fallible runs on the success path; an injected failure there is compensated inline, from the
//! receipt, before steno hears of it ([`compensate_after_commit`]).

use crate::error::{NodeError, RunError};
use crate::failpoint::FaultPoint;
use crate::run::commit_outcome::{self, CommitOutcome, resolve, until_answered};
use crate::run::node_run::{
    NodeRun, Stop, catch_phase, decode, encode, finish_guarded, foreign_transaction, pass_on,
    unless_foreign, with_retries,
};
use crate::saga::builder::{SagaBuilder, Stage, TypedNodes};
use crate::saga::definition::{NodeKind, SagaDef, StenoSaga};
use crate::saga::node::DbNode;
use crate::saga::phase::{CommitTx, PrepareCx};
use crate::saga::registry::NodeRegistry;
use futures::FutureExt;
use futures::future::BoxFuture;
use ratchet_store::{
    DbConnection, EventRow, FencedWrite, NodeConnection, OwnerCheck, RecordKind, Recorded,
    begin_transaction_then, commit_transaction, delete_event, insert_compensation_record,
    insert_events, is_owner, probe_record, record_commit_if_owner, recorded, rollback_transaction,
};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use steno::{ActionContext, ActionName, SagaNodeEvent, SagaNodeEventType};
use tracing::Instrument;
use uuid::Uuid;

/// The steno action of database node type `N` in saga `S`.
///
/// `S` is the root saga, whose steno saga type the action runs under; `T` the saga `N` belongs to: `S` itself,
/// or a saga nested in it as a subsaga (same application context), whose parameters the node sees.
///
/// `C` is the connection type the node's transaction runs on (see [`DbNode`]).
pub(crate) struct DbAction<S, T, N, C>(PhantomData<crate::saga::definition::Marker<(S, T, N, C)>>);

impl<S, T, N, C> DbAction<S, T, N, C> {
    pub(crate) fn new() -> Self {
        DbAction(PhantomData)
    }
}

impl<S, T, N, C> fmt::Debug for DbAction<S, T, N, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbAction")
    }
}

impl<S: SagaDef, T: SagaDef<Context = S::Context>, N: DbNode<T, C>, C: NodeConnection>
    steno::Action<StenoSaga<S>> for DbAction<S, T, N, C>
{
    fn do_it(&self, ctx: ActionContext<StenoSaga<S>>) -> BoxFuture<'_, steno::ActionResult> {
        Box::pin(async move { forward::<S, T, N, C>(&ctx).await })
    }

    fn undo_it(&self, ctx: ActionContext<StenoSaga<S>>) -> BoxFuture<'_, steno::UndoResult> {
        Box::pin(async move { undo::<S, T, N, C>(&ctx).await })
    }

    fn name(&self) -> ActionName {
        ActionName::new(N::NAME)
    }
}

/// A database node's registration (its steno action, `DbAction`) and layout.
impl<S: SagaDef> NodeRegistry<S> {
    /// Registers database node type `N` of this saga.
    pub fn db<N: DbNode<S>>(&mut self) -> &mut Self {
        self.nested_db::<S, N>()
    }

    /// Database node type `N` of saga `T`, which is `S` or a saga `S` nests (what
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes) writes for a nested saga's `db` entries).
    #[doc(hidden)]
    pub fn nested_db<T: SagaDef<Context = S::Context>, N: DbNode<T>>(&mut self) -> &mut Self {
        self.nested_db_on::<T, DbConnection, N>()
    }

    /// Registers database node type `N` of this saga, whose transaction runs on connection type `C` (what
    /// [`declare_saga_nodes!`](crate::declare_saga_nodes) writes for `db(C) N`). The engine checks its
    /// connections out of the pool registered for `C` ([`crate::EngineBuilder::node_pool`]).
    pub fn db_on<C: NodeConnection, N: DbNode<S, C>>(&mut self) -> &mut Self {
        self.nested_db_on::<S, C, N>()
    }

    /// Database node type `N` of saga `T` on connection type `C` (see [`NodeRegistry::nested_db`]).
    #[doc(hidden)]
    pub fn nested_db_on<T, C, N>(&mut self) -> &mut Self
    where
        T: SagaDef<Context = S::Context>,
        C: NodeConnection,
        N: DbNode<T, C>,
    {
        let name = <N as DbNode<T, C>>::NAME;
        self.refuse_result_output::<N::Output>(name);
        if self.claim::<(T, N)>(name) {
            self.db_actions.insert(name);
            self.actions
                .register(Arc::new(DbAction::<S, T, N, C>::new()));
        }
        self
    }
}

impl<S: SagaDef> Stage<'_, S> {
    /// Lays out database node `node` as `name` in this stage.
    pub fn db<N: DbNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        self.db_on::<DbConnection, N>(name, node)
    }

    /// Lays out database node `node`, whose transaction runs on connection type `C`, as `name` in this stage.
    pub fn db_on<C: NodeConnection, N: DbNode<S, C>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = DbAction::<S, S, N, C>::new();
        let node = self.builder.planned::<N, _>(name, &node, &action);
        self.push(name, NodeKind::Db, node)
    }
}

impl<S: SagaDef> TypedNodes<S> {
    /// Database node `name` for a DAG built with steno's `DagBuilder`: the steno node to append (labelled
    /// `name`), or why it cannot be one (a name holding `/`, arguments that do not encode, a type missing
    /// from the saga's node list).
    pub fn db<N: DbNode<S>>(
        &mut self,
        name: &str,
        node: N,
    ) -> Result<steno::Node, crate::EngineError> {
        let action = DbAction::<S, S, N, DbConnection>::new();
        let planned = self.builder.planned::<N, _>(name, &node, &action);
        self.node(planned)
    }
}

impl<S: SagaDef> SagaBuilder<S> {
    /// Appends a database node as a stage of its own.
    pub fn db<N: DbNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        self.db_on::<DbConnection, N>(name, node)
    }

    /// Appends a database node on connection type `C` as a stage of its own.
    pub fn db_on<C: NodeConnection, N: DbNode<S, C>>(&mut self, name: &str, node: N) -> &mut Self {
        self.stage(|s| {
            s.db_on::<C, N>(name, node);
        })
    }
}

/// What one forward attempt ended with.
enum Forward {
    /// Committed now: the output, and the receipt as the commit record holds it (for `after_commit`).
    Committed {
        output: serde_json::Value,
        receipt: serde_json::Value,
    },
    /// Committed by an earlier attempt (a replay): the recorded receipt.
    Replayed { receipt: serde_json::Value },
    /// Compensated by an earlier attempt after a failure that followed its commit.
    AlreadyCompensated,
}

async fn forward<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    ctx: &ActionContext<StenoSaga<S>>,
) -> steno::ActionResult {
    let run =
        NodeRun::<S>::new(ctx).map_err(|e| steno::ActionError::action_failed(e.to_string()))?;
    let span = tracing::info_span!("node", saga_id = %run.saga_id(), node = %run.name, kind = "db");
    let result = async {
        let node: N = run.node().map_err(|e| run.failure("prepare", &e))?;
        run.count_start("forward")
            .await
            .map_err(|e| run.failure("start", &e))?;
        let policy = run.cx.shared.forward_retry;
        let outcome = with_retries(&run, policy, "commit", |attempt| {
            let span = tracing::info_span!("attempt", attempt);
            attempt_forward::<S, T, N, C>(&run, &node, ctx).instrument(span)
        })
        .await
        .map_err(|e| run.failure("commit", &e))?;
        match outcome {
            Forward::AlreadyCompensated => Err(run.failure(
                "post-commit",
                &NodeError::permanent("the node failed after its commit and was compensated"),
            )),
            Forward::Replayed { receipt } => {
                let decoded: N::Receipt = decode("commit record", receipt.clone())
                    .map_err(|e| run.failure("replay", &e))?;
                match finish_guarded(&run, N::finish, decoded) {
                    Ok(output) => {
                        tracing::info!(
                            "replayed: the commit was recorded earlier; not committing again"
                        );
                        encode("node output", &output)
                            .map(Arc::new)
                            .map_err(|e| run.failure("replay", &e))
                    }
                    Err(Stop::Node(error)) => {
                        compensate_after_commit::<S, T, N, C>(&run, &node, None, error).await
                    }
                    Err(stop) => run.stop_driving(&stop).await,
                }
            }
            Forward::Committed { output, receipt } => {
                run.cx
                    .log
                    .mark_written(run.node_id, &["started", "succeeded"]);
                run.cx
                    .shared
                    .counters
                    .commits
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(saga_id = %run.saga_id(), node = %run.name,
                    "committed: the node's writes, its commit record and its log events are durable");
                run.host_event(slog::Level::Info, "commit", "committed");
                match run.fault(FaultPoint::AfterCommit).await {
                    Ok(()) => {
                        run.after_step::<T, N::Receipt>("after-commit", Some(receipt), |cx, r| {
                            if let Some(receipt) = r {
                                N::after_commit(cx, receipt);
                            }
                        });
                        Ok(Arc::new(output))
                    }
                    Err(Stop::Node(error)) => {
                        run.cx.log.unmark_written(run.node_id, "succeeded");
                        compensate_after_commit::<S, T, N, C>(&run, &node, Some(output), error).await
                    }
                    Err(stop) => run.stop_driving(&stop).await,
                }
            }
        }
    }
    .instrument(span)
    .await;
    run.after_failure(result).await
}

/// One attempt: BEGIN … COMMIT, or a rollback.
async fn attempt_forward<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    run: &NodeRun<'_, S>,
    node: &N,
    ctx: &ActionContext<StenoSaga<S>>,
) -> Result<Forward, Stop> {
    run.fault(FaultPoint::BeforePrepare).await?;
    let _turn = run.cx.db_turn().await;
    let look_up = run.cx.commit_may_exist(run.node_id);
    // The token names this attempt's transaction: the fenced write that closes it checks it is still there
    // (a node that ended the engine's transaction itself is caught, see `ratchet_store::NODE_TX_SETTING`).
    let token = Uuid::new_v4();
    let mut held_events = Vec::new();
    let sent = {
        let mut pooled = run.node_connection::<C>().await?;
        let conn: &mut C = &mut pooled;
        let mut begin = run.node_begin::<C>(token);
        if !look_up {
            // No record to look up: BEGIN and enter the prepare's savepoint in one round trip.
            begin = format!("{begin}; {}", enter_prepare());
        }
        begin_transaction_then(conn, &begin).await?;
        let result = forward_in_transaction::<S, T, N, C>(
            run,
            node,
            ctx,
            conn,
            look_up,
            token,
            &mut held_events,
        )
        .await;
        match result {
            Ok(committed) => {
                run.cx.note_commit_sent(run.node_id);
                // -------- the commit point --------
                let committed_now = commit_transaction(conn).await;
                let outcome = CommitOutcome::after(run, FaultPoint::CommitReply, committed_now);
                Ok((committed, outcome))
            }
            Err(EndedEarly::Stop(stop)) => {
                // Whatever stopped the attempt (the node's error, a panic, a fault), a transaction the node
                // ended itself is what the node fails for.
                let stop = unless_foreign(run, conn, token, "prepare or commit", stop).await;
                rollback_transaction(conn).await;
                Err(EndedEarly::Stop(stop))
            }
            Err(early) => {
                rollback_transaction(conn).await;
                Err(early)
            }
        }
        // The connection goes back to the pool here (or is discarded, if broken): an unknown outcome is
        // resolved on another one.
    };
    let outcome = match sent {
        Ok(((output, receipt), CommitOutcome::Landed)) => {
            Ok(Forward::Committed { output, receipt })
        }
        Ok((_, CommitOutcome::Refused(error))) => {
            run.cx.note_commit_refused(run.node_id);
            Err(Stop::from(error))
        }
        Ok(((output, receipt), CommitOutcome::Unknown(reason))) => {
            run.cx.note_commit_unknown(run.node_id);
            match resolve_commit(run, &reason).await {
                Ok(true) => Ok(Forward::Committed { output, receipt }),
                Ok(false) => Err(Stop::Node(NodeError::transient(format!(
                    "the COMMIT's outcome was unknown ({reason}); it did not land: the node runs again"
                )))),
                Err(stop) => Err(stop),
            }
        }
        Err(EndedEarly::Exit(forward)) => Ok(forward),
        Err(EndedEarly::RecordFound) => recorded_forward(run).await,
        Err(EndedEarly::Stop(stop)) => Err(stop),
    };
    // The held events (the start node's, constants', subsagas' start and end nodes') this attempt
    // carried: durable with a commit that landed; otherwise the next write takes them (an event already
    // written is left as it is).
    if matches!(outcome, Ok(Forward::Committed { .. })) {
        for node in &held_events {
            run.cx.log.mark_written(*node, &["started", "succeeded"]);
        }
    } else {
        run.cx.log.release_held_events(&held_events);
    }
    outcome
}

/// What an earlier attempt's commit record says, for a node whose new commit met that record's key: replay
/// it (or, if compensated since, report that), looked up until the database answers.
async fn recorded_forward<S: SagaDef>(run: &NodeRun<'_, S>) -> Result<Forward, Stop> {
    let saga_id = run.saga_id();
    let owner = run.cx.log.owner();
    // A definite answer to look up, not an unknown outcome: no waiting note, no unknown-outcome count.
    let found = until_answered(run, "commit", None, |conn| {
        let name = run.name.clone();
        async move {
            match recorded(conn, saga_id, &name, owner, OwnerCheck::Read).await? {
                Recorded::Fenced => Err(Stop::Fenced),
                Recorded::Absent => Ok(None),
                Recorded::Compensated { .. } => Ok(Some(Forward::AlreadyCompensated)),
                Recorded::Committed { receipt } => Ok(Some(Forward::Replayed { receipt })),
            }
        }
        .boxed()
    })
    .await?;
    // No record after all (records are never deleted, so only a hand-edited log): run the node again.
    found.ok_or_else(|| {
        Stop::Node(NodeError::transient(
            "the commit record that blocked this attempt is gone",
        ))
    })
}

/// Settles a node `COMMIT` whose outcome is unknown: whether its commit record exists, waiting out any
/// transaction still writing it ([`probe_record`]). A record there is this attempt's own (any
/// earlier one would have failed this attempt's insert of it), unless this executor has since been fenced.
async fn resolve_commit<S: SagaDef>(run: &NodeRun<'_, S>, reason: &str) -> Result<bool, Stop> {
    let saga_id = run.saga_id();
    let owner = run.cx.log.owner();
    resolve(run, "commit", reason, |conn| {
        let name = run.name.clone();
        async move {
            if !probe_record(conn, RecordKind::Commit, saga_id, &name).await? {
                return Ok(false);
            }
            if !is_owner(conn, saga_id, owner).await? {
                return Err(Stop::Fenced);
            }
            Ok(true)
        }
        .boxed()
    })
    .await
}

/// The savepoint a database node's prepare runs in.
const PREPARE_SAVEPOINT: &str = "ratchet_prepare";

/// Enters the prepare: a savepoint, made read-only. Rolling the savepoint back restores read-write
/// ([`leave_prepare`]).
fn enter_prepare() -> String {
    format!("SAVEPOINT {PREPARE_SAVEPOINT}; SET LOCAL transaction_read_only = on")
}

/// Leaves the prepare: rolls its savepoint back (read-write again) and releases it, so that the node's writes
/// run in the top-level transaction and not in a subtransaction (PostgreSQL's `ROLLBACK TO SAVEPOINT` keeps
/// the savepoint open, and writes inside it would take a second transaction id).
fn leave_prepare() -> String {
    format!("ROLLBACK TO SAVEPOINT {PREPARE_SAVEPOINT}; RELEASE SAVEPOINT {PREPARE_SAVEPOINT}")
}

/// How the in-transaction part ends early (and the transaction is rolled back).
enum EndedEarly {
    /// Nothing to commit: the node was committed or compensated before.
    Exit(Forward),
    /// The node's commit record is there already (this transaction's insert of it met its key): the node
    /// committed in an earlier attempt. Looked up after the rollback, in the same attempt.
    RecordFound,
    Stop(Stop),
}

impl<E: Into<Stop>> From<E> for EndedEarly {
    fn from(error: E) -> Self {
        EndedEarly::Stop(error.into())
    }
}

/// Everything between BEGIN and COMMIT. Returns the output to commit and the receipt recorded. `look_up`: whether to look for an
/// earlier commit first (else the prepare's savepoint was entered with the BEGIN). `held_events` is set to the
/// nodes whose held events the transaction carries.
async fn forward_in_transaction<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    run: &NodeRun<'_, S>,
    node: &N,
    ctx: &ActionContext<StenoSaga<S>>,
    conn: &mut C,
    look_up: bool,
    token: Uuid,
    held_events: &mut Vec<u32>,
) -> Result<(serde_json::Value, serde_json::Value), EndedEarly> {
    let saga_id = run.saga_id();
    if look_up {
        // A replay (steno re-runs a node whose log says only `started`) finds the commit record. A stale
        // executor must not take it for its own: the record may be the adopting executor's. A compensation
        // record means the node is being (or was) undone: it must not commit again.
        let owner = run.cx.log.owner();
        match recorded(conn, saga_id, &run.name, owner, OwnerCheck::Read).await? {
            Recorded::Fenced => return Err(EndedEarly::Stop(Stop::Fenced)),
            Recorded::Compensated { .. } => {
                return Err(EndedEarly::Exit(Forward::AlreadyCompensated));
            }
            Recorded::Committed { receipt } => {
                return Err(EndedEarly::Exit(Forward::Replayed { receipt }));
            }
            Recorded::Absent => {}
        }
        conn.batch_execute(&enter_prepare()).await?;
    }

    // Prepare: inside the read-only savepoint. The savepoint is not diesel's: a prepare that opens a
    // transaction of its own gets a diesel savepoint nested inside this one. A failed (or panicking) prepare
    // fails the attempt, and the caller rolls the whole transaction back.
    let plan = {
        let params: T::Params = run.params()?;
        let mut cx = PrepareCx::<T, C> {
            steno: ctx,
            params: &params,
            conn: &mut *conn,
            saga_id,
            node_name: &run.name,
            app: &run.cx.app,
            log: run.logger(),
        };
        catch_phase(run, "prepare", async {
            run.fault(FaultPoint::InPrepare).await?;
            Ok(node.prepare(&mut cx).await?)
        })
        .await?
    };
    // The plan reaches the commit only through its serialized form: nothing serde skips survives.
    let (_, plan) = pass_on("plan", plan)?;
    one_transaction_deep(run, conn, "prepare").await?;
    conn.batch_execute(&leave_prepare()).await?;
    run.fault(FaultPoint::AfterPrepare).await?;

    // Commit: the node's writes, the post-commit output, then in one statement the fence (a share lock on the
    // saga row, if this executor still owns it), the commit record and the log events. The fence comes
    // last so that it costs no round trip of its own; a stale executor's writes before it roll back with it.
    let owner = run.cx.log.owner();
    let receipt = {
        let mut tx = CommitTx {
            conn: &mut *conn,
            saga_id,
            node_name: &run.name,
            log: run.logger(),
        };
        catch_phase(run, "commit", async {
            run.fault(FaultPoint::InCommit).await?;
            Ok(node.commit(&mut tx, plan).await?)
        })
        .await?
    };
    one_transaction_deep(run, conn, "commit").await?;
    // `finish` gets the receipt as the commit record holds it (nothing serde skips survives), and it is pure,
    // so it runs before COMMIT: a panic in it rolls the commit back.
    let (receipt_json, receipt) = pass_on("receipt", receipt)?;
    let recorded_receipt = receipt_json.clone();
    let output = finish_guarded(run, N::finish, receipt)?;
    let output_json = encode("node output", &output)?;
    let sec_id = owner.sec_id;
    let (held, mut events) = run.cx.log.claim_held_events();
    *held_events = held;
    events.push(event_row(run, SagaNodeEventType::Started, sec_id)?);
    events.push(event_row(
        run,
        SagaNodeEventType::Succeeded(Arc::new(output_json.clone())),
        sec_id,
    )?);
    let written = record_commit_if_owner(
        conn,
        saga_id,
        &run.name,
        receipt_json,
        owner,
        &events,
        Some(token),
    )
    .await;
    match written {
        Ok(FencedWrite::Written) => {}
        Ok(FencedWrite::Fenced) => return Err(EndedEarly::Stop(Stop::Fenced)),
        Ok(FencedWrite::ForeignTransaction { found }) => {
            return Err(EndedEarly::Stop(Stop::Node(foreign_transaction(
                run, "commit", &found,
            ))));
        }
        // The commit record is there already (the insert waited for whoever wrote it): this node committed
        // before, in an attempt whose `COMMIT` this executor took for refused or never saw. Never a failure:
        // the record is looked up and replayed, without spending an attempt.
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => {
            run.cx.note_commit_unknown(run.node_id);
            return Err(EndedEarly::RecordFound);
        }
        Err(error) => return Err(error.into()),
    }
    run.fault(FaultPoint::BeforeCommit).await?;
    run.alive()?;
    Ok((output_json, recorded_receipt))
}

/// Fails the node loudly if its phase left a nested transaction (a savepoint diesel opened) unfinished: the
/// engine's `COMMIT` would then only release that savepoint, report the commit landed, and leave the real
/// transaction open, to be rolled back when the pool discards the connection.
async fn one_transaction_deep<S: SagaDef, C: NodeConnection>(
    run: &NodeRun<'_, S>,
    conn: &mut C,
    phase: &str,
) -> Result<(), Stop> {
    match conn.transaction_depth().await {
        Some(1) => Ok(()),
        // No transaction at all: the node ended the engine's (a COMMIT through diesel's manager).
        None => Err(Stop::Node(foreign_transaction(
            run,
            phase,
            "no transaction",
        ))),
        depth => {
            let message = format!(
                "node {:?} left a nested transaction unfinished in its {phase} (transaction depth {depth:?}, \
                 expected 1): its writes cannot be committed as one transaction",
                run.name
            );
            tracing::error!(saga_id = %run.saga_id(), node = %run.name, "{message}");
            Err(Stop::Node(NodeError::permanent(message)))
        }
    }
}

/// The log row of one of this node's events, written by the engine's own transaction. A `started` (or
/// `undo_started`) row carries the time steno started the node (or its undo), not the time of the commit that
/// writes it, so that the saga's timeline shows how long the node took.
pub(crate) fn event_row<S: SagaDef>(
    run: &NodeRun<'_, S>,
    event_type: SagaNodeEventType,
    creator: uuid::Uuid,
) -> Result<EventRow, RunError> {
    let began = matches!(
        event_type,
        SagaNodeEventType::Started | SagaNodeEventType::UndoStarted
    );
    let event = SagaNodeEvent {
        saga_id: newtype_uuid::GenericUuid::from_untyped_uuid(run.saga_id()),
        node_id: run.node_id.into(),
        event_type,
    };
    let mut row = EventRow::new(&event, creator)?;
    if began {
        row.event_time = run.began;
    }
    Ok(row)
}

/// A failure after the commit (or a post-commit phase that panicked on replay): compensate now, from the
/// recorded receipt, so that steno (which never undoes a failed node) can be told the node failed.
///
/// If the compensation itself fails for good, the node's commit stands: with its output known, the node
/// reports success (the saga goes on, consistently); without it, the saga is recorded stuck.
async fn compensate_after_commit<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    run: &NodeRun<'_, S>,
    node: &N,
    output: Option<serde_json::Value>,
    cause: RunError,
) -> steno::ActionResult {
    tracing::warn!(%cause, "failure after the commit: compensating inline before failing the node");
    let policy = run.cx.shared.compensation_retry;
    let compensated = with_retries(run, policy, "compensate", |_| {
        attempt_compensation::<S, T, N, C>(run, node, Mode::AfterCommit)
    })
    .await;
    match (compensated, output) {
        (Ok(_), _) => Err(run.failure("post-commit", &cause)),
        (Err(error), Some(output)) => {
            tracing::error!(%error, "compensation after a post-commit failure failed; the commit stands");
            run.cx.log.mark_written(run.node_id, &["succeeded"]);
            Ok(Arc::new(output))
        }
        (Err(error), None) => {
            run.cx.log.note_stuck(
                &run.name,
                &format!("post-commit failed ({cause}) and compensation failed ({error})"),
            );
            Err(run.failure("post-commit", &cause))
        }
    }
}

async fn undo<S: SagaDef, T: SagaDef<Context = S::Context>, N: DbNode<T, C>, C: NodeConnection>(
    ctx: &ActionContext<StenoSaga<S>>,
) -> steno::UndoResult {
    let run = NodeRun::<S>::new(ctx).map_err(anyhow::Error::new)?;
    let span = tracing::info_span!("undo", saga_id = %run.saga_id(), node = %run.name, kind = "db");
    async {
        let node: N = run.node()?;
        run.count_start("compensation").await?;
        let policy = run.cx.shared.compensation_retry;
        let outcome = with_retries(&run, policy, "compensate", |attempt| {
            let span = tracing::info_span!("attempt", attempt);
            attempt_compensation::<S, T, N, C>(&run, &node, Mode::Undo).instrument(span)
        })
        .await
        .map_err(|error| run.undo_failure(error))?;
        tracing::info!(?outcome, "compensation finished");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Why a compensation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// steno asked for the node's undo: record `undo_started` / `undo_finished` with it.
    Undo,
    /// The forward failed after its commit: withdraw its `succeeded` event instead.
    AfterCommit,
}

/// What one compensation attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compensation {
    Compensated,
    /// A compensation record existed: done before (exactly once).
    AlreadyCompensated,
    /// No commit record: the forward never committed, so there is nothing to undo.
    NothingCommitted,
}

async fn attempt_compensation<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    run: &NodeRun<'_, S>,
    node: &N,
    mode: Mode,
) -> Result<Compensation, Stop> {
    let token = Uuid::new_v4();
    let sent = {
        let mut pooled = run.node_connection::<C>().await?;
        let conn: &mut C = &mut pooled;
        begin_transaction_then(conn, &run.node_begin::<C>(token)).await?;
        // The whole transaction runs under the panic guard: a panicking compensation rolls back and fails
        // for good (steno then records the saga stuck, with the message).
        let result = catch_phase(
            run,
            "compensation",
            compensation_in_transaction::<S, T, N, C>(run, node, mode, conn, token),
        )
        .await;
        match result {
            Ok((Compensation::AlreadyCompensated, _)) => {
                rollback_transaction(conn).await;
                return Ok(Compensation::AlreadyCompensated);
            }
            Ok((outcome, receipt)) => {
                // -------- the compensation's commit point --------
                let committed = commit_transaction(conn).await;
                (
                    (outcome, receipt),
                    CommitOutcome::after(run, FaultPoint::CompensationReply, committed),
                )
            }
            Err(stop) => {
                let stop = unless_foreign(run, conn, token, "compensation", stop).await;
                rollback_transaction(conn).await;
                return Err(stop);
            }
        }
    };
    let ((outcome, receipt), committed) = sent;
    match committed {
        CommitOutcome::Landed => {}
        CommitOutcome::Refused(error) => return Err(Stop::from(error)),
        CommitOutcome::Unknown(reason) => {
            run.cx.note_commit_unknown(run.node_id);
            if !commit_outcome::compensation_landed(run, &reason).await? {
                return Err(Stop::Node(NodeError::transient(format!(
                    "the compensation's COMMIT had an unknown outcome ({reason}); it did not land: \
                     compensating again"
                ))));
            }
        }
    }
    let outcome = compensation_landed(run, mode, outcome).await?;
    if let (Compensation::Compensated, Some(receipt)) = (outcome, receipt) {
        run.after_step::<T, N::Receipt>("after-compensation", Some(receipt), |cx, r| {
            if let Some(receipt) = r {
                N::after_compensation(cx, receipt);
            }
        });
    }
    Ok(outcome)
}

/// What follows a compensation's `COMMIT` that landed.
async fn compensation_landed<S: SagaDef>(
    run: &NodeRun<'_, S>,
    mode: Mode,
    outcome: Compensation,
) -> Result<Compensation, Stop> {
    match mode {
        Mode::Undo => run
            .cx
            .log
            .mark_written(run.node_id, &["undo_started", "undo_finished"]),
        Mode::AfterCommit => run.cx.log.unmark_written(run.node_id, "succeeded"),
    }
    if outcome == Compensation::Compensated {
        run.cx
            .shared
            .counters
            .compensations
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(saga_id = %run.saga_id(), node = %run.name, ?mode,
            "compensated: the commit is undone and the compensation record is durable");
        run.host_event(slog::Level::Info, "compensation", "compensated");
    }
    // A failure after the compensation committed is retried: the next attempt finds the record.
    run.fault(FaultPoint::AfterCompensation).await?;
    Ok(outcome)
}

async fn compensation_in_transaction<
    S: SagaDef,
    T: SagaDef<Context = S::Context>,
    N: DbNode<T, C>,
    C: NodeConnection,
>(
    run: &NodeRun<'_, S>,
    node: &N,
    mode: Mode,
    conn: &mut C,
    token: Uuid,
) -> Result<(Compensation, Option<serde_json::Value>), Stop> {
    let saga_id = run.saga_id();
    let owner = run.cx.log.owner();
    let receipt = match recorded(conn, saga_id, &run.name, owner, OwnerCheck::ShareLock).await? {
        Recorded::Fenced => return Err(Stop::Fenced),
        Recorded::Compensated { .. } => return Ok((Compensation::AlreadyCompensated, None)),
        Recorded::Committed { receipt } => Some(receipt),
        Recorded::Absent => None,
    };
    let compensated_receipt = receipt.clone();
    let outcome = match receipt {
        None => Compensation::NothingCommitted,
        Some(receipt) => {
            let receipt: N::Receipt = decode("commit record", receipt)?;
            let mut tx = CommitTx {
                conn: &mut *conn,
                saga_id,
                node_name: &run.name,
                log: run.logger(),
            };
            node.compensate(&mut tx, receipt).await?;
            one_transaction_deep(run, conn, "compensation").await?;
            Compensation::Compensated
        }
    };
    let written = insert_compensation_record(
        conn,
        saga_id,
        &run.name,
        outcome == Compensation::Compensated,
        owner,
        Some(token),
    )
    .await?;
    if let FencedWrite::ForeignTransaction { found } = written {
        return Err(Stop::Node(foreign_transaction(run, "compensation", &found)));
    }
    match mode {
        Mode::Undo => {
            let events = [
                event_row(run, SagaNodeEventType::UndoStarted, owner.sec_id)?,
                event_row(run, SagaNodeEventType::UndoFinished, owner.sec_id)?,
            ];
            insert_events(conn, &events).await?;
        }
        Mode::AfterCommit => delete_event(conn, saga_id, run.node_id, "succeeded").await?,
    }
    // Everything of the compensation is written, nothing is committed: a fault here rolls it all back.
    run.fault(FaultPoint::InCompensation).await?;
    run.alive()?;
    Ok((outcome, compensated_receipt))
}
