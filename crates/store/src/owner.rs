//! Ownership of a saga, and the fencing check every executor write carries.
//!
//! A saga is driven by one executor (SEC) at a time: `saga.current_sec`. Adoption by another executor bumps
//! `saga.adopt_generation`. Every write an executor makes for a saga (log events, state updates, commit and
//! compensation transactions) first takes `FOR SHARE` on the saga row *conditional on* `current_sec = me AND
//! adopt_generation = g AND saga_state IN ('running', 'unwinding') AND time_stuck IS NULL` (an unfinished saga,
//! [`UNFINISHED_SQL`]: a stuck saga recorded `unwinding` for Omicron's readers has `time_stuck` set). If no row
//! comes back, the executor has
//! been fenced out and the transaction writes nothing. The share lock makes an adoption (an `UPDATE` of the
//! row) wait for in-flight writes of the old owner, so no write of the old owner can land after the adoption.

use crate::schema::saga;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Who may write for a saga: an executor at one adoption generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SagaOwner {
    /// The executor (SEC) id.
    pub sec_id: Uuid,
    /// `saga.adopt_generation` when this executor took the saga.
    pub generation: i64,
}

/// The saga states in which a saga's executor may still write.
pub(crate) const WRITABLE_STATES: [crate::saga::SagaState; 2] = [
    crate::saga::SagaState::Running,
    crate::saga::SagaState::Unwinding,
];

/// A saga is unfinished (its executor may still write for it, recovery resumes it) when it is `running` or
/// `unwinding` and not stuck: an engine writing an Omicron-readable log records a stuck saga `unwinding` with
/// `time_stuck` set (see the saga log's "Stuck sagas"), and such a saga is as finished as one recorded `stuck`.
pub(crate) const UNFINISHED_SQL: &str =
    "saga_state IN ('running', 'unwinding') AND time_stuck IS NULL";

/// [`UNFINISHED_SQL`] in diesel's terms.
pub(crate) fn unfinished() -> diesel::dsl::And<
    diesel::dsl::EqAny<saga::saga_state, [crate::saga::SagaState; 2]>,
    diesel::dsl::IsNull<saga::time_stuck>,
> {
    saga::saga_state
        .eq_any(WRITABLE_STATES)
        .and(saga::time_stuck.is_null())
}

/// [`lock_if_owner`]'s condition as a common table expression named `owner`, for the statements that write only
/// if the executor still owns the saga ([`crate::records::record_commit_if_owner`],
/// [`crate::records::insert_events_if_owner`]): the check, the share lock and the writes then cost one round
/// trip. Binds `$1` the saga id, `$2` the executor id, `$3` its generation, `$4` the node transaction's token
/// (NULL when the write is not made in a node's transaction; see [`crate::records::NODE_TX_SETTING`]);
/// `owner` has one row (`id`) when the executor owns the saga and the write runs in the transaction that
/// token names, none otherwise. The saga must be unfinished ([`UNFINISHED_SQL`]).
pub(crate) const OWNER_CTE: &str = "owner AS (SELECT id FROM saga WHERE id = $1 AND current_sec = $2 \
     AND adopt_generation = $3 AND saga_state IN ('running', 'unwinding') AND time_stuck IS NULL \
     AND ($4::TEXT IS NULL OR coalesce(current_setting('ratchet.node_tx', true), '') = $4) FOR SHARE)";

/// Takes a share lock on `saga_id`'s row if `owner` still owns it and it is unfinished. Returns `false` when
/// the executor has been fenced out (or the saga is finished or gone): the caller must then write nothing.
pub async fn lock_if_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
) -> QueryResult<bool> {
    owns(conn, saga_id, owner, true).await
}

/// Whether `owner` still owns `saga_id` and it is unfinished, by a plain read (no lock), for read-only
/// transactions and for checks before a call to another service.
///
/// This is an early warning, not a fence: nothing stops an adoption from landing right after it. Writes to the
/// database stay fenced by [`lock_if_owner`] in their own transaction; what this adds is that a stale executor
/// notices sooner, before it replays a recorded commit or calls out.
pub async fn is_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
) -> QueryResult<bool> {
    owns(conn, saga_id, owner, false).await
}

async fn owns(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
    share_lock: bool,
) -> QueryResult<bool> {
    let query = saga::table
        .filter(saga::id.eq(saga_id))
        .filter(saga::current_sec.eq(owner.sec_id))
        .filter(saga::adopt_generation.eq(owner.generation))
        .filter(unfinished())
        .select(saga::id);
    let row: QueryResult<Uuid> = if share_lock {
        query.for_share().first(conn).await
    } else {
        query.first(conn).await
    };
    Ok(row.optional()?.is_some())
}
