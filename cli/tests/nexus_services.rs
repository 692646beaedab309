//! The Nexus sagas and their services from the command line: `ratchet sim` serves the sled agent and the
//! pantry in a process of their own; the commands that resume sagas refuse, changing nothing, when they would
//! have to resume a Nexus saga without those services' addresses, and recover it when given them.

mod common;

use common::{
    RATCHET, Run, assert_fails_after_saying, assert_refused, assert_says, assert_usage_error,
    ratchet, rename_activate_widget,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use ratchet_engine::{EngineBuilder, EngineConfig, FaultEffect, FaultPoint, SagaOutcome};
use ratchet_example_saga::{self as example, ProvisionParams, ProvisionWidget};
use ratchet_sagas::{
    DATASTORE_MIGRATIONS, InstanceCreate, InstanceCreateParams, NicSpec, Services, World, WorldSpec,
};
use ratchet_sim::{PantryClient, SledAgentClient};
use ratchet_store::get_saga;
use ratchet_template_db::TestDatabase;
use ratchet_test_utils::testing::fresh_database;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_prints_its_addresses_and_serves_until_killed() {
    let mut sim = Command::new(RATCHET)
        .arg("sim")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ratchet sim");
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let words: Vec<&str> = first.split_whitespace().collect();
    let addr = |option: &str| -> SocketAddr {
        let at = words.iter().position(|w| *w == option);
        at.and_then(|i| words.get(i + 1))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {option} ADDR in {first:?}"))
    };
    assert!(first.starts_with("services: "), "{first:?}");
    let (sled_agent, pantry) = (addr("--sled-agent"), addr("--pantry"));
    assert!(sled_agent.ip().is_loopback() && pantry.ip().is_loopback());
    assert_ne!(sled_agent, pantry);

    // Both answer over HTTP, empty.
    let vmms = SledAgentClient::new(sled_agent).list_vmms().await.unwrap();
    assert!(vmms.is_empty(), "{vmms:?}");
    let state = PantryClient::new(pantry).state().await.unwrap();
    assert!(state.attachments.is_empty() && state.snapshots.is_empty());

    // A `counters` line on stdin: every operation's counters, as JSON; the one call above was no mutation.
    writeln!(sim.stdin.as_mut().unwrap(), "counters").unwrap();
    let counters = lines
        .find_map(|l| l.ok()?.strip_prefix("counters ").map(str::to_owned))
        .expect("a counters line");
    let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
    assert_eq!(
        counters["sled_agent"]["vmm_ensure"]["applied"], 0,
        "{counters}"
    );
    assert_eq!(
        counters["pantry"]["disk_attach"]["received"], 0,
        "{counters}"
    );

    // The end of stdin does not stop it.
    drop(sim.stdin.take());
    assert!(
        SledAgentClient::new(sled_agent).list_vmms().await.is_ok(),
        "still serving after its stdin closed"
    );
    assert!(sim.try_wait().unwrap().is_none(), "still running");
    sim.kill().unwrap();
    sim.wait().unwrap();
}

/// A database with a world, the sims (in this process: real HTTP servers on loopback), and an engine of
/// executor `sec` that registers everything the CLI does.
struct Setup {
    db: TestDatabase,
    conn: AsyncPgConnection,
    world: World,
    services: Services,
}

impl Setup {
    async fn new() -> Setup {
        let db = fresh_database(&[&DATASTORE_MIGRATIONS, &example::MIGRATIONS])
            .await
            .expect("test database");
        let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
        let world = ratchet_sagas::seed_world(&mut conn, &WorldSpec::default())
            .await
            .unwrap();
        let services = Services::start().unwrap();
        Setup {
            db,
            conn,
            world,
            services,
        }
    }

    async fn engine(&self, sec: Uuid) -> ratchet_engine::Engine {
        let builder = EngineBuilder::new(EngineConfig::new(&self.db.url, sec))
            .register::<ProvisionWidget>(Arc::new(()));
        ratchet_sagas::register_all(builder, &self.services.app)
            .start()
            .await
            .expect("engine")
            .0
    }

    fn params(&self, start: bool) -> InstanceCreateParams {
        InstanceCreateParams {
            project_id: self.world.project_id,
            name: format!("inst-{}", &Uuid::new_v4().simple().to_string()[..8]),
            ncpus: 2,
            memory: 1 << 30,
            nics: vec![NicSpec {
                name: "net0".to_owned(),
                subnet_id: self.world.subnet_id,
            }],
            ip_pool_id: self.world.ip_pool_id,
            external_ip: false,
            create_disks: vec![],
            attach_disks: vec![],
            boot_disk: false,
            start,
            legacy_attach: false,
        }
    }

    /// `--sled-agent ADDR --pantry ADDR` for the sims.
    fn service_options(&self) -> [String; 4] {
        [
            "--sled-agent".to_owned(),
            self.services.sled_agent.addr().to_string(),
            "--pantry".to_owned(),
            self.services.pantry.addr().to_string(),
        ]
    }

    fn ratchet(&self, args: &[&str], with_services: bool) -> Run {
        let options = self.service_options();
        let mut all: Vec<&str> = args.to_vec();
        if with_services {
            all.extend(options.iter().map(String::as_str));
        }
        ratchet(&self.db, &all)
    }

    async fn state(&mut self, id: Uuid) -> (String, i64) {
        let row = get_saga(&mut self.conn, id).await.unwrap().unwrap();
        (row.saga_state.to_string(), row.adopt_generation)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_without_the_services_and_recovers_with_them() {
    let mut setup = Setup::new().await;
    let (sec, other) = (Uuid::new_v4(), Uuid::new_v4());
    let (sec_s, other_s) = (sec.to_string(), other.to_string());
    let engine = setup.engine(sec).await;
    // Created by executor `sec` and never run: unfinished, as a crash leaves them.
    let nexus = engine
        .create::<InstanceCreate>(setup.params(true))
        .await
        .unwrap()
        .id;
    let mut conn = engine.pool().get().await.unwrap();
    let account = example::create_account(&mut conn, 100).await.unwrap();
    let provision = || ProvisionParams {
        account_id: account,
        widget_name: format!("w-{}", Uuid::new_v4().simple()),
        price: 30,
    };
    let widget = engine
        .create::<ProvisionWidget>(provision())
        .await
        .unwrap()
        .id;
    // A saga whose action this binary really does not have: recovery leaves it alone, with the reason.
    let renamed = engine
        .create::<ProvisionWidget>(provision())
        .await
        .unwrap()
        .id;
    rename_activate_widget(&mut conn, renamed).await;
    drop(conn);
    engine.shutdown().await;
    let before: Vec<_> = [nexus, widget, renamed].to_vec();
    let mut states = Vec::new();
    for id in &before {
        states.push(setup.state(*id).await);
    }
    assert!(
        states.iter().all(|(s, g)| s == "running" && *g == 1),
        "{states:?}"
    );

    // Without the services: every command that would resume the Nexus saga refuses, naming the options.
    let refusal = "Pass --sled-agent ADDR --pantry ADDR";
    let recover = ["recover", "--sec-id", &sec_s];
    let refused = setup.ratchet(&recover, false);
    assert_refused(&refused, refusal);
    assert_refused(&refused, &format!("1 instance-create of executor {sec}"));
    assert_refused(&refused, "`ratchet recover` was not given their addresses");
    assert_refused(&refused, "Nothing was changed");
    assert_refused(
        &setup.ratchet(&["demo", "--sec-id", &sec_s], false),
        refusal,
    );
    assert_refused(
        &setup.ratchet(
            &[
                "sagas", "adopt", "--from", &sec_s, "--sec-id", &other_s, "--yes",
            ],
            false,
        ),
        &format!("1 instance-create of executor {other}, executor {sec}"),
    );
    assert_refused(
        &setup.ratchet(
            &["run", "disk-attach", "--count", "1", "--sec-id", &sec_s],
            false,
        ),
        "would start new, empty simulated services",
    );
    assert_usage_error(
        &setup.ratchet(
            &["recover", "--sec-id", &sec_s, "--sled-agent", "127.0.0.1:1"],
            false,
        ),
        "the following required arguments were not provided:\n  --pantry <ADDR>",
    );
    // A port where nothing answers: bound for the whole test (so no other process can take it meanwhile)
    // and never accepted on, so the CLI's request gets no answer within its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = silent.local_addr().unwrap().to_string();
    let pantry = setup.services.pantry.addr().to_string();
    assert_refused(
        &setup.ratchet(
            &[
                "recover",
                "--sec-id",
                &sec_s,
                "--sled-agent",
                &nobody,
                "--pantry",
                &pantry,
            ],
            false,
        ),
        &format!("no sled agent answers at {nobody} (--sled-agent)"),
    );
    // Nothing was touched: not the Nexus saga, not the example sagas, not even the one this binary cannot run.
    for (id, state) in before.iter().zip(&states) {
        assert_eq!(&setup.state(*id).await, state, "saga {id} untouched");
    }

    // With them: everything is resumed, and only the truly unknown action is left alone, unfinished (which
    // needs an operator: the exit status says so).
    assert_fails_after_saying(
        &setup.ratchet(&recover, true),
        &[
            &format!("executor {sec}: resumed 2 saga(s), abandoned 0, left alone 1"),
            &format!("left alone {renamed} (unfinished, not driven): no definition of saga"),
            &format!("{nexus}: succeeded"),
            &format!("{widget}: succeeded"),
            "recovered 2 saga(s): 2 succeeded; abandoned 0; left alone 1",
        ],
        "recovery needs an operator: 0 saga(s) stuck",
    );
    assert_eq!(setup.state(renamed).await, ("running".to_owned(), 2));
    assert_eq!(setup.state(nexus).await.0, "done");
    let vmms = setup.services.sled_agent.vmms();
    assert_eq!(
        vmms.len(),
        1,
        "the recovered saga started its VMM: {vmms:?}"
    );
    assert_says(
        &setup.ratchet(&["check"], true),
        &[
            "sagas: 2 done, 1 running",
            "invariant check: 0 violation(s)",
        ],
    );
    // An operator gives up on it; then there is nothing left to recover.
    let renamed_s = renamed.to_string();
    let abandon = ["sagas", "abandon", &renamed_s, "--reason", "gone", "--yes"];
    assert_says(&setup.ratchet(&abandon, false), &["is abandoned"]);
    assert_says(&setup.ratchet(&recover, false), &["nothing to recover"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_unwind_of_a_stuck_nexus_saga_needs_the_services() {
    let mut setup = Setup::new().await;
    let sec = Uuid::new_v4();
    let engine = setup.engine(sec).await;
    let saga = engine
        .create::<InstanceCreate>(setup.params(false))
        .await
        .unwrap();
    let id = saga.id;
    let points = engine.failpoints();
    points.arm(
        id,
        "move_to_stopped",
        FaultPoint::BeforePrepare,
        FaultEffect::PermanentError,
        1,
    );
    points.arm(
        id,
        "create_instance_record",
        FaultPoint::InCompensation,
        FaultEffect::PermanentError,
        u32::MAX,
    );
    let outcome = saga.run().await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Stuck { .. }), "{outcome:?}");
    engine.shutdown().await;

    let cli = Uuid::new_v4().to_string();
    let retry = [
        "sagas",
        "retry-unwind",
        &id.to_string(),
        "--sec-id",
        &cli,
        "--yes",
    ];
    let refused = setup.ratchet(&retry, false);
    assert_refused(
        &refused,
        &format!("1 instance-create of executor {cli}, saga {id}"),
    );
    assert_refused(&refused, "Pass --sled-agent ADDR --pantry ADDR");
    // A dry run refuses as the real one would, and with the services says what it would do.
    let dry_run = [&retry[..5], &["--dry-run"]].concat();
    assert_refused(
        &setup.ratchet(&dry_run, false),
        "Pass --sled-agent ADDR --pantry ADDR",
    );
    assert_says(
        &setup.ratchet(&dry_run, true),
        &[
            "the compensation of create_instance_record runs again",
            "nothing was changed (--dry-run)",
        ],
    );
    assert_eq!(setup.state(id).await.0, "stuck", "refused, untouched");
    assert_says(
        &setup.ratchet(&retry, true),
        &[
            "unwound cleanly after move_to_stopped failed",
            "the unwind completed",
        ],
    );
    assert_says(
        &setup.ratchet(&["check"], true),
        &["invariant check: 0 violation(s)"],
    );
}

/// `ratchet run --json`: the summary (how each saga came to rest, and the invariant check) as JSON on stdout,
/// the running commentary on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_its_summary_as_json() {
    let db = fresh_database(&[&DATASTORE_MIGRATIONS, &example::MIGRATIONS])
        .await
        .expect("test database");
    let sec = Uuid::new_v4().to_string();
    let run = ratchet(
        &db,
        &[
            "run",
            "disk-attach",
            "--count",
            "3",
            "--concurrency",
            "2",
            "--sec-id",
            &sec,
            "--json",
        ],
    );
    assert!(run.ok, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["saga"], "disk-attach");
    assert_eq!(summary["count"], 3);
    assert_eq!(summary["tally"]["succeeded"], 3);
    assert_eq!(summary["violations"], serde_json::json!([]));
    assert_eq!(summary["incomplete"], serde_json::json!([]));
    let outcomes = summary["outcomes"].as_object().expect("outcomes");
    assert_eq!(outcomes.len(), 3, "{summary}");
    assert!(
        outcomes.values().all(|o| o["outcome"] == "succeeded"),
        "{summary}"
    );
    assert!(
        run.stderr.contains("running 3 disk-attach saga(s)"),
        "{run:?}"
    );
}
