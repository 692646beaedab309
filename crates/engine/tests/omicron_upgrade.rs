//! Adopting ratchet on Nexus's database: Omicron's saga tables, holding plain steno sagas that Nexus's store
//! wrote and that are in flight when Nexus stops, are upgraded in place by ratchet's migrations; ratchet's
//! engine (under the same executor id) then recovers those sagas, their actions registered as unchecked steno
//! actions, and finishes them, while new typed sagas run beside them.

mod common;

use common::*;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ratchet_engine::{
    EngineBuilder, EngineConfig, SagaBuilder, SagaCx, SagaDef, SagaOutcome, StenoSaga,
};
use ratchet_example_saga::{self as example, ProvisionWidget};
use ratchet_store::{DbPool, PoolConfig, connect_pool, establish, get_saga, run_migrations};
use ratchet_test_utils::omicron::{OMICRON_SAGA_SCHEMA, OmicronSecStore};
use ratchet_test_utils::testing::test_server;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use steno::{
    ActionContext, ActionError, ActionFunc, DagBuilder, Node, SagaDag, SagaName, SagaType,
};
use uuid::Uuid;

/// The legacy saga's name, as Nexus registers it.
const LEGACY_SAGA: &str = "legacy-provision";

/// The legacy saga's parameters, as plain steno gets them (no ratchet envelope).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LegacyParams {
    /// The saga's id (steno's action context has none): its effects are recorded under it.
    saga_id: Uuid,
    /// Fail at `wait` (so the saga unwinds).
    fail: bool,
}

/// What the legacy actions need of their context, whichever executor runs them: the host's side of adopting
/// ratchet is to implement this for ratchet's `SagaCx` beside its own context.
trait LegacyServices: std::fmt::Debug + Send + Sync + 'static {
    fn pool(&self) -> &DbPool;
    /// Whether an action should park forever where the test wants the old executor to stop.
    fn parks(&self) -> bool;
}

/// Nexus's context under plain steno, before ratchet.
#[derive(Debug)]
struct PlainContext {
    pool: DbPool,
}

#[derive(Debug)]
struct PlainSaga;

impl SagaType for PlainSaga {
    type ExecContextType = PlainContext;
}

impl LegacyServices for PlainContext {
    fn pool(&self) -> &DbPool {
        &self.pool
    }
    fn parks(&self) -> bool {
        true
    }
}

/// The same saga, registered with ratchet: only unchecked steno actions, for incremental adoption.
struct LegacyProvision;

impl SagaDef for LegacyProvision {
    const NAME: &'static str = LEGACY_SAGA;
    type Params = LegacyParams;
    type Context = ();
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        unchecked RESERVE => reserve_action::<StenoSaga<LegacyProvision>>(),
        unchecked WAIT => wait_action::<StenoSaga<LegacyProvision>>(),
        unchecked FINISH => finish_action::<StenoSaga<LegacyProvision>>(),
    }

    fn build(_: &LegacyParams, _: &mut SagaBuilder<Self>) -> Result<(), String> {
        Err(
            "legacy-provision sagas are created by plain steno; ratchet only recovers them"
                .to_owned(),
        )
    }
}

impl LegacyServices for SagaCx<LegacyProvision> {
    fn pool(&self) -> &DbPool {
        self.unchecked_pool()
    }
    fn parks(&self) -> bool {
        false
    }
}

const RESERVE: &str = "legacy.reserve";
const WAIT: &str = "legacy.wait";
const FINISH: &str = "legacy.finish";

type Action<T> = Arc<dyn steno::Action<T>>;

fn reserve_action<T: SagaType>() -> Action<T>
where
    T::ExecContextType: LegacyServices,
{
    ActionFunc::new_action(RESERVE, effect::<T>, undo_reserve::<T>)
}

fn wait_action<T: SagaType>() -> Action<T>
where
    T::ExecContextType: LegacyServices,
{
    steno::new_action_noop_undo(WAIT, wait::<T>)
}

fn finish_action<T: SagaType>() -> Action<T>
where
    T::ExecContextType: LegacyServices,
{
    steno::new_action_noop_undo(FINISH, effect::<T>)
}

/// Records the node's effect idempotently (as Nexus's actions must be: steno re-runs a node that was started
/// and not finished).
async fn record_effect(pool: &DbPool, saga: Uuid, node: &str) -> Result<(), ActionError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| ActionError::action_failed(e.to_string()))?;
    diesel::sql_query(
        "INSERT INTO legacy_effect (saga_id, node) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind::<SqlUuid, _>(saga)
    .bind::<Text, _>(node)
    .execute(&mut conn)
    .await
    .map_err(|e| ActionError::action_failed(e.to_string()))?;
    Ok(())
}

fn saga_uuid<T: SagaType>(ctx: &ActionContext<T>) -> Result<Uuid, ActionError> {
    Ok(ctx.saga_params::<LegacyParams>()?.saga_id)
}

