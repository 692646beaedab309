//! Embedding the engine in a host service: the host's own pool, the host's own migrations, and a start-up
//! check that names what of ratchet's schema is missing.

mod common;

use common::*;
use diesel_async::SimpleAsyncConnection;
use ratchet_engine::{EngineBuilder, EngineConfig, EngineError, SagaOutcome};
use ratchet_example_saga::{self as example, ProvisionWidget};
use ratchet_store::{MIGRATIONS_SQL, PoolConfig, connect_pool, establish};
use std::sync::Arc;
use uuid::Uuid;

/// The engine runs on a pool the host built, and claims connections only from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_the_hosts_pool_runs_sagas() {
    let db = database().await;
    let host_pool = connect_pool(&db.url, &PoolConfig::default()).await.unwrap();
    // Without the pool there is no database: refused, naming what to give.
    let refused = EngineBuilder::new(EngineConfig::for_host_pool(Uuid::new_v4()))
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await;
    assert!(
        matches!(&refused, Err(EngineError::BadConfig(m)) if m.contains("with_pool")),
        "{:?}",
        refused.map(|_| ())
    );
    let (engine, _) = EngineBuilder::new(EngineConfig::for_host_pool(Uuid::new_v4()))
        .with_pool(host_pool.clone())
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("the engine starts on the host's pool, with no URL");
    let account = account(&engine).await;
    let (_, outcome) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(
        host_pool.state().connections >= 1,
        "the host's pool served it"
    );
    let mut conn = host_pool.get().await.unwrap();
    let state = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(state.balance, 70);
}

/// A node's transaction holds exactly one connection and the engine never claims a second one for it: on a
/// host pool of *one* connection (checkouts time out after a second, a transient error the node retries until
/// its budget is spent), sagas of three database nodes each still succeed, and an unwind's compensations run.
/// A node that took a second connection while holding its first would wait on itself until the checkout timed
/// out, every attempt, and its saga would unwind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_a_pool_of_one_connection_runs_sagas() {
    let db = database().await;
    let config = PoolConfig {
        max_size: 1,
        checkout_timeout: std::time::Duration::from_secs(1),
        ..PoolConfig::default()
    };
    let host_pool = connect_pool(&db.url, &config).await.unwrap();
    let (engine, _) = EngineBuilder::new(EngineConfig::for_host_pool(Uuid::new_v4()))
        .with_pool(host_pool.clone())
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    for _ in 0..3 {
        let (_, outcome) = engine
            .run::<ProvisionWidget>(params(account))
            .await
            .unwrap();
        assert!(
            matches!(outcome, SagaOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
    }
    // The fourth costs more than what is left: its charge fails, and the reservation is compensated.
    let mut expensive = params(account);
    expensive.price = 50;
    let (_, outcome) = engine.run::<ProvisionWidget>(expensive).await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    assert_eq!(host_pool.state().connections, 1);
    let state = state(&engine, account).await;
    assert_eq!((state.balance, state.widgets.len()), (10, 3));
}

/// With migrations off, a database that lacks part of ratchet's schema is refused at start, naming exactly
/// what is missing; nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_migrations_off_what_is_missing_is_named() {
    let db = database().await;
    let mut conn = establish(&db.url).await.unwrap();
    conn.batch_execute("DROP TABLE saga_commit_record; ALTER TABLE saga DROP COLUMN time_stuck")
        .await
        .unwrap();
    let mut config = EngineConfig::new(&db.url, Uuid::new_v4());
    config.run_migrations = false;
    let started = EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await;
    match started {
        Err(EngineError::SchemaMissing { missing }) => {
            assert_eq!(
                missing,
                vec![
                    "column saga.time_stuck".to_owned(),
                    "table saga_commit_record".to_owned()
                ]
            );
        }
        Err(other) => panic!("expected the missing schema to be named, got {other}"),
        Ok(_) => panic!("the engine started on a database without its schema"),
    }
}

