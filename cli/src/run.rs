//! `ratchet run SAGA`: runs Nexus-shaped sagas under load against the simulated sled agent and pantry, then
//! checks that every saga is at rest and nothing leaked.
//!
//! The services are started in this process, unless `--sled-agent ADDR --pantry ADDR` name running ones
//! (`ratchet sim`): then a crash of this process leaves them, and the sagas it did not finish can be recovered
//! against them (`ratchet recover` with the same options). In-process services die with the process, so this
//! command refuses to start, as `recover` does, while its executor has unfinished Nexus sagas and it was not
//! given the addresses of the services they called (see `registry`).
//!
//! By default a saga is created when a slot of the `--concurrency` frees up, as API requests would arrive.
//! `--create-first` records every saga durably before any runs (as if all the requests had arrived at once),
//! so that a crash leaves every unfinished one for recovery to resume.
//!
//! # Beside other executors
//!
//! Operators run this from several hosts on one database, each as its own executor (`--sec-id`). So:
//! - the runs share one world (`ratchet_sagas::take_or_seed_world`, named [`WORLD`]): each takes what
//!   exists of it and creates what is missing, and runs started at the same instant do not trip on each other;
//! - the final check judges this run's sagas (each at rest, and each one's postcondition, asked of
//!   `ratchet_sagas::instance_create_postcondition`), and the invariants of the whole database only when it
//!   is at rest: read in one snapshot, no saga of any executor running or unwinding. When other executors'
//!   sagas are in flight, it says so, naming how many of which executors, and does not fail for them.

use crate::cli::{Global, InstanceCreateArgs, RunSaga};
use crate::output::{Commentary, Progress, print_json};
use crate::registry::ServiceAddrs;
use crate::setup::{self, AlsoUnstranded, NexusServices};
use anyhow::{Context, bail};
use diesel_async::SimpleAsyncConnection;
use futures::StreamExt;
use ratchet_datastore as ds;
use ratchet_engine::{Engine, PreparedSaga, SagaOutcome};
use ratchet_sagas::{
    DiskAttach, DiskDetach, DiskInstanceParams, DiskSpec, InstanceCreate, InstanceCreateEnd,
    InstanceCreateParams, NicSpec, Services, SnapshotCreate, SnapshotCreateParams, World,
    WorldSpec,
};
use ratchet_sim::{PantryClient, SledAgentClient};
use ratchet_store::PoolConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What `ratchet run --json` prints: how each saga came to rest, and the check that followed.
#[derive(serde::Serialize)]
struct RunSummary {
    saga: &'static str,
    count: usize,
    elapsed_secs: f64,
    /// How many sagas ended each way (`succeeded`, `unwound`, `STUCK`, ...).
    tally: BTreeMap<&'static str, usize>,
    outcomes: BTreeMap<Uuid, SagaOutcome>,
    violations: Vec<ratchet_datastore::Violation>,
    /// Instances neither complete nor gone.
    incomplete: Vec<String>,
    /// Whether the invariants of the whole database were checked (only at rest).
    invariants_checked: bool,
    /// When they were not: the sagas in flight, by executor (`none`: owned by no executor).
    in_flight: BTreeMap<String, i64>,
}

/// The world every `ratchet run` on a database shares (see the module docs).
pub const WORLD: &str = "ratchet-run";

/// The shape of [`WORLD`] when it is created: room for the instances of many runs (a /16 subnet, sleds of
/// 65,536 threads), its IP pool growing a block at a time as runs need addresses.
fn world_spec() -> WorldSpec {
    WorldSpec {
        ipv4_block: "172.30.0.0/16".to_owned(),
        sled_threads: 1 << 16,
        ..WorldSpec::default()
    }
}

/// What the invariant check of the whole database found.
enum GlobalCheck {
    /// The database was at rest: the violations.
    AtRest(Vec<ratchet_datastore::Violation>),
    /// Sagas were in flight, counted by executor: nothing was checked.
    InFlight(BTreeMap<Option<Uuid>, i64>),
}

