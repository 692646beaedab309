//! Commit and compensation records: the rows that make every node's commit and compensation exactly-once.
//!
//! These functions run *inside* a transaction the engine opened (a database node's commit or compensation
//! transaction) or as single statements for external nodes. None of them begins or ends a transaction.

use crate::backend::{NodeConnection, get_result, statement};
use crate::event::EventRow;
use crate::owner::SagaOwner;
use crate::schema::{saga_commit_record, saga_compensation_record, saga_undo_failure};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// A row of `saga_commit_record`.
#[derive(
    Clone, Debug, PartialEq, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = saga_commit_record)]
pub struct CommitRecord {
    pub saga_id: Uuid,
    pub node_name: String,
    pub receipt: serde_json::Value,
    pub time_committed: DateTime<Utc>,
    pub creator: Uuid,
    pub adopt_generation: i64,
}

/// A row of `saga_compensation_record`.
#[derive(
    Clone, Debug, PartialEq, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = saga_compensation_record)]
pub struct CompensationRecord {
    pub saga_id: Uuid,
    pub node_name: String,
    pub had_commit: bool,
    pub time_compensated: DateTime<Utc>,
    pub creator: Uuid,
    pub adopt_generation: i64,
}

/// The receipt recorded for `node_name` of `saga_id`, if its commit happened.
pub async fn commit_receipt(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
) -> QueryResult<Option<serde_json::Value>> {
    saga_commit_record::table
        .filter(saga_commit_record::saga_id.eq(saga_id))
        .filter(saga_commit_record::node_name.eq(node_name))
        .select(saga_commit_record::receipt)
        .first(conn)
        .await
        .optional()
}

/// What the log holds for one node, as an executor about to act on it must know it: whether the executor
/// still owns the saga, and the node's commit and compensation records. [`recorded`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// The executor no longer owns the saga (another executor, or a newer incarnation of this one, took it
    /// over; or it is finished): it must act on nothing.
    Fenced,
    /// No commit record and no compensation record: the node never committed.
    Absent,
    /// Committed, and not compensated: the commit's receipt.
    Committed { receipt: serde_json::Value },
    /// Compensated (after its commit, or, with no commit record, recorded as having nothing to undo): the
    /// commit's receipt if it committed.
    Compensated { receipt: Option<serde_json::Value> },
}

/// How [`recorded`] checks the executor's ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerCheck {
    /// A plain read: for read-only transactions and checks before a call out (an early warning, not a fence;
    /// see [`crate::owner::is_owner`]).
    Read,
    /// A share lock on the saga row, held to the end of the transaction: the fence of a transaction that
    /// writes (see [`crate::owner::lock_if_owner`]).
    ShareLock,
}

/// What the log holds for `node_name` of `saga_id`, and whether `owner` still owns the saga, in one round
/// trip. The one lookup every node runner makes before it replays, compensates or calls out.
pub async fn recorded<C: NodeConnection + ?Sized>(
    conn: &mut C,
    saga_id: Uuid,
    node_name: &str,
    owner: SagaOwner,
    check: OwnerCheck,
) -> QueryResult<Recorded> {
    use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Text};
    type SqlUuid = diesel::sql_types::Uuid;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        owners: i64,
        #[diesel(sql_type = Nullable<Jsonb>)]
        receipt: Option<serde_json::Value>,
        #[diesel(sql_type = Bool)]
        compensated: bool,
    }
    let lock = match check {
        OwnerCheck::Read => "",
        OwnerCheck::ShareLock => " FOR SHARE",
    };
    let query = statement(format!(
        "WITH owner AS (SELECT id FROM saga WHERE id = $1 AND current_sec = $3 AND adopt_generation = $4 \
         AND saga_state IN ('running', 'unwinding') AND time_stuck IS NULL{lock}) \
         SELECT (SELECT count(*) FROM owner) AS owners, \
         (SELECT receipt FROM saga_commit_record WHERE saga_id = $1 AND node_name = $2) AS receipt, \
         EXISTS (SELECT 1 FROM saga_compensation_record WHERE saga_id = $1 AND node_name = $2) \
         AS compensated"
    ))
    .bind::<SqlUuid, _>(saga_id)
    .bind::<Text, _>(node_name.to_owned())
    .bind::<SqlUuid, _>(owner.sec_id)
    .bind::<BigInt, _>(owner.generation);
    let row: Row = get_result(conn, query).await?;
    Ok(match row {
        Row { owners: 0, .. } => Recorded::Fenced,
        Row {
            compensated: true,
            receipt,
            ..
        } => Recorded::Compensated { receipt },
        Row {
            receipt: Some(receipt),
            ..
        } => Recorded::Committed { receipt },
        Row { receipt: None, .. } => Recorded::Absent,
    })
}

