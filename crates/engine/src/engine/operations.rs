//! Operator actions: adopting another executor's sagas, re-driving a stuck saga's unwind, abandoning a saga,
//! and shutting the engine down.
//!
//! # Adoption
//!
//! [`Engine::adopt`] moves the unfinished sagas of another executor that this binary can run to this one,
//! [`BATCH`] at a time: it reads a page of them ([`ratchet_store::unfinished_after`]), then claims those
//! it has the definition of in one `UPDATE … RETURNING` that bumps their `adopt_generation`
//! ([`ratchet_store::adopt_sagas`]), then resumes them exactly as recovery does. The other executor may
//! still be alive: every write it makes for those sagas is conditional on the old generation, so none lands
//! after the adoption; it notices at its next write (or its next replay, or before its next external call),
//! logs why, and stops driving the saga without unwinding it (see the `fencing` section of the crate docs).
//!
//! Invariant: an adoption never takes a saga whose definition (at its version) this binary lacks, unless told
//! to ([`AdoptOptions::abandon_unknown`]). Such a saga stays with its owner, untouched (same executor, state
//! and generation), and is reported in [`AdoptionReport::left_alone`]: against a database shared with other
//! binaries (Nexus's), it may be theirs to run.
//!
//! # Stuck sagas
//!
//! A saga is stuck when a compensation failed for good: steno stops unwinding and records `undo_failed`.
//! [`Engine::retry_unwind`], once the cause is fixed, removes that event, sets the saga `unwinding` under this
//! executor at the next generation ([`ratchet_store::take_for_retry_unwind`]) and resumes it: steno finds
//! the node `undo_started`, runs its undo again, then the undos of its ancestors that never ran.
//! [`Engine::abandon`] records an operator's reason and touches nothing else.

use crate::engine::Engine;
use crate::engine::outcome::SagaOutcome;
use crate::engine::recovery::BATCH;
use crate::engine::sec::lock;
use crate::error::EngineError;
use ratchet_store::{
    AbandonReason, DbError, DbPool, RetryPolicy, SagaState, UncompensatedCommit, abandon_saga,
    adopt_sagas, get_saga, load_logs, retry_transient, stuck_diagnosis, take_for_retry_unwind,
    unfinished_after,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use uuid::Uuid;

/// How [`Engine::adopt_with`] treats what this binary cannot run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdoptOptions {
    /// Also take the sagas whose definition (at their version) this binary lacks, and mark them `abandoned`
    /// with the reason, their commits left in effect. Off by default: they are left with their owner,
    /// untouched. Turn it on only when no binary that can run them will ever adopt them (their definition was
    /// removed for good).
    pub abandon_unknown: bool,
}

/// What [`Engine::adopt`] did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdoptionReport {
    pub from_sec: Uuid,
    pub to_sec: Uuid,
    /// Every saga taken over, with its new generation.
    pub adopted: Vec<AdoptedSaga>,
    /// The adopted sagas now running here.
    pub resumed: Vec<Uuid>,
    /// The adopted sagas that could not be resumed, marked `abandoned`, with the reason (with
    /// [`AdoptOptions::abandon_unknown`], those whose definition this binary lacks too).
    pub abandoned: Vec<(Uuid, String)>,
    /// The unfinished sagas of `from_sec` whose definition (at their version) this binary lacks, with the
    /// reason ("no definition of saga X vN here"): not adopted, left with `from_sec` as they were.
    #[serde(default)]
    pub left_alone: Vec<(Uuid, String)>,
}

/// One adopted saga.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdoptedSaga {
    pub id: Uuid,
    pub name: String,
    pub generation: i64,
}

/// What [`Engine::abandon`] did: the saga is `abandoned`, and everything else is as it was.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Abandoned {
    pub id: Uuid,
    pub name: String,
    pub previous_state: String,
    pub reason: String,
    /// Commits that stay in effect: nothing compensates them now.
    pub uncompensated: Vec<UncompensatedCommit>,
}

/// What [`Engine::shutdown`] did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShutdownReport {
    /// Sagas that were not at rest: they stay `running` / `unwinding` in the database for the next start.
    pub interrupted: Vec<Uuid>,
    /// Whether steno's SECs were shut down and awaited (only possible when no saga is parked in them; otherwise
    /// they were told to shut down and left to wind down with the process).
    pub steno_stopped: bool,
}

impl Engine {
    /// Adopts every unfinished saga of executor `from_sec` (a dead or expunged one, or a live one being drained)
    /// that this binary can run, and resumes it here. The old executor is fenced out of each saga from the
    /// moment its batch commits. The sagas whose definition this binary lacks stay with `from_sec`, untouched,
    /// and are reported in [`AdoptionReport::left_alone`] (see [`Engine::adopt_with`] to abandon them).
    pub async fn adopt(&self, from_sec: Uuid) -> Result<AdoptionReport, EngineError> {
        self.adopt_with(from_sec, AdoptOptions::default()).await
    }