pub async fn run(global: &Global, saga: &RunSaga) -> anyhow::Result<()> {
    let common = saga.common();
    let json = common.output.json();
    let say = Commentary { json };
    let name = saga.name();
    let count = common.count;
    let concurrency = common.concurrency as usize;
    let pool_size = common.pool_size;
    let pool_timeout = common.pool_timeout_ms;

    let (url, executor) = setup::open(global, "run").await?;
    let services = match ServiceAddrs::from_args(&common.services) {
        Some(addrs) => RunServices::External(addrs),
        None => RunServices::InProcess(
            Services::start().context("starting the simulated sled agent and pantry")?,
        ),
    };
    let (engine, recovered) = setup::start_engine(
        &url,
        &executor,
        &services.nexus(),
        "run",
        AlsoUnstranded::Nothing,
        |config| {
            config.pool = PoolConfig {
                max_size: pool_size,
                checkout_timeout: Duration::from_millis(pool_timeout),
                ..config.pool.clone()
            }
        },
    )
    .await?;
    if let RunServices::External(addrs) = &services {
        say.line(format_args!(
            "using the sled agent at {} and the pantry at {}",
            addrs.sled_agent, addrs.pantry
        ));
    }
    let app = services
        .nexus()
        .app()
        .context("the run's services have no saga context")?;
    // Each instance takes one address for SNAT, and one more with an ephemeral IP.
    let addresses = match saga {
        RunSaga::InstanceCreate(args) => count as i64 * (1 + i64::from(args.external_ip)),
        _ => 0,
    };
    let world = setup::retrying("seeding the world", || async {
        let mut conn = engine
            .pool()
            .get()
            .await
            .map_err(ratchet_store::DbError::from)?;
        Ok(ratchet_sagas::take_or_seed_world(&mut conn, WORLD, &world_spec(), addresses).await?)
    })
    .await?;
    if !recovered.resumed.is_empty()
        || !recovered.abandoned.is_empty()
        || !recovered.left_alone.is_empty()
    {
        say.line(format_args!(
            "recovered {} unfinished saga(s) first (abandoned {}, left alone {}); they finish alongside this \
             run's",
            recovered.resumed.len(),
            recovered.abandoned.len(),
            recovered.left_alone.len()
        ));
    }
    if let RunSaga::InstanceCreate(InstanceCreateArgs {
        fail_refetch: Some(n),
        ..
    }) = saga
    {
        app.legacy.fail_refetch(*n);
        say.line(format_args!(
            "the legacy attach's re-fetch will fail {n} time(s) (LegacyKnobs::fail_refetch)"
        ));
    }
    say.line(format_args!(
        "running {count} {name} saga(s), {concurrency} at a time, pool of {pool_size} (checkout timeout {pool_timeout} ms)"
    ));

    // Prerequisites and parameters, one set per saga, made before any saga starts.
    let mut jobs = Vec::with_capacity(count);
    let preparing = Progress::new(Some(count as u64), say);
    preparing.message("preparing each saga's instance, disks and parameters");
    for i in 0..count {
        let job = setup::retrying("preparing a saga's prerequisites", || async {
            let mut conn = engine
                .pool()
                .get()
                .await
                .map_err(ratchet_store::DbError::from)?;
            // In one transaction: a reader at rest (another run's final check) never sees a prerequisite
            // half made (a disk still `creating`, an instance not yet stopped).
            conn.batch_execute("BEGIN").await?;
            let job = prepare(saga, &mut conn, &world, i).await;
            let end = if job.is_ok() { "COMMIT" } else { "ROLLBACK" };
            conn.batch_execute(end).await?;
            job
        })
        .await?;
        jobs.push(job);
        preparing.inc();
    }
    preparing.finish();
    // What this run's final check asks of each saga once it is at rest.
    let postconditions: Vec<InstanceCreateParams> = jobs
        .iter()
        .filter_map(|job| match job {
            Job::InstanceCreate(params) => Some(params.clone()),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_saga: BTreeMap<Uuid, SagaOutcome> = BTreeMap::new();
    let mut done = 0;
    let mut results = if common.create_first {
        let mut created = Vec::with_capacity(count);
        for job in jobs {
            created.push(job.create(&engine).await?);
        }
        say.line(format_args!("created {count} saga(s); running them"));
        futures::stream::iter(created)
            .map(|saga| async move {
                let id = saga.id;
                Ok((id, saga.run().await?))
            })
            .boxed()
            .buffer_unordered(concurrency)
            .boxed()
    } else {
        futures::stream::iter(jobs)
            .map(|job| {
                let engine = engine.clone();
                async move { job.run(&engine).await }
            })
            .buffer_unordered(concurrency)
            .boxed()
    };
    let progress = Progress::new(Some(count as u64), say);
    while let Some(result) = results.next().await {
        done += 1;
        let (id, outcome) = result?;
        let kind = match &outcome {
            SagaOutcome::Succeeded { .. } => "succeeded",
            SagaOutcome::Unwound { .. } => "unwound",
            SagaOutcome::Stuck { .. } => "STUCK",
            SagaOutcome::Fenced => "fenced",
            SagaOutcome::Abandoned { .. } => "abandoned",
            SagaOutcome::Interrupted { .. } => "interrupted",
        };
        *outcomes.entry(kind).or_default() += 1;
        let detail = match &outcome {
            SagaOutcome::Unwound { node, error, .. } => format!(" ({node}: {error})"),
            SagaOutcome::Stuck {
                undo_node,
                undo_error,
                ..
            } => format!(" (undo of {undo_node} failed: {undo_error})"),
            _ => String::new(),
        };
        let line = format!("[{done:>4}/{count}] saga {id}: {kind}{detail}");
        if matches!(outcome, SagaOutcome::Succeeded { .. }) {
            progress.step(line);
        } else {
            progress.note(line);
            progress.inc();
        }
        progress.message(format!(
            "{} succeeded",
            outcomes.get("succeeded").copied().unwrap_or(0)
        ));
        by_saga.insert(id, outcome);
    }
    progress.finish();
    let elapsed = started.elapsed();
    let summary: Vec<String> = outcomes.iter().map(|(k, n)| format!("{n} {k}")).collect();
    say.line(format_args!(
        "\n{count} saga(s) in {:.2} s: {}",
        elapsed.as_secs_f64(),
        summary.join(", ")
    ));

    // This run's sagas are at rest (each one's run returned); so must be those its engine recovered first.
    for id in &recovered.resumed {
        engine.wait(*id).await;
    }
    let mut problems = Vec::new();
    if let RunSaga::InstanceCreate(args) = saga {
        let want = args.disks + args.create_disks;
        problems.extend(
            setup::retrying("checking the instances", || async {
                let mut conn = engine
                    .pool()
                    .get()
                    .await
                    .map_err(ratchet_store::DbError::from)?;
                instances_complete_or_gone(&mut conn, &postconditions, want, say).await
            })
            .await?,
        );
    }
    let (sled_agent, pantry) = services.clients();
    let global = setup::retrying("checking the invariants", || async {
        let mut conn = engine
            .pool()
            .get()
            .await
            .map_err(ratchet_store::DbError::from)?;
        // One snapshot: the sagas' states and the rows the rules read are of the same instant.
        conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let checked = global_check(&mut conn, &sled_agent, &pantry).await;
        let end = if checked.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        conn.batch_execute(end).await?;
        checked
    })
    .await?;
    let (violations, in_flight) = match global {
        GlobalCheck::AtRest(violations) => {
            say.line(format_args!(
                "invariant check: {} violation(s)",
                violations.len()
            ));
            (violations, BTreeMap::new())
        }
        GlobalCheck::InFlight(in_flight) => {
            let total: i64 = in_flight.values().sum();
            let whose: Vec<String> = in_flight
                .iter()
                .map(|(sec, n)| match sec {
                    Some(sec) if *sec == executor.id => format!("{n} of executor {sec} (this one)"),
                    Some(sec) => format!("{n} of executor {sec}"),
                    None => format!("{n} of no executor"),
                })
                .collect();
            say.line(format_args!(
                "invariant check: not run: {total} saga(s) of {} executor(s) still in flight ({}); the \
                 database's rules hold only at rest (`ratchet check` once it is)",
                in_flight.len(),
                whose.join(", ")
            ));
            let in_flight = in_flight
                .into_iter()
                .map(|(sec, n)| (sec.map_or_else(|| "none".to_owned(), |s| s.to_string()), n))
                .collect();
            (Vec::new(), in_flight)
        }
    };
    for violation in &violations {
        say.line(format_args!("  {}: {}", violation.rule, violation.detail));
    }
    for problem in &problems {
        say.line(format_args!("  {problem}"));
    }
    engine.shutdown().await;
    if json {
        print_json(&RunSummary {
            saga: name,
            count,
            elapsed_secs: elapsed.as_secs_f64(),
            tally: outcomes.clone(),
            outcomes: by_saga,
            violations: violations.clone(),
            incomplete: problems.clone(),
            invariants_checked: in_flight.is_empty(),
            in_flight,
        })?;
    }
    let stuck = outcomes.get("STUCK").copied().unwrap_or(0);
    if stuck > 0 || !violations.is_empty() || !problems.is_empty() {
        bail!(
            "{stuck} stuck saga(s), {} violation(s), {} incomplete instance(s)",
            violations.len(),
            problems.len()
        );
    }
    Ok(())
}

/// One saga to run, with its parameters.
enum Job {
    InstanceCreate(InstanceCreateParams),
    DiskAttach(DiskInstanceParams),
    DiskDetach(DiskInstanceParams),
    SnapshotCreate(SnapshotCreateParams),
}

impl Job {
    /// Records the saga durably, without running it.
    async fn create(self, engine: &Engine) -> anyhow::Result<PreparedSaga> {
        Ok(match self {
            Job::InstanceCreate(p) => engine.create::<InstanceCreate>(p).await?,
            Job::DiskAttach(p) => engine.create::<DiskAttach>(p).await?,
            Job::DiskDetach(p) => engine.create::<DiskDetach>(p).await?,
            Job::SnapshotCreate(p) => engine.create::<SnapshotCreate>(p).await?,
        })
    }

    async fn run(self, engine: &Engine) -> anyhow::Result<(Uuid, SagaOutcome)> {
        let saga = self.create(engine).await?;
        let id = saga.id;
        Ok((id, saga.run().await?))
    }
}

/// The services a run's sagas call.
enum RunServices {
    /// Started in this process; they die with it.
    InProcess(Services),
    /// Running elsewhere (`ratchet sim`).
    External(ServiceAddrs),
}

impl RunServices {
    /// The services as an engine's start takes them.
    fn nexus(&self) -> NexusServices {
        match self {
            RunServices::InProcess(services) => NexusServices::InProcess(Arc::clone(&services.app)),
            RunServices::External(addrs) => NexusServices::At(*addrs),
        }
    }

    fn clients(&self) -> (SledAgentClient, PantryClient) {
        match self {
            RunServices::InProcess(services) => {
                (services.sled_agent.client(), services.pantry.client())
            }
            RunServices::External(addrs) => (addrs.sled_agent(), addrs.pantry()),
        }
    }
}

async fn prepare(
    saga: &RunSaga,
    conn: &mut ratchet_store::DbConnection,
    world: &World,
    i: usize,
) -> anyhow::Result<Job> {
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    Ok(match saga {
        RunSaga::InstanceCreate(args) => {
            let mut attach_disks = Vec::new();
            for d in 0..args.disks {
                attach_disks.push(
                    ratchet_sagas::detached_disk(conn, world, &format!("disk-{tag}-{d}")).await?,
                );
            }
            let nics = (0..args.nics)
                .map(|n| NicSpec {
                    name: format!("net{n}"),
                    subnet_id: world.subnet_id,
                })
                .collect();
            let create_disks = (0..args.create_disks)
                .map(|d| DiskSpec {
                    name: format!("inst-{tag}-disk-{d}"),
                    size_bytes: 1 << 30,
                })
                .collect();
            Job::InstanceCreate(InstanceCreateParams {
                project_id: world.project_id,
                name: format!("inst-{i}-{tag}"),
                ncpus: 2,
                memory: 1 << 30,
                nics,
                ip_pool_id: world.ip_pool_id,
                external_ip: args.external_ip,
                create_disks,
                attach_disks,
                boot_disk: true,
                start: args.start,
                legacy_attach: args.legacy_attach,
            })
        }
        RunSaga::DiskAttach(_) | RunSaga::DiskDetach(_) => {
            let instance =
                ratchet_sagas::stopped_instance(conn, world, &format!("inst-{tag}")).await?;
            let disk = ratchet_sagas::detached_disk(conn, world, &format!("disk-{tag}")).await?;
            let params = DiskInstanceParams {
                instance_id: instance,
                disk_id: disk,
            };
            if matches!(saga, RunSaga::DiskDetach(_)) {
                ds::instance_attach_disk(conn, instance, disk, ds::MAX_DISKS_PER_INSTANCE).await?;
                Job::DiskDetach(params)
            } else {
                Job::DiskAttach(params)
            }
        }
        RunSaga::SnapshotCreate(_) => Job::SnapshotCreate(SnapshotCreateParams {
            project_id: world.project_id,
            disk_id: ratchet_sagas::detached_disk(conn, world, &format!("disk-{tag}")).await?,
            name: format!("snap-{tag}"),
        }),
    })
}

/// The invariants of the whole database if it is at rest (no saga of any executor running or unwinding), on
/// `conn`, in the transaction the caller opened.
async fn global_check(
    conn: &mut ratchet_store::DbConnection,
    sled_agent: &SledAgentClient,
    pantry: &PantryClient,
) -> anyhow::Result<GlobalCheck> {
    let in_flight = ratchet_store::count_unfinished_by_executor(conn).await?;
    if !in_flight.is_empty() {
        return Ok(GlobalCheck::InFlight(in_flight));
    }
    Ok(GlobalCheck::AtRest(
        ratchet_sagas::check_nexus_invariants(conn, sled_agent, pantry).await?,
    ))
}

/// Every instance of the run either complete (all its disks attached, in distinct slots) or gone: each
/// instance-create saga's postcondition, asked of the library (`ratchet_sagas::instance_create_postcondition`).
async fn instances_complete_or_gone(
    conn: &mut ratchet_store::DbConnection,
    sagas: &[InstanceCreateParams],
    disks: usize,
    say: Commentary,
) -> anyhow::Result<Vec<String>> {
    let mut complete = 0;
    let mut problems = Vec::new();
    for params in sagas {
        match ratchet_sagas::instance_create_postcondition(conn, params).await? {
            InstanceCreateEnd::Complete { .. } => complete += 1,
            InstanceCreateEnd::Gone => {}
            incomplete @ InstanceCreateEnd::Incomplete { .. } => {
                problems.push(incomplete.to_string())
            }
        }
    }
    say.line(format_args!(
        "instances: {complete} complete ({disks} disk(s) attached in distinct slots), the rest gone"
    ));
    Ok(problems)
}
