//! Recovery under load (issue 4): 200 instance-create sagas whose executor is killed with SIGKILL at random
//! moments, again and again, and still every saga comes to rest with every commit applied exactly once.
//!
//! The arrangement is Nexus's: the sled agent and the pantry are services of their own (`ratchet sim`, a child
//! process that lives through the whole test), and the executor is another process, killed and replaced:
//!
//! 1. `ratchet run instance-create --count 200 --concurrency 16 --create-first ...` records all 200 sagas (two
//!    new disks, one existing disk, two NICs, an ephemeral IP, and a start on a sled each: every kind of node)
//!    and runs them; it is killed after a random number of them finished, plus a random delay.
//! 2. [`KILLED_RECOVERIES`] times, `ratchet recover` with the same executor id resumes what is unfinished and
//!    is killed at a random moment: a random delay after it was spawned (during its start-up, while it loads
//!    and resumes the sagas), or a random delay after it said what it resumed (while they run).
//! 3. A last `ratchet recover` runs to the end.
//!
//! Then, on the database and the sled agent:
//! - every saga is `done` (none running, unwinding, stuck or abandoned), and all 200 exist;
//! - the invariant checker (database rules, sled agent, pantry) reports nothing;
//! - no commit was applied twice, measured on the domain (`ratchet_tests::check_instance_create_domain`): a
//!   saga that succeeded has exactly the commits its DAG implies and no compensation; a saga that unwound
//!   compensated every commit it made (serialization conflicts can exhaust a node's retries, so under this
//!   load many sagas unwind: that is a clean failure, not a leak); each live instance is exactly one succeeded
//!   saga's, complete; the sled agent applied one `vmm_ensure` per `ensure_vmm` commit record and one
//!   `vmm_unregister` per compensated one.
//!
//! The test finds `ratchet` by building it (see `ratchet_tests::ratchet_cli`). The kill schedule comes from a
//! seed printed at the start; `RATCHET_TEST_SEED=N` replays the same schedule
//! (where the sagas are when a kill lands still depends on the machine). Nothing here is timed: the delays
//! only pick the moments of the kills.

