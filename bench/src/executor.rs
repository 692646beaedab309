//! The two executors the bench compares, behind one interface: ratchet's [`Engine`], and a plain steno SEC
//! over the Omicron-style store ([`BaselineSec`]). Both get a pool of the same size on the same database.

use crate::BenchError;
use crate::baseline::BaselineSec;
use crate::baseline_instance::{
    PlainDisk, PlainInstanceCreate, PlainInstanceParams, plain_instance_dag,
    plain_instance_registry,
};
use crate::chain::{
    BenchChain, ChainParams, PlainChain, PlainCx, plain_chain_dag, plain_chain_registry,
};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, SagaOutcome};
use ratchet_sagas::{DiskSpec, InstanceCreate, InstanceCreateParams, NexusApp, NicSpec, World};
use ratchet_store::{PoolConfig, connect_pool};
use std::sync::Arc;
use std::time::Duration;
use steno::ActionRegistry;
use uuid::Uuid;

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Implementation {
    /// ratchet's engine and store.
    Ratchet,
    /// Plain steno actions with the Omicron-style diesel store.
    PlainSteno,
}

impl Implementation {
    pub fn label(self) -> &'static str {
        match self {
            Implementation::Ratchet => "ratchet",
            Implementation::PlainSteno => "plain steno",
        }
    }
}

/// The sagas the bench runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The 5-step chain.
    Chain,
    /// instance-create with one NIC, SNAT and `disks` created disks, all attached, a boot disk, no start.
    InstanceCreate { disks: usize },
}

impl Workload {
    pub fn label(self) -> String {
        match self {
            Workload::Chain => "5-node chain".to_owned(),
            Workload::InstanceCreate { disks } => format!("instance-create, {disks} disks"),
        }
    }

    /// How many of the saga's nodes commit something (the floor is one durable commit each).
    pub fn committing_nodes(self) -> usize {
        match self {
            Workload::Chain => crate::chain::STEPS as usize,
            // record, NIC, SNAT, per disk (record, finalize, attach), boot disk, move to stopped.
            Workload::InstanceCreate { disks } => 3 + 3 * disks + usize::from(disks > 0) + 1,
        }
    }
}

/// The pool every executor gets: the CLI's default size, a generous checkout timeout (the bench measures
/// contention, it does not inject failures).
pub(crate) fn pool_config(size: u32) -> PoolConfig {
    PoolConfig {
        max_size: size,
        checkout_timeout: Duration::from_secs(60),
        ..PoolConfig::default()
    }
}

/// A started executor.
pub(crate) enum Executor {
    Ratchet(Engine),
    Plain {
        sec: BaselineSec,
        cx: Arc<PlainCx>,
        chain: Arc<ActionRegistry<PlainChain>>,
        instance: Arc<ActionRegistry<PlainInstanceCreate>>,
    },
}

impl Executor {
    /// Starts `implementation` on the database at `url` (ratchet: with executor id `sec_id`, recovering what
    /// it owns first).
    pub(crate) async fn start(
        implementation: Implementation,
        url: &str,
        pool_size: u32,
        app: &Arc<NexusApp>,
    ) -> Result<Executor, BenchError> {
        Ok(match implementation {
            Implementation::Ratchet => {
                Executor::Ratchet(start_engine(url, Uuid::new_v4(), pool_size, app).await?.0)
            }
            Implementation::PlainSteno => {
                let pool = connect_pool(url, &pool_config(pool_size)).await?;
                Executor::Plain {
                    sec: BaselineSec::start(pool.clone()),
                    cx: Arc::new(PlainCx { pool }),
                    chain: plain_chain_registry(),
                    instance: plain_instance_registry(),
                }
            }
        })
    }

    /// Runs one saga of `workload` to rest in `world`; fails unless it succeeded.
    pub(crate) async fn run(
        &self,
        workload: Workload,
        world: &World,
        name: &str,
    ) -> Result<(), BenchError> {
        match (self, workload) {
            (Executor::Ratchet(engine), Workload::Chain) => {
                let (_, outcome) = engine.run::<BenchChain>(ChainParams {}).await?;
                succeeded(outcome, "chain")
            }
            (Executor::Ratchet(engine), Workload::InstanceCreate { disks }) => {
                let params = InstanceCreateParams {
                    project_id: world.project_id,
                    name: name.to_owned(),
                    ncpus: 2,
                    memory: 1 << 30,
                    nics: vec![NicSpec {
                        name: "net0".to_owned(),
                        subnet_id: world.subnet_id,
                    }],
                    ip_pool_id: world.ip_pool_id,
                    external_ip: false,
                    create_disks: (0..disks)
                        .map(|d| DiskSpec {
                            name: format!("{name}-disk-{d}"),
                            size_bytes: 1 << 30,
                        })
                        .collect(),
                    attach_disks: Vec::new(),
                    boot_disk: true,
                    start: false,
                    legacy_attach: false,
                };
                let (_, outcome) = engine.run::<InstanceCreate>(params).await?;
                succeeded(outcome, "instance-create")
            }
            (Executor::Plain { sec, cx, chain, .. }, Workload::Chain) => {
                let id = Uuid::new_v4();
                sec.run(
                    id,
                    Arc::clone(cx),
                    plain_chain_dag(id)?,
                    Arc::clone(chain),
                    "chain",
                )
                .await
            }
            (
                Executor::Plain {
                    sec, cx, instance, ..
                },
                Workload::InstanceCreate { disks },
            ) => {
                let params = PlainInstanceParams {
                    instance_id: Uuid::new_v4(),
                    project_id: world.project_id,
                    name: name.to_owned(),
                    ncpus: 2,
                    memory: 1 << 30,
                    nic_id: Uuid::new_v4(),
                    subnet_id: world.subnet_id,
                    snat_ip_id: Uuid::new_v4(),
                    ip_pool_id: world.ip_pool_id,
                    disks: (0..disks)
                        .map(|d| PlainDisk {
                            disk_id: Uuid::new_v4(),
                            volume_id: Uuid::new_v4(),
                            name: format!("{name}-disk-{d}"),
                            size_bytes: 1 << 30,
                        })
                        .collect(),
                };
                sec.run(
                    Uuid::new_v4(),
                    Arc::clone(cx),
                    plain_instance_dag(&params)?,
                    Arc::clone(instance),
                    "instance-create",
                )
                .await
            }
        }
    }

    /// Stops the executor (its sagas are all at rest).
    pub(crate) async fn stop(self) {
        match self {
            Executor::Ratchet(engine) => {
                engine.shutdown().await;
            }
            Executor::Plain { sec, .. } => sec.shutdown().await,
        }
    }
}

/// A ratchet engine with the bench's sagas registered, started (so recovery has run) on `url`.
pub(crate) async fn start_engine(
    url: &str,
    sec_id: Uuid,
    pool_size: u32,
    app: &Arc<NexusApp>,
) -> Result<(Engine, ratchet_engine::RecoveryReport), BenchError> {
    let mut config = EngineConfig::new(url, sec_id);
    config.pool = pool_config(pool_size);
    config.forward_retry = crate::forward_retry::FORWARD_RETRY;
    let builder = EngineBuilder::new(config)
        .register::<InstanceCreate>(Arc::clone(app))
        .register::<BenchChain>(Arc::new(()));
    Ok(builder.start().await?)
}

fn succeeded(outcome: SagaOutcome, saga: &'static str) -> Result<(), BenchError> {
    match outcome {
        SagaOutcome::Succeeded { .. } => Ok(()),
        other => Err(BenchError::SagaFailed {
            implementation: "ratchet",
            saga,
            outcome: format!("{other:?}"),
        }),
    }
}
