//! A `COMMIT` whose outcome is unknown, and how the engine resolves it.
//!
//! Only a definite refusal proves that a transaction rolled back: a serialization failure (40001), a deadlock
//! (40P01), a constraint violation (23xxx) reported for the `COMMIT` itself. Any other failure after the
//! `COMMIT` was sent leaves its outcome unknown: the connection dropped before the reply, the server was shut
//! down or the backend terminated (57P01), the connection broke (08xxx), or CockroachDB answered 40003 ("result
//! is ambiguous"). The transaction may have committed, or not.
//!
//! Failing such a node would be wrong either way: if the commit landed, steno (which never undoes a failed
//! node) would leave it in place, leaked; if it did not, a retry budget spent on an outage fails a node that
//! could simply run again. So a node whose commit is unknown is never failed while unknown. The engine
//! **resolves** it: it looks the node's commit record up on another connection (the record is written in the
//! same transaction as the node's writes, so it is there exactly when the commit landed), retrying for as long
//! as it takes, with backoff and no budget. Meanwhile the node is listed by [`crate::Engine::waiting`], with
//! the reason, and logged. Then:
//! - the record is there: the commit landed; the node replays its receipt (and counts as committed);
//! - it is not: the commit did not land; the node runs again. Should the lost `COMMIT` still be in flight
//!   somewhere and land later, the new attempt's commit record meets its primary key, and that unique
//!   violation is itself resolved the same way: the node replays, never fails.
//!
//! Once a node's commit was unknown, every later attempt of that node in this run of the saga looks for its
//! record first ([`crate::run::saga_state::SagaCx::commit_may_exist`]). Compensations follow the same rule with their
//! compensation record.

use crate::failpoint::FaultPoint;
use crate::run::node_run::{NodeRun, Stop};
use crate::saga::definition::SagaDef;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use futures::FutureExt;
use futures::future::BoxFuture;
use ratchet_store::{DbConnection, RecordKind, RetryPolicy, probe_record};

/// What a `COMMIT` (or `RELEASE`) returned.
#[derive(Debug)]
pub(crate) enum CommitOutcome {
    /// The server confirmed it.
    Landed,
    /// The server refused it: the transaction rolled back for certain.
    Refused(DieselError),
    /// Nothing proves either: resolve it from the database.
    Unknown(String),
}

impl CommitOutcome {
    /// Classifies the result of a `COMMIT` sent by `run`, unless a [`crate::FaultEffect::LoseReply`] is armed
    /// at `reply` (`CommitReply`, `CompensationReply`): a `COMMIT` that landed then counts as unknown.
    pub(crate) fn after<S: SagaDef>(
        run: &NodeRun<'_, S>,
        reply: FaultPoint,
        result: Result<(), DieselError>,
    ) -> CommitOutcome {
        if result.is_ok() && run.reply_lost(reply) {
            CommitOutcome::Unknown("injected: the reply to COMMIT was lost".to_owned())
        } else {
            CommitOutcome::of(result)
        }
    }

    /// Classifies the result of `COMMIT`.
    pub(crate) fn of(result: Result<(), DieselError>) -> CommitOutcome {
        match result {
            Ok(()) => CommitOutcome::Landed,
            Err(DieselError::RollbackErrorOnCommit { commit_error, .. }) => {
                CommitOutcome::of(Err(*commit_error))
            }
            Err(error) if proves_rollback(&error) => CommitOutcome::Refused(error),
            Err(error) => CommitOutcome::Unknown(error.to_string()),
        }
    }
}

/// Whether the server's answer to a `COMMIT` proves the transaction rolled back: 40001, 40P01 and 23xxx
/// (diesel names those it knows by kind; 40P01 only by PostgreSQL's message).
fn proves_rollback(error: &DieselError) -> bool {
    let DieselError::DatabaseError(kind, info) = error else {
        return false;
    };
    match kind {
        DatabaseErrorKind::SerializationFailure
        | DatabaseErrorKind::UniqueViolation
        | DatabaseErrorKind::ForeignKeyViolation
        | DatabaseErrorKind::NotNullViolation
        | DatabaseErrorKind::CheckViolation
        | DatabaseErrorKind::RestrictViolation
        | DatabaseErrorKind::ExclusionViolation => true,
        DatabaseErrorKind::Unknown => {
            let message = info.message();
            message.contains("deadlock detected") || message.contains("could not serialize")
        }
        _ => false,
    }
}

/// Settles a compensation `COMMIT` whose outcome is unknown: whether the node's compensation record exists,
/// waiting out any transaction still writing it ([`probe_record`]).
pub(crate) async fn compensation_landed<S: SagaDef>(
    run: &NodeRun<'_, S>,
    reason: &str,
) -> Result<bool, Stop> {
    let saga_id = run.saga_id();
    resolve(run, "compensation", reason, |conn| {
        let name = run.name.clone();
        async move { Ok(probe_record(conn, RecordKind::Compensation, saga_id, &name).await?) }
            .boxed()
    })
    .await
}