/// The session setting that names the engine's transaction for a node: the engine sets it (`SET LOCAL`) right
/// after its `BEGIN`, to a token of its own, and every write that closes the node's transaction (the commit
/// record, the compensation record) happens only if the setting still holds that token. A node that sent its
/// own `COMMIT` (or `ROLLBACK`, or `COMMIT; BEGIN`) through the engine's connection has ended the engine's
/// transaction, and `SET LOCAL` ends with it: the engine then writes no record, sees the token gone, and fails
/// the node loudly. The writes the node committed on its own are outside every guarantee; this is how the
/// engine notices them.
pub const NODE_TX_SETTING: &str = "ratchet.node_tx";

/// `SET LOCAL` of [`NODE_TX_SETTING`] to `token`: one statement to send with the `BEGIN` of a node's
/// transaction. The token is a UUID (no quoting issue).
pub fn set_node_tx(token: Uuid) -> String {
    format!("SET LOCAL {NODE_TX_SETTING} = '{token}'")
}

/// What [`NODE_TX_SETTING`] holds on `conn` now: the token of the engine's transaction if it is still open,
/// an empty string if the transaction that set it has ended (the node sent its own `COMMIT` or `ROLLBACK`).
/// Fails in a transaction a failed statement has aborted (PostgreSQL runs nothing there but its end).
pub async fn node_tx_token<C: NodeConnection + ?Sized>(conn: &mut C) -> QueryResult<String> {
    #[derive(QueryableByName)]
    struct Token {
        #[diesel(sql_type = diesel::sql_types::Text)]
        tx_token: String,
    }
    let row: Token = get_result(
        conn,
        statement("SELECT coalesce(current_setting('ratchet.node_tx', true), '') AS tx_token"),
    )
    .await?;
    Ok(row.tx_token)
}

/// The words every failure of a node that ended the engine's transaction carries (in its `failed` or
/// `undo_failed` event): the saga's diagnosis finds such nodes by them
/// ([`StuckDiagnosis::escaped_writes`](crate::operator::StuckDiagnosis)).
pub const ESCAPED_WRITES: &str = "writes may have escaped the engine's record";

/// What a fenced write of a node's transaction found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FencedWrite {
    /// The executor owns the saga, the transaction is the engine's: the rows are written.
    Written,
    /// The executor has been fenced out: nothing is written.
    Fenced,
    /// The statement did not run in the transaction the engine opened (its token is gone: the node ended the
    /// engine's transaction itself): nothing is written. `found` is what the setting held.
    ForeignTransaction { found: String },
}

/// Records that `node_name` was compensated (`had_commit`: whether there was a commit to undo), if the
/// statement runs in the transaction `tx_token` names (see [`NODE_TX_SETTING`]; `None`: any). Returns
/// [`FencedWrite::ForeignTransaction`], having written nothing, when it does not. Fails with a unique
/// violation if the node was already compensated.
pub async fn insert_compensation_record<C: NodeConnection + ?Sized>(
    conn: &mut C,
    saga_id: Uuid,
    node_name: &str,
    had_commit: bool,
    owner: SagaOwner,
    tx_token: Option<Uuid>,
) -> QueryResult<FencedWrite> {
    use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
    type SqlUuid = diesel::sql_types::Uuid;
    let query = statement(
        "WITH written AS (INSERT INTO saga_compensation_record \
         (saga_id, node_name, had_commit, time_compensated, creator, adopt_generation) \
         SELECT $1, $2, $3, $4, $5, $6 \
         WHERE $7::TEXT IS NULL OR coalesce(current_setting('ratchet.node_tx', true), '') = $7 \
         RETURNING 1) \
         SELECT (SELECT count(*) FROM written) AS owners, \
         coalesce(current_setting('ratchet.node_tx', true), '') AS tx_token",
    )
    .bind::<SqlUuid, _>(saga_id)
    .bind::<Text, _>(node_name.to_owned())
    .bind::<Bool, _>(had_commit)
    .bind::<Timestamptz, _>(Utc::now())
    .bind::<SqlUuid, _>(owner.sec_id)
    .bind::<BigInt, _>(owner.generation)
    .bind::<Nullable<Text>, _>(tx_token.map(|t| t.to_string()));
    let row: TokenCheck = get_result(conn, query).await?;
    Ok(row.outcome(tx_token))
}

