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
//! - no commit was applied twice, measured on the domain: a saga that
//!   succeeded has exactly the commits its DAG implies and no compensation; a saga that unwound compensated
//!   every commit it made (serialization conflicts can exhaust a node's retries, so under this load many sagas
//!   unwind: that is a clean failure, not a leak);
//! - the domain agrees: each live instance is exactly the instance of one succeeded saga, running (state `vmm`
//!   at state generation 3: inserted at 1, two transitions), with exactly its NICs, its SNAT and ephemeral IPs,
//!   its three disks attached in distinct slots (each at generation 3: created, finalized, attached), one sled
//!   reservation, the VMM's; the totals of disks, NICs and IPs match the sagas' outcomes;
//! - the sled agent runs exactly one VMM per running instance, and applied exactly one `vmm_ensure` per
//!   `ensure_vmm` commit record and one `vmm_unregister` per compensated `ensure_vmm`: every retry after a
//!   crash was answered from its idempotency record, not applied again.
//!
//! The test finds `ratchet` by building it (see `ratchet_tests::ratchet_cli`). The kill schedule comes from a
//! seed printed at the start; `RATCHET_TEST_SEED=N` replays the same schedule
//! (where the sagas are when a kill lands still depends on the machine). Nothing here is timed: the delays
//! only pick the moments of the kills.

use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_sagas::{DATASTORE_MIGRATIONS, invariants};
use ratchet_sim::{PantryClient, SledAgentClient};
use ratchet_store::testing::fresh_database;
use ratchet_tests::ratchet_cli;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use uuid::Uuid;

