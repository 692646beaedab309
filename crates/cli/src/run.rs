//! `ratchet run SAGA`: runs Nexus-shaped sagas under load against the simulated sled agent and pantry, then
//! checks that every saga is at rest and nothing leaked.

use crate::args::Args;
use crate::commands;
use anyhow::{Context, bail};
use futures::StreamExt;
use ratchet_datastore as ds;
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, SagaOutcome};
use ratchet_sagas::{
    DATASTORE_MIGRATIONS, DiskAttach, DiskDetach, DiskInstanceParams, DiskSpec, InstanceCreate,
    InstanceCreateParams, NicSpec, Services, SnapshotCreate, SnapshotCreateParams, World,
    WorldSpec, invariants, world,
};
use ratchet_store::{PoolConfig, pool};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};
use uuid::Uuid;

const COMMON: [&str; 4] = [
    "--count",
    "--concurrency",
    "--pool-size",
    "--pool-timeout-ms",
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
    pool::run_migrations(&url, &DATASTORE_MIGRATIONS)
        .await
        .context("applying the datastore's migrations")?;
    let services = Services::start().context("starting the simulated sled agent and pantry")?;
    let mut conn = pool::establish(&url).await?;
    let world = world::seed(&mut conn, &WorldSpec::default()).await?;
    let mut config = EngineConfig::new(&url, commands::sec_id(args)?);
    config.pool = PoolConfig {
        max_size: pool_size,
        checkout_timeout: Duration::from_millis(pool_timeout),
    };
    let builder = ratchet_sagas::register_all(EngineBuilder::new(config), &services.app);
    let (engine, recovered) = builder.start().await?;
    if !recovered.resumed.is_empty() {
        println!(
            "recovered {} unfinished saga(s) first",
            recovered.resumed.len()
        );
    }
    if let Some(n) = args.value::<u64>("--fail-refetch")? {
        services.app.legacy.fail_refetch(n);
        println!("the legacy attach's re-fetch will fail {n} time(s) (LegacyKnobs::fail_refetch)");
    }
    println!(
        "running {count} {saga} saga(s), {concurrency} at a time, pool of {pool_size} (checkout timeout {pool_timeout} ms)"
    );

    // Prerequisites and parameters, one set per saga, made before any saga starts.
    let mut jobs = Vec::with_capacity(count);
    for i in 0..count {
        jobs.push(prepare(args, saga, &mut conn, &world, i).await?);
    }
    let started = Instant::now();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    let mut results = futures::stream::iter(jobs)
        .map(|job| {
            let engine = engine.clone();
            async move { job.run(&engine).await }
        })
        .buffer_unordered(concurrency);
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
        problems.extend(instances_complete_or_gone(&mut conn, &world, want).await?);
    }
    let violations = invariants::check(
        &mut conn,
        &services.sled_agent.client(),
        &services.pantry.client(),
    )
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
    async fn run(self, engine: &Engine) -> anyhow::Result<(Uuid, SagaOutcome)> {
        Ok(match self {
            Job::InstanceCreate(p) => engine.run::<InstanceCreate>(p).await?,
            Job::DiskAttach(p) => engine.run::<DiskAttach>(p).await?,
            Job::DiskDetach(p) => engine.run::<DiskDetach>(p).await?,
            Job::SnapshotCreate(p) => engine.run::<SnapshotCreate>(p).await?,
        })
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