/// Which record a [`probe_record`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Commit,
    Compensation,
}

/// Whether `node_name`'s commit (or compensation) record exists, *waiting for any transaction still writing
/// it*: the one question that settles a `COMMIT` whose outcome is unknown.
///
/// A plain read cannot settle it: under MVCC it does not see a transaction that has inserted the record and
/// not yet committed (its `COMMIT` still in flight, or its client gone and the server not yet aware), so it
/// would say "not there" and then the record could land. An insert of the same key, by contrast, waits for
/// that transaction to end (bounded by the session's `lock_timeout`, a transient error), then either
/// conflicts (the record is there: the commit landed) or goes in (it is not, and no transaction can still
/// write it). The probe's insert is always rolled back; it opens its own transaction on `conn`.
pub async fn probe_record(
    conn: &mut AsyncPgConnection,
    kind: RecordKind,
    saga_id: Uuid,
    node_name: &str,
) -> QueryResult<bool> {
    use diesel::sql_types::Text;
    type SqlUuid = diesel::sql_types::Uuid;
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        #[allow(dead_code)] // only the row's presence matters
        probe: i32,
    }
    let sql = match kind {
        RecordKind::Commit => {
            "INSERT INTO saga_commit_record \
             (saga_id, node_name, receipt, time_committed, creator, adopt_generation) \
             VALUES ($1, $2, 'null'::JSONB, now(), $1, -1) ON CONFLICT DO NOTHING RETURNING 1 AS probe"
        }
        RecordKind::Compensation => {
            "INSERT INTO saga_compensation_record \
             (saga_id, node_name, had_commit, time_compensated, creator, adopt_generation) \
             VALUES ($1, $2, false, now(), $1, -1) ON CONFLICT DO NOTHING RETURNING 1 AS probe"
        }
    };
    crate::transaction::begin_transaction(conn).await?;
    let inserted: QueryResult<Vec<Inserted>> = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(saga_id)
        .bind::<Text, _>(node_name)
        .load(conn)
        .await;
    crate::transaction::rollback_transaction(conn).await;
    Ok(inserted?.is_empty())
}

/// What a fenced write's statement returns: how many owner rows it found (1 when it wrote, 0 when it did not)
/// and the node transaction's token as the statement saw it.
#[derive(QueryableByName)]
struct TokenCheck {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    owners: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    tx_token: String,
}

impl TokenCheck {
    fn outcome(&self, expected: Option<Uuid>) -> FencedWrite {
        match expected {
            Some(token) if self.tx_token != token.to_string() => FencedWrite::ForeignTransaction {
                found: self.tx_token.clone(),
            },
            _ if self.owners > 0 => FencedWrite::Written,
            _ => FencedWrite::Fenced,
        }
    }
}