/// On Omicron's tables as Nexus has them (before ratchet's migrations), the start-up check names exactly
/// ratchet's additions; on a saga log whose state column is text (a pre-release ratchet's), whose
/// `definition_version` is `NOT NULL` (Nexus's inserts would fail) and whose commit records lost their primary
/// key (exactly-once rests on it), it names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_check_names_what_omicrons_tables_lack_and_a_wrong_shape() {
    let server = ratchet_test_utils::testing::test_server().await.unwrap();
    let omicron = server.blank_database().await.unwrap();
    let mut conn = establish(&omicron.url).await.unwrap();
    conn.batch_execute(ratchet_test_utils::omicron::OMICRON_SAGA_SCHEMA)
        .await
        .unwrap();
    let missing = ratchet_store::missing_schema(&mut conn).await.unwrap();
    assert_eq!(
        missing,
        [
            "column saga.definition_version",
            "column saga.time_finished",
            "column saga.stuck_node",
            "column saga.stuck_reason",
            "column saga.time_stuck",
            "column saga.driven_by_ratchet",
            "table saga_commit_record",
            "table saga_compensation_record",
            "table saga_node_start",
            "table saga_waiting",
            "table saga_undo_failure",
            "value stuck of type saga_state",
        ]
    );
    server.drop_database(&omicron).await.unwrap();

    let db = database().await;
    let mut conn = establish(&db.url).await.unwrap();
    conn.batch_execute(
        "DROP INDEX lookup_saga_by_sec; \
         ALTER TABLE saga DROP CONSTRAINT abandoned_requires_metadata, \
             DROP CONSTRAINT not_abandoned_requires_no_metadata; \
         ALTER TABLE saga ALTER COLUMN saga_state TYPE TEXT USING saga_state::TEXT; \
         ALTER TABLE saga ALTER COLUMN definition_version SET NOT NULL; \
         ALTER TABLE saga_commit_record DROP CONSTRAINT saga_commit_record_pkey",
    )
    .await
    .unwrap();
    let missing = ratchet_store::missing_schema(&mut conn).await.unwrap();
    assert_eq!(
        missing,
        [
            "column saga.saga_state of type saga_state",
            "column saga.definition_version nullable",
            "primary key saga_commit_record (saga_id, node_name)",
        ]
    );
}

/// The migrations as plain SQL (what a host copies into its own schema tooling) build the whole schema:
/// applied by hand to a database without it, the engine then starts with migrations off and runs a saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exported_sql_builds_the_whole_schema() {
    let db = database().await;
    let mut conn = establish(&db.url).await.unwrap();
    conn.batch_execute(
        "DROP TABLE saga, saga_node_event, saga_commit_record, saga_compensation_record, \
         saga_node_start, saga_waiting, __diesel_schema_migrations; \
         DROP TYPE saga_state, saga_abandon_reason",
    )
    .await
    .unwrap();
    // Twice: applying them again does nothing (a host may re-apply what the engine's harness applied).
    for _ in 0..2 {
        for (name, sql) in MIGRATIONS_SQL {
            conn.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("migration {name}: {e}"));
        }
    }
    let mut config = EngineConfig::new(&db.url, Uuid::new_v4());
    config.run_migrations = false;
    let (engine, _) = EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .expect("the engine starts on the hand-made schema");
    let account = account(&engine).await;
    let (_, outcome) = engine
        .run::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
}

/// A database the engine's migration harness built (diesel's `__diesel_schema_migrations` records it) takes
/// the plain SQL files again without an error and without a change: a host can move from the engine's harness
/// to its own tooling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exported_sql_applied_over_the_engines_migrations_changes_nothing() {
    let db = database().await;
    let mut conn = establish(&db.url).await.unwrap();
    // Columns (with types and nullability), constraints (with their definitions), indexes, enum labels.
    let schema = "SELECT \
          (SELECT string_agg(table_name || '.' || column_name || ':' || udt_name || ':' || is_nullable, ',' \
                             ORDER BY table_name, column_name) \
             FROM information_schema.columns WHERE table_schema = current_schema()) \
       || ' | ' || (SELECT string_agg(conrelid::regclass::TEXT || '.' || conname || ':' || pg_get_constraintdef(oid), \
                                      ',' ORDER BY conrelid::regclass::TEXT, conname) \
             FROM pg_constraint WHERE connamespace = current_schema()::regnamespace) \
       || ' | ' || (SELECT string_agg(indexdef, ',' ORDER BY indexname) \
             FROM pg_indexes WHERE schemaname = current_schema()) \
       || ' | ' || (SELECT string_agg(t.typname || '.' || e.enumlabel, ',' ORDER BY t.typname, e.enumsortorder) \
             FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid) AS key";
    #[derive(diesel::QueryableByName)]
    struct Shape {
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
    }
    use diesel_async::RunQueryDsl;
    let before: Shape = diesel::sql_query(schema)
        .get_result(&mut conn)
        .await
        .unwrap();
    for (name, sql) in MIGRATIONS_SQL {
        conn.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("migration {name}: {e}"));
    }
    let after: Shape = diesel::sql_query(schema)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(before.key, after.key);
}

/// A `slog` drain that keeps every record's message and its `event` and `component` keys.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

struct Keys {
    event: String,
    component: String,
}

