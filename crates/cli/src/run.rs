//! `ratchet run SAGA`: runs Nexus-shaped sagas under load against the simulated sled agent and pantry, then
//! checks that every saga is at rest and nothing leaked.
//!
//! The services are started in this process, unless `--sled-agent ADDR --pantry ADDR` name running ones
//! (`ratchet sim`): then a crash of this process leaves them, and the sagas it did not finish can be recovered
//! against them (`ratchet recover` with the same options). In-process services die with the process, so this
//! command refuses to start, as `recover` does, while its executor has unfinished Nexus sagas and it was not
//! given the addresses of the services they called (see `engine_setup`).
//!
//! By default a saga is created when a slot of the `--concurrency` frees up, as API requests would arrive.
//! `--create-first` records every saga durably before any runs (as if all the requests had arrived at once),
//! so that a crash leaves every unfinished one for recovery to resume.

use crate::args::Args;
use crate::commands;
use crate::engine_setup::{self, SERVICE_OPTIONS, ServiceAddrs};
use anyhow::{Context, bail};
use futures::StreamExt;
use ratchet_datastore as ds;
use ratchet_engine::{Engine, EngineConfig, PreparedSaga, SagaOutcome};
use ratchet_sagas::{
    DiskAttach, DiskDetach, DiskInstanceParams, DiskSpec, InstanceCreate, InstanceCreateParams,
    NexusApp, NicSpec, Services, SnapshotCreate, SnapshotCreateParams, World, WorldSpec,
    invariants, world,
};
use ratchet_sim::{PantryClient, SledAgentClient};
use ratchet_store::{PoolConfig, pool};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const COMMON: [&str; 7] = [
    "--count",
    "--concurrency",
    "--pool-size",
    "--pool-timeout-ms",
    "--create-first",
    SERVICE_OPTIONS[0],
    SERVICE_OPTIONS[1],
];

