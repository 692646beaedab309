//! A small Nexus world to run the sagas in: a project, a VPC subnet, an IP pool with a range, sleds, and the
//! simulated sled agent and pantry (real HTTP servers on loopback).

use crate::app::NexusApp;
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
pub async fn seed(
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
            if block > 255 {
                return Err(DatastoreError::Exhausted(format!(
                    "no free 10.N.0.0/21 block for another world's IP range ({block} ranges exist)"
                )));
            }
            (format!("10.{block}.0.1"), format!("10.{block}.7.254"))
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
