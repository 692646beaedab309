//! The fixture of the saga acceptance tests: one Nexus world on a fresh database, its simulated services, and
//! an engine with every Nexus-shaped saga registered; plus the readers the tests assert with.
//!
//! [`Nexus::start`] does what `ratchet run` does (`cli/src/run.rs`), on a database of its own:
//!
//! 1. a fresh database from the test server ([`test_server`]), cloned from a template holding
//!    the saga log's and the datastore's migrations;
//! 2. a world seeded into it ([`seed_world`](ratchet_sagas::seed_world): a project, a VPC subnet, an IP pool with one range, sleds),
//!    shaped by a [`WorldSpec`] (a tiny subnet or IP range for the exhaustion tests);
//! 3. the simulated sled agent and pantry ([`Services::start`]: real HTTP servers on loopback);
//! 4. an engine on that database with [`ratchet_sagas::register_all`], its config adjustable by the caller.
//!
//! The readers ([`Nexus::live_rows`], [`Nexus::violations`], ...) and the setup helpers ([`Nexus::attach`],
//! [`Nexus::detached_disk`], ...) use a connection of the test's own, outside the engine's pool; the setup
//! helpers write through the datastore's functions directly, outside any saga.

use diesel::sql_types::{Jsonb, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_datastore::{self as ds, Violation};
use ratchet_engine::{Engine, EngineBuilder, EngineConfig, SagaOutcome};
use ratchet_sagas::{
    DATASTORE_MIGRATIONS, DiskSpec, InstanceCreate, InstanceCreateParams, NicSpec, Services, World,
    WorldSpec,
};
use ratchet_store::DbConnection;
use ratchet_test_utils::testing::test_server;
use std::collections::BTreeMap;
use uuid::Uuid;

pub const GIB: i64 = 1 << 30;

/// Every datastore table, for [`Nexus::live_rows`].
const TABLES: [&str; 12] = [
    "project",
    "instance",
    "disk",
    "vpc_subnet",
    "network_interface",
    "ip_pool",
    "ip_pool_range",
    "external_ip",
    "snapshot",
    "volume",
    "sled",
    "sled_resource_vmm",
];

/// One world, its services and an engine, on a database of its own.
pub struct Nexus {
    pub engine: Engine,
    pub services: Services,
    pub world: World,
    pub conn: DbConnection,
}

impl Nexus {
    /// The default world (a /22 subnet, a 2,044-address IP range, four roomy sleds) and engine.
    pub async fn start() -> Nexus {
        Nexus::with(WorldSpec::default(), |_| {}).await
    }

    /// A world shaped by `spec`, and an engine whose config `configure` may change.
    pub async fn with(spec: WorldSpec, configure: impl FnOnce(&mut EngineConfig)) -> Nexus {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(filter)
            .try_init();
        let server = test_server().await.expect("the test server");
        let db = server
            .fresh_database(&[&DATASTORE_MIGRATIONS])
            .await
            .expect("a fresh database");
        let mut conn = ratchet_store::establish(&db.url)
            .await
            .expect("connecting to the test database");
        let world = ratchet_sagas::seed_world(&mut conn, &spec)
            .await
            .expect("seeding a world");
        let services = Services::start().expect("starting the sled agent and pantry sims");
        let mut config = EngineConfig::new(&db.url, Uuid::new_v4());
        configure(&mut config);
        let (engine, _) = ratchet_sagas::register_all(EngineBuilder::new(config), &services.app)
            .start()
            .await
            .expect("starting the engine");
        Nexus {
            engine,
            services,
            world,
            conn,
        }
    }

    /// Every invariant violation, in the database and in the services.
    pub async fn violations(&mut self) -> Vec<Violation> {
        ratchet_sagas::check_nexus_invariants(
            &mut self.conn,
            &self.services.sled_agent.client(),
            &self.services.pantry.client(),
        )
        .await
        .expect("the invariant checker runs")
    }

    /// Asserts that no invariant is violated.
    pub async fn assert_no_violations(&mut self) {
        let violations = self.violations().await;
        assert!(violations.is_empty(), "violations: {violations:#?}");
    }

    /// Every live row of every datastore table (soft-deleted rows left out; `sled_resource_vmm` is deleted
    /// outright), as JSON, by table and id: two snapshots are equal exactly when no live row was added,
    /// removed or changed in between (a row changed and changed back differs in `time_modified`).
    pub async fn live_rows(&mut self) -> BTreeMap<&'static str, serde_json::Value> {
        #[derive(diesel::QueryableByName)]
        struct Rows {
            #[diesel(sql_type = Jsonb)]
            rows: serde_json::Value,
        }
        let mut all = BTreeMap::new();
        for table in TABLES {
            let live = if table == "sled_resource_vmm" {
                "TRUE"
            } else {
                "t.time_deleted IS NULL"
            };
            let rows: Rows = diesel::sql_query(format!(
                "SELECT COALESCE(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]'::jsonb) AS rows \
                 FROM {table} AS t WHERE {live}"
            ))
            .get_result(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("reading {table}: {e}"));
            all.insert(table, rows.rows);
        }
        all
    }

    /// The saga log's state of saga `id`.
    pub async fn saga_state(&mut self, id: Uuid) -> String {
        #[derive(diesel::QueryableByName)]
        struct State {
            #[diesel(sql_type = Text)]
            saga_state: String,
        }
        let row: State = diesel::sql_query("SELECT saga_state FROM saga WHERE id = $1")
            .bind::<SqlUuid, _>(id)
            .get_result(&mut self.conn)
            .await
            .expect("the saga's row");
        row.saga_state
    }

    /// How many sagas the log holds.
    pub async fn saga_count(&mut self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let row: Count = diesel::sql_query("SELECT count(*) AS count FROM saga")
            .get_result(&mut self.conn)
            .await
            .expect("counting sagas");
        row.count
    }

    /// The id of the instance named `name` in the world's project, deleted or not (instance-create makes its
    /// instance's id when it builds the DAG).
    pub async fn instance_named(&mut self, name: &str) -> Option<(Uuid, bool)> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
            #[diesel(sql_type = diesel::sql_types::Bool)]
            deleted: bool,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT id, time_deleted IS NOT NULL AS deleted FROM instance \
             WHERE project_id = $1 AND name = $2 ORDER BY time_created",
        )
        .bind::<SqlUuid, _>(self.world.project_id)
        .bind::<Text, _>(name)
        .load(&mut self.conn)
        .await
        .expect("looking up an instance by name");
        assert!(rows.len() <= 1, "{} instances named {name}", rows.len());
        rows.into_iter().next().map(|r| (r.id, r.deleted))
    }

    pub async fn instance(&mut self, id: Uuid) -> ds::Instance {
        ds::instance_fetch(&mut self.conn, id)
            .await
            .expect("a live instance")
    }

    pub async fn disk(&mut self, id: Uuid) -> ds::Disk {
        ds::disk_fetch(&mut self.conn, id)
            .await
            .expect("a live disk")
    }

    /// A detached disk (generation 2: created, finalized).
    pub async fn detached_disk(&mut self, name: &str) -> Uuid {
        ratchet_sagas::detached_disk(&mut self.conn, &self.world, name)
            .await
            .expect("a detached disk")
    }

    /// A stopped (`no_vmm`) instance with nothing attached (generation 2).
    pub async fn stopped_instance(&mut self, name: &str) -> Uuid {
        ratchet_sagas::stopped_instance(&mut self.conn, &self.world, name)
            .await
            .expect("a stopped instance")
    }

    /// Attaches a disk directly (the attach CTE, outside any saga), for a test's setup.
    pub async fn attach(&mut self, instance_id: Uuid, disk_id: Uuid) -> ds::Disk {
        let (_, disk) = ds::instance_attach_disk(
            &mut self.conn,
            instance_id,
            disk_id,
            ds::MAX_DISKS_PER_INSTANCE,
        )
        .await
        .expect("attaching a disk");
        disk
    }

    /// Puts a detached disk (generation 2) in `maintenance`, as a snapshot in progress holds it; returns the
    /// disk as written, for [`Nexus::release_maintenance`].
    pub async fn hold_in_maintenance(&mut self, disk_id: Uuid) -> ds::Disk {
        ds::disk_set_maintenance(&mut self.conn, disk_id, 2)
            .await
            .expect("detached -> maintenance")
    }

    /// Returns a disk [`Nexus::hold_in_maintenance`] held to `detached`.
    pub async fn release_maintenance(&mut self, disk_id: Uuid, held: ds::Disk) {
        ds::disk_restore_detached(&mut self.conn, disk_id, held.state_generation)
            .await
            .expect("maintenance -> detached")
            .expect("the disk is still at the generation held");
    }

    /// A running instance (instance-create with `start`) with one disk it created, not its boot disk.
    pub async fn running_instance_with_a_disk(&mut self) -> (Uuid, Uuid) {
        let mut params = self.instance_params("running");
        params.create_disks = vec![DiskSpec {
            name: "running-disk".to_owned(),
            size_bytes: GIB,
        }];
        params.start = true;
        let instance = self.create_instance(params).await;
        let disks = ds::disks_attached_to(&mut self.conn, instance)
            .await
            .expect("the instance's disks");
        assert_eq!(disks.len(), 1);
        (instance, disks[0].id)
    }

    /// Parameters for an instance `name` with one NIC, SNAT only, no disks, not started.
    pub fn instance_params(&self, name: &str) -> InstanceCreateParams {
        InstanceCreateParams {
            project_id: self.world.project_id,
            name: name.to_owned(),
            ncpus: 2,
            memory: GIB,
            nics: self.nics(1),
            ip_pool_id: self.world.ip_pool_id,
            external_ip: false,
            create_disks: Vec::new(),
            attach_disks: Vec::new(),
            boot_disk: false,
            start: false,
            legacy_attach: false,
        }
    }

    /// `n` NICs on the world's subnet, `net0` first.
    pub fn nics(&self, n: usize) -> Vec<NicSpec> {
        (0..n)
            .map(|i| NicSpec {
                name: format!("net{i}"),
                subnet_id: self.world.subnet_id,
            })
            .collect()
    }

    /// Runs instance-create to success and returns the new instance's id.
    pub async fn create_instance(&mut self, params: InstanceCreateParams) -> Uuid {
        let name = params.name.clone();
        let (_, outcome) = self
            .engine
            .run::<InstanceCreate>(params)
            .await
            .expect("instance-create runs");
        assert_succeeded(&outcome);
        let (id, deleted) = self
            .instance_named(&name)
            .await
            .expect("the created instance");
        assert!(!deleted);
        id
    }
}

/// Asserts the saga succeeded.
pub fn assert_succeeded(outcome: &SagaOutcome) {
    assert!(
        matches!(outcome, SagaOutcome::Succeeded { .. }),
        "expected success, got {outcome:?}"
    );
}

/// Asserts the saga failed at `node` and unwound cleanly, with an error containing every one of `needles`.
pub fn assert_unwound(outcome: &SagaOutcome, node: &str, needles: &[&str]) {
    match outcome {
        SagaOutcome::Unwound {
            node: failed,
            error,
            ..
        } => {
            assert_eq!(failed, node, "failed at another node: {error}");
            for needle in needles {
                assert!(
                    error.contains(needle),
                    "the error of {node} does not say {needle:?}: {error}"
                );
            }
        }
        other => panic!("expected an unwind at {node}, got {other:?}"),
    }
}
