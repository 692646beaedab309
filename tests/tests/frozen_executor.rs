//! A frozen executor: 200 instance-create sagas with `--start`; the executor is frozen (SIGSTOP) mid-load and
//! another executor adopts its sagas. Everything is at rest, with zero violations, within two minutes of the
//! freeze; and the old executor, thawed (SIGCONT), writes nothing after the adoption: no event, commit,
//! compensation or state change.
//!
//! 1. `ratchet run instance-create --count 200 --concurrency 16 --start --create-first` (two NICs, two new
//!    disks, one existing disk, an ephemeral IP) as executor X, against `ratchet sim`; once 20 of its sagas
//!    came to rest, it is frozen with SIGSTOP, wherever it is: possibly inside a transaction holding row locks
//!    (the server ends such a session after `idle_in_transaction_session_timeout`, 30 s), possibly between a
//!    sled agent call and its record.
//! 2. `ratchet sagas adopt --from X` as executor Y: it must exit 0, and within 120 s of the freeze every saga
//!    is `done` (none stuck or abandoned), the invariant checker reports nothing, and exactly-once holds on the
//!    domain (`ratchet_tests::check_instance_create_domain`).
//! 3. A snapshot: the saga log rows X wrote (events, commit and compensation records), every saga's
//!    `(id, state, current_sec, adopt_generation, time_finished)`, every row of the log, a digest of each
//!    domain table, the sled agent's VMMs and applied requests. Then X is thawed and left to run until it
//!    exits (or 60 s pass, then SIGKILL), and the snapshot must be unchanged: X wrote nothing, and the
//!    invariants and the domain still hold.
//!
//! The time from the freeze to all-at-rest is printed. Sleeps are used only to poll for the end of a process.

