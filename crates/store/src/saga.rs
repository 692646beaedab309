//! Saga rows: creation, state, and the queries recovery and operators use.

use crate::event::EventRow;
use crate::owner::{SagaOwner, unfinished};
use crate::records::{CommitRecord, CompensationRecord};
use crate::schema::sql_types::{SagaAbandonReasonEnum, SagaStateEnum};
use crate::schema::{
    saga, saga_commit_record, saga_compensation_record, saga_node_event, saga_undo_failure,
};
use chrono::{DateTime, Utc};
use diesel::deserialize::FromSql;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{IsNull, Output, ToSql};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use uuid::Uuid;

/// Declares a Rust enum for a PostgreSQL enum type, with one label per variant: its `as_str`, `ALL`,
/// `Display`, `FromStr`, serde form and diesel mapping all come from that one list. An enum value goes over
/// the wire as its label (text and binary alike).
macro_rules! pg_enum {
    (
        $(#[$meta:meta])*
        pub enum $rust:ident: $sql:ty, $what:literal {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone,
            Copy,
            Debug,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
            diesel::expression::AsExpression,
            diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = $sql)]
        #[serde(rename_all = "snake_case")]
        pub enum $rust {
            $($(#[$vmeta])* $variant,)+
        }

        impl $rust {
            pub const ALL: &'static [$rust] = &[$($rust::$variant),+];

            /// The label, as the database and the JSON forms spell it.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($rust::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $rust {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $rust {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $rust::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let labels: Vec<&str> = $rust::ALL.iter().map($rust::as_str).collect();
                    format!("unknown {} {s:?} (expected one of {})", $what, labels.join(", "))
                })
            }
        }

        impl ToSql<$sql, Pg> for $rust {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<$sql, Pg> for $rust {
            fn from_sql(value: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                Ok(std::str::from_utf8(value.as_bytes())?.parse()?)
            }
        }
    };
}

pg_enum! {
    /// A saga's state as ratchet records it: the `saga_state` enum of Omicron's `saga` table plus `stuck`.
    /// steno knows only running / unwinding / done; Omicron adds `abandoned` (an operator or recovery gave up
    /// on it), and ratchet `stuck` (a compensation failed permanently: steno calls that `done`).
    pub enum SagaState: SagaStateEnum, "saga state" {
        Running => "running",
        Unwinding => "unwinding",
        Done => "done",
        Stuck => "stuck",
        Abandoned => "abandoned",
    }
}

/// A state equals its label: `row.saga_state == "stuck"`.
impl PartialEq<str> for SagaState {
    fn eq(&self, label: &str) -> bool {
        self.as_str() == label
    }
}

impl PartialEq<&str> for SagaState {
    fn eq(&self, label: &&str) -> bool {
        self.as_str() == *label
    }
}

pg_enum! {
    /// Why a saga was abandoned: Omicron's `saga_abandon_reason`, set (with `abandon_time` and
    /// `abandon_comment`) exactly when the saga is `abandoned`.
    pub enum AbandonReason: SagaAbandonReasonEnum, "abandon reason" {
        /// An operator abandoned it: Omicron's omdb, ratchet's `sagas abandon`, the library's `abandon`.
        Omdb => "omdb",
        /// Recovery could not process its persistent state (its row or log does not load, or an adoption
        /// told to abandon what it cannot run had no definition of it).
        Unrecoverable => "unrecoverable",
        /// It was assigned to an executor that has long been expunged.
        Orphaned => "orphaned",
    }
}

