//! The Nexus-shaped sagas as suites: instance-create (with start), its legacy variant, disk-attach,
//! disk-detach and snapshot-create, each in a world of its own with its own simulated services.
//!
//! # Design
//!
//! Every Nexus suite shares its migrations (the datastore's), its fixture (a seeded world, an instance, a
//! disk, the simulated services), its registration (every Nexus saga, here or in a child process) and its
//! invariants at rest. That is written once, in the [`SagaSuite`] implementation of every [`NexusSuite`]; a
//! Nexus suite says only what sets it apart: its saga, its label, whether the fixture's disk starts attached,
//! its parameters, its outcome check, and whether its nodes call the simulated services.

use crate::HarnessError;
use crate::fault::Fault;
use crate::suite::SagaSuite;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use diesel_migrations::EmbeddedMigrations;
use ratchet_datastore as ds;
use ratchet_engine::{EngineBuilder, NodeKind, SagaDef};
use ratchet_sagas::{
    DATASTORE_MIGRATIONS, DiskAttach, DiskDetach, DiskInstanceParams, DiskSpec, InstanceCreate,
    InstanceCreateParams, NicSpec, Services, SnapshotCreate, SnapshotCreateParams, World,
    WorldSpec,
};
use ratchet_sim::Operation;
use ratchet_store::DbConnection;
use std::future::Future;
use uuid::Uuid;

/// One cell's Nexus world: its rows, its services, and the ids of what the suite set up before the saga.
pub struct NexusFixture {
    pub world: World,
    pub services: Services,
    pub instance_id: Uuid,
    pub disk_id: Uuid,
}

fn fixture_error(error: impl std::fmt::Display) -> HarnessError {
    HarnessError::Fixture(error.to_string())
}

/// Seeds a world, and an instance (`no_vmm`) and a detached disk in it.
async fn nexus_fixture(url: &str, attach: bool) -> Result<NexusFixture, HarnessError> {
    let mut conn = ratchet_store::establish(url).await?;
    let conn = &mut conn;
    let world = ratchet_sagas::seed_world(conn, &WorldSpec::default())
        .await
        .map_err(fixture_error)?;
    let instance = ratchet_sagas::stopped_instance(conn, &world, "fixture")
        .await
        .map_err(fixture_error)?;
    let disk = ratchet_sagas::detached_disk(conn, &world, "fixture-disk")
        .await
        .map_err(fixture_error)?;
    if attach {
        ds::instance_attach_disk(conn, instance, disk, ds::MAX_DISKS_PER_INSTANCE)
            .await
            .map_err(fixture_error)?;
    }
    let services = Services::start().map_err(fixture_error)?;
    Ok(NexusFixture {
        world,
        services,
        instance_id: instance,
        disk_id: disk,
    })
}

async fn violations(
    fixture: &NexusFixture,
    conn: &mut DbConnection,
) -> Result<Vec<String>, HarnessError> {
    let found = ratchet_sagas::check_nexus_invariants(
        conn,
        &fixture.services.sled_agent.client(),
        &fixture.services.pantry.client(),
    )
    .await
    .map_err(|e| HarnessError::Engine(format!("invariant checker: {e}")))?;
    Ok(found
        .into_iter()
        .map(|v| format!("{}: {}", v.rule, v.detail))
        .collect())
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// `SELECT count(*) AS count …` with one uuid parameter.
async fn count(conn: &mut DbConnection, sql: &str, id: Uuid) -> Result<i64, HarnessError> {
    let row: Count = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .map_err(ratchet_store::DbError::from)?;
    Ok(row.count)
}

/// Compares `what`'s count with the expected one.
fn expect(problems: &mut Vec<String>, what: &str, got: i64, want: i64) {
    if got != want {
        problems.push(format!("{what}: {got}, expected {want}"));
    }
}

/// The simulated service's fault knobs and operation behind an external node of the Nexus sagas.
fn service_operation(f: &NexusFixture, node: &str) -> Option<(ratchet_sim::Faults, Operation)> {
    Some(match node {
        "ensure_vmm" => (f.services.sled_agent.faults(), Operation::VmmEnsure),
        "pantry_attach" => (f.services.pantry.faults(), Operation::DiskAttach),
        "pantry_snapshot" => (f.services.pantry.faults(), Operation::DiskSnapshot),
        "pantry_detach" => (f.services.pantry.faults(), Operation::DiskDetach),
        _ => return None,
    })
}

/// How an external node names its calls to its service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallNaming {
    /// By the node's idempotency key (its call) and compensation key (its compensation).
    Key,
    /// By resource id and generation, with no key (the sled agent's form, as Nexus calls it): the service
    /// books such a call under the resource's id, when it changed the state.
    Generation,
}

