//! steno's `SecStore` on PostgreSQL, with fencing and fewer durable commits.
//!
//! # What steno asks of a store
//!
//! steno calls `saga_create` (fallible), then `record_event` and `saga_update` (infallible: they return `()`).
//! A durable store must therefore retry those two until they land. They are idempotent: an event is keyed by
//! (saga, node, event type) and a repeated insert does nothing.
//!
//! # Fencing
//!
//! Every write is conditional on this executor still owning the saga at the generation it registered with
//! (see [`crate::owner`]). When the condition fails, the saga's [`Fence`] is raised: the write is dropped, the
//! engine sees the fence and stops driving the saga. Nothing is retried against a fence.
//!
//! # Held events
//!
//! Not every event steno records is written when steno records it. A **held** event is kept in memory, with
//! the time steno recorded it, and written by a later write that carries it. Only events of nodes that have
//! no effect outside the write that carries their events are held, so a crash before that write loses
//! nothing but a node that recovery runs again. Three kinds of node have held events:
//!
//! - A **database node**: its commit transaction writes the node's `started` and `succeeded` events itself,
//!   together with its commit record, so that the node's effect and its log entries land atomically (and a
//!   node costs one durable commit, not three). steno's `started` (and `undo_started`) is held, and written
//!   only if steno next records `failed` (or `undo_failed`), in the same write; when the engine's own
//!   transaction writes it first, the held copy is dropped, and steno's later `succeeded` (and
//!   `undo_finished`) is skipped ([`SagaLogHandle::mark_written`]).
//! - A **node without an action** other than the end node: steno's start node, a constant (a subsaga's
//!   parameters), a subsaga's start and end nodes. Its `started` and `succeeded` are held until the saga's next
//!   write (a database node's commit transaction claims those of every such node whose both events are held,
//!   [`SagaLogHandle::claim_held_events`]; any other write takes them along), two durable commits fewer each
//!   (eight per subsaga). Recovery runs such a node again, and it computes the same value: a constant's value
//!   is in the DAG, a subsaga's start and end nodes pass on its parameters and its output.
//! - steno's **end node**: its `started` and `succeeded` are held until the transaction that records the saga
//!   `done` (two durable commits fewer per saga). Recovery runs it again, which does nothing.
//!
//! External nodes' events are not held: their `started` must be in the log before the call goes out, so
//! that recovery in an unwinding saga knows to compensate the call.
//!
//! # One round trip per fenced write
//!
//! An event write is one statement that checks the owner, takes the share lock and inserts
//! ([`crate::records::insert_events_if_owner`]); a state change is one conditional `UPDATE`. Only `done`
//! takes a transaction (events, the `undo_failed` check, the state). The `undo_failed` check reads the log
//! only if an undo failure can be there: steno recorded an undo event through this store, or the log the
//! saga was resumed from holds an `undo_failed` ([`SagaRegistration::undo_failed_logged`]).
//!
//! # Stuck sagas
//!
//! steno reports a saga whose undo failed as `done`. When steno marks a saga `done`, this store looks for an
//! `undo_failed` event in the same transaction and records `stuck`, with the node and the error, instead.
//!
//! # An Omicron-readable log
//!
//! Nexus's readers of the saga log know Omicron's four states (`running`, `unwinding`, `done`, `abandoned`) and
//! refuse every `undo_failed` event row; one row they cannot parse fails a whole listing. A store made with
//! `omicron_readable` on ([`PgSecStore::new`]) writes nothing they cannot parse:
//!
//! - a stuck saga is recorded `unwinding`, with `stuck_node`, `stuck_reason` and `time_stuck` set: ratchet's
//!   readers see it `stuck` ([`crate::SagaRow::saga_state`] reads [`crate::EFFECTIVE_STATE_SQL`]), and
//!   nothing treats it as unfinished ([`crate::owner`]'s fence and every recovery listing require
//!   `time_stuck IS NULL`); Nexus's recovery leaves it alone because ratchet drives it (`driven_by_ratchet`);
//! - an `undo_failed` event is written to `saga_undo_failure` (in the transaction of the fenced write of the
//!   node's other events) instead of `saga_node_event`; ratchet's readers of a log read both tables.
//!
//! Off, the store records `stuck` and `undo_failed` as before. Readers handle both forms either way, so a
//! database may hold both.

