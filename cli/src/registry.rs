//! The one place the CLI learns which sagas exist: every command that starts an engine (demo, run, recover,
//! sagas retry-unwind, sagas adopt) builds it here, through `setup::start_engine`, so that a saga registered
//! here can be run, recovered, adopted and re-driven by all of them.
//!
//! Two kinds of saga are registered:
//! - the example saga, always;
//! - the Nexus-shaped sagas (instance-create, disk-attach, disk-detach, snapshot-create), whenever the command
//!   has the sled agent and the pantry they call ([`Services`]): in process for `ratchet run`, or at the
//!   addresses given by `--sled-agent ADDR --pantry ADDR` (what `ratchet sim` prints).
//!
//! # Invariant: no engine strands a Nexus saga for want of its services
//!
//! Starting an engine recovers this executor's unfinished sagas; recovery and adoption leave alone (unfinished,
//! not driven, reported) a saga whose definition the engine does not register, and `sagas adopt
//! --abandon-unknown` abandons it (see `Engine::recover`, `Engine::adopt_with`). For a saga this binary *does*
//! know but cannot run without the services it calls, neither is what the operator wants: left alone it
//! waits for nobody, and abandoned its commits stay in effect with nothing to compensate them. So before an
//! engine without the services starts, [`refuse_stranded_nexus_sagas`] looks for unfinished Nexus sagas among
//! the ones it would resume, and if there are any the command fails, naming the missing options, before
//! anything is written. A saga whose definition is really unknown (renamed, removed, another binary's) is left
//! alone, with the reason.
//!
//! The same holds for services started in process (`ratchet run` without addresses): they are new and empty,
//! while an unfinished saga from an earlier process called the earlier ones. Such sagas must be recovered
//! against the services they used (`ratchet recover --sled-agent ADDR --pantry ADDR`), or abandoned by an
//! operator who knows those services are gone.
//!
//! To add a saga definition: one `.register::<Saga>(context)` line in [`engine_builder`], and its tables'
//! migrations in [`saga_migrations`].

use crate::cli::ServiceArgs;
use anyhow::{Context, bail};
use diesel_migrations::EmbeddedMigrations;
use ratchet_engine::{EngineBuilder, EngineConfig, SagaDef};
use ratchet_example_saga::{self as example, ProvisionWidget};
use ratchet_sagas::{
    DATASTORE_MIGRATIONS, DiskAttach, DiskDetach, InstanceCreate, NexusApp, SnapshotCreate,
};
use ratchet_sim::{PantryClient, SledAgentClient};
use std::net::SocketAddr;
use std::sync::Arc;
use uuid::Uuid;

/// The names of the sagas that need the sled agent and the pantry.
pub const NEXUS_SAGAS: [&str; 4] = [
    InstanceCreate::NAME,
    DiskAttach::NAME,
    DiskDetach::NAME,
    SnapshotCreate::NAME,
];

/// Where the sled agent and the pantry listen.
#[derive(Clone, Copy, Debug)]
pub struct ServiceAddrs {
    pub sled_agent: SocketAddr,
    pub pantry: SocketAddr,
}

impl ServiceAddrs {
    /// `--sled-agent ADDR --pantry ADDR`: both, or neither (`None`; clap refuses one without the other).
    pub fn from_args(args: &ServiceArgs) -> Option<ServiceAddrs> {
        match (args.sled_agent, args.pantry) {
            (Some(sled_agent), Some(pantry)) => Some(ServiceAddrs { sled_agent, pantry }),
            _ => None,
        }
    }

    pub fn sled_agent(&self) -> SledAgentClient {
        SledAgentClient::new(self.sled_agent)
    }

    pub fn pantry(&self) -> PantryClient {
        PantryClient::new(self.pantry)
    }

    /// Fails, naming the address, unless both services answer: a saga node that calls a service that is not
    /// there retries until it answers, so a wrong address would make a recovery wait forever.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        self.sled_agent().list_vmms().await.with_context(|| {
            format!(
                "no sled agent answers at {} (--sled-agent): is `ratchet sim` running there?",
                self.sled_agent
            )
        })?;
        self.pantry().state().await.with_context(|| {
            format!(
                "no pantry answers at {} (--pantry): is `ratchet sim` running there?",
                self.pantry
            )
        })?;
        Ok(())
    }

    /// The Nexus sagas' context, with clients of these services.
    pub fn app(&self) -> Arc<NexusApp> {
        Arc::new(NexusApp::new(self.sled_agent(), self.pantry()))
    }
}

/// An engine builder with every saga the CLI runs registered: the example saga, and the Nexus sagas when
/// `nexus` (their context, with the services' clients) is given.
pub fn engine_builder(config: EngineConfig, nexus: Option<&Arc<NexusApp>>) -> EngineBuilder {
    let builder = EngineBuilder::new(config).register::<ProvisionWidget>(Arc::new(()));
    match nexus {
        Some(app) => ratchet_sagas::register_all(builder, app),
        None => builder,
    }
}

/// The migrations of the registered sagas' own tables (the saga log's are the engine's), applied before the
/// engine starts.
pub fn saga_migrations() -> Vec<&'static EmbeddedMigrations> {
    vec![&example::MIGRATIONS, &DATASTORE_MIGRATIONS]
}

/// Fails, naming the missing options and changing nothing (`setup::refuse_stranding` calls it), if an engine that cannot reach the services the
/// Nexus sagas call would have to resume one of them: an unfinished Nexus saga of one of `executors` (the
/// engine's own recovery, an adoption's source), or a stuck one among `sagas` (`retry-unwind`'s saga). `in_process` says
/// the command would start new, empty services of its own (`ratchet run`), which cannot be the ones those
/// sagas called. See the module docs.
pub async fn refuse_stranded_nexus_sagas(
    conn: &mut ratchet_store::DbConnection,
    executors: &[Uuid],
    sagas: &[Uuid],
    command: &str,
    in_process: bool,
) -> anyhow::Result<()> {
    let pending = ratchet_store::unfinished_by_name(conn, &NEXUS_SAGAS, executors, sagas)
        .await
        .context("looking for unfinished Nexus sagas")?;
    if pending.is_empty() {
        return Ok(());
    }
    let which: Vec<String> = pending
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    let whose: Vec<String> = executors
        .iter()
        .map(|e| format!("executor {e}"))
        .chain(sagas.iter().map(|s| format!("saga {s}")))
        .collect();
    let (danger, another_executor) = if in_process {
        (
            "would start new, empty simulated services and resume those sagas against them, which never saw \
             their calls",
            "; or run new work as another executor (--sec-id UUID)",
        )
    } else {
        (
            "was not given their addresses, without which it would leave those sagas unfinished (or fail to \
             re-drive them) with their commits in effect",
            "",
        )
    };
    bail!(
        "Nexus saga(s) to resume ({} of {}) call the sled agent and the pantry, and `ratchet {command}` \
         {danger}. Nothing was changed. Pass --sled-agent ADDR --pantry ADDR (the services the sagas called: \
         `ratchet sim` runs both and prints their addresses); if those services are gone for good, abandon \
         the sagas by hand (`ratchet sagas abandon ID --reason TEXT`){another_executor}",
        which.join(", "),
        whose.join(", ")
    )
}
