//! Recovery: resuming this executor's unfinished sagas under a new fencing epoch (once at start, and
//! periodically when configured), and the resuming half of adoption and retry-unwind.
//!
//! # Design
//!
//! A recovery pass ([`Engine::recover`]) takes the unfinished sagas whose `current_sec` is this executor and
//! that ratchet drives ([`ratchet_store::RecoveryScope`]): `driven_by_ratchet` set (ratchet created or claimed them), or
//! `definition_version` set (created by ratchet before that column existed); with
//! [`ratchet_store::RecoveryScope::PlainStenoToo`], also those plain steno created. The claiming statement sets
//! `driven_by_ratchet`, so a plain steno saga ratchet takes over is ratchet's from then on, and Nexus's
//! recovery listing (which leaves out `driven_by_ratchet` rows) no longer sees it.
//!
//! The first pass runs at start. With `EngineConfig::recovery_interval`, a task ([`Engine::spawn_periodic_recovery`])
//! runs a pass at that interval, or at once when [`Engine::trigger_recovery`] is called: it picks up sagas handed
//! to this executor while it runs (Omicron's `sagas_reassign_sec` moving an expunged Nexus's sagas here:
//! `current_sec` changed, `adopt_generation` bumped). Each pass claims under a new epoch, exactly as the first;
//! it leaves out the sagas this engine already drives ([`Engine::live`], read under the claim turn that orders
//! every claim against creation), so no pass starts a second copy of a saga running here.
//!
//! [`Engine::recover`] claims the sagas [`BATCH`] at a time, each batch in one statement that bumps their
//! `adopt_generation` ([`claim_unfinished`]), and only then resumes them ([`Engine::resume_rows`]): their
//! logs are loaded [`BATCH`] sagas per query, every saga of the rows is handed to steno (`saga_resume`) before
//! any is started, so that the resume calls do not queue behind the events of sagas already running on the
//! same SEC task.
//!
//! # Invariants
//!
//! - After a claim, an older incarnation of this executor (same id, older generation) is fenced out of the
//!   claimed sagas exactly like a foreign executor.
//! - A saga this engine is already driving is never claimed nor resumed twice ([`RecoveryReport::running_here`]).
//! - A saga whose definition (at its version) this binary lacks is never abandoned by recovery: it is left
//!   unfinished, not driven, and reported ([`RecoveryReport::left_alone`]); only an adoption told to
//!   (`AdoptOptions::abandon_unknown`) abandons it. A saga whose definition is here but which cannot be resumed
//!   (its DAG or log does not load, steno refuses its log) is abandoned, with the reason.
//! - A saga not resumed because this engine is stopping stays unfinished in the database, for the next start.

use crate::engine::outcome::SagaOutcome;
use crate::engine::running::{StartedSaga, steno_id};
use crate::engine::sec::{Sec, lock};
use crate::engine::{Engine, Registered};
use crate::error::EngineError;
use crate::saga::definition::SagaDef;
use crate::shutdown::steno_call;
use ratchet_store::{
    AbandonReason, DbError, RetryPolicy, SagaRow, abandon_saga, action_names, claim_unfinished,
    load_logs, retry_transient, unfinished_among, unfinished_not_named,
};
use std::sync::Arc;
use std::time::Duration;
use steno::SagaDag;
use uuid::Uuid;

/// How many sagas recovery and adoption take (and load the logs of) per query.
pub(crate) const BATCH: usize = 1000;

/// A saga handed back to steno (`saga_resume`) but not yet started: recovery resumes every saga of a batch
/// before it starts any, so that the resume calls do not queue behind the events of sagas already running on
/// the same SEC task (resuming 10,000 sagas one start at a time took 38 s; see docs/PERFORMANCE.md).
#[must_use = "a resumed saga runs only once started (`Engine::start_resumed`)"]
pub(crate) struct ResumedSaga {
    tracked: StartedSaga,
    future: futures::future::BoxFuture<'static, steno::SagaResult>,
}