/// A row of `saga`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = saga)]
pub struct SagaRow {
    pub id: Uuid,
    pub creator: Uuid,
    pub time_created: DateTime<Utc>,
    pub name: String,
    pub saga_dag: serde_json::Value,
    /// The saga's state as ratchet's readers see it: a saga recorded `unwinding` with `time_stuck` set (the
    /// Omicron-readable form of `stuck`, see the saga log's "Stuck sagas") reads as [`SagaState::Stuck`], in
    /// every query that selects a `SagaRow` ([`EFFECTIVE_STATE_SQL`]).
    #[diesel(
        select_expression = diesel::dsl::sql::<SagaStateEnum>(EFFECTIVE_STATE_SQL),
        select_expression_type = diesel::expression::SqlLiteral<SagaStateEnum>
    )]
    pub saga_state: SagaState,
    pub current_sec: Option<Uuid>,
    pub adopt_generation: i64,
    pub adopt_time: DateTime<Utc>,
    /// Set, all three, exactly when the saga is `abandoned` (the table's CHECK constraints).
    pub abandon_time: Option<DateTime<Utc>>,
    pub abandon_reason: Option<AbandonReason>,
    pub abandon_comment: Option<String>,
    /// The version of the ratchet definition that created the saga; `None` for a saga plain steno created
    /// (through Omicron's store, before ratchet took over the database).
    pub definition_version: Option<i32>,
    pub time_finished: Option<DateTime<Utc>>,
    pub stuck_node: Option<String>,
    pub stuck_reason: Option<String>,
    /// When the saga was recorded `stuck` (in either form: see [`SagaRow::saga_state`]).
    pub time_stuck: Option<DateTime<Utc>>,
    /// Whether ratchet drives the saga: set when ratchet creates it, and in the statement that claims it
    /// (recovery, adoption, retry-unwind). `false` for the rows Nexus's plain steno store writes; Nexus's
    /// recovery listing leaves out the sagas where it is `true`.
    #[serde(default)]
    pub driven_by_ratchet: bool,
}

/// The condition Nexus's saga-recovery listing must add (`AND NOT driven_by_ratchet`) when Nexus's plain steno
/// executor and ratchet share an executor id: it leaves out every saga ratchet drives, whatever its name.
pub const NEXUS_RECOVERY_PREDICATE: &str = "NOT driven_by_ratchet";

/// The state ratchet's readers see, as SQL over a `saga` row: `stuck` for a saga recorded `unwinding` with
/// `time_stuck` set (what an engine writing an Omicron-readable log records for a stuck saga), the recorded
/// state otherwise.
pub const EFFECTIVE_STATE_SQL: &str = "(CASE WHEN saga.saga_state = 'unwinding' AND saga.time_stuck IS NOT NULL \
     THEN 'stuck'::saga_state ELSE saga.saga_state END)";

/// The SQL condition "the saga is in `state`" as ratchet's readers see states ([`SagaRow::saga_state`]).
pub fn state_condition_sql(state: SagaState) -> &'static str {
    match state {
        SagaState::Running => "saga.saga_state = 'running'",
        SagaState::Unwinding => "(saga.saga_state = 'unwinding' AND saga.time_stuck IS NULL)",
        SagaState::Done => "saga.saga_state = 'done'",
        SagaState::Stuck => {
            "(saga.saga_state = 'stuck' OR (saga.saga_state = 'unwinding' AND saga.time_stuck IS NOT NULL))"
        }
        SagaState::Abandoned => "saga.saga_state = 'abandoned'",
    }
}

impl SagaRow {
    /// The saga's definition as a phrase for messages: `"instance-create" v2`, or, for a saga plain steno
    /// created (no version recorded), `"instance-create" (created by plain steno)`.
    pub fn definition(&self) -> String {
        match self.definition_version {
            Some(version) => format!("{:?} v{version}", self.name),
            None => format!("{:?} (created by plain steno)", self.name),
        }
    }

    /// The owner an executor gets when it creates this saga or adopts it at this generation.
    pub fn owner(&self) -> Option<SagaOwner> {
        self.current_sec.map(|sec_id| SagaOwner {
            sec_id,
            generation: self.adopt_generation,
        })
    }
}

/// Inserts a new saga, owned by its creator at generation 1.
pub(crate) async fn insert_saga(conn: &mut AsyncPgConnection, row: &SagaRow) -> QueryResult<()> {
    diesel::insert_into(saga::table)
        .values(row)
        .execute(conn)
        .await
        .map(|_| ())
}