use crate::error::DbError;
use crate::event::{EventRow, undo_error_message, uuid_of};
use crate::fence::{Fence, Liveness};
use crate::owner::{SagaOwner, unfinished};
use crate::pool::DbPool;
use crate::retry::RetryPolicy;
use crate::saga::{SagaRow, SagaState, insert_saga};
use crate::schema::{saga, saga_node_event};
use crate::transaction::in_transaction;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use steno::{SagaCachedState, SagaCreateParams, SagaId, SagaNodeEvent, SagaNodeEventType};
use uuid::Uuid;

/// What the engine tells the store about a saga before steno starts or resumes it.
#[derive(Clone, Debug)]
pub struct SagaRegistration {
    /// Who may write, at which generation.
    pub owner: SagaOwner,
    /// The version of the saga definition (recorded when the saga is created).
    pub definition_version: i32,
    /// steno node ids of database nodes, whose `started` and `undo_started` events are held (their own
    /// transaction writes them).
    pub db_nodes: HashSet<u32>,
    /// steno node id to node name, for diagnoses.
    pub node_names: BTreeMap<u32, String>,
    /// steno node id of the DAG's end node, whose events are held until the saga's `done` state is written.
    pub end_node: Option<u32>,
    /// steno node ids of the DAG's nodes without an action other than the end node (the start node,
    /// constants, subsaga start and end nodes), whose `started` and `succeeded` events are held until the
    /// saga's next write.
    pub nodes_without_action: HashSet<u32>,
    /// Whether the log the saga was resumed from (recovery, adoption, retry-unwind) holds an `undo_failed`
    /// event: written before this store saw the saga, it decides whether `done` is recorded `stuck`.
    pub undo_failed_logged: bool,
    /// The typed nodes' arguments, by path, for a saga being created: `saga_create` writes them into the
    /// persisted DAG, under [`NODE_ARGS_KEY`](crate::NODE_ARGS_KEY), in the saga's own `INSERT`. `None` for a
    /// resumed saga (its row holds them already) and for a saga without typed nodes.
    pub node_args: Option<serde_json::Value>,
}

/// The engine's handle on one registered saga's log.
#[derive(Clone, Debug)]
pub struct SagaLogHandle(Arc<SagaLogState>);

#[derive(Debug)]
struct SagaLogState {
    saga_id: Uuid,
    registration: SagaRegistration,
    fence: Arc<Fence>,
    log: Mutex<HeldLog>,
}

/// What this store holds in memory of one saga's log.
#[derive(Debug, Default)]
struct HeldLog {
    /// The held events, with the time steno recorded them (the row's `event_time` when one is written, so
    /// that the saga's timeline shows when the node started).
    held: Vec<(SagaNodeEvent, DateTime<Utc>)>,
    /// (node, event type) that the engine's own transaction already wrote: steno's copy is skipped.
    written_by_engine: HashSet<(u32, &'static str)>,
    /// Set when a node's commit could be neither kept nor compensated: the saga must end `stuck`.
    stuck: Option<(String, String)>,
    /// Whether steno recorded an undo event (so the log may hold an `undo_failed`).
    undo_recorded: bool,
    /// The saga's typed errors of failed compensations, by node ([`SagaLogHandle::note_undo_error`]).
    undo_errors: HashMap<u32, serde_json::Value>,
    /// The nodes without an action whose held events a database node's transaction in flight carries
    /// ([`SagaLogHandle::claim_held_events`]); no other write takes them meanwhile.
    in_flight: HashSet<u32>,
}

impl SagaLogHandle {
    pub fn owner(&self) -> SagaOwner {
        self.0.registration.owner
    }

    pub fn fence(&self) -> &Arc<Fence> {
        &self.0.fence
    }

