//! The database goes away under `ratchet run`, and the run still exits 0 when every saga succeeded:
//!
//! - every backend of its database terminated (`pg_terminate_backend`) twice: once during its start-up (the
//!   first connections it opens: migrations, seeding, the engine's start), once mid-run;
//! - the PostgreSQL server restarted mid-run: a private cluster of this test (the shared test server must not
//!   be restarted under the other tests), stopped (fast shutdown: every session ends, open transactions roll
//!   back) and started again.
//!
//! Each runs `ratchet run instance-create --count 60 --concurrency 8` with two NICs, two new disks, one
//! existing disk, an ephemeral IP and a start (in-process sled agent and pantry), and asserts: it exits 0; it
//! reports `invariant check: 0 violation(s)`; its summary counts no stuck, fenced, interrupted or abandoned
//! saga (a saga that unwound is a clean failure, and `ratchet run` exits 0 for it: it exits 1 only for a
//! stuck saga, a violation, an incomplete instance, or an error it could not get past); and every saga is
//! `done` in the database.

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_embedded_pg::Cluster;
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::fresh_database;
use ratchet_tests::{Child, InstanceCreateShape, NoLine, Scratch, ratchet_cli, saga_states};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

const COUNT: usize = 60;
const CONCURRENCY: usize = 8;
const SHAPE: InstanceCreateShape = InstanceCreateShape::ALL_NODES;
/// How many sagas come to rest before the mid-run blow.
const BEFORE_BLOW: u64 = 20;
/// How long the whole run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// How long a test may take, all in all (its queries and the restart included).
const TEST_DEADLINE: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_when_every_backend_is_terminated_twice() {
    tokio::time::timeout(TEST_DEADLINE, backends_terminated())
        .await
        .unwrap_or_else(|_| panic!("the test took longer than {TEST_DEADLINE:?}"));
}