use diesel::sql_types::{BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::fresh_database;
use ratchet_tests::{
    Child, Count, InstanceCreateShape, Scratch, Sim, assert_no_saga_given_up,
    check_instance_create_domain, ratchet_cli, saga_states,
};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use uuid::Uuid;

const COUNT: usize = 200;
const CONCURRENCY: usize = 16;
/// How many sagas come to rest before the freeze.
const BEFORE_FREEZE: u64 = 20;
const SHAPE: InstanceCreateShape = InstanceCreateShape::ALL_NODES;
/// From the freeze to every saga at rest.
const AT_REST_WITHIN: Duration = Duration::from_secs(120);
/// How long the thawed executor may run before it is killed.
const THAWED_FOR: Duration = Duration::from_secs(60);
/// How long the run may take to record its sagas and finish the first ones.
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// How long the whole test may take (its queries included).
const TEST_DEADLINE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_executor_is_adopted_and_writes_nothing_once_thawed() {
    tokio::time::timeout(TEST_DEADLINE, frozen_executor())
        .await
        .unwrap_or_else(|_| panic!("the test took longer than {TEST_DEADLINE:?}"));
}

async fn frozen_executor() {
    let ratchet = ratchet_cli();
    let db = fresh_database(&[&DATASTORE_MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let scratch = Scratch::new();
    let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
    let mut sim = Sim::start(&ratchet, scratch.path());
    let as_executor = |sec: Uuid, verb: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--database-url", &db.url, "--sec-id", &sec.to_string()]
            .into_iter()
            .chain(verb.iter().copied())
            .map(str::to_owned)
            .collect();
        args.extend(sim.options.iter().cloned());
        args
    };

    // 1. The run, as X, frozen.
    let (count, concurrency) = (COUNT.to_string(), CONCURRENCY.to_string());
    let mut verb: Vec<String> = [
        "run",
        "instance-create",
        "--count",
        &count,
        "--concurrency",
        &concurrency,
        "--create-first",
    ]
    .map(str::to_owned)
    .into();
    verb.extend(SHAPE.run_options());
    let verb: Vec<&str> = verb.iter().map(String::as_str).collect();
    let mut run = Child::spawn(
        &ratchet,
        scratch.path(),
        "run (executor X)",
        as_executor(x, &verb),
        false,
    );
    let deadline = Instant::now() + RUN_DEADLINE;
    run.read_until_by(deadline, "the run's sagas to be recorded", |l| {
        l.starts_with(&format!("created {COUNT} saga(s)"))
    })
    .unwrap_or_else(|| panic!("`ratchet run` did not create its sagas:\n{}", run.output()));
    let seen = run.count_lines_by(BEFORE_FREEZE, deadline, |l| l.starts_with('['));
    assert_eq!(
        seen,
        BEFORE_FREEZE,
        "the run ended early:\n{}",
        run.output()
    );
    run.signal("STOP");
    let frozen = Instant::now();
    assert!(
        run.try_wait().is_none(),
        "X exited before it was frozen:\n{}",
        run.output()
    );
    let states = saga_states(&mut conn).await;
    println!("X frozen after {seen} saga(s) came to rest; sagas now: {states:?}");
    let unfinished =
        states.get("running").copied().unwrap_or(0) + states.get("unwinding").copied().unwrap_or(0);
    assert!(unfinished > 0, "nothing left to adopt: {states:?}");

    // 2. Y adopts X's sagas.
    let mut adopt = Child::spawn(
        &ratchet,
        scratch.path(),
        "sagas adopt (executor Y)",
        as_executor(y, &["sagas", "adopt", "--yes", "--from", &x.to_string()]),
        false,
    );
    let (status, stdout) = adopt.finish_by(frozen + AT_REST_WITHIN);
    assert!(
        status.success(),
        "the adoption failed ({status}):\n{}",
        adopt.output()
    );
    let states = saga_states(&mut conn).await;
    let at_rest = frozen.elapsed();
    println!(
        "{}; all at rest {:.1} s after the freeze: {states:?}",
        stdout
            .iter()
            .find(|l| l.contains("adopted") || l.contains("nothing adopted"))
            .map_or("(no adoption line)", String::as_str),
        at_rest.as_secs_f64()
    );
    assert_no_saga_given_up(&mut conn, &states).await;
    assert_eq!(
        states,
        BTreeMap::from([("done".to_owned(), COUNT as i64)]),
        "every saga is done once the adoption ends:\n{}",
        adopt.output()
    );
    assert!(
        at_rest <= AT_REST_WITHIN,
        "every saga at rest only {at_rest:?} after the freeze"
    );
    let violations = ratchet_sagas::check_nexus_invariants(&mut conn, &sim.sled_agent, &sim.pantry)
        .await
        .expect("invariant check");
    assert!(
        violations.is_empty(),
        "invariant violations after the adoption: {violations:#?}"
    );
    let counters = sim.counters();
    let outcome =
        check_instance_create_domain(&mut conn, SHAPE, COUNT, &sim.sled_agent, &counters).await;

    // 3. X thawed writes nothing.
    let before = snapshot(&mut conn, x, &sim, &counters).await;
    println!(
        "X wrote, before the adoption: {} event(s), {} commit record(s), {} compensation record(s)",
        before.by_x[0], before.by_x[1], before.by_x[2]
    );
    run.signal("CONT");
    let thawed = Instant::now();
    let exited = run.wait_by(thawed + THAWED_FOR);
    let x_status = match exited {
        Some(status) => format!("exited on its own ({status})"),
        None => {
            run.kill();
            format!("was still running after {THAWED_FOR:?}: killed")
        }
    };
    let x_output = run.output();
    let x_said: Vec<&str> = x_output
        .lines()
        .filter(|l| {
            l.contains("saga(s) in ") || l.contains("invariant check") || l.starts_with("error")
        })
        .collect();
    println!(
        "X, thawed, {x_status} after {:.1} s; it said: {x_said:?}",
        thawed.elapsed().as_secs_f64()
    );
    if let Some(status) = exited {
        assert_eq!(
            status.signal(),
            None,
            "X, thawed, died of a signal:\n{x_output}"
        );
    }
    let counters = sim.counters();
    let after = snapshot(&mut conn, x, &sim, &counters).await;
    assert_eq!(
        before.by_x, after.by_x,
        "X, thawed, wrote saga log rows (events, commit records, compensation records)"
    );
    let changed: Vec<_> = before
        .sagas
        .iter()
        .filter(|(id, row)| after.sagas.get(*id) != Some(row))
        .map(|(id, row)| (id, row, after.sagas.get(id)))
        .collect();
    assert!(
        changed.is_empty() && before.sagas.len() == after.sagas.len(),
        "X, thawed, changed sagas ((state, current_sec, adopt_generation, time_finished) before, after): \
         {changed:#?}"
    );
    assert_eq!(before.log, after.log, "the saga log's rows changed");
    assert_eq!(before.domain, after.domain, "the domain's tables changed");
    assert_eq!(
        before.sled_agent, after.sled_agent,
        "the sled agent's VMMs, or the requests the services applied, changed"
    );
    let violations = ratchet_sagas::check_nexus_invariants(&mut conn, &sim.sled_agent, &sim.pantry)
        .await
        .expect("invariant check");
    assert!(
        violations.is_empty(),
        "invariant violations after X was thawed: {violations:#?}"
    );
    assert_eq!(
        check_instance_create_domain(&mut conn, SHAPE, COUNT, &sim.sled_agent, &counters).await,
        outcome
    );
    println!(
        "freeze to all at rest: {:.1} s ({} succeeded, {} unwound); X wrote nothing once thawed",
        at_rest.as_secs_f64(),
        outcome.succeeded,
        outcome.unwound
    );
}

/// What must not change once X is thawed.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// The events, commit records and compensation records X wrote.
    by_x: [i64; 3],
    /// Every saga's (state, current_sec, adopt_generation, time_finished).
    sagas: BTreeMap<Uuid, (String, Option<Uuid>, i64, Option<String>)>,
    /// Every table of the saga log: rows and a digest of them.
    log: BTreeMap<String, i64>,
    /// Every domain table the sagas write: a digest of its rows.
    domain: BTreeMap<String, String>,
    /// The sled agent's VMMs, and what each service applied.
    sled_agent: (String, serde_json::Value),
}

async fn snapshot(
    conn: &mut AsyncPgConnection,
    x: Uuid,
    sim: &Sim,
    counters: &serde_json::Value,
) -> Snapshot {
    #[derive(diesel::QueryableByName)]
    struct SagaRow {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        saga_state: String,
        #[diesel(sql_type = Nullable<SqlUuid>)]
        current_sec: Option<Uuid>,
        #[diesel(sql_type = BigInt)]
        adopt_generation: i64,
        #[diesel(sql_type = Nullable<Text>)]
        time_finished: Option<String>,
    }
    #[derive(diesel::QueryableByName)]
    struct Digest {
        #[diesel(sql_type = Text)]
        key: String,
        #[diesel(sql_type = Text)]
        digest: String,
    }
    let by_x: Vec<Count> = diesel::sql_query(
        "SELECT 'events' AS key, count(*) AS count FROM saga_node_event WHERE creator = $1 \
         UNION ALL SELECT 'commits', count(*) FROM saga_commit_record WHERE creator = $1 \
         UNION ALL SELECT 'compensations', count(*) FROM saga_compensation_record WHERE creator = $1",
    )
    .bind::<SqlUuid, _>(x)
    .load(conn)
    .await
    .expect("count X's rows");
    let by_x: BTreeMap<String, i64> = by_x.into_iter().map(|c| (c.key, c.count)).collect();
    let by_x = ["events", "commits", "compensations"].map(|k| by_x[k]);
    let sagas: Vec<SagaRow> = diesel::sql_query(
        "SELECT id, saga_state, current_sec, adopt_generation, time_finished::text AS time_finished \
         FROM saga",
    )
    .load(conn)
    .await
    .expect("load the sagas");
    let sagas = sagas
        .into_iter()
        .map(|s| {
            (
                s.id,
                (
                    s.saga_state,
                    s.current_sec,
                    s.adopt_generation,
                    s.time_finished,
                ),
            )
        })
        .collect();
    let log: Vec<Count> = diesel::sql_query(
        "SELECT 'saga' AS key, count(*) AS count FROM saga \
         UNION ALL SELECT 'saga_node_event', count(*) FROM saga_node_event \
         UNION ALL SELECT 'saga_commit_record', count(*) FROM saga_commit_record \
         UNION ALL SELECT 'saga_compensation_record', count(*) FROM saga_compensation_record",
    )
    .load(conn)
    .await
    .expect("count the saga log");
    let log = log.into_iter().map(|c| (c.key, c.count)).collect();
    let mut domain = BTreeMap::new();
    for table in [
        "instance",
        "disk",
        "network_interface",
        "external_ip",
        "sled_resource_vmm",
    ] {
        let digest: Digest = diesel::sql_query(format!(
            "SELECT '{table}' AS key, \
                    count(*)::text || ' ' || COALESCE(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') \
                      AS digest \
             FROM {table} AS t"
        ))
        .get_result(conn)
        .await
        .unwrap_or_else(|e| panic!("digest {table}: {e}"));
        domain.insert(digest.key, digest.digest);
    }
    let mut vmms: Vec<String> = sim
        .sled_agent
        .list_vmms()
        .await
        .expect("the sled agent's VMMs")
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    vmms.sort();
    // What each operation of each service applied (replays and refusals change nothing).
    let mut applied = serde_json::Map::new();
    for service in ["sled_agent", "pantry"] {
        let ops = counters[service]
            .as_object()
            .unwrap_or_else(|| panic!("no {service} in the counters: {counters}"));
        for (op, counted) in ops {
            applied.insert(format!("{service}.{op}"), counted["applied"].clone());
        }
    }
    let applied = serde_json::Value::Object(applied);
    Snapshot {
        by_x,
        sagas,
        log,
        domain,
        sled_agent: (vmms.join("\n"), applied),
    }
}