    /// [`Engine::adopt`], with `options`: [`AdoptOptions::abandon_unknown`] also takes the sagas this binary
    /// cannot run, and marks them `abandoned` with the reason.
    pub async fn adopt_with(
        &self,
        from_sec: Uuid,
        options: AdoptOptions,
    ) -> Result<AdoptionReport, EngineError> {
        self.refuse_if_shutting_down()?;
        if from_sec == self.sec_id {
            return Err(EngineError::AdoptFromSelf(from_sec));
        }
        let mut report = AdoptionReport {
            from_sec,
            to_sec: self.sec_id,
            adopted: Vec::new(),
            resumed: Vec::new(),
            abandoned: Vec::new(),
            left_alone: Vec::new(),
        };
        let pool = &self.shared.pool;
        let to_sec = self.sec_id;
        // No other claim of this engine runs until the adopted sagas are live here (see `Engine::recovering`).
        let _turn = self.claim_turn().await;
        // A shutdown may have come while this waited for its turn: adopt nothing then.
        self.refuse_if_shutting_down()?;
        let mut after = None;
        loop {
            let page = retry_transient(RetryPolicy::OPERATOR, "listing sagas to adopt", || async {
                let mut conn = pool.get().await?;
                Ok(unfinished_after(&mut conn, from_sec, after, BATCH as i64).await?)
            })
            .await?;
            // The page is read, not claimed, so no row of it can be skipped: only an empty page ends it.
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id);
            let mut take = Vec::with_capacity(page.len());
            for row in &page {
                match self.definitions.lacks(row) {
                    Some(reason) if !options.abandon_unknown => {
                        tracing::info!(saga_id = %row.id, saga = %row.name, from = %from_sec, %reason,
                            "saga not adopted: this binary cannot run it; it stays with its executor");
                        report.left_alone.push((row.id, reason));
                    }
                    _ => take.push(row.id),
                }
            }
            let take = &take;
            let rows = retry_transient(RetryPolicy::OPERATOR, "adopting sagas", || async {
                let mut conn = pool.get().await?;
                Ok(adopt_sagas(&mut conn, from_sec, to_sec, take).await?)
            })
            .await?;
            for row in &rows {
                tracing::info!(saga_id = %row.id, saga = %row.name, from = %from_sec, to = %to_sec,
                    generation = row.adopt_generation, state = %row.saga_state,
                    "adopted saga from another executor; the old executor is fenced out of it");
                self.shared.host_log.event(
                    slog::Level::Info,
                    "adoption",
                    row.id,
                    None,
                    &format!(
                        "adopted from executor {from_sec} at generation {}",
                        row.adopt_generation
                    ),
                );
                report.adopted.push(AdoptedSaga {
                    id: row.id,
                    name: row.name.clone(),
                    generation: row.adopt_generation,
                });
            }
            let resumed = self.resume_rows(rows, options.abandon_unknown).await?;
            report.resumed.extend(resumed.resumed);
            report.abandoned.extend(resumed.abandoned);
            report.left_alone.extend(resumed.left_alone);
        }
        tracing::info!(from = %from_sec, to = %to_sec, adopted = report.adopted.len(),
            resumed = report.resumed.len(), abandoned = report.abandoned.len(),
            left_alone = report.left_alone.len(), "adoption done");
        Ok(report)
    }

    /// Re-drives the unwind of stuck saga `id` once the cause of its failed compensation is fixed, and waits
    /// for it to come to rest (`Unwound` when every remaining compensation succeeds; `Stuck` again if one fails
    /// again). This executor takes the saga over at the next generation, whoever drove it before.
    ///
    /// Refused for an unknown id, a saga that is not `stuck`, a saga definition this binary lacks, and a saga
    /// stuck without a failed undo in its log (which steno cannot re-drive: see [`EngineError::NotRetryable`]).
    pub async fn retry_unwind(&self, id: Uuid) -> Result<SagaOutcome, EngineError> {
        self.refuse_if_shutting_down()?;
        let pool = &self.shared.pool;
        let row = {
            let mut conn = pool.get().await.map_err(DbError::from)?;
            get_saga(&mut conn, id).await.map_err(DbError::from)?
        }
        .ok_or(EngineError::NoSuchSaga(id))?;
        if row.saga_state != SagaState::Stuck {
            return Err(EngineError::WrongState {
                id,
                state: row.saga_state.to_string(),
                wanted: "stuck",
            });
        }
        let resume = Arc::clone(
            self.resumers
                .get(row.name.as_str())
                .ok_or_else(|| EngineError::UnknownSaga(row.name.clone()))?,
        );
        let sec_id = self.sec_id;
        // No other claim of this engine runs until the saga is live here (see `Engine::recovering`).
        let turn = self.claim_turn().await;
        self.refuse_if_shutting_down()?;
        let row = retry_transient(
            RetryPolicy::OPERATOR,
            "taking a stuck saga back",
            || async {
                let mut conn = pool.get().await?;
                take_for_retry_unwind(&mut conn, id, sec_id).await
            },
        )
        .await?
        .map_err(|refusal| EngineError::refused(id, refusal, "stuck"))?;
        tracing::info!(saga_id = %id, saga = %row.name, generation = row.adopt_generation,
            "retrying the unwind of a stuck saga: its failed compensation runs again");
        let events = {
            let mut conn = pool.get().await.map_err(DbError::from)?;
            load_logs(&mut conn, &[id], 1)
                .await
                .map_err(DbError::from)?
                .remove(&id)
                .unwrap_or_default()
        };
        let events = events
            .iter()
            .map(|e| e.to_steno())
            .collect::<Result<Vec<_>, _>>()?;
        // TODO-robustness If the resume fails here, the saga is left `unwinding` under this executor: the next
        // recovery resumes it, or abandons it with the reason. Nothing has run, so nothing leaks.
        let saga = resume(self, row, events).await?;
        self.start_resumed(saga).await?;
        drop(turn);
        self.wait(id)
            .await
            .ok_or_else(|| EngineError::NotRetryable {
                id,
                reason: "the saga was resumed but is not tracked by this engine".to_owned(),
            })
    }

    /// Marks saga `id` `abandoned` with an operator's `reason` (see [`abandon`]).
    pub async fn abandon(&self, id: Uuid, reason: &str) -> Result<Abandoned, EngineError> {
        let abandoned = abandon(&self.shared.pool, id, reason).await?;
        let outcome = SagaOutcome::Abandoned {
            reason: abandoned.reason.clone(),
        };
        self.shared.counters.count_outcome(&outcome);
        self.record_outcome(id, &abandoned.name, outcome, Duration::ZERO);
        Ok(abandoned)
    }

    /// Shuts the engine down cleanly (see the `shutdown` module): no new sagas, in-flight nodes stop at their
    /// next phase boundary, then nothing more is written. Sagas not at rest stay unfinished in the database for
    /// the next start to recover. Every clone of the engine is shut down; calling it again only waits.
    pub async fn shutdown(&self) -> ShutdownReport {
        let state = &self.shared.shutdown;
        if state.request() {
            tracing::info!(sec_id = %self.sec_id,
                "shutting down: no new sagas; in-flight nodes stop at their next phase boundary");
        }
        state.idle().await;
        self.shared.liveness.stop();
        let interrupted: Vec<Uuid> = lock(&self.live).keys().copied().collect();
        state.mark_stopped();
        let mut secs = vec![Arc::clone(&self.sec)];
        secs.extend(lock(&self.extra_secs).iter().cloned());
        let mut steno_stopped = true;
        for sec in secs {
            let Some(client) = sec.take_client() else {
                continue;
            };
            let parked = sec.unresolved.load(Ordering::SeqCst);
            match Arc::try_unwrap(client) {
                Ok(client) if parked == 0 => {
                    let stop = crate::shutdown::steno_call("SEC shutdown", client.shutdown());
                    match tokio::time::timeout(Duration::from_secs(5), stop).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "steno's SEC did not shut down cleanly");
                            steno_stopped = false;
                        }
                        Err(_) => {
                            tracing::warn!("steno's SEC did not shut down within 5 s");
                            steno_stopped = false;
                        }
                    }
                }
                // Dropping the last client sends the SEC its shutdown message (steno's `Drop` uses `try_send`,
                // which cannot panic); a parked saga keeps the SEC task alive until the process exits.
                //
                // TODO-robustness steno cannot cancel a saga, so a parked one is never dropped from the SEC.
                other => {
                    drop(other);
                    steno_stopped = false;
                }
            }
        }
        tracing::info!(sec_id = %self.sec_id, interrupted = interrupted.len(), steno_stopped,
            "engine shut down");
        ShutdownReport {
            interrupted,
            steno_stopped,
        }
    }
}