/// The external nodes of the Nexus sagas: how each names its calls, its service operation, and its
/// compensation's.
const EXTERNAL_NODES: [(&str, CallNaming, Operation, Option<Operation>); 4] = [
    (
        "ensure_vmm",
        CallNaming::Generation,
        Operation::VmmEnsure,
        Some(Operation::VmmUnregister),
    ),
    (
        "pantry_attach",
        CallNaming::Key,
        Operation::DiskAttach,
        Some(Operation::DiskDetach),
    ),
    (
        "pantry_snapshot",
        CallNaming::Key,
        Operation::DiskSnapshot,
        Some(Operation::SnapshotDelete),
    ),
    (
        "pantry_detach",
        CallNaming::Key,
        Operation::DiskDetach,
        None,
    ),
];

/// The services' books against the saga's external nodes. A keyed call: every request the service applied
/// carried one of the keys the saga's nodes use (a node's idempotency key for its call, its compensation key
/// for its compensation), and each key was applied at most once. A call by generation: each resource was
/// changed at most once by each operation (a retry at the same generation changes nothing). A caller that
/// minted a new key, or a newer generation, on a retry would show up as a foreign key, or as the call applied
/// twice.
async fn service_books(
    f: &NexusFixture,
    conn: &mut DbConnection,
) -> Result<Vec<String>, HarnessError> {
    #[derive(diesel::QueryableByName)]
    struct SagaId {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    // A cell's database holds exactly its own saga.
    let saga: SagaId = diesel::sql_query("SELECT id FROM saga")
        .get_result(conn)
        .await
        .map_err(ratchet_store::DbError::from)?;
    // By operation: the keys the saga's nodes may use, or `None` for an operation booked by resource.
    let mut allowed: std::collections::BTreeMap<Operation, Option<Vec<Uuid>>> = Default::default();
    for (node, naming, call, compensation) in EXTERNAL_NODES {
        let operations = [
            (Some(call), "idempotency-key"),
            (compensation, "compensation-key"),
        ];
        for (operation, purpose) in operations {
            let Some(operation) = operation else { continue };
            let keys = allowed.entry(operation).or_insert_with(|| Some(Vec::new()));
            match (naming, keys) {
                (CallNaming::Generation, keys) => *keys = None,
                (CallNaming::Key, Some(keys)) => {
                    keys.push(ratchet_engine::derived_id(saga.id, node, purpose));
                }
                (CallNaming::Key, None) => {}
            }
        }
    }
    let mut problems = Vec::new();
    for (operation, keys) in &allowed {
        let faults = match operation {
            Operation::VmmEnsure | Operation::VmmUnregister => f.services.sled_agent.faults(),
            _ => f.services.pantry.faults(),
        };
        let applied = faults.applied_keys(*operation);
        for key in &applied {
            let times = applied.iter().filter(|k| *k == key).count();
            if keys.as_ref().is_some_and(|keys| !keys.contains(key)) {
                problems.push(format!(
                    "{operation} applied under {key}, a key none of the saga's nodes uses"
                ));
            } else if times > 1 {
                let under = if keys.is_some() {
                    "under"
                } else {
                    "to resource"
                };
                problems.push(format!("{operation} applied {times} times {under} {key}"));
            }
        }
    }
    problems.dedup();
    Ok(problems)
}

/// How many retries the service refuses after dropping a response (`unknown_then_refused`): more than any
/// cell's forward retry budget.
const REFUSALS: u64 = 1_000;

/// Makes the service behind `node` apply its next call and drop the response; with `then_refuse`, refuse that
/// many requests after it. False when `node` calls no service.
fn lose_response(f: &NexusFixture, node: &str, then_refuse: Option<u64>) -> bool {
    let Some((faults, operation)) = service_operation(f, node) else {
        return false;
    };
    let op = faults.op(operation);
    match then_refuse {
        None => op.drop_response_after_apply(1),
        Some(n) => op.drop_response_then_refuse(n),
    };
    true
}

/// Whether the service behind `node` dropped a response.
fn service_fault_fired(f: &NexusFixture, node: &str) -> bool {
    service_operation(f, node)
        .is_some_and(|(faults, operation)| faults.counters(operation).responses_dropped > 0)
}

/// What a child process needs to call this fixture's services (see [`crate::real_crash`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct ServicesHandle {
    sled_agent: std::net::SocketAddr,
    pantry: std::net::SocketAddr,
    fresh_request_per_attempt: bool,
}