/// How resolution retries its lookup: without a budget.
const RESOLVE_RETRY: RetryPolicy = RetryPolicy {
    initial: std::time::Duration::from_millis(20),
    max_delay: std::time::Duration::from_secs(1),
    max_attempts: None,
};

/// Resolves an unknown outcome: runs `look_up` on a pooled connection (never the one the `COMMIT` was sent
/// on, which the caller has dropped or which is broken) until it answers, however long that takes, and
/// returns its answer. `what` names the record ("commit", "compensation"), `reason` why the outcome is
/// unknown. Stops (returning the stop) only if the executor is fenced, crashes or shuts down.
pub(crate) async fn resolve<S, T, F>(
    run: &NodeRun<'_, S>,
    what: &'static str,
    reason: &str,
    look_up: F,
) -> Result<T, Stop>
where
    S: SagaDef,
    F: for<'c> FnMut(&'c mut DbConnection) -> BoxFuture<'c, Result<T, Stop>>,
{
    let saga_id = run.saga_id();
    tracing::warn!(%saga_id, node = %run.name, what, reason,
        "the outcome of a COMMIT is unknown: resolving it from its record before the node goes on");
    run.host_event(
        slog::Level::Warning,
        "unknown_outcome",
        &format!("the outcome of the {what}'s COMMIT is unknown ({reason}): resolving it"),
    );
    let _waiting = run
        .cx
        .shared
        .waiting
        .enter(saga_id, &run.name, what, reason);
    run.cx
        .shared
        .counters
        .unknown_outcomes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let note = format!(
        "node {} waits for the outcome of its {what}'s COMMIT: {reason}",
        run.name
    );
    until_answered(run, what, Some(&note), look_up).await
}

/// Runs `look_up` on a pooled connection until it answers (anything but a node error), retrying with backoff
/// and no budget; stops if the executor is fenced, crashes or shuts down. With `note`, says in the
/// `saga_waiting` table why the saga waits, as soon as the database can be written, and clears it once
/// answered.
pub(crate) async fn until_answered<S, T, F>(
    run: &NodeRun<'_, S>,
    what: &'static str,
    note: Option<&str>,
    mut look_up: F,
) -> Result<T, Stop>
where
    S: SagaDef,
    F: for<'c> FnMut(&'c mut DbConnection) -> BoxFuture<'c, Result<T, Stop>>,
{
    let saga_id = run.saga_id();
    let mut noted = false;
    let mut attempts = 0u32;
    let answer = loop {
        if let Err(stop) = run.alive() {
            break Err(stop);
        }
        let answer = match run.cx.shared.pool.get().await {
            Ok(mut conn) => {
                // Say so in the saga's row as soon as the database can be written (for `ratchet sagas
                // show` in another process); the lookup may then still wait on a lock.
                if let (Some(note), false) = (note, noted) {
                    noted = ratchet_store::note_waiting(
                        &mut conn,
                        saga_id,
                        &run.name,
                        run.cx.log.owner(),
                        Some(note),
                    )
                    .await
                    .is_ok();
                }
                look_up(&mut conn).await
            }
            Err(error) => Err(Stop::from(ratchet_store::DbError::from(error))),
        };
        match answer {
            Err(Stop::Node(error)) => {
                attempts += 1;
                let delay = RESOLVE_RETRY
                    .delay(attempts)
                    .unwrap_or(RESOLVE_RETRY.max_delay);
                tracing::info!(%saga_id, node = %run.name, what, attempts, %error, ?delay,
                    "resolving an unknown COMMIT: the lookup failed; trying again");
                tokio::time::sleep(delay).await;
            }
            answer => {
                tracing::info!(%saga_id, node = %run.name, what, attempts, "unknown COMMIT resolved");
                break answer;
            }
        }
    };
    if noted {
        clear_waiting(run).await;
    }
    answer
}

/// Clears the saga's waiting note, retrying transient failures a few times (what is left behind says when
/// it was written; the saga's next resolution overwrites it).
async fn clear_waiting<S: SagaDef>(run: &NodeRun<'_, S>) {
    let (pool, saga_id, owner) = (&run.cx.shared.pool, run.saga_id(), run.cx.log.owner());
    let name = run.name.as_str();
    let cleared = ratchet_store::retry_transient(
        RetryPolicy::OPERATOR,
        "clearing a waiting note",
        || async move {
            let mut conn = pool.get().await?;
            Ok(ratchet_store::note_waiting(&mut conn, saga_id, name, owner, None).await?)
        },
    )
    .await;
    if let Err(error) = cleared {
        tracing::warn!(%saga_id, %error, "could not clear the saga's waiting note");
    }
}
