//! Running an external node: a read-only prepare, one idempotent call keyed by (saga, node), the receipt
//! recorded as soon as the outcome is definite, and compensation by key.
//!
//! The node never fails while the call's outcome is unknown: an `Unknown` answer is retried with the same
//! key; when the retry budget is spent, the engine compensates by key (until that answer is definite) and
//! only then fails the node.

use crate::error::{NodeError, RunError};
use crate::failpoint::FaultPoint;
use crate::run::commit_outcome::{self, CommitOutcome};
use crate::run::db_node::event_row;
use crate::run::node_run::{
    NodeRun, Stop, catch_phase, check_token, decode, encode, finish_guarded, pass_on,
    unless_foreign, with_retries,
};
use crate::saga::builder::{SagaBuilder, Stage};
use crate::saga::definition::{NodeKind, SagaDef, StenoSaga};
use crate::saga::node::{CallError, ExternalNode};
use crate::saga::phase::{ExternalCx, PrepareCx};
use crate::saga::registry::NodeRegistry;
use futures::future::BoxFuture;
use ratchet_store::{
    DbConnection, FencedWrite, OwnerCheck, Recorded, RetryPolicy, begin_read_only_transaction_then,
    begin_transaction, commit_receipt, commit_transaction, delete_event,
    insert_compensation_record, insert_events, lock_if_owner, record_commit_if_owner, recorded,
    rollback_transaction, set_node_tx,
};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use steno::{ActionContext, ActionName, SagaNodeEventType};
use tracing::Instrument;
use uuid::Uuid;

/// The steno action of external node type `N` in saga `S`.
///
/// `S` is the root saga, whose steno saga type the action runs under; `T` the saga `N` belongs to: `S` itself,
/// or a saga nested in it as a subsaga (same application context), whose parameters the node sees.
pub(crate) struct ExternalAction<S, T, N>(PhantomData<crate::saga::definition::Marker<(S, T, N)>>);

impl<S, T, N> ExternalAction<S, T, N> {
    pub(crate) fn new() -> Self {
        ExternalAction(PhantomData)
    }
}

impl<S, T, N> fmt::Debug for ExternalAction<S, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExternalAction")
    }
}

impl<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>> steno::Action<StenoSaga<S>>
    for ExternalAction<S, T, N>
{
    fn do_it(&self, ctx: ActionContext<StenoSaga<S>>) -> BoxFuture<'_, steno::ActionResult> {
        Box::pin(async move { forward::<S, T, N>(&ctx).await })
    }

    fn undo_it(&self, ctx: ActionContext<StenoSaga<S>>) -> BoxFuture<'_, steno::UndoResult> {
        Box::pin(async move { undo::<S, T, N>(&ctx).await })
    }

    fn name(&self) -> ActionName {
        ActionName::new(N::NAME)
    }
}

/// An external node's registration (its steno action, `ExternalAction`) and layout.
impl<S: SagaDef> NodeRegistry<S> {
    /// Registers external node type `N` of this saga.
    pub fn external<N: ExternalNode<S>>(&mut self) -> &mut Self {
        self.nested_external::<S, N>()
    }

    /// External node type `N` of saga `T`, which is `S` or a saga `S` nests.
    #[doc(hidden)]
    pub fn nested_external<T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
        &mut self,
    ) -> &mut Self {
        self.refuse_result_output::<N::Output>(<N as ExternalNode<T>>::NAME);
        if self.claim::<(T, N)>(<N as ExternalNode<T>>::NAME) {
            self.actions
                .register(Arc::new(ExternalAction::<S, T, N>::new()));
        }
        self
    }
}

impl<S: SagaDef> Stage<'_, S> {
    /// Lays out external node `node` as `name` in this stage.
    pub fn external<N: ExternalNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        let action = ExternalAction::<S, S, N>::new();
        let node = self.builder.planned::<N, _>(name, &node, &action);
        self.push(name, NodeKind::External, node)
    }
}