/// Binds `events` as the six column arrays [`events_from_owner`] (and [`insert_events`]) `unnest`.
fn bind_event_arrays(
    query: crate::backend::Statement,
    events: &[EventRow],
) -> crate::backend::Statement {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz};
    type SqlUuid = diesel::sql_types::Uuid;
    query
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.saga_id).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(events.iter().map(|e| e.node_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Jsonb>>, _>(
            events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(events.iter().map(|e| e.event_time).collect::<Vec<_>>())
        .bind::<Array<SqlUuid>, _>(events.iter().map(|e| e.creator).collect::<Vec<_>>())
}

/// The events insert of a fenced write, its six arrays bound from `$first` on ([`bind_event_arrays`]): every
/// row, once per row of `owner` (so none when fenced out); an event already present is left as it is.
fn events_from_owner(first: usize) -> String {
    let [saga_id, node_id, event_type, data, event_time, creator] =
        std::array::from_fn::<usize, 6, _>(|i| first + i);
    format!(
        "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT e.* FROM owner, unnest(${saga_id}::UUID[], ${node_id}::BIGINT[], ${event_type}::TEXT[], \
         ${data}::JSONB[], ${event_time}::TIMESTAMPTZ[], ${creator}::UUID[]) \
         AS e (saga_id, node_id, event_type, data, event_time, creator) ON CONFLICT DO NOTHING"
    )
}

/// In one statement: if `owner` still owns `saga_id` and the statement runs in the node's transaction
/// `tx_token` names (see [`NODE_TX_SETTING`]; `None`: any), takes the share lock on the saga's row, records
/// that `node_name` committed with `receipt`, and inserts `events` (the node's `started` and `succeeded`, and
/// any held event that lands with them). Writes nothing otherwise, and says why. Fails with a unique
/// violation if the node's commit was already recorded: a second commit of one node can never land.
pub async fn record_commit_if_owner<C: NodeConnection + ?Sized>(
    conn: &mut C,
    saga_id: Uuid,
    node_name: &str,
    receipt: serde_json::Value,
    owner: SagaOwner,
    events: &[EventRow],
    tx_token: Option<Uuid>,
) -> QueryResult<FencedWrite> {
    write_if_owner(
        conn,
        saga_id,
        owner,
        Some((node_name, receipt)),
        events,
        tx_token,
    )
    .await
}

/// In one statement: if `owner` still owns `saga_id`, takes the share lock on its row and inserts `events`
/// (an event already present is left as it is). Returns `false`, having written nothing, when the executor
/// has been fenced out.
pub(crate) async fn insert_events_if_owner(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
    events: &[EventRow],
) -> QueryResult<bool> {
    let written = write_if_owner(conn, saga_id, owner, None, events, None).await?;
    Ok(written == FencedWrite::Written)
}

/// Writes the `undo_failed` events among `events` to `saga_undo_failure` (where Omicron's event reader, which
/// refuses every `undo_failed` row of `saga_node_event`, never looks), and the others as
/// [`insert_events_if_owner`] does. Call it inside a transaction: the side rows are written only after the
/// fenced write found the executor the owner, under the share lock it took.
pub(crate) async fn insert_events_if_owner_undo_failures_aside(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    owner: SagaOwner,
    events: &[EventRow],
) -> QueryResult<bool> {
    let (failures, others): (Vec<EventRow>, Vec<EventRow>) = events
        .iter()
        .cloned()
        .partition(|e| e.event_type == UNDO_FAILED);
    if !insert_events_if_owner(conn, saga_id, owner, &others).await? {
        return Ok(false);
    }
    for failure in &failures {
        diesel::insert_into(saga_undo_failure::table)
            .values((
                saga_undo_failure::saga_id.eq(failure.saga_id),
                saga_undo_failure::node_id.eq(failure.node_id),
                saga_undo_failure::data.eq(failure.data.clone().unwrap_or_default()),
                saga_undo_failure::event_time.eq(failure.event_time),
                saga_undo_failure::creator.eq(failure.creator),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(true)
}

/// steno's label of a failed undo.
pub(crate) const UNDO_FAILED: &str = "undo_failed";

/// The one fenced write behind [`record_commit_if_owner`] (`commit`: the node and its receipt) and
/// [`insert_events_if_owner`] (`None`). Binds `$1`–`$4` for [`crate::owner::OWNER_CTE`], then the commit
/// record's `$5`–`$7` if any, then the event arrays.
async fn write_if_owner<C: NodeConnection + ?Sized>(
    conn: &mut C,
    saga_id: Uuid,
    owner: SagaOwner,
    commit: Option<(&str, serde_json::Value)>,
    events: &[EventRow],
    tx_token: Option<Uuid>,
) -> QueryResult<FencedWrite> {
    use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
    use std::sync::LazyLock;
    const RESULT: &str = "SELECT (SELECT count(*) FROM owner) AS owners, \
         coalesce(current_setting('ratchet.node_tx', true), '') AS tx_token";
    static WITH_COMMIT_RECORD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {owner_cte}, commit_record AS (\
             INSERT INTO saga_commit_record \
             (saga_id, node_name, receipt, time_committed, creator, adopt_generation) \
             SELECT id, $5, $6, $7, $2, $3 FROM owner), events AS ({events}) {RESULT}",
            owner_cte = crate::owner::OWNER_CTE,
            events = events_from_owner(8),
        )
    });
    static EVENTS_ONLY: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {owner_cte}, events AS ({events}) {RESULT}",
            owner_cte = crate::owner::OWNER_CTE,
            events = events_from_owner(5),
        )
    });
    let sql = if commit.is_some() {
        &WITH_COMMIT_RECORD
    } else {
        &EVENTS_ONLY
    };
    let mut query = statement(sql.as_str())
        .bind::<diesel::sql_types::Uuid, _>(saga_id)
        .bind::<diesel::sql_types::Uuid, _>(owner.sec_id)
        .bind::<BigInt, _>(owner.generation)
        .bind::<Nullable<Text>, _>(tx_token.map(|t| t.to_string()));
    if let Some((node_name, receipt)) = commit {
        query = query
            .bind::<Text, _>(node_name.to_owned())
            .bind::<Jsonb, _>(receipt)
            .bind::<Timestamptz, _>(Utc::now());
    }
    let row: TokenCheck = get_result(conn, bind_event_arrays(query, events)).await?;
    Ok(row.outcome(tx_token))
}

