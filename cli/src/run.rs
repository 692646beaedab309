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

use crate::cli::{Global, InstanceCreateArgs, RunSaga};
use crate::commands;
use crate::engine_setup::{self, ServiceAddrs};
use crate::output::{Progress, Say, print_json};
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
}

pub async fn run(global: &Global, saga: &RunSaga) -> anyhow::Result<()> {
    let common = saga.common();
    let json = common.output.json();
    let say = Say { json };
    let name = saga.name();
    let count = common.count;
    let concurrency = common.concurrency as usize;
    let pool_size = common.pool_size;
    let pool_timeout = common.pool_timeout_ms;

    let (url, executor) = commands::open(global, "run").await?;
    let sec = executor.id;
    let services = match ServiceAddrs::from_args(&common.services) {
        Some(addrs) => {
            addrs.check_reachable().await?;
            say.line(format_args!(
                "using the sled agent at {} and the pantry at {}",
                addrs.sled_agent, addrs.pantry
            ));
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
        let job = commands::retrying("preparing a saga's prerequisites", || async {
            let mut conn = engine
                .pool()
                .get()
                .await
                .map_err(ratchet_store::DbError::from)?;
            prepare(saga, &mut conn, &world, i).await
        })
        .await?;
        jobs.push(job);
        preparing.inc();
    }
    preparing.finish();
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
            SagaOutcome::Unwound { node, error } => format!(" ({node}: {error})"),
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

    let mut problems = Vec::new();
    if let RunSaga::InstanceCreate(args) = saga {
        let want = args.disks + args.create_disks;
        problems.extend(
            commands::retrying("checking the instances", || async {
                let mut conn = engine
                    .pool()
                    .get()
                    .await
                    .map_err(ratchet_store::DbError::from)?;
                instances_complete_or_gone(&mut conn, &world, want, say).await
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
    say.line(format_args!(
        "invariant check: {} violation(s)",
        violations.len()
    ));
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
                attach_disks
                    .push(world::detached_disk(conn, world, &format!("disk-{tag}-{d}")).await?);
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
            let instance = world::stopped_instance(conn, world, &format!("inst-{tag}")).await?;
            let disk = world::detached_disk(conn, world, &format!("disk-{tag}")).await?;
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
    say: Say,
) -> anyhow::Result<Vec<String>> {
    let rows = ratchet_datastore::project_instance_attachments(conn, world.project_id).await?;
    let complete = rows
        .iter()
        .filter(|r| r.attached as usize == disks && r.slots as usize == disks)
        .count();
    say.line(format_args!(
        "instances: {complete} complete ({disks} disk(s) attached in distinct slots), the rest gone"
    ));
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
