//! A small Nexus world to run the sagas in: a project, a VPC subnet, an IP pool with a range, sleds, and the
//! simulated sled agent and pantry (real HTTP servers on loopback).
//!
//! Two ways to get one:
//! - [`seed`] makes a new world, every row new (a test's, a benchmark's, a fault-injection cell's);
//! - [`take_or_seed`] takes the world of a given name as it is and creates only what of it is missing, so
//!   that executors started at the same instant on one database (`ratchet run` from several hosts) share one
//!   world instead of tripping over each other. Every row of a named world has an id derived from the world's
//!   name (UUID v5), so two seeders creating the same row race on its primary key: the loser's insert waits
//!   for the winner's, fails as a `Conflict`, and takes the winner's row. No lock is held across statements,
//!   and the SQL is plain `INSERT` and `SELECT` (CockroachDB runs it too). The pool's address blocks are
//!   added the same way, block `N` with an id derived from `N`, when the free addresses fall short.

use crate::app::NexusApp;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_datastore::{self as ds, DatastoreError};
use ratchet_sim::{PantrySim, SimError, SledAgentSim};
use std::sync::Arc;
use uuid::Uuid;

/// How big a world to seed.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    /// The subnet NICs take addresses from (at most about 250 hosts in a /24).
    pub ipv4_block: String,
    /// The IP pool's one range: (first, last). `None`: the next free 10.N.0.1 - 10.N.7.254 block, so that
    /// worlds seeded into the same database (successive `ratchet run`s) do not overlap.
    pub ip_range: Option<(String, String)>,
    pub sleds: usize,
    pub sled_threads: i64,
    pub sled_ram: i64,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            ipv4_block: "172.30.0.0/22".to_owned(),
            ip_range: None,
            sleds: 4,
            sled_threads: 1024,
            sled_ram: 1 << 44,
        }
    }
}

/// The ids of a seeded world.
#[derive(Clone, Copy, Debug)]
pub struct World {
    pub project_id: Uuid,
    pub subnet_id: Uuid,
    pub ip_pool_id: Uuid,
}

/// Seeds a world's rows (one statement each, on `conn`).
pub async fn seed_world(
    conn: &mut diesel_async::AsyncPgConnection,
    spec: &WorldSpec,
) -> Result<World, DatastoreError> {
    let suffix = Uuid::new_v4().simple().to_string();
    let project = ds::project_create(conn, Uuid::new_v4(), &format!("project-{suffix}")).await?;
    let subnet = ds::vpc_subnet_create(
        conn,
        Uuid::new_v4(),
        &format!("subnet-{suffix}"),
        &spec.ipv4_block,
    )
    .await?;
    let pool = ds::ip_pool_create(conn, Uuid::new_v4(), &format!("pool-{suffix}"), false).await?;
    let (first, last) = match &spec.ip_range {
        Some(range) => range.clone(),
        None => {
            let block = ds::ip_pool_ranges_count(conn).await?;
            if block > MAX_BLOCKS {
                return Err(DatastoreError::Exhausted(format!(
                    "no free 10.N.0.0/21 block for another world's IP range ({block} ranges exist)"
                )));
            }
            block_range(block)
        }
    };
    ds::ip_pool_range_add(conn, Uuid::new_v4(), pool.id, &first, &last).await?;
    for i in 0..spec.sleds {
        ds::sled_create(
            conn,
            Uuid::new_v4(),
            &format!("sled-{i}-{suffix}"),
            spec.sled_threads,
            spec.sled_ram,
            spec.sled_ram,
        )
        .await?;
    }
    Ok(World {
        project_id: project.id,
        subnet_id: subnet.id,
        ip_pool_id: pool.id,
    })
}

/// The most address blocks a database's IP pools may take: 10.N.0.0/21 for N up to 255.
const MAX_BLOCKS: i64 = 255;

/// The first and last address of block `n` of the automatic IP ranges: 10.N.0.1 - 10.N.7.254.
fn block_range(n: i64) -> (String, String) {
    (format!("10.{n}.0.1"), format!("10.{n}.7.254"))
}

/// The id of row `role` of the world named `name`: the same in every process, so that two seeders of one
/// world race on its primary key (see the module docs).
fn world_row_id(name: &str, role: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("ratchet-world/{name}/{role}").as_bytes(),
    )
}

/// A creation's result: `Ok(None)` when it created the row, `Ok(Some(conflict))` when a row in its way exists
/// already (another seeder's, or an earlier run's: see whether it is the one wanted), any other error as it is.
fn conflict<T>(
    result: Result<T, DatastoreError>,
) -> Result<Option<DatastoreError>, DatastoreError> {
    match result {
        Ok(_) => Ok(None),
        Err(conflict @ DatastoreError::Conflict(_)) => Ok(Some(conflict)),
        Err(error) => Err(error),
    }
}