impl<S: SagaDef> crate::saga::builder::TypedNodes<S> {
    /// External node `name` for a DAG built with steno's `DagBuilder` (see [`TypedNodes::db`](crate::TypedNodes::db)).
    pub fn external<N: ExternalNode<S>>(
        &mut self,
        name: &str,
        node: N,
    ) -> Result<steno::Node, crate::EngineError> {
        let action = ExternalAction::<S, S, N>::new();
        let planned = self.builder.planned::<N, _>(name, &node, &action);
        self.node(planned)
    }
}

impl<S: SagaDef> SagaBuilder<S> {
    /// Appends an external node as a stage of its own.
    pub fn external<N: ExternalNode<S>>(&mut self, name: &str, node: N) -> &mut Self {
        self.stage(|s| {
            s.external(name, node);
        })
    }
}

enum Prepared<P> {
    Plan(P),
    Replayed(serde_json::Value),
    AlreadyCompensated,
}

/// The call's view, with the parameters of the saga the node belongs to (`T`: the root saga `S`, or a
/// subsaga nested in it).
fn external_cx<'a, S: SagaDef, T: SagaDef<Context = S::Context>>(
    run: &'a NodeRun<'_, S>,
) -> Result<ExternalCx<'a, T>, RunError> {
    Ok(ExternalCx {
        params: run.params()?,
        app: &run.cx.app,
        saga_id: run.saga_id(),
        node_name: &run.name,
        log: run.logger(),
    })
}

async fn forward<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    ctx: &ActionContext<StenoSaga<S>>,
) -> steno::ActionResult {
    let run =
        NodeRun::<S>::new(ctx).map_err(|e| steno::ActionError::action_failed(e.to_string()))?;
    let span =
        tracing::info_span!("node", saga_id = %run.saga_id(), node = %run.name, kind = "external");
    let result = async {
        let node: N = run.node().map_err(|e| run.failure("prepare", &e))?;
        // An earlier run of this node (before a crash) may have made its call: the log says `started`, and
        // a `started` external node's call outcome is unknown until its record says otherwise. Any failure
        // before this run's own call must then undo that call by key before the node fails.
        let may_have_called = run.cx.started_in_log.contains(&run.node_id);
        if let Err(error) = run.count_start("forward").await {
            return fail_before_calling::<S, T, N>(&run, &node, may_have_called, "start", error)
                .await;
        }
        let policy = run.cx.shared.forward_retry;
        let prepared = match with_retries(&run, policy, "prepare", |_| {
            prepare::<S, T, N>(&run, &node, ctx)
        })
        .await
        {
            Ok(prepared) => prepared,
            Err(error) => {
                return fail_before_calling::<S, T, N>(
                    &run,
                    &node,
                    may_have_called,
                    "prepare",
                    error,
                )
                .await;
            }
        };
        let plan = match prepared {
            Prepared::Plan(plan) => plan,
            Prepared::AlreadyCompensated => {
                // The record may have been written just before a crash cut the compensating call short: make
                // the call again (by key, so at most once) before failing.
                return compensate_then_fail::<S, T, N>(
                    &run,
                    &node,
                    NodeError::permanent("the node failed after its call and was compensated"),
                )
                .await;
            }
            Prepared::Replayed(receipt) => {
                let receipt: N::Receipt =
                    decode("commit record", receipt).map_err(|e| run.failure("replay", &e))?;
                return match finish_guarded(&run, N::finish, receipt) {
                    Ok(output) => encode("node output", &output)
                        .map(Arc::new)
                        .map_err(|e| run.failure("replay", &e)),
                    Err(Stop::Node(error)) => {
                        compensate_then_fail::<S, T, N>(&run, &node, error).await
                    }
                    Err(stop) => run.stop_driving(&stop).await,
                };
            }
        };
        if let Err(stop) = run.fault(FaultPoint::AfterPrepare).await {
            return match stop {
                Stop::Node(error) => {
                    fail_before_calling::<S, T, N>(&run, &node, may_have_called, "prepare", error)
                        .await
                }
                stop => run.stop_driving(&stop).await,
            };
        }
        let receipt = match call_until_definite::<S, T, N>(&run, &node, &plan).await {
            Ok(receipt) => receipt,
            Err(CallFailed::Refused(error)) => return Err(run.failure("call", &error)),
            Err(CallFailed::Unknown(error)) => {
                return compensate_then_fail::<S, T, N>(&run, &node, error).await;
            }
        };
        // `finish` gets the receipt as its record will hold it: nothing serde skips survives.
        let (receipt_json, receipt) =
            pass_on("receipt", receipt).map_err(|e| run.failure("call", &e))?;
        let output = match run
            .fault(FaultPoint::BeforeCommit)
            .await
            .and_then(|()| finish_guarded(&run, N::finish, receipt))
        {
            Ok(output) => output,
            Err(Stop::Node(error)) => {
                return compensate_then_fail::<S, T, N>(&run, &node, error).await;
            }
            Err(stop) => run.stop_driving(&stop).await,
        };
        let output_json = encode("node output", &output).map_err(|e| run.failure("call", &e))?;
        // The outcome is definite: record it until the write lands.
        let forever = RetryPolicy {
            max_attempts: None,
            ..policy
        };
        let recorded = with_retries(&run, forever, "record receipt", |_| {
            record_receipt::<S>(&run, receipt_json.clone(), output_json.clone())
        })
        .await;
        if let Err(error) = recorded {
            // Permanent failure to record: the call stands, unrecorded; undo it by key before failing.
            return compensate_then_fail::<S, T, N>(&run, &node, error).await;
        }
        run.cx.log.mark_written(run.node_id, &["succeeded"]);
        run.cx
            .shared
            .counters
            .commits
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(saga_id = %run.saga_id(), node = %run.name,
            "committed: the external call is applied and its receipt recorded");
        run.host_event(
            slog::Level::Info,
            "commit",
            "committed (external call applied)",
        );
        match run.fault(FaultPoint::AfterCommit).await {
            Ok(()) => {
                run.after_step::<T, N::Receipt>(
                    "after-commit",
                    Some(receipt_json),
                    |cx, receipt| {
                        if let Some(receipt) = receipt {
                            N::after_commit(cx, receipt);
                        }
                    },
                );
                Ok(Arc::new(output_json))
            }
            Err(Stop::Node(error)) => {
                run.cx.log.unmark_written(run.node_id, "succeeded");
                compensate_then_fail::<S, T, N>(&run, &node, error).await
            }
            Err(stop) => run.stop_driving(&stop).await,
        }
    }
    .instrument(span)
    .await;
    run.after_failure(result).await
}