pub async fn run(args: &Args, saga: &str) -> anyhow::Result<()> {
    let mut known: Vec<&str> = COMMON.to_vec();
    if saga == "instance-create" {
        known.extend([
            "--disks",
            "--create-disks",
            "--nics",
            "--external-ip",
            "--start",
            "--legacy-attach",
            "--fail-refetch",
        ]);
    }
    args.only(&known)?;
    if ![
        "instance-create",
        "disk-attach",
        "disk-detach",
        "snapshot-create",
    ]
    .contains(&saga)
    {
        bail!(
            "unknown saga {saga:?} (instance-create, disk-attach, disk-detach or snapshot-create)"
        );
    }
    let count = args.value::<usize>("--count")?.unwrap_or(10);
    let concurrency = args.value::<usize>("--concurrency")?.unwrap_or(4).max(1);
    let pool_size = args.value::<u32>("--pool-size")?.unwrap_or(16).max(1);
    let pool_timeout = args.value::<u64>("--pool-timeout-ms")?.unwrap_or(1_000);

    let url = commands::database_url(args).await?;
    let sec = commands::sec_id(args)?;
    commands::prepare_database(&url).await?;
    let services = match ServiceAddrs::from_args(args)? {
        Some(addrs) => {
            addrs.check_reachable().await?;
            println!(
                "using the sled agent at {} and the pantry at {}",
                addrs.sled_agent, addrs.pantry
            );
            RunServices::External(addrs)
        }
        None => {
            commands::retrying("checking for stranded sagas", || async {
                let mut conn = pool::establish(&url).await?;
                engine_setup::refuse_stranded_nexus_sagas(&mut conn, &[sec], &[], "run", true).await
            })
            .await?;
            RunServices::InProcess(
                Services::start().context("starting the simulated sled agent and pantry")?,
            )
        }
    };
    let app = services.app();
    let world = commands::retrying("seeding the world", || async {
        let mut conn = pool::establish(&url).await?;
        Ok(world::seed(&mut conn, &WorldSpec::default()).await?)
    })
    .await?;
    let mut config = EngineConfig::new(&url, sec);
    config.pool = PoolConfig {
        max_size: pool_size,
        checkout_timeout: Duration::from_millis(pool_timeout),
        ..config.pool
    };
    let (engine, recovered) = engine_setup::engine_builder(config, Some(&app))
        .start()
        .await?;
    if !recovered.resumed.is_empty() || !recovered.abandoned.is_empty() {
        println!(
            "recovered {} unfinished saga(s) first (abandoned {}); they finish alongside this run's",
            recovered.resumed.len(),
            recovered.abandoned.len()
        );
    }
    if let Some(n) = args.value::<u64>("--fail-refetch")? {
        app.legacy.fail_refetch(n);
        println!("the legacy attach's re-fetch will fail {n} time(s) (LegacyKnobs::fail_refetch)");
    }
    println!(
        "running {count} {saga} saga(s), {concurrency} at a time, pool of {pool_size} (checkout timeout {pool_timeout} ms)"
    );

    // Prerequisites and parameters, one set per saga, made before any saga starts.
    let mut jobs = Vec::with_capacity(count);
    for i in 0..count {
        let job = commands::retrying("preparing a saga's prerequisites", || async {
            let mut conn = engine
                .pool()
                .get()
                .await
                .map_err(ratchet_store::DbError::from)?;
            prepare(args, saga, &mut conn, &world, i).await
        })
        .await?;
        jobs.push(job);
    }
    let started = Instant::now();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    let mut results = if args.flag("--create-first") {
        let mut created = Vec::with_capacity(count);
        for job in jobs {
            created.push(job.create(&engine).await?);
        }
        println!("created {count} saga(s); running them");
        let _ = std::io::stdout().flush();
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
            SagaOutcome::Unwound { node, error } => format!(" ({node}: {error})"),
            SagaOutcome::Stuck {
                undo_node,
                undo_error,
                ..
            } => format!(" (undo of {undo_node} failed: {undo_error})"),
            _ => String::new(),
        };
        println!("[{done:>4}/{count}] saga {id}: {kind}{detail}");
        let _ = std::io::stdout().flush();
    }
    let elapsed = started.elapsed();
    let summary: Vec<String> = outcomes.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "\n{count} saga(s) in {:.2} s: {}",
        elapsed.as_secs_f64(),
        summary.join(", ")
    );

    let mut problems = Vec::new();
    if saga == "instance-create" {
        let want = args.value::<usize>("--disks")?.unwrap_or(0)
            + args.value::<usize>("--create-disks")?.unwrap_or(0);
        problems.extend(
            commands::retrying("checking the instances", || async {
                let mut conn = engine
                    .pool()
                    .get()
                    .await
                    .map_err(ratchet_store::DbError::from)?;
                instances_complete_or_gone(&mut conn, &world, want).await
            })
            .await?,
        );
    }
    let (sled_agent, pantry) = services.clients();
    let violations = commands::retrying("checking the invariants", || async {
        let mut conn = engine
            .pool()
            .get()
            .await
            .map_err(ratchet_store::DbError::from)?;
        Ok(invariants::check(&mut conn, &sled_agent, &pantry).await?)
    })
    .await?;
    println!("invariant check: {} violation(s)", violations.len());
    for violation in &violations {
        println!("  {}: {}", violation.rule, violation.detail);
    }
    for problem in &problems {
        println!("  {problem}");
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
    fn app(&self) -> Arc<NexusApp> {
        match self {
            RunServices::InProcess(services) => Arc::clone(&services.app),
            RunServices::External(addrs) => addrs.app(),
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
    args: &Args,
    saga: &str,
    conn: &mut ratchet_store::DbConnection,
    world: &World,
    i: usize,
) -> anyhow::Result<Job> {
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    Ok(match saga {
        "instance-create" => {
            let mut attach_disks = Vec::new();
            for d in 0..args.value::<usize>("--disks")?.unwrap_or(0) {
                attach_disks
                    .push(world::detached_disk(conn, world, &format!("disk-{tag}-{d}")).await?);
            }
            let nics = (0..args.value::<usize>("--nics")?.unwrap_or(1))
                .map(|n| NicSpec {
                    name: format!("net{n}"),
                    subnet_id: world.subnet_id,
                })
                .collect();
            let create_disks = (0..args.value::<usize>("--create-disks")?.unwrap_or(0))
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
                external_ip: args.flag("--external-ip"),
                create_disks,
                attach_disks,
                boot_disk: true,
                start: args.flag("--start"),
                legacy_attach: args.flag("--legacy-attach"),
            })
        }
        "disk-attach" | "disk-detach" => {
            let instance = world::stopped_instance(conn, world, &format!("inst-{tag}")).await?;
            let disk = world::detached_disk(conn, world, &format!("disk-{tag}")).await?;
            let params = DiskInstanceParams {
                instance_id: instance,
                disk_id: disk,
            };
            if saga == "disk-detach" {
                ds::instance_attach_disk(conn, instance, disk, ds::MAX_DISKS_PER_INSTANCE).await?;
                Job::DiskDetach(params)
            } else {
                Job::DiskAttach(params)
            }
        }
        _ => Job::SnapshotCreate(SnapshotCreateParams {
            project_id: world.project_id,
            disk_id: world::detached_disk(conn, world, &format!("disk-{tag}")).await?,
            name: format!("snap-{tag}"),
        }),
    })
}

/// Every instance of the run either complete (all its disks attached, in distinct slots) or gone.
async fn instances_complete_or_gone(
    conn: &mut ratchet_store::DbConnection,
    world: &World,
    disks: usize,
) -> anyhow::Result<Vec<String>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        attached: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        slots: i64,
    }
    use diesel_async::RunQueryDsl;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT i.id, i.state, count(d.id) AS attached, count(DISTINCT d.slot) AS slots \
         FROM instance i LEFT JOIN disk d ON d.attach_instance_id = i.id AND d.time_deleted IS NULL \
         WHERE i.project_id = $1 AND i.time_deleted IS NULL GROUP BY i.id, i.state",
    )
    .bind::<diesel::sql_types::Uuid, _>(world.project_id)
    .load(conn)
    .await?;
    let complete = rows
        .iter()
        .filter(|r| r.attached as usize == disks && r.slots as usize == disks)
        .count();
    println!(
        "instances: {complete} complete ({disks} disk(s) attached in distinct slots), the rest gone"
    );
    Ok(rows
        .iter()
        .filter(|r| !(r.attached as usize == disks && r.slots as usize == disks))
        .map(|r| {
            format!(
                "instance {} ({}) is incomplete: {} disk(s) attached, {} distinct slot(s)",
                r.id, r.state, r.attached, r.slots
            )
        })
        .collect())
}