const COUNT: usize = 200;
const CONCURRENCY: usize = 16;
const NICS: usize = 2;
const CREATE_DISKS: usize = 2;
const ATTACH_DISKS: usize = 1;
const DISKS: usize = CREATE_DISKS + ATTACH_DISKS;
/// How many `ratchet recover` processes are killed before the last one runs to the end.
const KILLED_RECOVERIES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_instance_creates_survive_repeated_sigkills() {
    let seed = std::env::var("RATCHET_TEST_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("RATCHET_TEST_SEED is a number"))
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("kill schedule seed: RATCHET_TEST_SEED={seed}");
    let mut rng = SplitMix64(seed);

    let ratchet = ratchet_cli();
    let db = fresh_database(&[&DATASTORE_MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let scratch = Scratch::new();
    let sec = Uuid::new_v4().to_string();

    let mut sim = Child::spawn(&ratchet, scratch.path(), "sim", ["sim"], true);
    let services_line = sim
        .read_until(|l| l.starts_with("services: "))
        .unwrap_or_else(|| panic!("`ratchet sim` printed no addresses:\n{}", sim.output()));
    let services: Vec<String> = services_line
        .trim_start_matches("services: ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let sled_agent = SledAgentClient::new(address_after(&services, "--sled-agent"));
    let pantry = PantryClient::new(address_after(&services, "--pantry"));
    let executor = |verb: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--database-url", &db.url, "--sec-id", &sec]
            .into_iter()
            .chain(verb.iter().copied())
            .map(str::to_owned)
            .collect();
        args.extend(services.iter().cloned());
        args
    };

    // 1. The run, killed.
    let (count, concurrency) = (COUNT.to_string(), CONCURRENCY.to_string());
    let (nics, create_disks, attach_disks) = (
        NICS.to_string(),
        CREATE_DISKS.to_string(),
        ATTACH_DISKS.to_string(),
    );
    let mut run = Child::spawn(
        &ratchet,
        scratch.path(),
        "run",
        executor(&[
            "run",
            "instance-create",
            "--count",
            &count,
            "--concurrency",
            &concurrency,
            "--nics",
            &nics,
            "--create-disks",
            &create_disks,
            "--disks",
            &attach_disks,
            "--external-ip",
            "--start",
            "--create-first",
        ]),
        false,
    );
    run.read_until(|l| l.starts_with(&format!("created {COUNT} saga(s)")))
        .unwrap_or_else(|| panic!("`ratchet run` did not create its sagas:\n{}", run.output()));
    let finished = rng.below(COUNT / 4 + 1);
    let seen = run.count_lines(finished, |l| l.starts_with('['));
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
                .read_until(|l| l.contains(": resumed ") || l.contains("nothing to recover"))
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
    let last = Command::new(&ratchet)
        .args(executor(&["recover"]))
        .current_dir(scratch.path())
        .env("RATCHET_LOG", "error")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the last recovery");
    let stdout = String::from_utf8_lossy(&last.stdout);
    assert!(
        last.status.success(),
        "the last recovery failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&last.stderr)
    );
    println!(
        "last recovery: {}",
        stdout
            .lines()
            .find(|l| l.starts_with("recovered ") || l.contains("nothing to recover"))
            .unwrap_or("(no summary line)")
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
    let violations = invariants::check(&mut conn, &sled_agent, &pantry)
        .await
        .expect("invariant check");
    assert!(
        violations.is_empty(),
        "invariant violations: {violations:#?}"
    );

    // Exactly-once is measured on the domain below (rows per resource, calls applied per key): the saga log's
    // primary keys already make a second commit or compensation record per node impossible, so counting those
    // could not fail.
    let sagas: Vec<SagaRecords> = diesel::sql_query(
        "SELECT s.id AS saga_id, \
                EXISTS (SELECT 1 FROM saga_node_event e \
                        WHERE e.saga_id = s.id AND e.event_type = 'failed') AS failed, \
                ARRAY(SELECT node_name FROM saga_commit_record c \
                      WHERE c.saga_id = s.id ORDER BY node_name) AS commits, \
                ARRAY(SELECT node_name FROM saga_compensation_record c \
                      WHERE c.saga_id = s.id AND c.had_commit ORDER BY node_name) AS undone, \
                ARRAY(SELECT node_name FROM saga_compensation_record c \
                      WHERE c.saga_id = s.id AND NOT c.had_commit ORDER BY node_name) AS skipped, \
                (SELECT receipt #>> '{}' FROM saga_commit_record c \
                 WHERE c.saga_id = s.id AND c.node_name = 'create_instance_record') AS instance_id \
         FROM saga AS s",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let expected = expected_commits();
    let mut succeeded_instances = BTreeSet::new();
    let mut unwound = 0;
    for saga in &sagas {
        let commits: BTreeSet<String> = saga.commits.iter().cloned().collect();
        let undone: BTreeSet<String> = saga.undone.iter().cloned().collect();
        if saga.failed {
            unwound += 1;
            assert_eq!(
                commits, undone,
                "saga {} unwound: every commit compensated once, and nothing compensated that did not \
                 commit",
                saga.saga_id
            );
        } else {
            assert_eq!(
                commits, expected,
                "saga {} succeeded with exactly its DAG's commits",
                saga.saga_id
            );
            assert!(
                undone.is_empty() && saga.skipped.is_empty(),
                "saga {} succeeded, yet compensated {:?} {:?}",
                saga.saga_id,
                saga.undone,
                saga.skipped
            );
            let instance: Uuid = saga
                .instance_id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .expect("the instance id in create_instance_record's receipt");
            succeeded_instances.insert(instance);
        }
    }
    let succeeded = succeeded_instances.len();
    println!("{succeeded} saga(s) succeeded, {unwound} unwound");
    assert_eq!(succeeded + unwound, COUNT);
    assert!(
        succeeded > 0,
        "no saga succeeded: the domain checks below would check nothing"
    );

    // The domain: each live instance is one succeeded saga's, complete, and nothing was made twice.
    let instances: Vec<InstanceRow> = diesel::sql_query(
        "SELECT i.id, i.state, i.state_generation, i.active_propolis_id, \
                (i.boot_disk_id IS NOT NULL) AS has_boot_disk, \
                (SELECT count(*) FROM network_interface n \
                 WHERE n.instance_id = i.id AND n.time_deleted IS NULL) AS nics, \
                (SELECT count(DISTINCT n.slot) FROM network_interface n \
                 WHERE n.instance_id = i.id AND n.time_deleted IS NULL) AS nic_slots, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL \
                   AND e.kind = 'snat' AND e.state = 'attached') AS snat_ips, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL \
                   AND e.kind = 'ephemeral' AND e.state = 'attached') AS ephemeral_ips, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL) \
                  AS external_ips, \
                (SELECT count(*) FROM disk d WHERE d.attach_instance_id = i.id AND d.time_deleted IS NULL \
                   AND d.disk_state = 'attached' AND d.state_generation = 3) AS disks, \
                (SELECT count(DISTINCT d.slot) FROM disk d \
                 WHERE d.attach_instance_id = i.id AND d.time_deleted IS NULL) AS disk_slots, \
                (SELECT count(*) FROM sled_resource_vmm r WHERE r.instance_id = i.id) AS reservations, \
                (SELECT count(*) FROM sled_resource_vmm r \
                 WHERE r.instance_id = i.id AND r.id = i.active_propolis_id) AS vmm_reservations \
         FROM instance AS i WHERE i.time_deleted IS NULL",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let live: BTreeSet<Uuid> = instances.iter().map(|i| i.id).collect();
    assert_eq!(
        live, succeeded_instances,
        "the live instances are exactly those of the succeeded sagas"
    );
    for i in &instances {
        let got = (
            i.state.as_str(),
            i.state_generation,
            i.has_boot_disk,
            (i.nics, i.nic_slots),
            (i.snat_ips, i.ephemeral_ips, i.external_ips),
            (i.disks, i.disk_slots),
            (i.reservations, i.vmm_reservations),
        );
        let n = |x: usize| x as i64;
        let want = (
            "vmm",
            3,
            true,
            (n(NICS), n(NICS)),
            (1, 1, 2),
            (n(DISKS), n(DISKS)),
            (1, 1),
        );
        assert_eq!(
            got, want,
            "instance {}: (state, generation, boot disk, (NICs, slots), (SNAT, ephemeral, all IPs), \
             (disks attached at generation 3, slots), (sled reservations, the VMM's))",
            i.id
        );
    }
    let disks: Vec<Count> = diesel::sql_query(
        "SELECT disk_state AS key, count(*) AS count FROM disk WHERE time_deleted IS NULL GROUP BY disk_state",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let disks: BTreeMap<String, i64> = disks.into_iter().map(|c| (c.key, c.count)).collect();
    let mut want_disks = BTreeMap::from([("attached".to_owned(), (succeeded * DISKS) as i64)]);
    if unwound > 0 {
        // An unwound saga deletes the disks it created and detaches the existing one it attached.
        want_disks.insert("detached".to_owned(), (unwound * ATTACH_DISKS) as i64);
    }
    assert_eq!(disks, want_disks, "live disks by state");
    let totals: Vec<Count> = diesel::sql_query(
        "SELECT 'nics' AS key, count(*) AS count FROM network_interface WHERE time_deleted IS NULL \
         UNION ALL SELECT 'external_ips', count(*) FROM external_ip WHERE time_deleted IS NULL \
         UNION ALL SELECT 'sled_reservations', count(*) FROM sled_resource_vmm",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let totals: BTreeMap<String, i64> = totals.into_iter().map(|c| (c.key, c.count)).collect();
    let s = succeeded as i64;
    assert_eq!(
        totals,
        BTreeMap::from([
            ("external_ips".to_owned(), 2 * s),
            ("nics".to_owned(), NICS as i64 * s),
            ("sled_reservations".to_owned(), s),
        ]),
        "live NICs, external IPs and sled reservations"
    );

    // The sled agent: one VMM per running instance, each ensure applied once.
    let vmms = sled_agent.list_vmms().await.expect("the sled agent's VMMs");
    let propolis: BTreeMap<Uuid, Option<Uuid>> = instances
        .iter()
        .map(|i| (i.id, i.active_propolis_id))
        .collect();
    let vmm_instances: BTreeSet<Uuid> = vmms.iter().map(|v| v.instance_id).collect();
    assert_eq!(vmm_instances, live, "one VMM per running instance");
    assert_eq!(vmms.len(), live.len(), "one VMM per running instance");
    for vmm in &vmms {
        assert_eq!(
            propolis.get(&vmm.instance_id),
            Some(&Some(vmm.propolis_id)),
            "VMM {vmm:?} is its instance's active one"
        );
    }
    let ensure_records: Vec<Count> = diesel::sql_query(
        "SELECT 'commits' AS key, count(*) AS count FROM saga_commit_record WHERE node_name = 'ensure_vmm' \
         UNION ALL SELECT 'compensations', count(*) FROM saga_compensation_record \
                   WHERE node_name = 'ensure_vmm' AND had_commit",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let ensure_records: BTreeMap<String, i64> = ensure_records
        .into_iter()
        .map(|c| (c.key, c.count))
        .collect();
    sim.send("counters");
    let counters_line = sim
        .read_until(|l| l.starts_with("counters "))
        .unwrap_or_else(|| panic!("`ratchet sim` printed no counters:\n{}", sim.output()));
    let counters: serde_json::Value =
        serde_json::from_str(counters_line.trim_start_matches("counters ")).expect("counters JSON");
    let applied = |op: &str| counters["sled_agent"][op]["applied"].as_i64();
    println!(
        "sled agent: vmm_ensure {}, vmm_unregister {}; ensure_vmm records: {ensure_records:?}",
        counters["sled_agent"]["vmm_ensure"], counters["sled_agent"]["vmm_unregister"]
    );
    assert_eq!(
        (applied("vmm_ensure"), applied("vmm_unregister")),
        (
            ensure_records.get("commits").copied(),
            ensure_records.get("compensations").copied()
        ),
        "the sled agent applied one ensure per ensure_vmm commit record and one unregister per compensated \
         ensure_vmm: {counters}"
    );
}

/// The commits of a succeeded saga with this test's parameters, by node name.
fn expected_commits() -> BTreeSet<String> {
    let mut nodes: Vec<String> = vec!["create_instance_record".into()];
    nodes.extend((0..NICS).map(|i| format!("create_nic_{i}")));
    nodes.extend(["allocate_snat_ip".into(), "allocate_ephemeral_ip".into()]);
    nodes.extend((0..CREATE_DISKS).map(|i| format!("create_disk_record_{i}")));
    nodes.extend((0..CREATE_DISKS).map(|i| format!("finalize_disk_{i}")));
    nodes.extend((0..DISKS).map(|i| format!("attach_disk_{i}")));
    nodes.extend(
        [
            "set_boot_disk",
            "move_to_stopped",
            "reserve_sled",
            "ensure_vmm",
            "mark_running",
        ]
        .map(String::from),
    );
    nodes.into_iter().collect()
}

fn address_after(words: &[String], option: &str) -> SocketAddr {
    words
        .iter()
        .position(|w| w == option)
        .and_then(|i| words.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {option} ADDR in {words:?}"))
}

/// Fails, with each one's reason, if a saga is stuck or abandoned.
async fn assert_no_saga_given_up(conn: &mut AsyncPgConnection, states: &BTreeMap<String, i64>) {
    if !states.contains_key("stuck") && !states.contains_key("abandoned") {
        return;
    }
    let given_up: Vec<Count> = diesel::sql_query(
        "SELECT id::text || ' ' || saga_state || ' at ' || COALESCE(stuck_node, '-') || ': ' \
                || COALESCE(stuck_reason, abandon_reason, '-') AS key, 1::int8 AS count \
         FROM saga WHERE saga_state IN ('stuck', 'abandoned') ORDER BY id",
    )
    .load(conn)
    .await
    .unwrap();
    let reasons: Vec<&str> = given_up.iter().map(|c| c.key.as_str()).collect();
    panic!(
        "no saga may be stuck or abandoned: {states:?}\n{}",
        reasons.join("\n")
    );
}

async fn saga_states(conn: &mut AsyncPgConnection) -> BTreeMap<String, i64> {
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT saga_state AS key, count(*) AS count FROM saga GROUP BY saga_state",
    )
    .load(conn)
    .await
    .unwrap();
    rows.into_iter().map(|c| (c.key, c.count)).collect()
}

#[derive(Debug, diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(diesel::QueryableByName)]
struct SagaRecords {
    #[diesel(sql_type = SqlUuid)]
    saga_id: Uuid,
    #[diesel(sql_type = Bool)]
    failed: bool,
    #[diesel(sql_type = Array<Text>)]
    commits: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    undone: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    skipped: Vec<String>,
    #[diesel(sql_type = Nullable<Text>)]
    instance_id: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct InstanceRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    state_generation: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    active_propolis_id: Option<Uuid>,
    #[diesel(sql_type = Bool)]
    has_boot_disk: bool,
    #[diesel(sql_type = BigInt)]
    nics: i64,
    #[diesel(sql_type = BigInt)]
    nic_slots: i64,
    #[diesel(sql_type = BigInt)]
    snat_ips: i64,
    #[diesel(sql_type = BigInt)]
    ephemeral_ips: i64,
    #[diesel(sql_type = BigInt)]
    external_ips: i64,
    #[diesel(sql_type = BigInt)]
    disks: i64,
    #[diesel(sql_type = BigInt)]
    disk_slots: i64,
    #[diesel(sql_type = BigInt)]
    reservations: i64,
    #[diesel(sql_type = BigInt)]
    vmm_reservations: i64,
}

/// SplitMix64: a small seeded generator for the kill schedule.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn below(&mut self, max: usize) -> u64 {
        self.next() % (max as u64 + 1)
    }
}

/// A scratch working directory for the children (so that nothing lands in the repository), removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("ratchet-load-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `ratchet` child process, its stdout read line by line on a thread of its own and its stderr kept (the
/// last 64 KiB) for failure messages. Dropping it kills it.
struct Child {
    name: &'static str,
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Child {
    fn spawn<I, S>(ratchet: &Path, dir: &Path, name: &'static str, args: I, stdin: bool) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut process = Command::new(ratchet)
            .args(args)
            .current_dir(dir)
            .env("RATCHET_LOG", "error")
            .env_remove("DATABASE_URL")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `ratchet {name}`: {e}"));
        let (sender, lines) = mpsc::channel();
        let stdout = process.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = process.stderr.take().expect("stderr");
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(64 * 1024);
                kept.drain(..excess);
            }
        });
        Child {
            name,
            process,
            lines,
            printed: Vec::new(),
            stderr,
        }
    }

    /// The next line on stdout; `None` once stdout is closed (the child exited).
    fn next_line(&mut self) -> Option<String> {
        let line = self.lines.recv().ok()?;
        self.printed.push(line.clone());
        Some(line)
    }

    /// Reads lines until one satisfies `wanted`; `None` if stdout closes first.
    fn read_until(&mut self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        while let Some(line) = self.next_line() {
            if wanted(&line) {
                return Some(line);
            }
        }
        None
    }

    /// Reads lines until `n` satisfied `wanted` or stdout closed; returns how many did.
    fn count_lines(&mut self, n: u64, wanted: impl Fn(&str) -> bool) -> u64 {
        let mut seen = 0;
        while seen < n {
            match self.next_line() {
                Some(line) if wanted(&line) => seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        seen
    }

    fn send(&mut self, line: &str) {
        let stdin = self.process.stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}").expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// SIGKILLs the child and reaps it. Returns true if the kill ended it, false if it had exited on its own
    /// (which it must have done successfully).
    fn kill(&mut self) -> bool {
        let _ = self.process.kill();
        let status = self.process.wait().expect("reap the child");
        if status.signal() == Some(9) {
            return true;
        }
        if !status.success() {
            panic!("the child failed on its own ({status}):\n{}", self.output());
        }
        false
    }

    /// What the child printed so far, for failure messages.
    fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
        let stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "--- stdout of `ratchet {}`\n{}\n--- stderr (last 64 KiB)\n{}",
            self.name,
            self.printed.join("\n"),
            String::from_utf8_lossy(&stderr)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
