//! What operators (and the engine on their behalf) do to sagas: adopt another executor's unfinished sagas,
//! diagnose a stuck saga, take a stuck saga back for another unwind, abandon a saga.
//!
//! Every function here is one statement or one serializable transaction, so each either happens whole or not
//! at all, and each that changes who drives a saga bumps `adopt_generation`: any executor still holding the
//! saga at the old generation is fenced out of it ([`crate::owner`]).

use crate::error::DbError;
use crate::event::{saga_error_of, undo_error_message};
use crate::owner::unfinished;
use crate::records::CommitRecord;
use crate::saga::{AbandonReason, SagaHistory, SagaRow, SagaState, saga_history};
use crate::schema::{saga, saga_node_event, saga_undo_failure};
use crate::transaction::in_transaction;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Moves those of `ids` that are still unfinished (`running` / `unwinding`) sagas of executor `from` to
/// executor `to`, in one statement: `current_sec = to`, `adopt_generation + 1`, `adopt_time = now`. Returns the
/// adopted rows (with their new generation), lowest id first. A saga of `ids` that finished, or that another
/// executor took, meanwhile is left as it is and not returned.
///
/// The caller picks `ids` (from a page of [`crate::saga::unfinished_after`]): an engine adopts only the sagas
/// it can run, and leaves the others with their owner, untouched. The `UPDATE` waits for the row locks that
/// `from`'s in-flight transactions hold on those sagas ([`crate::owner::lock_if_owner`] takes `FOR SHARE`), so
/// no write of `from` lands after it. Only safe to use while `from` may still be running *because* of that
/// fencing: `from` notices at its next write and stops.
pub async fn adopt_sagas(
    conn: &mut AsyncPgConnection,
    from: Uuid,
    to: Uuid,
    ids: &[Uuid],
) -> QueryResult<Vec<SagaRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<SagaRow> = diesel::update(
        saga::table
            .filter(saga::current_sec.eq(from))
            .filter(unfinished())
            .filter(saga::id.eq_any(ids)),
    )
    .set((
        saga::current_sec.eq(to),
        saga::adopt_generation.eq(saga::adopt_generation + 1),
        saga::adopt_time.eq(Utc::now()),
        saga::driven_by_ratchet.eq(true),
    ))
    .returning(SagaRow::as_returning())
    .get_results(conn)
    .await?;
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// Which unfinished sagas of an executor ratchet's recovery takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RecoveryScope {
    /// Only the sagas ratchet drives (`driven_by_ratchet`, or created by ratchet before that column existed:
    /// `definition_version` set). The sagas Nexus's plain steno executor drives under the same executor id
    /// are its own.
    #[default]
    RatchetOnly,
    /// Also the sagas plain steno created and drives no more (a Nexus that stopped, whose sagas ratchet now
    /// finishes): they are marked `driven_by_ratchet` in the claiming statement.
    PlainStenoToo,
}

impl RecoveryScope {
    /// The SQL condition on a `saga` row.
    fn condition(self) -> &'static str {
        match self {
            RecoveryScope::RatchetOnly => "(driven_by_ratchet OR definition_version IS NOT NULL)",
            RecoveryScope::PlainStenoToo => "TRUE",
        }
    }
}