fn services_handle(fixture: &NexusFixture) -> serde_json::Value {
    serde_json::json!(ServicesHandle {
        sled_agent: fixture.services.sled_agent.addr(),
        pantry: fixture.services.pantry.addr(),
        fresh_request_per_attempt: std::sync::atomic::AtomicBool::load(
            &fixture.services.app.fresh_request_per_attempt,
            std::sync::atomic::Ordering::Relaxed,
        ),
    })
}

/// Registers the Nexus sagas in a child process, with clients of the harness's services.
fn register_remote(
    builder: EngineBuilder,
    handle: &serde_json::Value,
) -> Result<EngineBuilder, HarnessError> {
    let handle: ServicesHandle = serde_json::from_value(handle.clone()).map_err(fixture_error)?;
    let app = ratchet_sagas::NexusApp::new(
        ratchet_sim::SledAgentClient::new(handle.sled_agent),
        ratchet_sim::PantryClient::new(handle.pantry),
    );
    app.fresh_request_per_attempt.store(
        handle.fresh_request_per_attempt,
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(ratchet_sagas::register_all(
        builder,
        &std::sync::Arc::new(app),
    ))
}

/// A Nexus saga's suite: what sets it apart from the other Nexus suites. Every `NexusSuite` is a
/// [`SagaSuite`] (the implementation below), which adds what they all share.
pub trait NexusSuite: Send + Sync + 'static {
    /// The saga definition.
    type Saga: SagaDef;
    /// Whether the fixture's disk starts attached to the fixture's instance (detached otherwise).
    const DISK_ATTACHED: bool = false;
    /// Whether the saga's nodes call the simulated services, so that a cell can lose a service's response
    /// ([`SagaSuite::lose_response`] and the like); disk-attach and disk-detach call none.
    const CALLS_SERVICES: bool = false;

    /// The row label of this saga in the matrix ([`SagaSuite::label`]).
    fn label(&self) -> String;

    /// Adjusts a cell's fixture once it is set up (nothing by default).
    fn prepare(&self, fixture: &NexusFixture) {
        let _ = fixture;
    }

    /// The saga's parameters in this world ([`SagaSuite::params`]).
    fn params(&self, fixture: &NexusFixture) -> <Self::Saga as SagaDef>::Params;

    /// Problems with the saga's resources given how it ended ([`SagaSuite::check_outcome`]).
    fn check_outcome(
        &self,
        fixture: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> impl Future<Output = Result<Vec<String>, HarnessError>> + Send;

    /// [`SagaSuite::fail_after_commit`] (no such knob by default).
    fn fail_after_commit(&self, fixture: &NexusFixture, node: &str) -> bool {
        let _ = (fixture, node);
        false
    }

    /// [`SagaSuite::includes`] (every node by default).
    fn includes(&self, node: &str, kind: NodeKind) -> bool {
        let _ = (node, kind);
        true
    }

    /// [`SagaSuite::expects_detection`] (no known defect by default).
    fn expects_detection(&self, node: &str, fault: Fault) -> bool {
        let _ = (node, fault);
        false
    }
}

impl<S: NexusSuite> SagaSuite for S {
    type Saga = S::Saga;
    type Fixture = NexusFixture;

    fn label(&self) -> String {
        NexusSuite::label(self)
    }

    fn migrations(&self) -> Vec<&'static EmbeddedMigrations> {
        vec![&DATASTORE_MIGRATIONS]
    }

    async fn fixture(&self, url: &str) -> Result<NexusFixture, HarnessError> {
        let fixture = nexus_fixture(url, S::DISK_ATTACHED).await?;
        self.prepare(&fixture);
        Ok(fixture)
    }

    fn register(&self, builder: EngineBuilder, fixture: &NexusFixture) -> EngineBuilder {
        ratchet_sagas::register_all(builder, &fixture.services.app)
    }

    fn params(&self, fixture: &NexusFixture) -> <S::Saga as SagaDef>::Params {
        NexusSuite::params(self, fixture)
    }

    async fn violations(
        &self,
        fixture: &NexusFixture,
        conn: &mut DbConnection,
    ) -> Result<Vec<String>, HarnessError> {
        violations(fixture, conn).await
    }

    fn check_outcome(
        &self,
        fixture: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> impl Future<Output = Result<Vec<String>, HarnessError>> + Send {
        NexusSuite::check_outcome(self, fixture, conn, succeeded)
    }

    fn lose_response(&self, fixture: &NexusFixture, node: &str) -> bool {
        S::CALLS_SERVICES && lose_response(fixture, node, None)
    }

    fn lose_response_then_refuse(&self, fixture: &NexusFixture, node: &str) -> bool {
        S::CALLS_SERVICES && lose_response(fixture, node, Some(REFUSALS))
    }

    fn service_fault_fired(&self, fixture: &NexusFixture, node: &str) -> bool {
        S::CALLS_SERVICES && service_fault_fired(fixture, node)
    }

    fn fail_after_commit(&self, fixture: &NexusFixture, node: &str) -> bool {
        NexusSuite::fail_after_commit(self, fixture, node)
    }

    fn services_handle(&self, fixture: &NexusFixture) -> serde_json::Value {
        services_handle(fixture)
    }

    fn register_remote(
        &self,
        builder: EngineBuilder,
        handle: &serde_json::Value,
    ) -> Result<EngineBuilder, HarnessError> {
        register_remote(builder, handle)
    }

    fn includes(&self, node: &str, kind: NodeKind) -> bool {
        NexusSuite::includes(self, node, kind)
    }

    fn expects_detection(&self, node: &str, fault: Fault) -> bool {
        NexusSuite::expects_detection(self, node, fault)
    }
}

/// instance-create with one NIC, SNAT and an ephemeral IP, one disk created and one attached, a boot disk,
/// and start; `legacy` attaches disks with the pre-fix steno action.
pub struct InstanceCreateSuite {
    pub legacy: bool,
    /// A mutant for the harness's own tests: the VMM ensure makes every attempt a new request
    /// (`NexusApp::fresh_request_per_attempt`). The services' books must show it.
    pub fresh_request_per_attempt: bool,
}

impl InstanceCreateSuite {
    /// instance-create as written (`legacy`: with the pre-fix attach).
    pub fn new(legacy: bool) -> InstanceCreateSuite {
        InstanceCreateSuite {
            legacy,
            fresh_request_per_attempt: false,
        }
    }
}

impl NexusSuite for InstanceCreateSuite {
    type Saga = InstanceCreate;
    const CALLS_SERVICES: bool = true;

    fn label(&self) -> String {
        if self.legacy {
            "legacy-instance-create".to_owned()
        } else {
            "instance-create".to_owned()
        }
    }

    fn prepare(&self, fixture: &NexusFixture) {
        fixture.services.app.fresh_request_per_attempt.store(
            self.fresh_request_per_attempt,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn params(&self, f: &NexusFixture) -> InstanceCreateParams {
        InstanceCreateParams {
            project_id: f.world.project_id,
            name: "under-test".to_owned(),
            ncpus: 2,
            memory: 1 << 30,
            nics: vec![NicSpec {
                name: "net0".to_owned(),
                subnet_id: f.world.subnet_id,
            }],
            ip_pool_id: f.world.ip_pool_id,
            external_ip: true,
            create_disks: vec![DiskSpec {
                name: "created-0".to_owned(),
                size_bytes: 1 << 30,
            }],
            attach_disks: vec![f.disk_id],
            boot_disk: true,
            start: true,
            legacy_attach: self.legacy,
        }
    }

    async fn check_outcome(
        &self,
        f: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> Result<Vec<String>, HarnessError> {
        let mut problems = Vec::new();
        let p = f.world.project_id;
        let live = |table: &str| {
            format!(
                "SELECT count(*) AS count FROM {table} t JOIN instance i ON i.id = t.{} \
                 WHERE i.project_id = $1 AND i.name = 'under-test' AND t.time_deleted IS NULL",
                if table == "external_ip" {
                    "parent_id"
                } else {
                    "instance_id"
                }
            )
        };
        let instances = count(
            conn,
            "SELECT count(*) AS count FROM instance WHERE project_id = $1 AND name = 'under-test' \
             AND time_deleted IS NULL AND state = 'vmm' AND boot_disk_id IS NOT NULL",
            p,
        )
        .await?;
        let any_instance = count(
            conn,
            "SELECT count(*) AS count FROM instance WHERE project_id = $1 AND name = 'under-test' \
             AND time_deleted IS NULL",
            p,
        )
        .await?;
        let nics = count(conn, &live("network_interface"), p).await?;
        let ips = count(conn, &live("external_ip"), p).await?;
        let attached = count(
            conn,
            "SELECT count(DISTINCT d.slot) AS count FROM disk d JOIN instance i ON i.id = d.attach_instance_id \
             WHERE i.project_id = $1 AND i.name = 'under-test' AND d.disk_state = 'attached' \
             AND d.time_deleted IS NULL",
            p,
        )
        .await?;
        let created = count(
            conn,
            "SELECT count(*) AS count FROM disk WHERE project_id = $1 AND name = 'created-0' \
             AND time_deleted IS NULL",
            p,
        )
        .await?;
        let vmms = f.services.sled_agent.vmms().len() as i64;
        let want = i64::from(succeeded);
        expect(
            &mut problems,
            "running instances with a boot disk",
            instances,
            want,
        );
        expect(&mut problems, "live instances", any_instance, want);
        expect(&mut problems, "network interfaces", nics, want);
        expect(
            &mut problems,
            "external IPs (SNAT + ephemeral)",
            ips,
            2 * want,
        );
        expect(
            &mut problems,
            "attached disks in distinct slots",
            attached,
            2 * want,
        );
        expect(&mut problems, "created disks", created, want);
        expect(&mut problems, "VMMs on the sled agent", vmms, want);
        if !succeeded {
            let fixture_disk = count(
                conn,
                "SELECT count(*) AS count FROM disk WHERE id = $1 AND disk_state = 'detached' \
                 AND time_deleted IS NULL",
                f.disk_id,
            )
            .await?;
            expect(
                &mut problems,
                "the existing disk, detached",
                fixture_disk,
                1,
            );
        }
        problems.extend(service_books(f, conn).await?);
        Ok(problems)
    }

    fn fail_after_commit(&self, f: &NexusFixture, node: &str) -> bool {
        f.services.app.legacy.fail_refetch_at(node);
        true
    }

    /// The legacy suite runs only its legacy attach nodes (the rest is the same saga as instance-create).
    fn includes(&self, _: &str, kind: NodeKind) -> bool {
        !self.legacy || kind == NodeKind::Steno
    }

    /// The legacy attach of the disk the saga created (`attach_disk_0`) wedges the unwind, as in 10695: the
    /// disk stays attached, and the disk record's undo refuses to delete it. (An *existing* disk left
    /// attached is detached by the instance record's undo, as Nexus's `project_delete_instance_in_states`
    /// does, so `attach_disk_1` unwinds cleanly.) In a one-connection pool the first legacy attach to run
    /// fails at its second claim, whichever node the cell names.
    fn expects_detection(&self, node: &str, fault: Fault) -> bool {
        self.legacy
            && match fault {
                Fault::AfterCommit => node == "attach_disk_0",
                Fault::PoolExhausted => node.starts_with("attach_disk_"),
                _ => false,
            }
    }
}

/// disk-attach of a detached disk to a stopped instance.
pub struct DiskAttachSuite;

impl NexusSuite for DiskAttachSuite {
    type Saga = DiskAttach;

    fn label(&self) -> String {
        "disk-attach".to_owned()
    }

    fn params(&self, f: &NexusFixture) -> DiskInstanceParams {
        DiskInstanceParams {
            instance_id: f.instance_id,
            disk_id: f.disk_id,
        }
    }

    async fn check_outcome(
        &self,
        f: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> Result<Vec<String>, HarnessError> {
        disk_attachment(conn, f, succeeded).await
    }
}

/// Whether the fixture's disk is attached to the fixture's instance (`attached`) or detached.
async fn disk_attachment(
    conn: &mut DbConnection,
    f: &NexusFixture,
    attached: bool,
) -> Result<Vec<String>, HarnessError> {
    let disk = ds::disk_fetch(conn, f.disk_id)
        .await
        .map_err(fixture_error)?;
    let is_attached = disk.attach_instance_id == Some(f.instance_id)
        && disk.disk_state == ds::DiskState::Attached
        && disk.slot.is_some();
    let is_detached = disk.attach_instance_id.is_none()
        && disk.disk_state == ds::DiskState::Detached
        && disk.slot.is_none();
    Ok(if (attached && is_attached) || (!attached && is_detached) {
        Vec::new()
    } else {
        vec![format!(
            "disk should be {}: it is {} (instance {:?}, slot {:?})",
            if attached { "attached" } else { "detached" },
            disk.disk_state,
            disk.attach_instance_id,
            disk.slot
        )]
    })
}

/// disk-detach of a disk attached to a stopped instance.
pub struct DiskDetachSuite;

impl NexusSuite for DiskDetachSuite {
    type Saga = DiskDetach;
    const DISK_ATTACHED: bool = true;

    fn label(&self) -> String {
        "disk-detach".to_owned()
    }

    fn params(&self, f: &NexusFixture) -> DiskInstanceParams {
        DiskInstanceParams {
            instance_id: f.instance_id,
            disk_id: f.disk_id,
        }
    }

    async fn check_outcome(
        &self,
        f: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> Result<Vec<String>, HarnessError> {
        disk_attachment(conn, f, !succeeded).await
    }
}

/// snapshot-create of a detached disk through the pantry.
pub struct SnapshotCreateSuite;

impl NexusSuite for SnapshotCreateSuite {
    type Saga = SnapshotCreate;
    const CALLS_SERVICES: bool = true;

    fn label(&self) -> String {
        "snapshot-create".to_owned()
    }

    fn params(&self, f: &NexusFixture) -> SnapshotCreateParams {
        SnapshotCreateParams {
            project_id: f.world.project_id,
            disk_id: f.disk_id,
            name: "snap".to_owned(),
        }
    }

    async fn check_outcome(
        &self,
        f: &NexusFixture,
        conn: &mut DbConnection,
        succeeded: bool,
    ) -> Result<Vec<String>, HarnessError> {
        let mut problems = disk_attachment(conn, f, false).await?;
        let ready = count(
            conn,
            "SELECT count(*) AS count FROM snapshot WHERE disk_id = $1 AND state = 'ready' \
             AND time_deleted IS NULL",
            f.disk_id,
        )
        .await?;
        let live = count(
            conn,
            "SELECT count(*) AS count FROM snapshot WHERE disk_id = $1 AND time_deleted IS NULL",
            f.disk_id,
        )
        .await?;
        let want = i64::from(succeeded);
        expect(&mut problems, "ready snapshots", ready, want);
        expect(&mut problems, "live snapshots", live, want);
        let on_pantry = f.services.pantry.snapshots().len() as i64;
        expect(&mut problems, "snapshots on the pantry", on_pantry, want);
        expect(
            &mut problems,
            "disks attached to the pantry",
            f.services.pantry.attachments().len() as i64,
            0,
        );
        problems.extend(service_books(f, conn).await?);
        Ok(problems)
    }
}

/// Every Nexus suite: the four sagas and the legacy variant.
pub fn all_nexus_suites(matrix: crate::Matrix) -> crate::Matrix {
    matrix
        .suite(InstanceCreateSuite::new(false))
        .suite(InstanceCreateSuite::new(true))
        .suite(DiskAttachSuite)
        .suite(DiskDetachSuite)
        .suite(SnapshotCreateSuite)
}

/// The suite names `ratchet matrix --saga` accepts.
pub const NEXUS_SUITE_NAMES: [&str; 5] = [
    "instance-create",
    "legacy-instance-create",
    "disk-attach",
    "disk-detach",
    "snapshot-create",
];

/// Adds the named suite.
pub fn add_nexus_suite(matrix: crate::Matrix, name: &str) -> Result<crate::Matrix, String> {
    Ok(match name {
        "instance-create" => matrix.suite(InstanceCreateSuite::new(false)),
        "legacy-instance-create" => matrix.suite(InstanceCreateSuite::new(true)),
        "disk-attach" => matrix.suite(DiskAttachSuite),
        "disk-detach" => matrix.suite(DiskDetachSuite),
        "snapshot-create" => matrix.suite(SnapshotCreateSuite),
        other => {
            return Err(format!(
                "unknown saga {other:?} (one of: {})",
                NEXUS_SUITE_NAMES.join(", ")
            ));
        }
    })
}
