//! Two recoveries of one executor at once: after a SIGKILL mid-load, two `ratchet recover` with the same
//! `--sec-id`, started together, end with every saga at rest, none stuck, and zero violations. Five rounds in a
//! row, each on a fresh database with its own `ratchet sim`, each with its own seed.
//!
//! Each recovery claims the executor's unfinished sagas under a new fencing epoch, so the later claim fences
//! the earlier one out of whatever it had claimed: those sagas come to rest in the later process, and the
//! earlier one reports them as "taken over by a newer claim" (which is not a failure: `recover` exits 0 for
//! them). Each round:
//!
//! 1. `ratchet run instance-create --count 40 --start --create-first` with two NICs, two new disks, one existing
//!    disk and an ephemeral IP (every kind of node), against `ratchet sim`, SIGKILLed after a random number
//!    of its sagas came to rest plus a random delay;
//! 2. two `ratchet recover` with that executor id, spawned back to back, both awaited (with a deadline):
//!    neither may die of a signal or fail;
//! 3. then: every saga is `done` (none running, unwinding, stuck or abandoned) and all 40 exist; the invariant
//!    checker (database, sled agent, pantry) reports nothing; and exactly-once holds on the domain (see
//!    `ratchet_tests::check_instance_create_domain`): each live instance is one succeeded saga's with exactly
//!    its NICs, IPs and disks, the sled agent runs one VMM per running instance and applied one `vmm_ensure`
//!    per `ensure_vmm` commit record.
//!
//! Each round prints how many sagas each recovery resumed; the test fails if in no round did both processes
//! claim sagas (the overlap is what it is about).
//!
//! The seed is printed at the start; `RATCHET_TEST_SEED=N` replays the same schedule (the rounds' seeds are
//! drawn from it; where the sagas are when a kill lands still depends on the machine). Nothing is timed: the
//! delays only pick the moment of the kill.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::{fresh_database, test_server};
use ratchet_tests::{
    Child, InstanceCreateShape, Scratch, Sim, SplitMix64, assert_no_saga_given_up,
    check_instance_create_domain, ratchet_cli, saga_states, test_seed,
};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const ROUNDS: usize = 5;
const COUNT: usize = 40;
const CONCURRENCY: usize = 8;
const SHAPE: InstanceCreateShape = InstanceCreateShape::ALL_NODES;
/// How long the run may take to record its sagas, or to finish the ones the kill waits for.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// How long the two recoveries may take, together.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);
/// How long a round may take, all in all (its queries included).
const ROUND_DEADLINE: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recoveries_at_once_after_a_sigkill_leave_every_saga_at_rest() {
    let seed = test_seed("two recoveries");
    let mut seeds = SplitMix64(seed);
    let ratchet = ratchet_cli();
    let mut overlapping = 0;
    for round in 1..=ROUNDS {
        let round_seed = seeds.next_u64();
        let started = Instant::now();
        let claims = tokio::time::timeout(ROUND_DEADLINE, one_round(&ratchet, round, round_seed))
            .await
            .unwrap_or_else(|_| panic!("round {round} took longer than {ROUND_DEADLINE:?}"));
        println!(
            "round {round}: passed in {:.1} s; the recoveries resumed {claims:?} saga(s)",
            started.elapsed().as_secs_f64()
        );
        if claims.iter().all(|&n| n > 0) {
            overlapping += 1;
        }
    }
    assert!(
        overlapping > 0,
        "in no round did both recoveries claim sagas: the overlap of two claims was never tested"
    );
}