/// Claims up to `batch` of executor `sec_id`'s own unfinished sagas within `scope` for a new incarnation of it,
/// in one statement: `adopt_generation + 1`, `adopt_time = now`, `driven_by_ratchet`, for the lowest ids above
/// `after`, leaving out `exclude` (the sagas the claiming incarnation is already driving). Returns the claimed
/// rows (with their new generation), lowest id first; page on with the last id.
///
/// An executor id is stable across restarts (a Nexus zone's id), so an owner check on the id alone cannot
/// tell a new process from an old one that is still alive (hung, or a second `recover` started beside the
/// first). The bump makes the difference: every write of an older incarnation carries the older generation
/// and is fenced out exactly like a foreign executor's. Like [`adopt_sagas`], the `UPDATE` waits for the
/// share locks the older incarnation's in-flight transactions hold, so none of its writes lands after it.
#[allow(clippy::too_many_arguments)]
pub async fn claim_unfinished(
    conn: &mut AsyncPgConnection,
    sec_id: Uuid,
    names: &[String],
    scope: RecoveryScope,
    after: Option<Uuid>,
    exclude: &[Uuid],
    batch: i64,
) -> QueryResult<Vec<SagaRow>> {
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Uuid as SqlUuid};
    let unfinished = crate::owner::UNFINISHED_SQL;
    let scope = scope.condition();
    let mut rows: Vec<SagaRow> = diesel::sql_query(format!(
        "UPDATE saga SET adopt_generation = adopt_generation + 1, adopt_time = $2, \
             driven_by_ratchet = TRUE \
         WHERE current_sec = $1 AND {unfinished} AND name = ANY($6) AND {scope} \
           AND id IN (SELECT id FROM saga \
                      WHERE current_sec = $1 AND {unfinished} AND {scope} \
                        AND name = ANY($6) AND id > $3 AND NOT (id = ANY($4)) \
                      ORDER BY id LIMIT $5) \
         RETURNING *"
    ))
    .bind::<SqlUuid, _>(sec_id)
    .bind::<Timestamptz, _>(Utc::now())
    .bind::<SqlUuid, _>(after.unwrap_or(Uuid::nil()))
    .bind::<Array<SqlUuid>, _>(exclude)
    .bind::<BigInt, _>(batch)
    .bind::<Array<Text>, _>(names)
    .load(conn)
    .await?;
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// The unfinished sagas of executor `sec_id` within `scope` whose name is none of `names` (sagas of a
/// definition some other binary registers), oldest id first, at most `limit`. Reads only.
pub async fn unfinished_not_named(
    conn: &mut AsyncPgConnection,
    sec_id: Uuid,
    names: &[String],
    scope: RecoveryScope,
    limit: i64,
) -> QueryResult<Vec<SagaRow>> {
    saga::table
        .filter(saga::current_sec.eq(sec_id))
        .filter(unfinished())
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            scope.condition(),
        ))
        .filter(saga::name.ne_all(names))
        .order(saga::id)
        .limit(limit)
        .select(SagaRow::as_select())
        .load(conn)
        .await
}

/// Which of `ids` are unfinished sagas of executor `sec_id`.
pub async fn unfinished_among(
    conn: &mut AsyncPgConnection,
    sec_id: Uuid,
    ids: &[Uuid],
) -> QueryResult<Vec<Uuid>> {
    saga::table
        .filter(saga::current_sec.eq(sec_id))
        .filter(unfinished())
        .filter(saga::id.eq_any(ids))
        .select(saga::id)
        .order(saga::id)
        .load(conn)
        .await
}