/// What recovery (or the resuming half of an adoption) did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryReport {
    pub resumed: Vec<Uuid>,
    /// Sagas that could not be resumed though this binary has their definition (a DAG or a log that does not
    /// load, a log steno refuses), marked `abandoned`, with the reason.
    pub abandoned: Vec<(Uuid, String)>,
    /// Sagas whose definition (at their version) this binary lacks, with the reason ("no definition of saga
    /// X vN here"): left unfinished and not driven, for a binary that has the definition (or an operator's
    /// `abandon`). Recovery never abandons them.
    #[serde(default)]
    pub left_alone: Vec<(Uuid, String)>,
    /// Unfinished sagas left alone because this engine is already driving them (created or resumed here):
    /// recovering them again would drive one saga twice under one owner.
    pub running_here: Vec<Uuid>,
}

/// The periodic recovery task's state: its trigger, and what its passes did.
#[derive(Debug)]
pub(crate) struct PeriodicRecovery {
    trigger: tokio::sync::Notify,
    status: tokio::sync::watch::Sender<RecoveryStatus>,
}

impl Default for PeriodicRecovery {
    fn default() -> Self {
        PeriodicRecovery {
            trigger: tokio::sync::Notify::new(),
            status: tokio::sync::watch::Sender::new(RecoveryStatus::default()),
        }
    }
}

/// What the periodic recovery task's passes did so far (the pass at start is not counted: its report is
/// [`EngineBuilder::start`](crate::EngineBuilder::start)'s).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryStatus {
    /// Passes finished (successfully or not).
    pub passes: u64,
    /// Every saga a pass resumed, in the order the passes resumed them.
    pub resumed: Vec<Uuid>,
    /// The last pass's report, if it succeeded.
    pub last_report: Option<RecoveryReport>,
    /// The last pass's error, if it failed (the next pass tries again).
    pub last_error: Option<String>,
}

impl Engine {
    /// Runs a recovery pass of the periodic task now (or, if one is running, right after it), without waiting
    /// for it: [`Engine::recovery_status`] says when it is done. Does nothing without
    /// `EngineConfig::recovery_interval` (no task); [`Engine::recover`] runs a pass and waits for it.
    pub fn trigger_recovery(&self) {
        self.periodic.trigger.notify_one();
    }

    /// What the periodic recovery task's passes did so far; a receiver that sees each pass end.
    pub fn recovery_status(&self) -> tokio::sync::watch::Receiver<RecoveryStatus> {
        self.periodic.status.subscribe()
    }