    /// The engine's transaction has committed `written` events of `node_id` (which steno has recorded, or
    /// will): drop their held copies, and skip steno's later copies.
    pub fn mark_written(&self, node_id: u32, written: &[&'static str]) {
        let mut log = lock(&self.0.log);
        log.held.retain(|(e, _)| {
            u32::from(e.node_id) != node_id || !written.contains(&e.event_type.label())
        });
        for label in written {
            if matches!(*label, "succeeded" | "undo_finished") {
                log.written_by_engine.insert((node_id, label));
            }
        }
        log.in_flight.remove(&node_id);
    }

    /// Whether `node_id`'s `started` and `succeeded` events are held until the saga's next write: it is a
    /// node without an action other than the end node.
    fn held_until_next_write(&self, node_id: u32) -> bool {
        self.0.registration.nodes_without_action.contains(&node_id)
    }

    /// Notes the saga's typed error (serialized) with which node `node_id`'s compensation failed: steno's
    /// `undo_failed` event carries only a message, so the store adds it there (as `saga_error` beside the
    /// message in `PermanentFailure.source_error`) when steno records the event.
    pub fn note_undo_error(&self, node_id: u32, error: serde_json::Value) {
        lock(&self.0.log).undo_errors.insert(node_id, error);
    }

    /// The typed error noted for node `node_id`'s failed compensation, if any.
    pub fn undo_error(&self, node_id: u32) -> Option<serde_json::Value> {
        lock(&self.0.log).undo_errors.get(&node_id).cloned()
    }

    /// Records that the saga must end `stuck` (a commit neither kept nor compensated), whatever its log says.
    pub fn note_stuck(&self, node: &str, reason: &str) {
        tracing::error!(saga_id = %self.0.saga_id, node, reason, "saga will be recorded stuck");
        lock(&self.0.log)
            .stuck
            .get_or_insert((node.to_owned(), reason.to_owned()));
    }

    /// The held events of the nodes without an action, as rows for a database node's commit transaction to
    /// write: those of every such node whose `started` and `succeeded` are both held and that no other
    /// transaction in flight has claimed. Returns the nodes claimed: the caller must then either
    /// [`mark_written`](SagaLogHandle::mark_written) each one's `started` and `succeeded` (it committed) or
    /// [`release_held_events`](SagaLogHandle::release_held_events) (it did not, or may not have).
    pub fn claim_held_events(&self) -> (Vec<u32>, Vec<EventRow>) {
        let mut log = lock(&self.0.log);
        let complete: Vec<u32> = log
            .held
            .iter()
            .filter(|(e, _)| matches!(e.event_type, SagaNodeEventType::Succeeded(_)))
            .map(|(e, _)| u32::from(e.node_id))
            .filter(|node| self.held_until_next_write(*node) && !log.in_flight.contains(node))
            .filter(|node| {
                log.held.iter().any(|(e, _)| {
                    u32::from(e.node_id) == *node
                        && matches!(e.event_type, SagaNodeEventType::Started)
                })
            })
            .collect();
        if complete.is_empty() {
            return (complete, Vec::new());
        }
        let rows = rows_of(
            self.0.saga_id,
            self.owner().sec_id,
            log.held.iter().filter(|(e, _)| {
                complete.contains(&u32::from(e.node_id))
                    && matches!(
                        e.event_type,
                        SagaNodeEventType::Started | SagaNodeEventType::Succeeded(_)
                    )
            }),
        );
        log.in_flight.extend(complete.iter().copied());
        (complete, rows)
    }

    /// Gives back `nodes` claimed by [`claim_held_events`](SagaLogHandle::claim_held_events) whose
    /// transaction did not commit (or may not have): the next write takes their events.
    pub fn release_held_events(&self, nodes: &[u32]) {
        let mut log = lock(&self.0.log);
        for node in nodes {
            log.in_flight.remove(node);
        }
    }

    /// Undoes [`SagaLogHandle::mark_written`] for one event the engine has since deleted.
    pub fn unmark_written(&self, node_id: u32, label: &'static str) {
        lock(&self.0.log)
            .written_by_engine
            .remove(&(node_id, label));
    }
}

/// Locks a mutex, recovering from poisoning: the protected sets stay consistent even if a holder panicked,
/// because every critical section here is a single insert or removal.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held events as rows, each with the time steno recorded it. An event serde cannot encode (steno's own
/// event types never are) is logged and dropped.
fn rows_of<'a>(
    saga_id: Uuid,
    creator: Uuid,
    events: impl Iterator<Item = &'a (SagaNodeEvent, DateTime<Utc>)>,
) -> Vec<EventRow> {
    events
        .filter_map(|(e, time)| match EventRow::new(e, creator) {
            Ok(mut row) => {
                row.event_time = *time;
                Some(row)
            }
            Err(error) => {
                // TODO-robustness An event steno built but serde cannot encode cannot be stored; steno has no
                // way to hear of it. It does not happen with steno's own event types.
                tracing::error!(%saga_id, %error, "event cannot be encoded; dropped");
                None
            }
        })
        .collect()
}

/// steno's `SecStore` on PostgreSQL for one executor (SEC).
#[derive(Debug)]
pub struct PgSecStore {
    pool: DbPool,
    sec_id: Uuid,
    sagas: Mutex<HashMap<Uuid, SagaLogHandle>>,
    liveness: Arc<Liveness>,
    fenced_writes: Arc<AtomicU64>,
    /// Write only what Omicron's readers parse (see "An Omicron-readable log").
    omicron_readable: bool,
}

impl PgSecStore {
    /// A store for executor `sec_id`. `fenced_writes` counts the writes it drops because another executor
    /// adopted the saga (the engine shares the counter with its own transactions'). `omicron_readable`: record
    /// a stuck saga and a failed undo in forms Omicron's readers parse (see "An Omicron-readable log").
    pub fn new(
        pool: DbPool,
        sec_id: Uuid,
        liveness: Arc<Liveness>,
        fenced_writes: Arc<AtomicU64>,
        omicron_readable: bool,
    ) -> PgSecStore {
        PgSecStore {
            pool,
            sec_id,
            sagas: Mutex::new(HashMap::new()),
            liveness,
            fenced_writes,
            omicron_readable,
        }
    }