/// One round (see the module docs); returns how many sagas each recovery said it resumed.
async fn one_round(ratchet: &Path, round: usize, seed: u64) -> [usize; 2] {
    println!("round {round}: seed {seed}");
    let mut rng = SplitMix64(seed);
    let server = test_server().await.expect("the test server");
    let db = fresh_database(&[&DATASTORE_MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let scratch = Scratch::new();
    let sec = Uuid::new_v4().to_string();
    let mut sim = Sim::start(ratchet, scratch.path());
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
    let mut run = Child::spawn(ratchet, scratch.path(), "run", executor(&verb), false);
    let deadline = Instant::now() + RUN_DEADLINE;
    run.read_until_by(deadline, "the run's sagas to be recorded", |l| {
        l.starts_with(&format!("created {COUNT} saga(s)"))
    })
    .unwrap_or_else(|| panic!("`ratchet run` did not create its sagas:\n{}", run.output()));
    let finished = 1 + rng.below(COUNT / 4);
    let seen = run.count_lines_by(finished, deadline, |l| l.starts_with('['));
    let delay = rng.below(300);
    std::thread::sleep(Duration::from_millis(delay));
    let killed = run.kill();
    let states = saga_states(&mut conn).await;
    println!(
        "round {round}: `ratchet run` {} after {seen} saga(s) came to rest + {delay} ms; sagas now: {states:?}",
        if killed { "killed" } else { "had exited" }
    );
    let unfinished =
        states.get("running").copied().unwrap_or(0) + states.get("unwinding").copied().unwrap_or(0);
    assert!(
        killed && unfinished > 0,
        "the kill must interrupt the run, or this round tests nothing: {states:?}\n{}",
        run.output()
    );
    assert_no_saga_given_up(&mut conn, &states).await;

    // 2. Two recoveries at once, as one executor.
    let mut recoveries = [
        Child::spawn(
            ratchet,
            scratch.path(),
            "recover (a)",
            executor(&["recover"]),
            false,
        ),
        Child::spawn(
            ratchet,
            scratch.path(),
            "recover (b)",
            executor(&["recover"]),
            false,
        ),
    ];
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let mut claims = [0; 2];
    for (i, recovery) in recoveries.iter_mut().enumerate() {
        let (status, stdout) = recovery.finish_by(deadline);
        assert_eq!(
            status.signal(),
            None,
            "a recovery died of a signal:\n{}",
            recovery.output()
        );
        assert!(
            status.success(),
            "a recovery failed ({status}):\n{}",
            recovery.output()
        );
        claims[i] = resumed(&stdout).unwrap_or_else(|| {
            panic!(
                "the recovery said neither what it resumed nor that there was nothing to recover:\n{}",
                recovery.output()
            )
        });
        let summary = stdout
            .iter()
            .find(|l| l.starts_with("recovered ") || l.contains("nothing to recover"))
            .map_or("(no summary line)", String::as_str);
        println!("round {round}: recovery {}: {summary}", ["a", "b"][i]);
    }
    match claims {
        [0, 0] => {
            panic!("neither recovery resumed anything, yet {unfinished} saga(s) were unfinished")
        }
        [0, _] | [_, 0] => println!(
            "round {round}: note: one recovery found nothing to recover (the other had finished or claimed \
             everything first)"
        ),
        _ => {}
    }

    // 3. Every saga at rest; none given up; nothing violated; exactly-once on the domain.
    let states = saga_states(&mut conn).await;
    assert_no_saga_given_up(&mut conn, &states).await;
    assert_eq!(
        states,
        BTreeMap::from([("done".to_owned(), COUNT as i64)]),
        "every saga is done"
    );
    let violations = ratchet_sagas::check_nexus_invariants(&mut conn, &sim.sled_agent, &sim.pantry)
        .await
        .expect("invariant check");
    assert!(
        violations.is_empty(),
        "invariant violations: {violations:#?}"
    );
    let counters = sim.counters();
    check_instance_create_domain(&mut conn, SHAPE, COUNT, &sim.sled_agent, &counters).await;

    drop(conn);
    server
        .drop_database(&db)
        .await
        .expect("drop the round's database");
    claims
}

/// How many sagas a `ratchet recover` said it resumed (0 for "nothing to recover").
fn resumed(stdout: &[String]) -> Option<usize> {
    stdout.iter().find_map(|line| {
        if line.contains("nothing to recover") {
            return Some(0);
        }
        let (_, rest) = line.split_once(": resumed ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