    /// Starts the periodic recovery task: a pass every `interval` (or at once when triggered) until the engine
    /// shuts down.
    pub(crate) fn spawn_periodic_recovery(&self, interval: Duration) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = engine.periodic.trigger.notified() => {}
                    () = engine.shared.shutdown.stopped() => return,
                }
                if engine.is_shutting_down() {
                    return;
                }
                let pass = engine.recover().await;
                if matches!(pass, Err(EngineError::ShuttingDown)) {
                    return;
                }
                if let Err(error) = &pass {
                    tracing::warn!(sec_id = %engine.sec_id, %error,
                        "periodic recovery pass failed; the next pass tries again");
                }
                engine.periodic.status.send_modify(|status| {
                    status.passes += 1;
                    match pass {
                        Ok(report) => {
                            status.resumed.extend(report.resumed.iter().copied());
                            status.last_report = Some(report);
                            status.last_error = None;
                        }
                        Err(error) => status.last_error = Some(error.to_string()),
                    }
                });
            }
        });
    }

    /// Why this engine cannot run saga `row` (see [`EngineBuilder::lacks_definition`](crate::EngineBuilder::lacks_definition)), or `None` if it can.
    pub fn lacks_definition(&self, row: &SagaRow) -> Option<String> {
        self.definitions.lacks(row)
    }

    /// Resumes every unfinished saga this executor owns (within `EngineConfig::recovery_scope`), under a new
    /// fencing epoch.
    ///
    /// A saga whose definition (at its version) this binary lacks (no definition of its name, or an action
    /// of its DAG not registered) is left unfinished and not driven, and reported in
    /// [`RecoveryReport::left_alone`] with the reason: it may be a saga of another release of this binary,
    /// which can still finish it, and abandoning it would leave its commits in effect for good. A saga whose
    /// definition is here but which cannot be resumed (its DAG or its log does not load, steno refuses its
    /// log) is marked `abandoned` with the reason ([`RecoveryReport::abandoned`]); the others go on.
    ///
    /// The sagas are claimed `BATCH` (1,000) at a time, each batch in one statement that bumps their
    /// `adopt_generation` ([`claim_unfinished`]): an executor id is the same across restarts, so a process
    /// with this id that is still alive (hung, or a second recovery started beside this one) would otherwise
    /// pass every fence. After the claim it is fenced out exactly like a foreign executor. Sagas this engine
    /// is already driving are left out of the claim (and reported in [`RecoveryReport::running_here`]);
    /// recoveries of one engine take turns.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        self.refuse_if_shutting_down()?;
        let _turn = self.claim_turn().await;
        let scope = self.recovery_scope;
        // A shutdown may have come while this waited for its turn: claim nothing then.
        self.refuse_if_shutting_down()?;
        let driving: Vec<Uuid> = lock(&self.live).keys().copied().collect();
        let pool = &self.shared.pool;
        let sec_id = self.sec_id;
        // Every batch is claimed before any saga is resumed: resumed sagas start running, and their writes
        // (and steno's queue) would slow the claims and loads still to come (10,000 sagas resumed in 27 s
        // batch by batch, against about 6 s all at once).
        // Only sagas of a definition registered here are claimed: a saga of a name this binary does not know
        // may belong to another binary running under this executor id (a release rolling out), which the bump
        // would fence out of it. They are reported, untouched, below.
        // TODO-robustness a saga whose name is registered but whose DAG runs an action this release lacks is
        // claimed (its generation bumped) before `resume_rows` leaves it alone: deciding that needs its DAG,
        // which the claim statement does not parse.
        let names = self.definitions.names();
        let mut claimed = Vec::new();
        let mut after = None;
        loop {
            let (driving, names) = (&driving, &names);
            let rows = retry_transient(
                RetryPolicy::OPERATOR,
                "claiming unfinished sagas",
                || async move {
                    let mut conn = pool.get().await?;
                    Ok(claim_unfinished(
                        &mut conn,
                        sec_id,
                        names,
                        scope,
                        after,
                        driving,
                        BATCH as i64,
                    )
                    .await?)
                },
            )
            .await?;
            // Only an empty page ends the claim: a row that changed between the statement's subquery and its
            // update (an older incarnation finishing it) makes a page short without being the last.
            if rows.is_empty() {
                break;
            }
            after = rows.last().map(|row| row.id);
            claimed.extend(rows);
        }
        let mut report = self.resume_rows(claimed, false).await?;
        let names = &names;
        let unknown = retry_transient(
            RetryPolicy::OPERATOR,
            "listing sagas of definitions this binary lacks",
            || async move {
                let mut conn = pool.get().await?;
                Ok(unfinished_not_named(&mut conn, sec_id, names, scope, BATCH as i64).await?)
            },
        )
        .await?;
        report.left_alone.extend(
            unknown
                .iter()
                .filter_map(|row| Some((row.id, self.definitions.lacks(row)?))),
        );
        if !driving.is_empty() {
            let driving = &driving;
            let running = retry_transient(
                RetryPolicy::OPERATOR,
                "listing sagas in flight",
                || async move {
                    let mut conn = pool.get().await?;
                    Ok(unfinished_among(&mut conn, sec_id, driving).await?)
                },
            )
            .await?;
            report.running_here.extend(running);
        }
        tracing::info!(
            sec_id = %self.sec_id,
            resumed = report.resumed.len(),
            abandoned = report.abandoned.len(),
            left_alone = report.left_alone.len(),
            running_here = report.running_here.len(),
            "recovery done: every unfinished saga of this executor claimed under a new epoch"
        );
        Ok(report)
    }

    /// Resumes `rows` (sagas this executor owns), loading their logs [`BATCH`] sagas per query; abandons, with
    /// the reason, those that cannot be resumed; leaves alone (reported, not driven) those whose definition this
    /// binary lacks, unless `abandon_unknown`, which abandons them too.
    pub(crate) async fn resume_rows(
        &self,
        rows: Vec<SagaRow>,
        abandon_unknown: bool,
    ) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport::default();
        // Pass 1: hand every saga to steno. Pass 2 (below): start them all.
        let mut resumed = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(BATCH) {
            let ids: Vec<Uuid> = chunk.iter().map(|row| row.id).collect();
            let mut logs = {
                let mut conn = self.shared.pool.get().await.map_err(DbError::from)?;
                load_logs(&mut conn, &ids, BATCH)
                    .await
                    .map_err(DbError::from)?
            };
            for row in chunk {
                let id = row.id;
                {
                    // Checked and claimed at once, so that two recoveries cannot both resume one saga.
                    let mut live = lock(&self.live);
                    if live.contains_key(&id) {
                        report.running_here.push(id);
                        continue;
                    }
                    live.insert(id, row.name.clone());
                }
                let events: Result<Vec<_>, _> = logs
                    .remove(&id)
                    .unwrap_or_default()
                    .iter()
                    .map(|e| e.to_steno())
                    .collect();
                let lacks = self.definitions.lacks(row);
                let result = match (self.resumers.get(row.name.as_str()), lacks, events) {
                    (_, Some(reason), _) => Err(Unresumed::Unknown(reason)),
                    (None, None, _) => Err(Unresumed::Unknown(format!(
                        "no definition of saga {} here",
                        row.definition()
                    ))),
                    (_, None, Err(error)) => Err(Unresumed::Unrecoverable(format!(
                        "its log does not load: {error}"
                    ))),
                    (Some(resume), None, Ok(events)) => resume(self, row.clone(), events)
                        .await
                        .map_err(Unresumed::from),
                };
                match result {
                    Ok(saga) => resumed.push((row, saga)),
                    Err(unresumed) => {
                        self.unresumed(row, unresumed, abandon_unknown, &mut report)
                            .await?
                    }
                }
            }
        }
        for (row, saga) in resumed {
            match self.start_resumed(saga).await {
                Ok(()) => report.resumed.push(row.id),
                Err(error) => {
                    self.unresumed(row, error.into(), abandon_unknown, &mut report)
                        .await?
                }
            }
        }
        Ok(report)
    }

    /// A saga recovery could not resume (or start), released: left alone (reported) when this binary lacks its
    /// definition and `abandon_unknown` is off; marked `abandoned` with the reason when it cannot be resumed
    /// otherwise (or `abandon_unknown` is on); left as it is when this engine is stopping.
    async fn unresumed(
        &self,
        row: &SagaRow,
        why: Unresumed,
        abandon_unknown: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), EngineError> {
        self.release_live(&row.id);
        let reason = match why {
            Unresumed::Interrupted => return Ok(()),
            Unresumed::Unknown(reason) if !abandon_unknown => {
                tracing::info!(saga_id = %row.id, saga = %row.name, %reason,
                    "saga left alone: this binary cannot run it; a binary with its definition can");
                report.left_alone.push((row.id, reason));
                return Ok(());
            }
            Unresumed::Unknown(reason) => reason,
            Unresumed::Unrecoverable(reason) => reason,
        };
        let reason = format!("unrecoverable: {reason}");
        if self.abandon_unrecoverable(row, &reason).await? {
            report.abandoned.push((row.id, reason));
        }
        Ok(())
    }

    /// Starts a saga [`Engine::resume_one`] handed back to steno, and follows it to rest.
    pub(crate) async fn start_resumed(&self, saga: ResumedSaga) -> Result<(), EngineError> {
        let ResumedSaga { tracked, future } = saga;
        let id = tracked.id;
        let name = tracked.name;
        self.start_in_steno(&tracked).await?;
        let (sender, receiver) = tokio::sync::watch::channel(None);
        lock(&self.running).insert(id, receiver);
        let engine = self.clone();
        tokio::spawn(async move {
            let outcome = engine.finish(tracked, future).await;
            let _ = sender.send(Some(outcome));
        });
        tracing::info!(saga_id = %id, saga = name, "saga resumed");
        Ok(())
    }

    /// Marks a saga recovery could not resume `abandoned`. Returns whether it did (another executor may have
    /// taken or finished the saga meanwhile).
    async fn abandon_unrecoverable(
        &self,
        row: &SagaRow,
        reason: &str,
    ) -> Result<bool, EngineError> {
        let id = row.id;
        tracing::warn!(saga_id = %id, saga = %row.name, %reason, "saga cannot be recovered: abandoning it");
        let pool = &self.shared.pool;
        let abandoned = retry_transient(RetryPolicy::OPERATOR, "abandoning a saga", || async {
            let mut conn = pool.get().await?;
            abandon_saga(&mut conn, id, AbandonReason::Unrecoverable, reason).await
        })
        .await?;
        match abandoned {
            Ok(_) => {
                let outcome = SagaOutcome::Abandoned {
                    reason: reason.to_owned(),
                };
                self.shared.counters.count_outcome(&outcome);
                self.record_outcome(id, &row.name, outcome, Duration::ZERO);
                Ok(true)
            }
            Err(refusal) => {
                tracing::warn!(saga_id = %id, ?refusal, "saga not abandoned: it changed meanwhile");
                Ok(false)
            }
        }
    }

    /// The SEC to resume saga `id` in: the engine's own, unless that one already holds the saga (it ran it,
    /// and it came to rest or this engine was fenced out of it): steno keeps every saga it ran and refuses to
    /// resume an id it holds, so the saga then gets a SEC of its own.
    //
    // TODO-robustness Each such re-drive costs one more SEC (a task) until shutdown; steno has no way to drop a
    // finished saga from a SEC's memory.
    async fn sec_for_resume(&self, id: Uuid) -> Result<Arc<Sec>, EngineError> {
        let client = self.sec.client()?;
        let held = steno_call("saga_get", client.saga_get(steno_id(id)))
            .await?
            .is_ok();
        if !held {
            return Ok(Arc::clone(&self.sec));
        }
        tracing::info!(saga_id = %id, "this engine's SEC already ran the saga: resuming it in a new SEC");
        let sec = Sec::start(&self.shared, self.sec_id);
        lock(&self.extra_secs).push(Arc::clone(&sec));
        Ok(sec)
    }

    pub(super) async fn resume_one<S: SagaDef>(
        &self,
        registered: &Registered<S>,
        row: SagaRow,
        events: Vec<steno::SagaNodeEvent>,
    ) -> Result<ResumedSaga, EngineError> {
        self.refuse_if_shutting_down()?;
        let id = row.id;
        let owner = row.owner().ok_or(EngineError::NoSuchSaga(id))?;
        // Versioning: name an action this binary lacks before steno is asked (its own message is terser).
        let actions = action_names(&row.saga_dag);
        if let Some((node, action)) = actions
            .iter()
            .find(|(_, action)| !registered.actions.contains(action.as_str()))
        {
            return Err(EngineError::UnknownAction {
                saga: row.definition(),
                node: node.clone(),
                action: action.clone(),
            });
        }
        if row.definition_version != Some(S::VERSION) {
            tracing::info!(saga_id = %id, saga = S::NAME, recorded = ?row.definition_version,
                current = S::VERSION, "resuming a saga created by another version of its definition \
                (none recorded: plain steno created it)");
        }
        let dag: SagaDag = serde_json::from_value(row.saga_dag.clone())
            .map_err(|e| EngineError::Steno(format!("the saga's DAG does not decode: {e}")))?;
        let sec = self.sec_for_resume(id).await?;
        let nodes = super::running::read_dag(&dag);
        let inputs = crate::run::saga_state::NodeInputs::of_persisted(&row.saga_dag);
        let (cx, log) = self.saga_cx::<S>(
            registered,
            &sec,
            id,
            owner,
            &nodes,
            super::running::SagaOrigin {
                resumed_from: Some(&events),
                inputs,
                context: None,
            },
        );
        let registry = Arc::clone(&registered.registry);
        let resumed = sec
            .call("saga_resume", |client| async move {
                client
                    .saga_resume(steno_id(id), Arc::new(cx), row.saga_dag, registry, events)
                    .await
            })
            .await;
        let future = match resumed {
            Ok(future) => future,
            Err(error) => {
                sec.store.unregister(steno_id(id));
                return Err(error);
            }
        };
        tracing::debug!(saga_id = %id, saga = S::NAME, generation = owner.generation, "saga handed to steno");
        Ok(ResumedSaga {
            tracked: StartedSaga::new(id, S::NAME, sec, log, &nodes),
            future,
        })
    }
}

/// Why a claimed saga was not resumed: this binary lacks its definition (it is left alone, unless the caller
/// asked to abandon such sagas), something else about the saga (it is abandoned, with the reason), or this
/// engine stopping (shutdown, steno's executor gone): then it stays unfinished, for the next start.
enum Unresumed {
    Unknown(String),
    Unrecoverable(String),
    Interrupted,
}

impl From<EngineError> for Unresumed {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::ShuttingDown | EngineError::SecGone(_) => Unresumed::Interrupted,
            EngineError::UnknownSaga(_) | EngineError::UnknownAction { .. } => {
                Unresumed::Unknown(error.to_string())
            }
            other => Unresumed::Unrecoverable(other.to_string()),
        }
    }
}