    /// Counts one write dropped by the fence and says why.
    fn fenced(&self, saga_id: Uuid, what: &str) {
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%saga_id, what,
            "fenced out: another executor adopted this saga (or it was abandoned); write not recorded");
    }

    pub fn sec_id(&self) -> Uuid {
        self.sec_id
    }

    /// Registers a saga before steno creates or resumes it. Returns the handle the engine's actions use.
    pub fn register(&self, saga_id: SagaId, registration: SagaRegistration) -> SagaLogHandle {
        let saga_id = uuid_of(saga_id);
        let handle = SagaLogHandle(Arc::new(SagaLogState {
            saga_id,
            registration,
            fence: Arc::new(Fence::default()),
            log: Mutex::new(HeldLog::default()),
        }));
        lock(&self.sagas).insert(saga_id, handle.clone());
        handle
    }

    /// Forgets a saga that will write nothing more (it finished, or could not be started).
    pub fn unregister(&self, saga_id: SagaId) {
        lock(&self.sagas).remove(&uuid_of(saga_id));
    }

    fn handle(&self, saga_id: SagaId) -> Option<SagaLogHandle> {
        lock(&self.sagas).get(&uuid_of(saga_id)).cloned()
    }

    /// Takes the held events of the nodes `take` selects out of `handle`'s log, as rows; those of the nodes
    /// without an action (but the end node) too, unless a database node's transaction has claimed them.
    fn take_held(&self, handle: &SagaLogHandle, take: impl Fn(u32) -> bool) -> Vec<EventRow> {
        let mine: Vec<(SagaNodeEvent, DateTime<Utc>)> = {
            let mut guard = lock(&handle.0.log);
            let HeldLog {
                held, in_flight, ..
            } = &mut *guard;
            let (mine, others) = std::mem::take(held).into_iter().partition(|(e, _)| {
                let node = u32::from(e.node_id);
                take(node) || (handle.held_until_next_write(node) && !in_flight.contains(&node))
            });
            *held = others;
            mine
        };
        rows_of(handle.0.saga_id, self.sec_id, mine.iter())
    }