async fn prepare<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    ctx: &ActionContext<StenoSaga<S>>,
) -> Result<Prepared<N::Plan>, Stop> {
    run.fault(FaultPoint::BeforePrepare).await?;
    let mut pooled = run.connection().await?;
    let conn: &mut DbConnection = &mut pooled;
    // The token names the prepare's transaction, as a database node's does: checked before it is rolled back.
    let token = Uuid::new_v4();
    begin_read_only_transaction_then(conn, &set_node_tx(token)).await?;
    let result = async {
        let saga_id = run.saga_id();
        // A stale executor stops here, before it replays someone else's receipt or calls out.
        //
        // TODO-correctness The call itself cannot be fenced by the database: an adoption landing between this
        // check and the call lets one stale call through. Its idempotency key is the adopter's too, so the
        // service applies it at most once; a service that took a generation with the key could refuse it.
        //
        // A compensation record, with or without a commit record: the forward failed and is being (or has
        // been) compensated; its call by key must not be sent again (the service would answer it from its
        // cache, as if the compensation had not happened).
        let owner = run.cx.log.owner();
        match recorded(conn, saga_id, &run.name, owner, OwnerCheck::Read).await? {
            Recorded::Fenced => return Err(Stop::Fenced),
            Recorded::Compensated { .. } => return Ok(Prepared::AlreadyCompensated),
            Recorded::Committed { receipt } => return Ok(Prepared::Replayed(receipt)),
            Recorded::Absent => {}
        }
        let params: T::Params = run.params()?;
        let mut cx = PrepareCx::<T> {
            steno: ctx,
            params: &params,
            conn: &mut *conn,
            saga_id,
            node_name: &run.name,
            app: &run.cx.app,
            log: run.logger(),
        };
        let plan = catch_phase(run, "prepare", async {
            run.fault(FaultPoint::InPrepare).await?;
            Ok(node.prepare(&mut cx).await?)
        })
        .await?;
        // The plan reaches the call only through its serialized form: nothing serde skips survives.
        let (_, plan) = pass_on("plan", plan)?;
        Ok::<_, Stop>(Prepared::Plan(plan))
    }
    .await;
    // On every path, Ok included: a prepare that sent its own COMMIT has left read-only behind, and what it
    // wrote after that is outside the engine.
    let result = match result {
        Ok(prepared) => match check_token(run, conn, token, "prepare").await {
            Some(foreign) => Err(Stop::Node(foreign)),
            None => Ok(prepared),
        },
        Err(stop) => Err(unless_foreign(run, conn, token, "prepare", stop).await),
    };
    rollback_transaction(conn).await;
    result
}