/// How many sagas of each of `names` are unfinished (`running` / `unwinding`) under one of `executors`, or
/// `stuck` among `sagas`, by name (a name with none has no entry). A command checks with it, before it starts
/// an engine, whether that engine would have to resume sagas it cannot run as asked (the CLI's Nexus sagas
/// without their services).
pub async fn unfinished_by_name(
    conn: &mut AsyncPgConnection,
    names: &[&str],
    executors: &[Uuid],
    sagas: &[Uuid],
) -> QueryResult<BTreeMap<String, i64>> {
    let unfinished = unfinished().and(saga::current_sec.eq_any(executors));
    let stuck = diesel::dsl::sql::<diesel::sql_types::Bool>(crate::saga::state_condition_sql(
        SagaState::Stuck,
    ))
    .and(saga::id.eq_any(sagas));
    let counts: Vec<(String, i64)> = saga::table
        .filter(saga::name.eq_any(names))
        .filter(unfinished.or(stuck))
        .group_by(saga::name)
        .select((saga::name, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    Ok(counts.into_iter().collect())
}

/// Why an operator action refuses a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// There is no saga with that id.
    NoSuchSaga,
    /// The saga is not in a state the action applies to.
    WrongState { state: String },
    /// The saga is `stuck`, but not by a failed undo that steno can run again: a node's commit could be neither
    /// kept nor compensated inside the node itself (the store noted it stuck; the log has no `undo_failed`).
    NoFailedUndo {
        stuck_node: Option<String>,
        stuck_reason: Option<String>,
    },
}

/// Takes stuck saga `id` back for another unwind by executor `sec_id`, in one transaction:
/// - deletes its `undo_failed` events, so that steno, on resume, finds those nodes `undo_started` and runs
///   their undo again (and then the undos of their ancestors, which never ran);
/// - sets it `unwinding`, clears the stuck columns, and makes `sec_id` its owner at the next generation.
///
/// Returns the updated row, or why the saga cannot be retried.
pub async fn take_for_retry_unwind(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    sec_id: Uuid,
) -> Result<Result<SagaRow, Refusal>, DbError> {
    in_transaction(conn, |conn| {
        async move {
            let Some(row) = lock_saga(conn, id).await? else {
                return Ok(Err(Refusal::NoSuchSaga));
            };
            if row.saga_state != SagaState::Stuck {
                return Ok(Err(Refusal::WrongState {
                    state: row.saga_state.to_string(),
                }));
            }
            let deleted = diesel::delete(
                saga_node_event::table
                    .filter(saga_node_event::saga_id.eq(id))
                    .filter(saga_node_event::event_type.eq(crate::records::UNDO_FAILED)),
            )
            .execute(conn)
            .await?
                + diesel::delete(
                    saga_undo_failure::table.filter(saga_undo_failure::saga_id.eq(id)),
                )
                .execute(conn)
                .await?;
            if deleted == 0 {
                return Ok(Err(Refusal::NoFailedUndo {
                    stuck_node: row.stuck_node,
                    stuck_reason: row.stuck_reason,
                }));
            }
            let row = diesel::update(saga::table.filter(saga::id.eq(id)))
                .set((
                    saga::saga_state.eq(SagaState::Unwinding),
                    saga::stuck_node.eq(None::<String>),
                    saga::stuck_reason.eq(None::<String>),
                    saga::time_stuck.eq(None::<DateTime<Utc>>),
                    saga::time_finished.eq(None::<DateTime<Utc>>),
                    saga::current_sec.eq(sec_id),
                    saga::adopt_generation.eq(saga::adopt_generation + 1),
                    saga::adopt_time.eq(Utc::now()),
                    saga::driven_by_ratchet.eq(true),
                ))
                .returning(SagaRow::as_returning())
                .get_result(conn)
                .await?;
            Ok(Ok(row))
        }
        .boxed()
    })
    .await
}

/// Marks saga `id` `abandoned` (Omicron's abandonment metadata: now, `reason`, and `comment`, which says
/// who and why in words) if it is `running`, `unwinding` or `stuck`; touches nothing else
/// (its commit records, compensation records and log stay as they are, and nothing is compensated). An
/// executor still driving it is fenced out: `abandoned` is not a state an executor may write in.
///
/// Returns the row as it was *before* (its former state), or why the saga cannot be abandoned.
pub async fn abandon_saga(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: AbandonReason,
    comment: &str,
) -> Result<Result<SagaRow, Refusal>, DbError> {
    let comment = comment.to_owned();
    in_transaction(conn, |conn| {
        async move {
            let Some(row) = lock_saga(conn, id).await? else {
                return Ok(Err(Refusal::NoSuchSaga));
            };
            if !matches!(
                row.saga_state,
                SagaState::Running | SagaState::Unwinding | SagaState::Stuck
            ) {
                return Ok(Err(Refusal::WrongState {
                    state: row.saga_state.to_string(),
                }));
            }
            let now = Utc::now();
            diesel::update(saga::table.filter(saga::id.eq(id)))
                .set((
                    saga::saga_state.eq(SagaState::Abandoned),
                    saga::abandon_time.eq(now),
                    saga::abandon_reason.eq(reason),
                    saga::abandon_comment.eq(comment),
                    saga::time_finished.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok(Ok(row))
        }
        .boxed()
    })
    .await
}

/// Saga `id`'s row, locked `FOR UPDATE` for the rest of the transaction.
async fn lock_saga(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<SagaRow>> {
    saga::table
        .filter(saga::id.eq(id))
        .select(SagaRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A node whose compensation failed: its `undo_failed` event.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedUndo {
    pub node_id: i64,
    pub node: String,
    pub error: String,
    /// The saga's typed error the compensation failed with, serialized (decode it as the saga's
    /// `SagaDef::Error`); `None` for an untyped error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_error: Option<serde_json::Value>,
    pub time: DateTime<Utc>,
}

/// A node whose forward action failed: its `failed` event.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailedNode {
    pub node_id: i64,
    pub node: String,
    /// The failure as recorded (for a ratchet node: its node, phase and message, as JSON).
    pub error: serde_json::Value,
    /// The saga's typed error the node failed with, serialized (decode it as the saga's `SagaDef::Error`);
    /// `None` for an untyped error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_error: Option<serde_json::Value>,
    pub time: DateTime<Utc>,
}

/// A node failed for ending the engine's transaction itself (see [`StuckDiagnosis::escaped_writes`]): its
/// `failed` (forward) or `undo_failed` (compensation) event.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EscapedWrites {
    pub node: String,
    /// `failed` or `undo_failed`.
    pub event: String,
    pub time: DateTime<Utc>,
}

/// A node whose commit happened and has not been compensated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UncompensatedCommit {
    pub node: String,
    pub time_committed: DateTime<Utc>,
    /// The executor that committed it, at which generation.
    pub creator: Uuid,
    pub adopt_generation: i64,
}

/// What an operator needs to decide about a stuck saga: which compensation failed and why, which commits are
/// still in effect, and how long it has been waiting.
///
/// Computed for any saga (an `unwinding` saga also has commits not yet compensated); for one that is not
/// stuck, `failed_undos` is empty and the stuck fields are `None`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StuckDiagnosis {
    pub saga_id: Uuid,
    pub state: String,
    /// Nodes whose forward action failed (the failure the unwind began with), from the log's `failed` events.
    #[serde(default)]
    pub failed_nodes: Vec<FailedNode>,
    /// Nodes whose compensation failed, from the log's `undo_failed` events.
    pub failed_undos: Vec<FailedUndo>,
    /// What the store recorded when it marked the saga stuck: the node and the error. Set also when the saga
    /// is stuck without an `undo_failed` event (a commit that could be neither kept nor compensated).
    pub stuck_node: Option<String>,
    pub stuck_reason: Option<String>,
    /// Nodes with a commit record and no compensation record, oldest commit first.
    pub uncompensated: Vec<UncompensatedCommit>,
    /// Nodes that ended the engine's transaction themselves (a `COMMIT` or `ROLLBACK` sent through the
    /// engine's connection) and were failed for it: whatever they wrote before that may have been committed
    /// outside the engine, with no record and no compensation. An operator must look for those writes.
    #[serde(default)]
    pub escaped_writes: Vec<EscapedWrites>,
    /// When the saga became stuck (`time_stuck`; for older rows, `time_finished`).
    pub stuck_since: Option<DateTime<Utc>>,
    /// How long ago that was.
    pub stuck_for: Option<std::time::Duration>,
}

impl SagaHistory {
    /// The saga's [`StuckDiagnosis`], as of now.
    pub fn diagnosis(&self) -> StuckDiagnosis {
        let saga = &self.saga;
        let names = crate::dag::node_paths(&saga.saga_dag);
        let name_of = |node_id: i64| {
            names
                .get(&node_id)
                .cloned()
                .unwrap_or_else(|| format!("node {node_id}"))
        };
        let failed_undos = self
            .events
            .iter()
            .filter(|e| e.event_type == "undo_failed")
            .map(|e| FailedUndo {
                node_id: e.node_id,
                node: name_of(e.node_id),
                error: undo_error_message(e.data.as_ref()),
                saga_error: saga_error_of(e.data.as_ref()),
                time: e.event_time,
            })
            .collect();
        let failed_nodes = self
            .events
            .iter()
            .filter(|e| e.event_type == "failed")
            .map(|e| FailedNode {
                node_id: e.node_id,
                node: name_of(e.node_id),
                error: e
                    .data
                    .as_ref()
                    .map(|data| data.pointer("/ActionFailed/source_error").unwrap_or(data))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
                saga_error: saga_error_of(e.data.as_ref()),
                time: e.event_time,
            })
            .collect();
        let compensated: BTreeSet<&str> = self
            .compensations
            .iter()
            .map(|c| c.node_name.as_str())
            .collect();
        let mut uncompensated: Vec<UncompensatedCommit> = self
            .commits
            .iter()
            .filter(|c| !compensated.contains(c.node_name.as_str()))
            .map(|c: &CommitRecord| UncompensatedCommit {
                node: c.node_name.clone(),
                time_committed: c.time_committed,
                creator: c.creator,
                adopt_generation: c.adopt_generation,
            })
            .collect();
        uncompensated.sort_by_key(|c| c.time_committed);
        let escaped_writes = self
            .events
            .iter()
            .filter(|e| matches!(e.event_type.as_str(), "failed" | "undo_failed"))
            .filter(|e| {
                e.data
                    .as_ref()
                    .is_some_and(|data| data.to_string().contains(crate::records::ESCAPED_WRITES))
            })
            .map(|e| EscapedWrites {
                node: name_of(e.node_id),
                event: e.event_type.clone(),
                time: e.event_time,
            })
            .collect();
        let stuck = saga.saga_state == SagaState::Stuck;
        let stuck_since = saga
            .time_stuck
            .or_else(|| stuck.then_some(saga.time_finished).flatten());
        let stuck_for = stuck_since.and_then(|since| (Utc::now() - since).to_std().ok());
        StuckDiagnosis {
            saga_id: saga.id,
            state: saga.saga_state.to_string(),
            failed_nodes,
            failed_undos,
            stuck_node: saga.stuck_node.clone(),
            stuck_reason: saga.stuck_reason.clone(),
            uncompensated,
            escaped_writes,
            stuck_since,
            stuck_for,
        }
    }
}

/// The [`StuckDiagnosis`] of saga `id`, or `None` if there is no such saga.
pub async fn stuck_diagnosis(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<StuckDiagnosis>> {
    Ok(saga_history(conn, id)
        .await?
        .map(|history| history.diagnosis()))
}