/// One saga by id.
pub async fn get_saga(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<SagaRow>> {
    saga::table
        .find(id)
        .select(SagaRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Sagas, newest first, optionally only those in `state`; at most `limit`.
pub async fn list_sagas(
    conn: &mut AsyncPgConnection,
    state: Option<SagaState>,
    limit: i64,
) -> QueryResult<Vec<SagaRow>> {
    let filter = SagaFilter {
        state,
        limit,
        ..SagaFilter::default()
    };
    list_sagas_where(conn, &filter).await.map(|page| page.sagas)
}

/// Which sagas [`list_sagas_where`] lists.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SagaFilter {
    pub state: Option<SagaState>,
    /// The saga definition's name (`instance-create`).
    pub name: Option<String>,
    /// The executor driving the saga (`current_sec`).
    pub executor: Option<Uuid>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// At most this many.
    pub limit: i64,
}

impl Default for SagaFilter {
    fn default() -> Self {
        SagaFilter {
            state: None,
            name: None,
            executor: None,
            since: None,
            limit: 1000,
        }
    }
}

/// A page of sagas, whether more matched than the limit let through, and how each `done` saga of the page
/// ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SagaPage {
    pub sagas: Vec<SagaRow>,
    pub truncated: bool,
    /// For each `done` saga of `sagas` (and only those): whether it succeeded or unwound ([`saga_endings`]).
    pub endings: BTreeMap<Uuid, SagaEnd>,
}

/// How a `done` saga ended. steno records both a saga whose every node succeeded and one that unwound
/// cleanly as `done`; the log tells them apart: a saga unwinds exactly when one of its nodes fails, and steno
/// then records `failed` for that node (a node failed after its commit included: the engine withdraws its
/// `succeeded` event, so its log reads `started, failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaEnd {
    /// Every node succeeded.
    Succeeded,
    /// A node failed, and every commit before it was compensated.
    Unwound,
}

/// How each `done` saga among `sagas` ended (one query, over the `failed` events of those sagas); the
/// others (unfinished, stuck, abandoned) have no entry.
pub async fn saga_endings(
    conn: &mut AsyncPgConnection,
    sagas: &[SagaRow],
) -> QueryResult<BTreeMap<Uuid, SagaEnd>> {
    let done: Vec<Uuid> = sagas
        .iter()
        .filter(|row| row.saga_state == SagaState::Done)
        .map(|row| row.id)
        .collect();
    if done.is_empty() {
        return Ok(BTreeMap::new());
    }
    let failed: BTreeSet<Uuid> = saga_node_event::table
        .filter(saga_node_event::saga_id.eq_any(&done))
        .filter(saga_node_event::event_type.eq("failed"))
        .select(saga_node_event::saga_id)
        .distinct()
        .load::<Uuid>(conn)
        .await?
        .into_iter()
        .collect();
    Ok(done
        .into_iter()
        .map(|id| (id, SagaEnd::of(failed.contains(&id))))
        .collect())
}

impl SagaEnd {
    /// A `done` saga's end, from whether a node of it failed.
    fn of(a_node_failed: bool) -> SagaEnd {
        if a_node_failed {
            SagaEnd::Unwound
        } else {
            SagaEnd::Succeeded
        }
    }
}

/// How many sagas are in each state (a state no saga is in has no entry).
pub async fn count_by_state(conn: &mut AsyncPgConnection) -> QueryResult<BTreeMap<String, i64>> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let counts: Vec<Count> = diesel::sql_query(format!(
        "SELECT {EFFECTIVE_STATE_SQL}::TEXT AS state, count(*) AS count FROM saga GROUP BY 1"
    ))
    .load(conn)
    .await?;
    Ok(counts.into_iter().map(|c| (c.state, c.count)).collect())
}

/// The unfinished sagas (running or unwinding), counted by the executor that owns them (`None`: no executor
/// owns it). Empty when the database is at rest.
pub async fn count_unfinished_by_executor(
    conn: &mut AsyncPgConnection,
) -> QueryResult<BTreeMap<Option<Uuid>, i64>> {
    let counts: Vec<(Option<Uuid>, i64)> = saga::table
        .filter(unfinished())
        .group_by(saga::current_sec)
        .select((saga::current_sec, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    Ok(counts.into_iter().collect())
}

/// The sagas `filter` selects, newest first, at most `filter.limit`, saying whether the list was truncated
/// and how each `done` saga of it ended.
pub async fn list_sagas_where(
    conn: &mut AsyncPgConnection,
    filter: &SagaFilter,
) -> QueryResult<SagaPage> {
    let mut query = saga::table.select(SagaRow::as_select()).into_boxed();
    if let Some(state) = filter.state {
        query = query.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            state_condition_sql(state),
        ));
    }
    if let Some(name) = &filter.name {
        query = query.filter(saga::name.eq(name.clone()));
    }
    if let Some(executor) = filter.executor {
        query = query.filter(saga::current_sec.eq(executor));
    }
    if let Some(since) = filter.since {
        query = query.filter(saga::time_created.ge(since));
    }
    let limit = filter.limit.max(0);
    let mut sagas: Vec<SagaRow> = query
        .order((saga::time_created.desc(), saga::id))
        .limit(limit.saturating_add(1))
        .load(conn)
        .await?;
    let truncated = sagas.len() as i64 > limit;
    sagas.truncate(limit as usize);
    let endings = saga_endings(conn, &sagas).await?;
    Ok(SagaPage {
        sagas,
        truncated,
        endings,
    })
}