/// Fails the node before this run's call: plainly if no earlier run can have called out, else after undoing
/// by key whatever an earlier run's call did.
async fn fail_before_calling<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    may_have_called: bool,
    phase: &str,
    error: RunError,
) -> steno::ActionResult {
    if may_have_called {
        compensate_then_fail::<S, T, N>(run, node, error).await
    } else {
        Err(run.failure(phase, &error))
    }
}

enum CallFailed {
    /// Definitely not applied: every attempt was refused.
    Refused(RunError),
    /// Maybe applied: some attempt's outcome was unknown (a lost response, a panic), and no later attempt
    /// applied it for sure (the budget ran out, or the service refused: a refusal of a retry says nothing of
    /// an earlier attempt that may have landed). The node compensates by key before it fails.
    Unknown(RunError),
}

async fn call_until_definite<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    plan: &N::Plan,
) -> Result<N::Receipt, CallFailed> {
    let policy = run.cx.shared.forward_retry;
    let cx = match external_cx::<S, T>(run) {
        Ok(cx) => cx,
        // Nothing was called: a definite refusal.
        Err(error) => return Err(CallFailed::Refused(error)),
    };
    let mut attempts = 0;
    // Whether any attempt's outcome was unknown: the service may then have applied the call, whatever later
    // attempts meet, and the node must compensate by key before it fails.
    let mut unknown_seen = false;
    loop {
        attempts += 1;
        let called = catch_phase(run, "call", async {
            run.fault(FaultPoint::InCommit).await?;
            Ok(node.call(&cx, plan).await)
        })
        .await;
        let error = match called {
            Ok(Ok(receipt)) => return Ok(receipt),
            Ok(Err(CallError::Refused(error))) if !error.is_transient() => {
                let error = error.encode();
                return Err(if unknown_seen {
                    CallFailed::Unknown(error)
                } else {
                    CallFailed::Refused(error)
                });
            }
            Ok(Err(CallError::Refused(error))) => error.encode(),
            Ok(Err(CallError::Unknown(message))) => {
                unknown_seen = true;
                NodeError::transient(format!("outcome unknown: {message}"))
            }
            // A panic in the call: whatever it sent may have been applied.
            Err(Stop::Node(error)) => {
                unknown_seen = true;
                NodeError::transient(format!("outcome unknown: {error}"))
            }
            Err(stop) => run.stop_driving(&stop).await,
        };
        let Some(delay) = policy.delay(attempts) else {
            return Err(if unknown_seen {
                CallFailed::Unknown(error)
            } else {
                CallFailed::Refused(error)
            });
        };
        tracing::info!(attempts, %error, ?delay, "external call: retrying with the same idempotency key");
        run.cx
            .shared
            .counters
            .retries
            .fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
}

/// Records the call's receipt and the node's `succeeded` event, fenced, in one statement. A retry after a
/// lost reply can find the record already there: if it holds this receipt, the first attempt landed.
async fn record_receipt<S: SagaDef>(
    run: &NodeRun<'_, S>,
    receipt: serde_json::Value,
    output: serde_json::Value,
) -> Result<(), Stop> {
    run.alive()?;
    let mut pooled = run.connection().await?;
    let conn: &mut DbConnection = &mut pooled;
    let owner = run.cx.log.owner();
    let event = event_row(
        run,
        SagaNodeEventType::Succeeded(Arc::new(output)),
        owner.sec_id,
    )?;
    let saga_id = run.saga_id();
    match record_commit_if_owner(
        conn,
        saga_id,
        &run.name,
        receipt.clone(),
        owner,
        &[event],
        None,
    )
    .await
    {
        Ok(FencedWrite::Written) => Ok(()),
        Ok(_) => Err(Stop::Fenced),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) if commit_receipt(conn, saga_id, &run.name).await? == Some(receipt) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Compensates by key (whatever the call did, if anything), then fails the node with `cause`.
async fn compensate_then_fail<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    cause: RunError,
) -> steno::ActionResult {
    tracing::warn!(%cause, "external node failing: compensating by key first");
    let policy = RetryPolicy {
        max_attempts: None,
        ..run.cx.shared.compensation_retry
    };
    if let Err(error) = with_retries(run, policy, "compensate", |_| {
        catch_phase(
            run,
            "compensation",
            compensate_once::<S, T, N>(run, node, true),
        )
    })
    .await
    {
        run.cx.log.note_stuck(
            &run.name,
            &format!("failed ({cause}); compensation by key failed ({error})"),
        );
    }
    Err(run.failure("call", &cause))
}

async fn undo<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    ctx: &ActionContext<StenoSaga<S>>,
) -> steno::UndoResult {
    let run = NodeRun::<S>::new(ctx).map_err(anyhow::Error::new)?;
    let span =
        tracing::info_span!("undo", saga_id = %run.saga_id(), node = %run.name, kind = "external");
    async {
        let node: N = run.node()?;
        run.count_start("compensation").await?;
        let policy = run.cx.shared.compensation_retry;
        with_retries(&run, policy, "compensate", |_| {
            catch_phase(
                &run,
                "compensation",
                compensate_once::<S, T, N>(&run, &node, false),
            )
        })
        .await
        .map_err(|error| run.undo_failure(error))?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// One compensation attempt.
///
/// As steno's undo (`after_commit` false): the call by key, then its record with the undo events (steno's
/// `undo_started`, durable before the call, makes recovery undo the node again if the record is missing).
///
/// As the forward's own failure path (`after_commit` true: withdraw a recorded `succeeded`, no undo events):
/// the record first, then the call. steno still sees the node running forward, so nothing but the record
/// tells a later forward attempt (after a crash, a replay) that the call must not stand; the record comes
/// first, and such an attempt finds it and makes the compensating call again ([`Prepared::AlreadyCompensated`])
/// before failing. The call is by key: made twice, it is applied once.
async fn compensate_once<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    after_commit: bool,
) -> Result<(), Stop> {
    let saga_id = run.saga_id();
    let (receipt, recorded) = {
        let mut pooled = run.connection().await?;
        let conn: &mut DbConnection = &mut pooled;
        // As in `prepare`: a stale executor calls nothing (the same TODO-correctness window applies).
        let owner = run.cx.log.owner();
        match recorded(conn, saga_id, &run.name, owner, OwnerCheck::Read).await? {
            Recorded::Fenced => return Err(Stop::Fenced),
            Recorded::Compensated { .. } if !after_commit => return Ok(()),
            Recorded::Compensated { receipt } => (receipt, true),
            Recorded::Committed { receipt } => (Some(receipt), false),
            Recorded::Absent => (None, false),
        }
    };
    let had_commit = receipt.is_some();
    let receipt_json = receipt.clone();
    let receipt: Option<N::Receipt> = receipt.map(|r| decode("commit record", r)).transpose()?;
    if after_commit {
        if !recorded {
            record_compensation::<S>(run, had_commit, true).await?;
        }
        // The record is durable, the call not yet made: a crash here leaves the call to the next attempt.
        run.fault(FaultPoint::InCompensation).await?;
        call_compensation::<S, T, N>(run, node, receipt).await?;
        if recorded {
            // A repeated call completing an earlier attempt's compensation: counted and logged then.
            return Ok(());
        }
    } else {
        call_compensation::<S, T, N>(run, node, receipt).await?;
        record_compensation::<S>(run, had_commit, false).await?;
        run.cx
            .log
            .mark_written(run.node_id, &["undo_started", "undo_finished"]);
    }
    run.cx
        .shared
        .counters
        .compensations
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(saga_id = %saga_id, node = %run.name, had_commit,
        "compensated: the external call is undone by key and the compensation recorded");
    run.host_event(slog::Level::Info, "compensation", "compensated (by key)");
    run.after_step::<T, N::Receipt>("after-compensation", receipt_json, |cx, receipt| {
        N::after_compensation(cx, receipt)
    });
    run.fault(FaultPoint::AfterCompensation).await
}

/// The compensating call, by key.
async fn call_compensation<S: SagaDef, T: SagaDef<Context = S::Context>, N: ExternalNode<T>>(
    run: &NodeRun<'_, S>,
    node: &N,
    receipt: Option<N::Receipt>,
) -> Result<(), Stop> {
    let cx = external_cx::<S, T>(run)?;
    match node.compensate(&cx, receipt).await {
        Ok(()) => Ok(()),
        Err(CallError::Refused(error)) => Err(Stop::Node(error.encode())),
        Err(CallError::Unknown(message)) => Err(Stop::Node(NodeError::transient(message))),
    }
}

/// The compensation record, in a fenced transaction of its own; `after_commit`: withdraws the node's recorded
/// `succeeded` (the forward is failing), else writes the undo events. As steno's undo (the call made), a
/// fault before its `COMMIT` rolls the record back and the retry calls again.
async fn record_compensation<S: SagaDef>(
    run: &NodeRun<'_, S>,
    had_commit: bool,
    after_commit: bool,
) -> Result<(), Stop> {
    let saga_id = run.saga_id();
    let mut pooled = run.connection().await?;
    let conn: &mut DbConnection = &mut pooled;
    begin_transaction(conn).await?;
    let result = async {
        let owner = run.cx.log.owner();
        if !lock_if_owner(conn, saga_id, owner).await? {
            return Err(Stop::Fenced);
        }
        insert_compensation_record(conn, saga_id, &run.name, had_commit, owner, None).await?;
        if after_commit {
            delete_event(conn, saga_id, run.node_id, "succeeded").await?;
        } else {
            let events = [
                event_row(run, SagaNodeEventType::UndoStarted, owner.sec_id)?,
                event_row(run, SagaNodeEventType::UndoFinished, owner.sec_id)?,
            ];
            insert_events(conn, &events).await?;
            // The compensating call is made, its record written but not committed: a fault here rolls the
            // record back, and the retry calls again (the service answers a repeated key as it did first).
            run.fault(FaultPoint::InCompensation).await?;
        }
        run.alive()
    }
    .await;
    match result {
        Ok(()) => {}
        Err(stop) => {
            rollback_transaction(conn).await;
            return Err(stop);
        }
    }
    let committed = commit_transaction(conn).await;
    let outcome = CommitOutcome::after(run, FaultPoint::CompensationReply, committed);
    drop(pooled);
    match outcome {
        CommitOutcome::Landed => Ok(()),
        CommitOutcome::Refused(error) => Err(Stop::from(error)),
        CommitOutcome::Unknown(reason) => {
            let landed = commit_outcome::compensation_landed(run, &reason).await?;
            if landed {
                Ok(())
            } else {
                Err(Stop::Node(NodeError::transient(format!(
                    "the compensation record's COMMIT had an unknown outcome ({reason}); it did not land"
                ))))
            }
        }
    }
}