    /// Writes `rows` for one saga in one statement, if `owner` still owns it. Retries until it lands or the
    /// executor is fenced (returns `false`).
    async fn write_events_fenced(
        &self,
        saga_id: Uuid,
        owner: SagaOwner,
        rows: Vec<EventRow>,
    ) -> bool {
        let aside = self.omicron_readable
            && rows
                .iter()
                .any(|row| row.event_type == crate::records::UNDO_FAILED);
        let rows = &Arc::new(rows);
        retry_forever(
            "recording saga events",
            saga_id,
            &self.liveness,
            || async move {
                let mut conn = self.pool.get().await?;
                if !aside {
                    return Ok::<_, DbError>(
                        crate::records::insert_events_if_owner(&mut conn, saga_id, owner, rows)
                            .await?,
                    );
                }
                let rows = Arc::clone(rows);
                in_transaction(&mut conn, |conn| {
                    async move {
                        Ok::<_, DbError>(
                            crate::records::insert_events_if_owner_undo_failures_aside(
                                conn, saga_id, owner, &rows,
                            )
                            .await?,
                        )
                    }
                    .boxed()
                })
                .await
            },
        )
        .await
    }

    /// Sets a saga's state, if `owner` still owns it. `done` becomes `stuck` when the log has an
    /// `undo_failed` event. Returns `false` when fenced.
    async fn update_state(&self, handle: &SagaLogHandle, update: SagaCachedState) -> bool {
        let saga_id = handle.0.saga_id;
        let owner = handle.owner();
        if !matches!(update, SagaCachedState::Done) {
            let state = state_of(update);
            return retry_forever(
                "updating saga state",
                saga_id,
                &self.liveness,
                || async move {
                    let mut conn = self.pool.get().await?;
                    // The conditional UPDATE is its own fence: it changes the row only if `owner` still owns it.
                    let updated = diesel::update(
                        saga::table
                            .filter(saga::id.eq(saga_id))
                            .filter(saga::current_sec.eq(owner.sec_id))
                            .filter(saga::adopt_generation.eq(owner.generation))
                            .filter(unfinished()),
                    )
                    .set(saga::saga_state.eq(state))
                    .execute(&mut conn)
                    .await?;
                    Ok::<_, DbError>(updated == 1)
                },
            )
            .await;
        }
        // The end node's held events (and those of the nodes without an action still held) land with `done`.
        let end = handle.0.registration.end_node;
        let end_events = self.take_held(handle, |node| Some(node) == end);
        let end_events = Arc::new(end_events);
        let end_events = &end_events;
        let may_have_undo_failed =
            handle.0.registration.undo_failed_logged || lock(&handle.0.log).undo_recorded;
        let omicron_readable = self.omicron_readable;
        retry_forever(
            "updating saga state",
            saga_id,
            &self.liveness,
            || async move {
                let mut conn = self.pool.get().await?;
                let handle = handle.clone();
                let end_events = Arc::clone(end_events);
                in_transaction(&mut conn, |conn| {
                    async move {
                        let names = &handle.0.registration.node_names;
                        if !crate::records::insert_events_if_owner(
                            conn,
                            saga_id,
                            owner,
                            &end_events,
                        )
                        .await?
                        {
                            return Ok::<_, DbError>(false);
                        }
                        let undo_failed: Option<(i64, Option<serde_json::Value>)> =
                            if may_have_undo_failed {
                                let logged: Option<(i64, Option<serde_json::Value>)> =
                                    saga_node_event::table
                                        .filter(saga_node_event::saga_id.eq(saga_id))
                                        .filter(
                                            saga_node_event::event_type
                                                .eq(crate::records::UNDO_FAILED),
                                        )
                                        .select((saga_node_event::node_id, saga_node_event::data))
                                        .order(saga_node_event::node_id)
                                        .first(conn)
                                        .await
                                        .optional()?;
                                let aside = crate::saga::undo_failures(conn, &[saga_id])
                                    .await?
                                    .into_iter()
                                    .map(|e| (e.node_id, e.data));
                                logged
                                    .into_iter()
                                    .chain(aside)
                                    .min_by_key(|(node, _)| *node)
                            } else {
                                None
                            };
                        let noted = lock(&handle.0.log).stuck.clone();
                        let (state, node, reason) = match undo_failed {
                            None => match noted {
                                None => (SagaState::Done, None, None),
                                Some((node, reason)) => {
                                    (SagaState::Stuck, Some(node), Some(reason))
                                }
                            },
                            Some((node_id, data)) => {
                                let node = u32::try_from(node_id)
                                    .ok()
                                    .and_then(|id| names.get(&id).cloned())
                                    .unwrap_or_else(|| format!("node {node_id}"));
                                let reason = undo_error_message(data.as_ref());
                                (SagaState::Stuck, Some(node), Some(reason))
                            }
                        };
                        let now = Utc::now();
                        let stuck = state == SagaState::Stuck;
                        // Omicron's enum has no `stuck`: the readable form is `unwinding` with `time_stuck` set.
                        let recorded = if stuck && omicron_readable {
                            SagaState::Unwinding
                        } else {
                            state
                        };
                        diesel::update(saga::table.filter(saga::id.eq(saga_id)))
                            .set((
                                saga::saga_state.eq(recorded),
                                saga::stuck_node.eq(node),
                                saga::stuck_reason.eq(reason),
                                saga::time_finished.eq(now),
                                saga::time_stuck.eq(stuck.then_some(now)),
                            ))
                            .execute(conn)
                            .await?;
                        Ok(true)
                    }
                    .boxed()
                })
                .await
            },
        )
        .await
    }
}