/// The unfinished sagas (`running` / `unwinding`) of executor `sec_id`, in pages of `batch` by id.
pub async fn list_unfinished(
    conn: &mut AsyncPgConnection,
    sec_id: Uuid,
    batch: i64,
) -> QueryResult<Vec<SagaRow>> {
    let mut all = Vec::new();
    let mut after: Option<Uuid> = None;
    loop {
        let page = unfinished_after(conn, sec_id, after, batch).await?;
        let done = (page.len() as i64) < batch;
        after = page.last().map(|row| row.id);
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// One page of [`list_unfinished`]: up to `batch` unfinished sagas of executor `sec_id` with ids above
/// `after`, lowest id first. Reads only: an adoption reads a page to decide which sagas it can run, then
/// claims those ([`crate::operator::adopt_sagas`]).
pub async fn unfinished_after(
    conn: &mut AsyncPgConnection,
    sec_id: Uuid,
    after: Option<Uuid>,
    batch: i64,
) -> QueryResult<Vec<SagaRow>> {
    let mut query = saga::table
        .filter(saga::current_sec.eq(sec_id))
        .filter(unfinished())
        .select(SagaRow::as_select())
        .order(saga::id)
        .limit(batch)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(saga::id.gt(after));
    }
    query.load(conn).await
}

/// The logs of many sagas at once (one query per `batch` sagas), each in a stable order.
pub async fn load_logs(
    conn: &mut AsyncPgConnection,
    saga_ids: &[Uuid],
    batch: usize,
) -> QueryResult<BTreeMap<Uuid, Vec<EventRow>>> {
    let mut logs: BTreeMap<Uuid, Vec<EventRow>> =
        saga_ids.iter().map(|id| (*id, Vec::new())).collect();
    for chunk in saga_ids.chunks(batch.max(1)) {
        let rows: Vec<EventRow> = saga_node_event::table
            .filter(saga_node_event::saga_id.eq_any(chunk))
            .select(EventRow::as_select())
            .order((
                saga_node_event::saga_id,
                saga_node_event::node_id,
                saga_node_event::event_type,
            ))
            .load(conn)
            .await?;
        for row in rows.into_iter().chain(undo_failures(conn, chunk).await?) {
            logs.entry(row.saga_id).or_default().push(row);
        }
    }
    Ok(logs)
}

/// The failed undos of `saga_ids` kept in `saga_undo_failure` (an Omicron-readable log keeps them out of
/// `saga_node_event`), as the `undo_failed` events they stand for.
pub(crate) async fn undo_failures(
    conn: &mut AsyncPgConnection,
    saga_ids: &[Uuid],
) -> QueryResult<Vec<EventRow>> {
    let rows: Vec<(Uuid, i64, serde_json::Value, DateTime<Utc>, Uuid)> = saga_undo_failure::table
        .filter(saga_undo_failure::saga_id.eq_any(saga_ids))
        .select((
            saga_undo_failure::saga_id,
            saga_undo_failure::node_id,
            saga_undo_failure::data,
            saga_undo_failure::event_time,
            saga_undo_failure::creator,
        ))
        .order((saga_undo_failure::saga_id, saga_undo_failure::node_id))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(saga_id, node_id, data, event_time, creator)| EventRow {
            saga_id,
            node_id,
            event_type: crate::records::UNDO_FAILED.to_owned(),
            data: Some(data),
            event_time,
            creator,
        })
        .collect())
}

/// Everything recorded about one saga: its events in time order, and its commit and compensation records.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SagaHistory {
    pub saga: SagaRow,
    pub events: Vec<EventRow>,
    pub commits: Vec<CommitRecord>,
    pub compensations: Vec<CompensationRecord>,
}