use diesel_async::RunQueryDsl;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::fresh_database;
use ratchet_tests::{
    Child, Count, InstanceCreateShape, Scratch, Sim, SplitMix64, assert_no_saga_given_up,
    check_instance_create_domain, ratchet_cli, saga_states, test_seed,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const COUNT: usize = 200;
const CONCURRENCY: usize = 16;
const SHAPE: InstanceCreateShape = InstanceCreateShape::ALL_NODES;
/// How many `ratchet recover` processes are killed before the last one runs to the end.
const KILLED_RECOVERIES: usize = 3;
/// How long the run may take to record its sagas, or to finish the ones the kill waits for.
const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// How long the last recovery may take to bring every saga to rest.
const LAST_RECOVERY_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_instance_creates_survive_repeated_sigkills() {
    let mut rng = SplitMix64(test_seed("kill schedule"));
    let ratchet = ratchet_cli();
    let db = fresh_database(&[&DATASTORE_MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let scratch = Scratch::new();
    let sec = Uuid::new_v4().to_string();
    let mut sim = Sim::start(&ratchet, scratch.path());
    let executor = |verb: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--database-url", &db.url, "--sec-id", &sec]
            .into_iter()
            .chain(verb.iter().copied())
            .map(str::to_owned)
            .collect();
        args.extend(sim.options.iter().cloned());
        args
    };

    // 1. The run, killed.
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
    let mut run = Child::spawn(&ratchet, scratch.path(), "run", executor(&verb), false);
    let deadline = Instant::now() + RUN_DEADLINE;
    run.read_until_by(deadline, "the run's sagas to be recorded", |l| {
        l.starts_with(&format!("created {COUNT} saga(s)"))
    })
    .unwrap_or_else(|| panic!("`ratchet run` did not create its sagas:\n{}", run.output()));
    let finished = rng.below(COUNT / 4 + 1);
    let seen = run.count_lines_by(finished, deadline, |l| l.starts_with('['));
    let delay = rng.below(300);
    std::thread::sleep(Duration::from_millis(delay));
    let killed = run.kill();
    let states = saga_states(&mut conn).await;
    println!(
        "round 1: `ratchet run` {} after {seen} saga(s) came to rest + {delay} ms; sagas now: {states:?}",
        if killed { "killed" } else { "had exited" }
    );
    let unfinished = |states: &BTreeMap<String, i64>| {
        states.get("running").copied().unwrap_or(0) + states.get("unwinding").copied().unwrap_or(0)
    };
    assert!(
        killed && unfinished(&states) > 0,
        "the first kill must interrupt the run, or this test tests nothing: {states:?}\n{}",
        run.output()
    );
    assert_no_saga_given_up(&mut conn, &states).await;

    // 2. Recoveries, killed.
    for round in 0..KILLED_RECOVERIES {
        let mut recover = Child::spawn(
            &ratchet,
            scratch.path(),
            "recover",
            executor(&["recover"]),
            false,
        );
        // Either during start-up (which resumes every saga before the engine is handed over) or after it,
        // while the resumed sagas run: `recover` prints its outcomes in the order it resumed the sagas, not
        // as they come to rest, so a delay after the `resumed` line is the better measure of progress.
        let moment = if rng.below(2) == 0 {
            let delay = rng.below(1_500);
            std::thread::sleep(Duration::from_millis(delay));
            format!("{delay} ms after it was spawned")
        } else {
            let resumed = recover
                .read_until_by(
                    Instant::now() + RUN_DEADLINE,
                    "the recovery's resume line",
                    |l| l.contains(": resumed ") || l.contains("nothing to recover"),
                )
                .unwrap_or_else(|| "(it exited first)".to_owned());
            let delay = rng.below(1_500);
            std::thread::sleep(Duration::from_millis(delay));
            format!("{delay} ms after it said {resumed:?}")
        };
        let killed = recover.kill();
        let states = saga_states(&mut conn).await;
        println!(
            "round {}: `ratchet recover` {} {moment}; sagas now: {states:?}",
            round + 2,
            if killed { "killed" } else { "had exited" }
        );
        assert_no_saga_given_up(&mut conn, &states).await;
    }

    // 3. The last recovery, to the end.
    let mut last = Child::spawn(
        &ratchet,
        scratch.path(),
        "recover (last)",
        executor(&["recover"]),
        false,
    );
    let (status, stdout) = last.finish_by(Instant::now() + LAST_RECOVERY_DEADLINE);
    assert!(
        status.success(),
        "the last recovery failed ({status}):\n{}",
        last.output()
    );
    println!(
        "last recovery: {}",
        stdout
            .iter()
            .find(|l| l.starts_with("recovered ") || l.contains("nothing to recover"))
            .map_or("(no summary line)", String::as_str)
    );

    // Every saga at rest; none given up.
    let states = saga_states(&mut conn).await;
    assert_no_saga_given_up(&mut conn, &states).await;
    assert_eq!(
        states,
        BTreeMap::from([("done".to_owned(), COUNT as i64)]),
        "every saga is done"
    );
    let names: Vec<Count> =
        diesel::sql_query("SELECT name AS key, count(*) AS count FROM saga GROUP BY name")
            .load(&mut conn)
            .await
            .unwrap();
    assert!(
        names.len() == 1 && names[0].key == "instance-create" && names[0].count == COUNT as i64,
        "{COUNT} instance-create sagas and nothing else"
    );

    // The invariant checker: the database, the sled agent and the pantry.
    let violations = ratchet_sagas::check_nexus_invariants(&mut conn, &sim.sled_agent, &sim.pantry)
        .await
        .expect("invariant check");
    assert!(
        violations.is_empty(),
        "invariant violations: {violations:#?}"
    );

    // Exactly once, on the domain and the sled agent's books.
    let counters = sim.counters();
    let outcome =
        check_instance_create_domain(&mut conn, SHAPE, COUNT, &sim.sled_agent, &counters).await;
    println!("{outcome:?}");
}
