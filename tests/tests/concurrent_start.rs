//! Executors that start together on an empty database: several `ratchet demo` processes, spawned back to
//! back on one blank database (no saga log, no tables), each apply the saga log's and the sagas' migrations
//! and run a saga. Every one must come up and finish its saga: a start that finds the schema being built
//! waits for it, checks it, and applies nothing twice. Three rounds, each on a fresh blank database; and once on
//! an embedded cluster that does not exist yet.
//!
//! Before migrations were serialized across processes, two of them racing `CREATE TYPE` / `CREATE TABLE IF
//! NOT EXISTS` failed with `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`.

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_test_utils::testing::test_server;
use ratchet_tests::ratchet_cli;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const PROCESSES: usize = 4;
const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_started_together_on_a_blank_database_all_come_up() {
    let ratchet = ratchet_cli();
    let server = test_server().await.unwrap();
    for round in 1..=ROUNDS {
        let database = server.blank_database().await.unwrap();
        let children = spawn_demos(&ratchet, |demo| {
            demo.args(["--database-url", &database.url, "--sec-id"])
                .arg(uuid::Uuid::new_v4().to_string());
        });
        let started = Instant::now();
        let failures = failures_of(children).await;
        assert!(
            started.elapsed() < DEADLINE,
            "round {round}: the processes took {:?}",
            started.elapsed()
        );
        assert!(
            failures.is_empty(),
            "round {round}: {} of {PROCESSES} processes failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Each ran its saga to the end, once; the migrations are applied once each.
        let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
        let done = count(
            &mut conn,
            "SELECT count(*) AS n FROM saga WHERE saga_state = 'done'",
        )
        .await;
        assert_eq!(done, PROCESSES as i64, "round {round}: sagas done");
        let duplicated = count(
            &mut conn,
            "SELECT count(*) AS n FROM (SELECT version FROM __diesel_schema_migrations \
             GROUP BY version HAVING count(*) > 1) AS twice",
        )
        .await;
        assert_eq!(duplicated, 0, "round {round}: a migration recorded twice");
        println!("round {round}: {PROCESSES} processes came up and ran their saga");
        server.drop_database(&database).await.unwrap();
    }
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .unwrap()
        .n
}

/// The same on the embedded cluster: processes started together on a data directory that does not exist
/// yet. One initialises and starts the cluster (under the cluster's lock file), all of them find the
/// database created (one creates it; the others meet it) and its schema migrated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_started_together_on_a_new_embedded_cluster_all_come_up() {
    let ratchet = ratchet_cli();
    let scratch = ratchet_tests::Scratch::new();
    let data_dir = scratch.path().join("data");
    let children = spawn_demos(&ratchet, |demo| {
        demo.arg("--data-dir")
            .arg(&data_dir)
            .env_remove("DATABASE_URL");
    });
    let failures = failures_of(children).await;
    let stopped = Command::new(&ratchet)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["db", "stop"])
        .output()
        .expect("ratchet db stop");
    assert!(
        failures.is_empty(),
        "{} of {PROCESSES} processes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(stopped.status.success(), "ratchet db stop: {stopped:?}");
}

/// Spawns [`PROCESSES`] `ratchet demo` processes back to back, before any is awaited, so that they reach the
/// migrations within milliseconds of each other; `database` adds each one's database arguments.
fn spawn_demos(
    ratchet: &std::path::Path,
    database: impl Fn(&mut Command),
) -> Vec<std::process::Child> {
    (0..PROCESSES)
        .map(|_| {
            let mut demo = Command::new(ratchet);
            database(&mut demo);
            demo.arg("demo")
                .env_remove("RATCHET_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ratchet demo")
        })
        .collect()
}

/// Waits for every child; returns what each one that failed printed.
async fn failures_of(children: Vec<std::process::Child>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .expect("wait for ratchet demo");
        if !output.status.success() {
            failures.push(format!(
                "process {i}: {}\n--- stdout\n{}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    failures
}