/// Marks saga `id` `abandoned` by an operator (abandon reason `omdb`, Omicron's name for it; the operator's
/// `reason` is the abandon comment), if it is `running`, `unwinding` or `stuck`, and
/// leaves every other row as it is: its log, its commit records, its compensation records. Nothing is
/// compensated; the commits not yet compensated are returned so that the caller can say which effects remain.
/// An executor still driving the saga is fenced out at its next write.
pub async fn abandon(pool: &DbPool, id: Uuid, reason: &str) -> Result<Abandoned, EngineError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(EngineError::EmptyReason);
    }
    let before = retry_transient(RetryPolicy::OPERATOR, "abandoning a saga", || async {
        let mut conn = pool.get().await?;
        abandon_saga(&mut conn, id, AbandonReason::Omdb, reason).await
    })
    .await?
    .map_err(|refusal| EngineError::refused(id, refusal, "running, unwinding or stuck"))?;
    let uncompensated = {
        let mut conn = pool.get().await.map_err(DbError::from)?;
        stuck_diagnosis(&mut conn, id)
            .await
            .map_err(DbError::from)?
            .map(|diagnosis| diagnosis.uncompensated)
            .unwrap_or_default()
    };
    tracing::warn!(saga_id = %id, saga = %before.name, previous_state = %before.saga_state, reason,
        uncompensated = uncompensated.len(),
        "saga abandoned by an operator; its rows are left as they are");
    Ok(Abandoned {
        id,
        name: before.name,
        previous_state: before.saga_state.to_string(),
        reason: reason.to_owned(),
        uncompensated,
    })
}