/// The state ratchet records for a state steno reports (`stuck` is ratchet's own, decided from the log).
fn state_of(state: SagaCachedState) -> SagaState {
    match state {
        SagaCachedState::Running => SagaState::Running,
        SagaCachedState::Unwinding => SagaState::Unwinding,
        SagaCachedState::Done => SagaState::Done,
    }
}

/// Retries `attempt` until it returns `Ok` (transient and permanent errors alike: steno gives the store no way
/// to fail), logging each failure. Waits forever, without writing, once the executor is dead.
async fn retry_forever<T, F, Fut>(
    what: &str,
    saga_id: Uuid,
    liveness: &Liveness,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut attempts = 0u32;
    loop {
        liveness.check().await;
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                attempts += 1;
                let delay = RetryPolicy::FOREVER
                    .delay(attempts)
                    .unwrap_or(RetryPolicy::FOREVER.max_delay);
                if error.is_transient() {
                    tracing::warn!(%saga_id, %error, attempts, ?delay, "{what}: transient failure, retrying");
                } else {
                    tracing::error!(%saga_id, %error, attempts, ?delay, "{what}: failed, retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How long `saga_create` retries transient failures before it gives steno the error.
const CREATE_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

#[async_trait::async_trait]
impl steno::SecStore for PgSecStore {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        if self.liveness.is_stopped() {
            anyhow::bail!(
                "the engine is shutting down: saga {} not created",
                params.id
            );
        }
        self.liveness.check().await;
        let handle = self.handle(params.id).ok_or_else(|| {
            anyhow::anyhow!(
                "saga {} was not registered with the store before creation",
                params.id
            )
        })?;
        let now = Utc::now();
        let owner = handle.owner();
        let mut saga_dag = params.dag;
        if let (Some(node_args), serde_json::Value::Object(dag)) =
            (&handle.0.registration.node_args, &mut saga_dag)
        {
            dag.insert(crate::NODE_ARGS_KEY.to_owned(), node_args.clone());
        }
        let row = SagaRow {
            id: uuid_of(params.id),
            creator: self.sec_id,
            time_created: now,
            name: params.name.to_string(),
            saga_dag,
            saga_state: state_of(params.state),
            current_sec: Some(owner.sec_id),
            adopt_generation: owner.generation,
            adopt_time: now,
            abandon_time: None,
            abandon_reason: None,
            abandon_comment: None,
            definition_version: Some(handle.0.registration.definition_version),
            time_finished: None,
            stuck_node: None,
            stuck_reason: None,
            time_stuck: None,
            driven_by_ratchet: true,
        };
        let mut attempts = 0;
        let started = std::time::Instant::now();
        loop {
            let result: Result<(), DbError> = async {
                let mut conn = self.pool.get().await?;
                insert_saga(&mut conn, &row).await?;
                Ok(())
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                // An earlier attempt's insert landed although its reply was lost: the saga exists.
                Err(DbError::Query(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ))) if attempts > 0 => return Ok(()),
                // Long enough to ride through a server restart; steno's create is the one fallible call.
                Err(error) if error.is_transient() && started.elapsed() < CREATE_BUDGET => {
                    attempts += 1;
                    let delay = RetryPolicy::FOREVER.delay(attempts).unwrap_or_default();
                    tracing::warn!(saga_id = %row.id, %error, "creating saga: transient failure, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(anyhow::Error::new(error).context("creating saga")),
            }
        }
    }

    async fn record_event(&self, mut event: SagaNodeEvent) {
        let Some(handle) = self.handle(event.saga_id) else {
            // An invariant of the engine: every saga is registered before steno can record its events.
            tracing::error!(saga_id = %event.saga_id, ?event, "event for an unregistered saga dropped");
            return;
        };
        if handle.fence().is_raised() {
            self.fenced(handle.0.saga_id, event.event_type.label());
            return;
        }
        let node_id = u32::from(event.node_id);
        let label = event.event_type.label();
        {
            let mut log = lock(&handle.0.log);
            if let SagaNodeEventType::UndoFailed(steno::UndoActionError::PermanentFailure {
                source_error: serde_json::Value::Object(fields),
            }) = &mut event.event_type
                && let Some(typed) = log.undo_errors.get(&node_id)
            {
                fields.insert(crate::event::SAGA_ERROR_FIELD.to_owned(), typed.clone());
            }
            if matches!(
                event.event_type,
                SagaNodeEventType::UndoStarted
                    | SagaNodeEventType::UndoFinished
                    | SagaNodeEventType::UndoFailed(_)
            ) {
                log.undo_recorded = true;
            }
            if log.written_by_engine.remove(&(node_id, label)) {
                return;
            }
            let registration = &handle.0.registration;
            let held = match event.event_type {
                SagaNodeEventType::Started => {
                    registration.end_node == Some(node_id)
                        || handle.held_until_next_write(node_id)
                        || registration.db_nodes.contains(&node_id)
                }
                SagaNodeEventType::Succeeded(_) => {
                    registration.end_node == Some(node_id) || handle.held_until_next_write(node_id)
                }
                SagaNodeEventType::UndoStarted => registration.db_nodes.contains(&node_id),
                _ => false,
            };
            log.held.push((event, Utc::now()));
            if held {
                return;
            }
        }
        // This event, with its node's held ones (and those of the nodes without an action), in one write.
        let rows = self.take_held(&handle, |node| node == node_id);
        if !self
            .write_events_fenced(handle.0.saga_id, handle.owner(), rows)
            .await
        {
            self.fenced(handle.0.saga_id, label);
            handle.fence().raise();
        }
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let Some(handle) = self.handle(id) else {
            tracing::error!(saga_id = %id, ?update, "state update for an unregistered saga dropped");
            return;
        };
        if handle.fence().is_raised() {
            self.fenced(handle.0.saga_id, "state update");
            return;
        }
        if !self.update_state(&handle, update).await {
            self.fenced(handle.0.saga_id, "state update");
            handle.fence().raise();
        }
    }
}