/// Creates row `id` of `table` with `create`, or takes it when it exists already (see the module docs).
macro_rules! create_or_take {
    ($conn:expr, $table:literal, $id:expr, $create:expr) => {
        if let Some(conflict) = conflict($create.await)? {
            if !live_row($conn, $table, $id).await? {
                return Err(conflict);
            }
        }
    };
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Whether `table` has a live row `id`.
async fn live_row(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &str,
    id: Uuid,
) -> Result<bool, DatastoreError> {
    let row: Count = diesel::sql_query(format!(
        "SELECT count(*) AS count FROM {table} WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await?;
    Ok(row.count > 0)
}

/// The addresses of pool `pool_id`'s live ranges that no live external IP holds.
async fn free_addresses(
    conn: &mut diesel_async::AsyncPgConnection,
    pool_id: Uuid,
) -> Result<i64, DatastoreError> {
    let row: Count = diesel::sql_query(
        "SELECT (SELECT coalesce(sum(last_address - first_address + 1), 0) FROM ip_pool_range \
                 WHERE ip_pool_id = $1 AND time_deleted IS NULL)::bigint \
              - (SELECT count(*) FROM external_ip WHERE ip_pool_id = $1 AND time_deleted IS NULL) AS count",
    )
    .bind::<SqlUuid, _>(pool_id)
    .get_result(conn)
    .await?;
    Ok(row.count)
}

/// Takes the world named `name` as it is, creating whatever of it is missing (see the module docs): its
/// project, subnet, IP pool and sleds, shaped by `spec` when they are created, and, in its pool, address
/// blocks until at least `addresses` are free (`spec.ip_range`, when given, is the pool's one range instead).
/// Safe to run from several processes at the same instant on one database; every statement stands alone.
pub async fn take_or_seed_world(
    conn: &mut diesel_async::AsyncPgConnection,
    name: &str,
    spec: &WorldSpec,
    addresses: i64,
) -> Result<World, DatastoreError> {
    let project_id = world_row_id(name, "project");
    create_or_take!(
        conn,
        "project",
        project_id,
        ds::project_create(conn, project_id, &format!("project-{name}"))
    );
    let subnet_id = world_row_id(name, "subnet");
    create_or_take!(
        conn,
        "vpc_subnet",
        subnet_id,
        ds::vpc_subnet_create(conn, subnet_id, &format!("subnet-{name}"), &spec.ipv4_block)
    );
    let ip_pool_id = world_row_id(name, "pool");
    create_or_take!(
        conn,
        "ip_pool",
        ip_pool_id,
        ds::ip_pool_create(conn, ip_pool_id, &format!("pool-{name}"), false)
    );
    match &spec.ip_range {
        Some((first, last)) => {
            let range_id = world_row_id(name, &format!("range/{first}-{last}"));
            if !live_row(conn, "ip_pool_range", range_id).await? {
                create_or_take!(
                    conn,
                    "ip_pool_range",
                    range_id,
                    ds::ip_pool_range_add(conn, range_id, ip_pool_id, first, last)
                );
            }
        }
        None => {
            while free_addresses(conn, ip_pool_id).await? < addresses {
                // The next block no range took yet; a seeder racing for the same block has the same id for
                // it, so one of the two inserts it and the other takes it.
                let block = ds::ip_pool_ranges_count(conn).await?;
                if block > MAX_BLOCKS {
                    return Err(DatastoreError::Exhausted(format!(
                        "no free 10.N.0.0/21 block for world {name:?} ({block} ranges exist)"
                    )));
                }
                let (first, last) = block_range(block);
                let range_id = world_row_id(name, &format!("block/{block}"));
                create_or_take!(
                    conn,
                    "ip_pool_range",
                    range_id,
                    ds::ip_pool_range_add(conn, range_id, ip_pool_id, &first, &last)
                );
            }
        }
    }
    for i in 0..spec.sleds {
        let sled_id = world_row_id(name, &format!("sled/{i}"));
        create_or_take!(
            conn,
            "sled",
            sled_id,
            ds::sled_create(
                conn,
                sled_id,
                &format!("sled-{i}-{name}"),
                spec.sled_threads,
                spec.sled_ram,
                spec.sled_ram,
            )
        );
    }
    Ok(World {
        project_id,
        subnet_id,
        ip_pool_id,
    })
}

/// A detached disk with its volume, made the way disk-create would (for sagas that need an existing disk).
pub async fn detached_disk(
    conn: &mut diesel_async::AsyncPgConnection,
    world: &World,
    name: &str,
) -> Result<Uuid, DatastoreError> {
    let volume =
        ds::volume_create(conn, Uuid::new_v4(), &serde_json::json!({"type": "blank"})).await?;
    let disk = ds::disk_create(
        conn,
        Uuid::new_v4(),
        world.project_id,
        name,
        1 << 30,
        volume.id,
    )
    .await?;
    ds::disk_finalize(conn, disk.id).await?;
    Ok(disk.id)
}

/// A stopped (`no_vmm`) instance with nothing attached (for sagas that need an existing instance).
pub async fn stopped_instance(
    conn: &mut diesel_async::AsyncPgConnection,
    world: &World,
    name: &str,
) -> Result<Uuid, DatastoreError> {
    let instance =
        ds::instance_insert(conn, Uuid::new_v4(), world.project_id, name, 2, 1 << 30).await?;
    ds::instance_transition(
        conn,
        instance.id,
        instance.state_generation,
        ds::InstanceState::Creating,
        ds::InstanceState::NoVmm,
    )
    .await?;
    Ok(instance.id)
}

/// The simulated services of one world, and the saga context that talks to them.
pub struct Services {
    pub sled_agent: SledAgentSim,
    pub pantry: PantrySim,
    pub app: Arc<NexusApp>,
}

impl Services {
    /// Starts both services on loopback (on the current tokio runtime).
    pub fn start() -> Result<Services, SimError> {
        let sled_agent = SledAgentSim::start()?;
        let pantry = PantrySim::start()?;
        let app = Arc::new(NexusApp::new(sled_agent.client(), pantry.client()));
        Ok(Services {
            sled_agent,
            pantry,
            app,
        })
    }
}