async fn backends_terminated() {
    let ratchet = ratchet_cli();
    let db = fresh_database(&[&DATASTORE_MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let scratch = Scratch::new();
    let mut run = spawn_run(&ratchet, scratch.path(), &db.url);
    let deadline = Instant::now() + RUN_DEADLINE;

    // Once during start-up: the first backends the run opens, whichever they are.
    let mut terminated = 0;
    let mut polls = 0;
    while terminated == 0 {
        assert!(
            Instant::now() < deadline && run.try_wait().is_none(),
            "the run opened no connection that could be terminated:\n{}",
            run.output()
        );
        terminated = terminate_backends(&mut conn, &db.name).await;
        polls += 1;
        if terminated == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let printed = drain(&mut run);
    println!(
        "start-up: terminated {terminated} backend(s) after {polls} poll(s); the run had printed {printed:?}"
    );
    assert!(
        !printed.iter().any(|l| l.starts_with('[')),
        "the first termination was meant for the start-up, but sagas had already finished: {printed:?}"
    );

    // Once mid-run.
    let seen = run.count_lines_by(BEFORE_BLOW, deadline, |l| l.starts_with('['));
    assert_eq!(seen, BEFORE_BLOW, "the run ended early:\n{}", run.output());
    let terminated = terminate_backends(&mut conn, &db.name).await;
    println!("mid-run: terminated {terminated} backend(s) after {seen} saga(s) came to rest");
    assert!(
        terminated > 0,
        "the run had no backend to terminate mid-run: this tests nothing"
    );

    assert_run_succeeded(&mut run, deadline);
    let states = saga_states(&mut conn).await;
    assert_eq!(
        states,
        BTreeMap::from([("done".to_owned(), COUNT as i64)]),
        "every saga at rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_when_the_server_restarts_mid_run() {
    tokio::time::timeout(TEST_DEADLINE, server_restarted())
        .await
        .unwrap_or_else(|_| panic!("the test took longer than {TEST_DEADLINE:?}"));
}

async fn server_restarted() {
    let ratchet = ratchet_cli();
    let cluster = PrivateCluster::start().await;
    let url = cluster.create_database("ratchet_restart").await;
    let scratch = Scratch::new();
    let mut run = spawn_run(&ratchet, scratch.path(), &url);
    let deadline = Instant::now() + RUN_DEADLINE;
    let seen = run.count_lines_by(BEFORE_BLOW, deadline, |l| l.starts_with('['));
    assert_eq!(seen, BEFORE_BLOW, "the run ended early:\n{}", run.output());

    let restart = Instant::now();
    let restarting = cluster.cluster.clone();
    tokio::task::spawn_blocking(move || {
        restarting.stop().expect("stop the private cluster");
        restarting.start().expect("start the private cluster again")
    })
    .await
    .expect("the restart's thread");
    println!(
        "restarted the server after {seen} saga(s) came to rest; it was down for {:.2} s",
        restart.elapsed().as_secs_f64()
    );
    assert!(
        run.try_wait().is_none(),
        "the run had ended before the restart completed:\n{}",
        run.output()
    );

    assert_run_succeeded(&mut run, deadline);
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .expect("connect after the restart");
    let states = saga_states(&mut conn).await;
    assert_eq!(
        states,
        BTreeMap::from([("done".to_owned(), COUNT as i64)]),
        "every saga at rest"
    );
}

/// `ratchet run instance-create` on `url`, as a new executor, with in-process services.
fn spawn_run(ratchet: &Path, dir: &Path, url: &str) -> Child {
    let (count, concurrency, sec) = (
        COUNT.to_string(),
        CONCURRENCY.to_string(),
        Uuid::new_v4().to_string(),
    );
    let mut args: Vec<String> = [
        "--database-url",
        url,
        "--sec-id",
        &sec,
        "run",
        "instance-create",
        "--count",
        &count,
        "--concurrency",
        &concurrency,
    ]
    .map(str::to_owned)
    .into();
    args.extend(SHAPE.run_options());
    Child::spawn(ratchet, dir, "run", args, false)
}

/// Waits (until `deadline`) for the run to end, and asserts it exited 0, with no violation and every saga
/// succeeded or cleanly unwound.
fn assert_run_succeeded(run: &mut Child, deadline: Instant) {
    let (status, stdout) = run.finish_by(deadline);
    assert!(
        status.success(),
        "`ratchet run` failed ({status}):\n{}",
        run.output()
    );
    let summary = stdout
        .iter()
        .find(|l| l.starts_with(&format!("{COUNT} saga(s) in ")))
        .unwrap_or_else(|| panic!("no summary line:\n{}", run.output()));
    println!("the run: {summary}");
    for bad in ["STUCK", "fenced", "interrupted", "abandoned"] {
        assert!(
            !summary.contains(bad),
            "a saga of the run was {bad}:\n{}",
            run.output()
        );
    }
    assert!(
        stdout
            .iter()
            .any(|l| l == "invariant check: 0 violation(s)"),
        "the run did not report 0 violations:\n{}",
        run.output()
    );
}

/// Terminates every backend connected to database `name` except this connection's; returns how many.
async fn terminate_backends(conn: &mut AsyncPgConnection, name: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Terminated {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let row: Terminated = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE t) AS count FROM \
           (SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity \
            WHERE datname = $1 AND pid <> pg_backend_pid()) AS s",
    )
    .bind::<Text, _>(name)
    .get_result(conn)
    .await
    .expect("terminate the backends");
    row.count
}

/// The lines the child printed and this test has not read yet, without waiting.
fn drain(child: &mut Child) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match child.next_line_by(Instant::now()) {
            Ok(line) => lines.push(line),
            Err(NoLine::TimedOut | NoLine::Closed) => return lines,
        }
    }
}

/// A PostgreSQL cluster of this test's own, under a fresh temp directory; stopped and removed when dropped.
struct PrivateCluster {
    cluster: Cluster,
    dir: PathBuf,
}

impl PrivateCluster {
    async fn start() -> PrivateCluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ratchet-restart-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        // The server runs as the `postgres` user when we are root: it must be able to traverse this.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("make the cluster's directory traversable");
        let cluster = Cluster::new(&dir.join("pg")).expect("a private cluster");
        // From here on, the guard stops it, whatever happens.
        let guard = PrivateCluster { cluster, dir };
        let starting = guard.cluster.clone();
        tokio::task::spawn_blocking(move || starting.start())
            .await
            .expect("the start's thread")
            .expect("start the private cluster");
        guard
    }

    /// Creates database `name` and returns its URL.
    async fn create_database(&self, name: &str) -> String {
        let mut admin = AsyncPgConnection::establish(&self.cluster.url("postgres"))
            .await
            .expect("connect to the private cluster");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the database");
        self.cluster.url(name)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(error) = self.cluster.stop() {
            eprintln!("stopping the private cluster failed: {error}");
        }
        // The cluster lives in `dir` unless `Cluster::new` relocated it (see `Cluster::base_dir`).
        let _ = std::fs::remove_dir_all(self.cluster.base_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