/// Inserts log events; an event already present (same saga, node and type) is left as it is.
pub async fn insert_events<C: NodeConnection + ?Sized>(
    conn: &mut C,
    rows: &[EventRow],
) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let query = statement(
        "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) \
         SELECT * FROM unnest($1::UUID[], $2::BIGINT[], $3::TEXT[], $4::JSONB[], $5::TIMESTAMPTZ[], \
         $6::UUID[]) ON CONFLICT DO NOTHING",
    );
    conn.execute(bind_event_arrays(query, rows))
        .await
        .map(|_| ())
}

/// Removes one log event. Used only when a commit's own `succeeded` event must be withdrawn because the node
/// is being compensated before steno learned that it succeeded (see the engine's after-commit path).
pub async fn delete_event<C: NodeConnection + ?Sized>(
    conn: &mut C,
    saga_id: Uuid,
    node_id: u32,
    event_type: &str,
) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Text};
    let query = statement(
        "DELETE FROM saga_node_event WHERE saga_id = $1 AND node_id = $2 AND event_type = $3",
    )
    .bind::<diesel::sql_types::Uuid, _>(saga_id)
    .bind::<BigInt, _>(i64::from(node_id))
    .bind::<Text, _>(event_type.to_owned());
    conn.execute(query).await.map(|_| ())
}

/// Counts one more start of `node_name`'s `phase` ("forward" or "compensation") in saga `saga_id`, durably,
/// and returns how many there have been (see the `saga_node_start` migration).
pub async fn count_start(
    conn: &mut AsyncPgConnection,
    saga_id: Uuid,
    node_name: &str,
    phase: &str,
) -> QueryResult<i32> {
    use diesel::sql_types::{Integer, Text, Timestamptz};
    type SqlUuid = diesel::sql_types::Uuid;
    #[derive(QueryableByName)]
    struct Starts {
        #[diesel(sql_type = Integer)]
        starts: i32,
    }
    let row: Starts = diesel::sql_query(
        "INSERT INTO saga_node_start (saga_id, node_name, phase, starts, time_last_start) \
         VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (saga_id, node_name, phase) \
         DO UPDATE SET starts = saga_node_start.starts + 1, time_last_start = $4 \
         RETURNING starts",
    )
    .bind::<SqlUuid, _>(saga_id)
    .bind::<Text, _>(node_name)
    .bind::<Text, _>(phase)
    .bind::<Timestamptz, _>(Utc::now())
    .get_result(conn)
    .await?;
    Ok(row.starts)
}