async fn effect<T: SagaType>(ctx: ActionContext<T>) -> Result<(), ActionError>
where
    T::ExecContextType: LegacyServices,
{
    record_effect(ctx.user_data().pool(), saga_uuid(&ctx)?, &ctx.node_label()).await
}

/// Parks forever under the old executor (the saga is in flight when it stops); fails when asked to.
async fn wait<T: SagaType>(ctx: ActionContext<T>) -> Result<(), ActionError>
where
    T::ExecContextType: LegacyServices,
{
    if ctx.saga_params::<LegacyParams>()?.fail {
        return Err(ActionError::action_failed("asked to fail".to_owned()));
    }
    if ctx.user_data().parks() {
        std::future::pending::<()>().await;
    }
    record_effect(ctx.user_data().pool(), saga_uuid(&ctx)?, &ctx.node_label()).await
}

/// Undoes `reserve`; parks forever under the old executor (the saga is unwinding when it stops).
async fn undo_reserve<T: SagaType>(ctx: ActionContext<T>) -> Result<(), anyhow::Error>
where
    T::ExecContextType: LegacyServices,
{
    if ctx.user_data().parks() {
        std::future::pending::<()>().await;
    }
    let mut conn = ctx.user_data().pool().get().await?;
    diesel::sql_query("DELETE FROM legacy_effect WHERE saga_id = $1 AND node = $2")
        .bind::<SqlUuid, _>(saga_uuid(&ctx)?)
        .bind::<Text, _>(ctx.node_label())
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn legacy_dag(params: &LegacyParams) -> Arc<SagaDag> {
    let actions = [
        reserve_action::<PlainSaga>(),
        wait_action::<PlainSaga>(),
        finish_action::<PlainSaga>(),
    ];
    let mut dag = DagBuilder::new(SagaName::new(LEGACY_SAGA));
    dag.append(Node::action("reserve", "Reserve", actions[0].as_ref()));
    dag.append(Node::action("wait", "Wait", actions[1].as_ref()));
    dag.append(Node::action("finish", "Finish", actions[2].as_ref()));
    let dag = dag.build().expect("the legacy DAG builds");
    Arc::new(SagaDag::new(dag, serde_json::to_value(params).unwrap()))
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn count(pool: &DbPool, sql: &str) -> i64 {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .count
}

/// Nexus (plain steno on `CockroachDbSecStore`'s rows) starts two sagas and stops with both in flight: `a`
/// running, parked in `wait` (its `reserve` succeeded); `b` unwinding, parked in `reserve`'s undo (its `wait`
/// failed). Returns their ids once the log shows both there; the old executor's runtime is then shut down,
/// which drops every task of it (as a process exit would): it writes nothing more.
fn nexus_before_ratchet(url: &str, sec_id: Uuid) -> (Uuid, Uuid) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ids = runtime.block_on(async move {
            let pool = connect_pool(&url, &PoolConfig::default()).await.unwrap();
            let store = Arc::new(OmicronSecStore::new(sec_id, pool.clone()));
            let log = slog::Logger::root(slog::Discard, slog::o!());
            let sec = steno::sec(log, store);
            let context = Arc::new(PlainContext { pool: pool.clone() });
            let mut registry = steno::ActionRegistry::<PlainSaga>::new();
            registry.register(reserve_action::<PlainSaga>());
            registry.register(wait_action::<PlainSaga>());
            registry.register(finish_action::<PlainSaga>());
            let registry = Arc::new(registry);
            let mut ids = Vec::new();
            for fail in [false, true] {
                let saga_id = Uuid::new_v4();
                let id = newtype_uuid::GenericUuid::from_untyped_uuid(saga_id);
                let _done = sec
                    .saga_create(
                        id,
                        Arc::clone(&context),
                        legacy_dag(&LegacyParams { saga_id, fail }),
                        Arc::clone(&registry),
                    )
                    .await
                    .unwrap();
                sec.saga_start(id).await.unwrap();
                ids.push(saga_id);
            }
            let (a, b) = (ids[0], ids[1]);
            // `a`: `wait` (node 1) started; `b`: `reserve`'s (node 0) undo started.
            let in_flight = format!(
                "SELECT count(*) AS count FROM saga_node_event \
                 WHERE (saga_id = '{a}' AND node_id = 1 AND event_type = 'started') \
                    OR (saga_id = '{b}' AND node_id = 0 AND event_type = 'undo_started')"
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while count(&pool, &in_flight).await < 2 {
                assert!(
                    Instant::now() < deadline,
                    "the plain steno sagas never got in flight"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (a, b)
        });
        runtime.shutdown_background();
        ids
    })
    .join()
    .expect("the plain steno executor's thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omicron_tables_with_sagas_in_flight_are_upgraded_and_their_sagas_finished() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let server = test_server().await.unwrap();
    let db = server.blank_database().await.unwrap();
    let mut conn = establish(&db.url).await.unwrap();
    conn.batch_execute(OMICRON_SAGA_SCHEMA).await.unwrap();
    conn.batch_execute(
        "CREATE TABLE legacy_effect (saga_id UUID NOT NULL, node TEXT NOT NULL, PRIMARY KEY (saga_id, node))",
    )
    .await
    .unwrap();
    run_migrations(&db.url, &example::MIGRATIONS).await.unwrap();

    // Nexus's executor id survives its restart.
    let sec_id = Uuid::new_v4();
    let (a, b) = nexus_before_ratchet(&db.url, sec_id);

    // The saga rows as Nexus left them: Omicron's columns only.
    let before: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM saga WHERE creator = $1 AND current_sec = $1 \
           AND adopt_generation = 1 AND saga_state IN ('running', 'unwinding')",
    )
    .bind::<SqlUuid, _>(sec_id)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        before.count, 2,
        "Nexus left a running and an unwinding saga"
    );

    // ratchet's engine starts with migrations on: they upgrade the tables in place, and recovery resumes both.
    // Nexus's executor has stopped for good, so this engine takes the sagas plain steno created: explicitly
    // (by default recovery takes only ratchet's own, since Nexus may still drive plain steno sagas under this
    // executor id).
    let mut config = EngineConfig::new(&db.url, sec_id);
    config.recovery_scope = ratchet_store::RecoveryScope::PlainStenoToo;
    let (engine, report) = EngineBuilder::new(config)
        .register::<LegacyProvision>(Arc::new(()))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("ratchet starts on Omicron's tables");
    let mut resumed = report.resumed.clone();
    resumed.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(resumed, expected, "{report:?}");

    // A new typed saga runs beside them.
    let account = account(&engine).await;
    let (_, typed) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    assert!(matches!(typed, SagaOutcome::Succeeded { .. }), "{typed:?}");

    // After the upgrade, Nexus creates the legacy saga on ratchet from the DAG it builds with steno's own
    // `DagBuilder`, labels and all (its plain nodes are known by their names); its actions, unchanged, read
    // their parameters with `saga_params`.
    let c = Uuid::new_v4();
    let created = engine
        .create_from_dag::<LegacyProvision>(
            legacy_dag(&LegacyParams {
                saga_id: c,
                fail: false,
            }),
            ratchet_engine::TypedNodes::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        created.nodes(),
        [
            ("reserve".to_owned(), ratchet_engine::NodeKind::Steno),
            ("wait".to_owned(), ratchet_engine::NodeKind::Steno),
            ("finish".to_owned(), ratchet_engine::NodeKind::Steno),
        ]
    );
    let outcome_c = created.run().await.unwrap();
    assert!(
        matches!(outcome_c, SagaOutcome::Succeeded { .. }),
        "{outcome_c:?}"
    );
    assert_eq!(
        count(
            engine.pool(),
            &format!("SELECT count(*) AS count FROM legacy_effect WHERE saga_id = '{c}'")
        )
        .await,
        3
    );

    let outcome_a = engine.wait(a).await.expect("a is tracked");
    let outcome_b = engine.wait(b).await.expect("b is tracked");
    assert!(
        matches!(outcome_a, SagaOutcome::Succeeded { .. }),
        "{outcome_a:?}"
    );
    assert!(
        matches!(outcome_b, SagaOutcome::Unwound { .. }),
        "{outcome_b:?}"
    );

    // Each effect once; `b`'s reserve undone.
    let pool = engine.pool();
    assert_eq!(
        count(
            pool,
            &format!("SELECT count(*) AS count FROM legacy_effect WHERE saga_id = '{a}'")
        )
        .await,
        3
    );
    assert_eq!(
        count(
            pool,
            &format!("SELECT count(*) AS count FROM legacy_effect WHERE saga_id = '{b}'")
        )
        .await,
        0
    );
    let mut conn = pool.get().await.unwrap();
    for id in [a, b] {
        let row = get_saga(&mut conn, id).await.unwrap().unwrap();
        assert_eq!(row.saga_state, "done");
        assert_eq!(row.creator, sec_id);
        assert_eq!(row.current_sec, Some(sec_id));
        assert_eq!(
            row.adopt_generation, 2,
            // A writer of ratchet's at generation 1 would now be fenced. (Nexus's own store checks no
            // generation: only the partition of saga names keeps a live Nexus executor out.)
            "recovery claimed it at a new generation"
        );
        assert_eq!(row.definition_version, None, "plain steno created it");
        assert!(
            row.driven_by_ratchet,
            "claimed by ratchet: Nexus's recovery listing leaves it out from now on"
        );
        assert_eq!(row.abandon_reason, None);
    }
    // The upgrade only added: Omicron's columns are all still there, with their types.
    let columns: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM information_schema.columns WHERE table_name = 'saga' \
           AND ((column_name = 'saga_state' AND udt_name = 'saga_state') \
             OR (column_name = 'abandon_reason' AND udt_name = 'saga_abandon_reason') \
             OR (column_name = 'name' AND data_type = 'character varying'))",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(columns.count, 3);
    engine.shutdown().await;
    drop(conn);
    server.drop_database(&db).await.unwrap();
}