impl slog::Serializer for Keys {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        match key {
            "event" => self.event = value.to_string(),
            "component" => self.component = value.to_string(),
            _ => {}
        }
        Ok(())
    }
}

impl slog::Drain for Captured {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut keys = Keys {
            event: String::new(),
            component: String::new(),
        };
        let _ = slog::KV::serialize(&record.kv(), record, &mut keys);
        let _ = slog::KV::serialize(values, record, &mut keys);
        self.0
            .lock()
            .unwrap()
            .push((record.msg().to_string(), keys.event, keys.component));
        Ok(())
    }
}

/// The host's `slog` logger receives steno's log and ratchet's own events: here a commit, the failure right
/// after it, and its compensation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_slog_logger_gets_commits_compensations_and_stenos_log() {
    let db = database().await;
    let captured = Captured::default();
    let mut config = EngineConfig::new(&db.url, Uuid::new_v4());
    config.log = Some(slog::Logger::root(
        captured.clone(),
        slog::o!("host" => "test"),
    ));
    let (engine, _) = EngineBuilder::new(config)
        .register::<ProvisionWidget>(Arc::new(()))
        .start()
        .await
        .unwrap();
    let account = account(&engine).await;
    let saga = engine
        .create::<ProvisionWidget>(params(account))
        .await
        .unwrap();
    engine.failpoints().arm(
        saga.id,
        "charge_account",
        ratchet_engine::FaultPoint::AfterCommit,
        ratchet_engine::FaultEffect::PermanentError,
        1,
    );
    let outcome = saga.run().await.unwrap();
    assert!(
        matches!(outcome, SagaOutcome::Unwound { .. }),
        "{outcome:?}"
    );
    let records = captured.0.lock().unwrap().clone();
    let events: Vec<&str> = records.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "commit").count(),
        2,
        "reserve_widget and charge_account committed: {records:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "compensation").count(),
        2,
        "both compensated: {records:?}"
    );
    assert!(
        records.iter().any(|(_, _, component)| component == "steno"),
        "steno's own log reaches the host's logger: {records:?}"
    );
}

/// Listing sagas as a library call, with filters, says when the list was cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_with_filters_and_the_list_says_when_it_is_truncated() {
    use ratchet_store::{SagaFilter, SagaState, list_sagas_where};
    let db = database().await;
    let sec_id = Uuid::new_v4();
    let (engine, _) = builder(&db, sec_id).start().await.unwrap();
    let account = account(&engine).await;
    for _ in 0..3 {
        let (_, outcome) = engine
            .run::<ProvisionWidget>(params(account))
            .await
            .unwrap();
        assert!(
            matches!(outcome, SagaOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
    }
    let mut conn = engine.pool().get().await.unwrap();
    let all = SagaFilter::default();
    let page = list_sagas_where(&mut conn, &all).await.unwrap();
    assert_eq!((page.sagas.len(), page.truncated), (3, false));
    let two = SagaFilter {
        limit: 2,
        ..all.clone()
    };
    let page = list_sagas_where(&mut conn, &two).await.unwrap();
    assert_eq!((page.sagas.len(), page.truncated), (2, true));
    let done = SagaFilter {
        state: Some(SagaState::Done),
        name: Some("example-provision".to_owned()),
        executor: Some(sec_id),
        ..all.clone()
    };
    assert_eq!(
        list_sagas_where(&mut conn, &done)
            .await
            .unwrap()
            .sagas
            .len(),
        3
    );
    let elsewhere = SagaFilter {
        executor: Some(Uuid::new_v4()),
        ..all.clone()
    };
    assert!(
        list_sagas_where(&mut conn, &elsewhere)
            .await
            .unwrap()
            .sagas
            .is_empty()
    );
    let later = SagaFilter {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..all.clone()
    };
    assert!(
        list_sagas_where(&mut conn, &later)
            .await
            .unwrap()
            .sagas
            .is_empty()
    );
    let stuck = SagaFilter {
        state: Some(SagaState::Stuck),
        ..all
    };
    assert!(
        list_sagas_where(&mut conn, &stuck)
            .await
            .unwrap()
            .sagas
            .is_empty()
    );
    // The page is serializable, for a host's API.
    let json = serde_json::to_value(&page_json_probe(&mut conn).await).unwrap();
    assert_eq!(json["truncated"], false);
}

async fn page_json_probe(conn: &mut ratchet_store::DbConnection) -> ratchet_store::SagaPage {
    ratchet_store::list_sagas_where(conn, &ratchet_store::SagaFilter::default())
        .await
        .unwrap()
}