impl SagaHistory {
    /// How the saga ended, if it is `done` (see [`SagaEnd`]); `None` for any other state.
    pub fn ended(&self) -> Option<SagaEnd> {
        (self.saga.saga_state == SagaState::Done)
            .then(|| SagaEnd::of(self.events.iter().any(|e| e.event_type == "failed")))
    }
}

/// The history of saga `id`, or `None` if there is no such saga.
pub async fn saga_history(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<SagaHistory>> {
    let Some(saga) = get_saga(conn, id).await? else {
        return Ok(None);
    };
    let mut events: Vec<EventRow> = saga_node_event::table
        .filter(saga_node_event::saga_id.eq(id))
        .select(EventRow::as_select())
        .order((saga_node_event::event_time, saga_node_event::node_id))
        .load(conn)
        .await?;
    let aside = undo_failures(conn, &[id]).await?;
    if !aside.is_empty() {
        events.extend(aside);
        events.sort_by_key(|e| (e.event_time, e.node_id));
    }
    let commits = saga_commit_record::table
        .filter(saga_commit_record::saga_id.eq(id))
        .select(CommitRecord::as_select())
        .order(saga_commit_record::time_committed)
        .load(conn)
        .await?;
    let compensations = saga_compensation_record::table
        .filter(saga_compensation_record::saga_id.eq(id))
        .select(CompensationRecord::as_select())
        .order(saga_compensation_record::time_compensated)
        .load(conn)
        .await?;
    Ok(Some(SagaHistory {
        saga,
        events,
        commits,
        compensations,
    }))
}

/// Notes (with `Some`) or clears (with `None`) why node `node_name` of saga `id` is waiting for an unknown
/// `COMMIT` outcome (the `saga_waiting` table).
///
/// Fenced: a note is written only while `owner` still owns the saga (its executor, at its generation, the
/// saga unfinished), so a stale executor cannot leave a note about a saga another one drives. (The check is a
/// plain read of the saga row: it does not wait for the unsettled transaction, which holds the fence's share
/// lock on that row.)
pub async fn note_waiting(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    node_name: &str,
    owner: SagaOwner,
    reason: Option<&str>,
) -> QueryResult<()> {
    use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
    match reason {
        Some(reason) => {
            diesel::sql_query(
                "INSERT INTO saga_waiting (saga_id, node_name, reason, time_waiting, creator) \
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS ( \
                     SELECT 1 FROM saga WHERE id = $1 AND current_sec = $5 AND adopt_generation = $6 \
                       AND saga_state IN ('running', 'unwinding') AND time_stuck IS NULL) \
                 ON CONFLICT (saga_id, node_name) DO UPDATE \
                 SET reason = $3, time_waiting = $4, creator = $5",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<Text, _>(node_name)
            .bind::<Text, _>(reason)
            .bind::<Timestamptz, _>(Utc::now())
            .bind::<SqlUuid, _>(owner.sec_id)
            .bind::<diesel::sql_types::BigInt, _>(owner.generation)
            .execute(conn)
            .await?;
        }
        None => {
            diesel::sql_query("DELETE FROM saga_waiting WHERE saga_id = $1 AND node_name = $2")
                .bind::<SqlUuid, _>(id)
                .bind::<Text, _>(node_name)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// Why saga `id` is waiting, and since when, if a node of it waits for an unknown `COMMIT` outcome and the
/// saga is unfinished. Only a note by the saga's current executor counts (one left by an executor the saga
/// was adopted from is stale).
pub async fn waiting_note(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(String, DateTime<Utc>)>> {
    use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = Text)]
        reason: String,
        #[diesel(sql_type = Timestamptz)]
        time_waiting: DateTime<Utc>,
    }
    let row: Option<Waiting> = diesel::sql_query(
        "SELECT w.reason, w.time_waiting FROM saga_waiting w JOIN saga s ON s.id = w.saga_id \
         WHERE w.saga_id = $1 AND s.saga_state IN ('running', 'unwinding') AND s.time_stuck IS NULL \
           AND w.creator = s.current_sec \
         ORDER BY w.time_waiting LIMIT 1",
    )
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|w| (w.reason, w.time_waiting)))
}
