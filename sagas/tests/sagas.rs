//! Acceptance tests of the Nexus-shaped sagas, one module per saga, on the embedded PostgreSQL.
//!
//! Every test runs on a fresh database with a world, the simulated sled agent and pantry, and an engine of its
//! own ([`common::Nexus`], built the way `ratchet run` builds its world). For each saga:
//!
//! - **the happy path**, with the exact rows it leaves (states, generations, slots, addresses) and the
//!   services' state, and zero invariant violations;
//! - **every refusal**: the error names the problem, the saga unwinds (`done` in the saga log, not `stuck`),
//!   nothing is left behind (no invariant violation, and the live rows of every datastore table exactly as
//!   before the saga: nothing created survives, nothing that existed changed);
//! - **idempotency**: attaching a disk already attached to the instance, and detaching a detached disk,
//!   succeed without writing.
//!
//! Snapshot-create also runs with the pantry losing its answer to the detach (the disk must not stay in
//! `maintenance`), and the retry-budget module runs a contended instance-create load with a larger budget.

mod common;

use common::{GIB, Nexus, assert_succeeded, assert_unwound};
use ratchet_datastore::{self as ds, DiskState, InstanceState, IpAttachState, IpKind};
use ratchet_engine::{EngineError, SagaOutcome};
use ratchet_sagas::{
    DiskAttach, DiskDetach, DiskInstanceParams, DiskSpec, InstanceCreate, SnapshotCreate,
    SnapshotCreateParams, WorldSpec,
};
use uuid::Uuid;

/// Runs a saga that must be refused at `$node` with an error saying each of `$needles`, and checks that it
/// left nothing: the saga `done` (unwound, not stuck), the live rows of every datastore table as before.
macro_rules! refused {
    ($nexus:expr, $saga:ty, $params:expr, $node:expr, $needles:expr) => {{
        let params = $params;
        let nexus: &mut Nexus = $nexus;
        let before = nexus.live_rows().await;
        let (id, outcome) = nexus
            .engine
            .run::<$saga>(params)
            .await
            .expect("the saga runs");
        assert_unwound(&outcome, $node, $needles);
        assert_eq!(nexus.saga_state(id).await, "done", "{outcome:?}");
        let after = nexus.live_rows().await;
        for (table, rows) in &before {
            assert_eq!(
                rows, &after[table],
                "live rows of {table} changed by a refused saga ({outcome:?})"
            );
        }
    }};
}

fn params(instance_id: Uuid, disk_id: Uuid) -> DiskInstanceParams {
    DiskInstanceParams {
        instance_id,
        disk_id,
    }
}

fn disk_specs(n: usize) -> Vec<DiskSpec> {
    (0..n)
        .map(|i| DiskSpec {
            name: format!("created-{i}"),
            size_bytes: GIB,
        })
        .collect()
}

mod instance_create {
    use super::*;

    /// Two NICs, SNAT and an ephemeral IP, two created disks and one existing disk, a boot disk, not started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_leaves_exact_rows() {
        let mut nexus = Nexus::start().await;
        let existing = nexus.detached_disk("existing").await;
        let mut params = nexus.instance_params("web");
        params.nics = nexus.nics(2);
        params.external_ip = true;
        params.create_disks = disk_specs(2);
        params.attach_disks = vec![existing];
        params.boot_disk = true;
        let id = nexus.create_instance(params).await;

        let instance = nexus.instance(id).await;
        assert_eq!(instance.state, InstanceState::NoVmm);
        // Inserted at 1, moved to stopped at 2 (setting the boot disk does not bump it).
        assert_eq!(instance.state_generation, 2);
        assert_eq!(instance.active_propolis_id, None);
        assert_eq!((instance.ncpus, instance.memory), (2, GIB));

        let nics = ds::network_interfaces_of(&mut nexus.conn, id)
            .await
            .unwrap();
        let nics: Vec<_> = nics
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.slot,
                    n.is_primary,
                    n.ip.as_str(),
                    n.subnet_id,
                )
            })
            .collect();
        // The lowest free addresses of 172.30.0.0/22 after the five reserved ones.
        let subnet = nexus.world.subnet_id;
        assert_eq!(
            nics,
            [
                ("net0", 0, true, "172.30.0.5", subnet),
                ("net1", 1, false, "172.30.0.6", subnet)
            ]
        );

        let ips = ds::external_ips_of(&mut nexus.conn, id).await.unwrap();
        let ips: Vec<_> = ips
            .iter()
            .map(|ip| {
                (
                    ip.kind,
                    ip.state,
                    ip.ip.as_str(),
                    ip.parent_id,
                    ip.ip_pool_id,
                )
            })
            .collect();
        // The world's range is 10.0.0.1 - 10.0.7.254 (the first range of a fresh database); SNAT goes first.
        let pool = nexus.world.ip_pool_id;
        assert_eq!(
            ips,
            [
                (
                    IpKind::Snat,
                    IpAttachState::Attached,
                    "10.0.0.1",
                    Some(id),
                    pool
                ),
                (
                    IpKind::Ephemeral,
                    IpAttachState::Attached,
                    "10.0.0.2",
                    Some(id),
                    pool
                )
            ]
        );

        // Created disks are attached first, in order, then the existing one: slots 0, 1, 2.
        let disks = ds::disks_attached_to(&mut nexus.conn, id).await.unwrap();
        let disks: Vec<_> = disks
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.disk_state,
                    d.slot,
                    d.state_generation,
                    d.size_bytes,
                )
            })
            .collect();
        assert_eq!(
            disks,
            [
                ("created-0", DiskState::Attached, Some(0), 3, GIB),
                ("created-1", DiskState::Attached, Some(1), 3, GIB),
                ("existing", DiskState::Attached, Some(2), 3, GIB)
            ]
        );
        let attached = ds::disks_attached_to(&mut nexus.conn, id).await.unwrap();
        assert_eq!(instance.boot_disk_id, Some(attached[0].id));
        for disk in &attached {
            assert_eq!(disk.attach_instance_id, Some(id));
            let volume = ds::volume_fetch(&mut nexus.conn, disk.volume_id)
                .await
                .expect("every disk has a live volume");
            if disk.id != existing {
                assert_eq!(
                    volume.data,
                    serde_json::json!({"type": "blank", "size_bytes": GIB})
                );
            }
        }

        // Not started: no reservation, no VMM.
        let rows = nexus.live_rows().await;
        assert_eq!(rows["sled_resource_vmm"], serde_json::json!([]));
        assert!(nexus.services.sled_agent.vmms().is_empty());
        nexus.assert_no_violations().await;
    }

    /// With `start`: a sled reservation, a VMM on the sled agent, the instance `vmm`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_with_start_runs_a_vmm() {
        let mut nexus = Nexus::start().await;
        let mut params = nexus.instance_params("started");
        params.create_disks = disk_specs(1);
        params.boot_disk = true;
        params.start = true;
        params.ncpus = 4;
        params.memory = 2 * GIB;
        let id = nexus.create_instance(params).await;

        let instance = nexus.instance(id).await;
        assert_eq!(instance.state, InstanceState::Vmm);
        // 1 inserted, 2 stopped, 3 running.
        assert_eq!(instance.state_generation, 3);
        let propolis_id = instance.active_propolis_id.expect("an active VMM");

        let rows = nexus.live_rows().await;
        let reservations = rows["sled_resource_vmm"].as_array().unwrap();
        assert_eq!(reservations.len(), 1, "{reservations:?}");
        let reservation = &reservations[0];
        assert_eq!(reservation["id"], serde_json::json!(propolis_id));
        assert_eq!(reservation["instance_id"], serde_json::json!(id));
        assert_eq!(reservation["hardware_threads"], serde_json::json!(4));
        assert_eq!(reservation["reservoir_ram"], serde_json::json!(2 * GIB));
        assert_eq!(reservation["rss_ram"], serde_json::json!(0));
        let sleds: Vec<&serde_json::Value> = rows["sled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["id"])
            .collect();
        assert!(sleds.contains(&&reservation["sled_id"]), "{reservation}");

        let vmms = nexus.services.sled_agent.vmms();
        assert_eq!(vmms.len(), 1, "{vmms:?}");
        assert_eq!(
            (vmms[0].propolis_id, vmms[0].instance_id, vmms[0].generation),
            (propolis_id, id, 1)
        );

        let disks = ds::disks_attached_to(&mut nexus.conn, id).await.unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(
            (disks[0].disk_state, disks[0].slot),
            (DiskState::Attached, Some(0))
        );
        assert_eq!(instance.boot_disk_id, Some(disks[0].id));
        nexus.assert_no_violations().await;
    }

    /// The sled agent applies the VMM ensure and loses its answer; every later attempt is refused. The
    /// refusals say nothing of the first attempt, which may have landed (it did): the node must undo it
    /// before it fails. The VMM is unregistered, its generation fenced (a late ensure of it is refused: the
    /// tombstone, by generation, as Nexus's sled agent takes calls), and the saga unwinds with nothing left on
    /// the sled agent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ensure_applied_then_refused_is_compensated_and_fenced() {
        let mut nexus = Nexus::with(WorldSpec::default(), |config| {
            // Slow retries, so that the refusals can be armed between the first attempt and the next.
            config.forward_retry = ratchet_store::RetryPolicy {
                initial: std::time::Duration::from_millis(400),
                max_delay: std::time::Duration::from_millis(400),
                max_attempts: Some(4),
            };
        })
        .await;
        let faults = nexus.services.sled_agent.faults();
        faults
            .op(ratchet_sim::Operation::VmmEnsure)
            .drop_response_after_apply(1);
        let mut params = nexus.instance_params("applied-then-refused");
        params.start = true;
        let engine = nexus.engine.clone();
        let run = tokio::spawn(async move { engine.run::<InstanceCreate>(params).await });
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while faults
                .counters(ratchet_sim::Operation::VmmEnsure)
                .responses_dropped
                == 0
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the ensure was applied and its answer dropped");
        faults
            .op(ratchet_sim::Operation::VmmEnsure)
            .fail_before_apply(1_000);
        let (id, outcome) = run.await.unwrap().unwrap();
        assert_unwound(&outcome, "ensure_vmm", &["503"]);
        assert_eq!(nexus.saga_state(id).await, "done");
        let ensure = faults.counters(ratchet_sim::Operation::VmmEnsure);
        assert_eq!(ensure.applied, 1, "{ensure:?}");
        assert!(ensure.failed_before_apply >= 1, "{ensure:?}");
        let unregister = faults.counters(ratchet_sim::Operation::VmmUnregister);
        assert_eq!(
            unregister.applied, 1,
            "compensated once, fencing the generation: {unregister:?}"
        );
        assert!(nexus.services.sled_agent.vmms().is_empty(), "no VMM leaked");
        // The compensation fenced the ensure's generation: a late duplicate of it is refused.
        let [propolis] = faults.applied_keys(ratchet_sim::Operation::VmmEnsure)[..] else {
            panic!(
                "one VMM ensured: {:?}",
                faults.applied_keys(ratchet_sim::Operation::VmmEnsure)
            );
        };
        faults.clear();
        let late = nexus
            .services
            .sled_agent
            .client()
            .vmm_ensure_at_generation(propolis, Uuid::new_v4(), 1)
            .await;
        assert!(
            matches!(&late, Err(ratchet_sim::CallOutcomeError::Refused(m)) if m.contains("vmm_fenced")),
            "{late:?}"
        );
        assert!(nexus.services.sled_agent.vmms().is_empty(), "no VMM leaked");
        nexus.assert_no_violations().await;
    }

    /// The limits themselves are allowed: 8 NICs, 12 disks (created and existing) in slots 0 to 11.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_nics_and_twelve_disks_fit() {
        let mut nexus = Nexus::start().await;
        let mut existing = Vec::new();
        for i in 0..4 {
            existing.push(nexus.detached_disk(&format!("existing-{i}")).await);
        }
        let mut params = nexus.instance_params("full");
        params.nics = nexus.nics(8);
        params.create_disks = disk_specs(8);
        params.attach_disks = existing;
        let id = nexus.create_instance(params).await;

        let nics = ds::network_interfaces_of(&mut nexus.conn, id)
            .await
            .unwrap();
        assert_eq!(
            nics.iter().map(|n| n.slot).collect::<Vec<_>>(),
            (0..8).collect::<Vec<i16>>()
        );
        assert_eq!(nics.iter().filter(|n| n.is_primary).count(), 1);
        let ips: Vec<&str> = nics.iter().map(|n| n.ip.as_str()).collect();
        let want: Vec<String> = (5..13).map(|host| format!("172.30.0.{host}")).collect();
        assert_eq!(ips, want);
        let disks = ds::disks_attached_to(&mut nexus.conn, id).await.unwrap();
        assert_eq!(
            disks.iter().map(|d| d.slot).collect::<Vec<_>>(),
            (0..12).map(Some).collect::<Vec<Option<i16>>>()
        );
        nexus.assert_no_violations().await;
    }

    /// More than 8 NICs is refused when the saga is built: nothing is created, not even a saga.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nine_nics_are_refused_before_creating() {
        let mut nexus = Nexus::start().await;
        let mut params = nexus.instance_params("too-many-nics");
        params.nics = nexus.nics(9);
        let before = nexus.live_rows().await;
        let error = nexus
            .engine
            .run::<InstanceCreate>(params)
            .await
            .unwrap_err();
        match &error {
            EngineError::BadParams { saga, message } => {
                assert_eq!(saga, "instance-create");
                assert_eq!(message, "too many network interfaces: 9 (at most 8)");
            }
            other => panic!("expected BadParams, got {other:?}"),
        }
        assert_eq!(nexus.live_rows().await, before);
        assert_eq!(nexus.saga_count().await, 0);
        nexus.assert_no_violations().await;
    }

    /// More than 12 disks in all (created plus existing) is refused when the saga is built.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thirteen_disks_are_refused_before_creating() {
        let mut nexus = Nexus::start().await;
        let existing = nexus.detached_disk("existing").await;
        let mut params = nexus.instance_params("too-many-disks");
        params.create_disks = disk_specs(12);
        params.attach_disks = vec![existing];
        let before = nexus.live_rows().await;
        let error = nexus
            .engine
            .run::<InstanceCreate>(params)
            .await
            .unwrap_err();
        match &error {
            EngineError::BadParams { message, .. } => {
                assert_eq!(message, "too many disks: 13 (at most 12 per instance)");
            }
            other => panic!("expected BadParams, got {other:?}"),
        }
        assert_eq!(nexus.live_rows().await, before);
        assert_eq!(nexus.saga_count().await, 0);
    }

    /// An existing disk that does not exist: the saga gets as far as attaching it, then unwinds everything it
    /// made (instance, NIC, SNAT, ephemeral IP, the disk it created and its attachment).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_disk_unwinds_everything() {
        let mut nexus = Nexus::start().await;
        let ghost = Uuid::new_v4();
        let mut params = nexus.instance_params("ghost-disk");
        params.external_ip = true;
        params.create_disks = disk_specs(1);
        params.attach_disks = vec![ghost];
        params.boot_disk = true;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "attach_disk_1/attach_disk",
            &[&format!("disk {ghost} not found")]
        );
        // The instance was made, then deleted by the unwind.
        assert_eq!(
            nexus.instance_named("ghost-disk").await.map(|(_, d)| d),
            Some(true)
        );
        nexus.assert_no_violations().await;
    }

    /// A NIC on a subnet that does not exist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_subnet_unwinds() {
        let mut nexus = Nexus::start().await;
        let ghost = Uuid::new_v4();
        let mut params = nexus.instance_params("ghost-subnet");
        params.nics[0].subnet_id = ghost;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "create_nic_0",
            &[&format!("vpc_subnet {ghost} not found")]
        );
        nexus.assert_no_violations().await;
    }

    /// A project that does not exist: refused by the first node, before anything is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_project_is_refused() {
        let mut nexus = Nexus::start().await;
        let ghost = Uuid::new_v4();
        let mut params = nexus.instance_params("ghost-project");
        params.project_id = ghost;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "create_instance_record",
            &[&format!("project {ghost} not found")]
        );
        assert_eq!(nexus.instance_named("ghost-project").await, None);
        nexus.assert_no_violations().await;
    }

    /// An existing disk attached to another instance: refused at its attach, everything else unwound, the
    /// other instance's disk untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_attached_elsewhere_is_refused() {
        let mut nexus = Nexus::start().await;
        let other = nexus.stopped_instance("other").await;
        let taken = nexus.detached_disk("taken").await;
        nexus.attach(other, taken).await;
        let mut params = nexus.instance_params("thief");
        params.create_disks = disk_specs(1);
        params.attach_disks = vec![taken];
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "attach_disk_1/attach_disk",
            &[&format!(
                "disk {taken} is attached to another instance ({other})"
            )]
        );
        nexus.assert_no_violations().await;
    }

    /// An existing disk in `maintenance` (a snapshot is being taken) cannot be attached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_in_maintenance_is_refused() {
        let mut nexus = Nexus::start().await;
        let busy = nexus.detached_disk("busy").await;
        let busy_disk = nexus.hold_in_maintenance(busy).await;
        let mut params = nexus.instance_params("waiter");
        params.attach_disks = vec![busy];
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "attach_disk_0/attach_disk",
            &[&format!(
                "disk {busy} cannot be attached in state maintenance"
            )]
        );
        // The only violation is the test's own maintenance disk; once it is restored, there is none.
        let violations = nexus.violations().await;
        assert_eq!(
            violations
                .iter()
                .map(|v| v.rule.as_ref())
                .collect::<Vec<_>>(),
            ["disk_in_transitional_state"]
        );
        nexus.release_maintenance(busy, busy_disk).await;
        nexus.assert_no_violations().await;
    }

    /// An IP range of one address: SNAT takes it, the ephemeral IP finds the pool exhausted, and the SNAT
    /// address is released by the unwind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exhausted_ip_pool_for_the_ephemeral_ip_unwinds() {
        let spec = WorldSpec {
            ip_range: Some(("10.99.0.1".to_owned(), "10.99.0.1".to_owned())),
            ..WorldSpec::default()
        };
        let mut nexus = Nexus::with(spec, |_| {}).await;
        let mut params = nexus.instance_params("no-room");
        params.external_ip = true;
        params.create_disks = disk_specs(1);
        let pool = nexus.world.ip_pool_id;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "allocate_ephemeral_ip",
            &["exhausted", &format!("IP pool {pool} has no free address")]
        );
        nexus.assert_no_violations().await;
    }

    /// An IP range of one address held by another instance's SNAT: the next instance's SNAT finds the pool
    /// exhausted; the first instance is left as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exhausted_ip_pool_for_snat_unwinds() {
        let spec = WorldSpec {
            ip_range: Some(("10.99.0.1".to_owned(), "10.99.0.1".to_owned())),
            ..WorldSpec::default()
        };
        let mut nexus = Nexus::with(spec, |_| {}).await;
        let first = nexus.instance_params("first");
        let first = nexus.create_instance(first).await;
        let ips = ds::external_ips_of(&mut nexus.conn, first).await.unwrap();
        assert_eq!(ips.len(), 1);
        assert_eq!(
            (ips[0].kind, ips[0].ip.as_str()),
            (IpKind::Snat, "10.99.0.1")
        );

        let second = nexus.instance_params("second");
        let pool = nexus.world.ip_pool_id;
        refused!(
            &mut nexus,
            InstanceCreate,
            second,
            "allocate_snat_ip",
            &["exhausted", &format!("IP pool {pool} has no free address")]
        );
        nexus.assert_no_violations().await;
    }

    /// A /29 subnet has two allocatable addresses (.5 and .6: five reserved at the start, the broadcast at
    /// the end): the third NIC finds it exhausted, and the first two are deleted by the unwind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exhausted_subnet_unwinds() {
        let spec = WorldSpec {
            ipv4_block: "172.30.9.0/29".to_owned(),
            ..WorldSpec::default()
        };
        let mut nexus = Nexus::with(spec, |_| {}).await;
        let mut params = nexus.instance_params("crowded");
        params.nics = nexus.nics(3);
        params.external_ip = true;
        let subnet = nexus.world.subnet_id;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "create_nic_2",
            &[
                "exhausted",
                &format!("subnet {subnet} has no free IPv4 address"),
            ]
        );
        nexus.assert_no_violations().await;

        // And the two addresses are free again: two NICs fit, at .5 and .6.
        let mut params = nexus.instance_params("fits");
        params.nics = nexus.nics(2);
        let id = nexus.create_instance(params).await;
        let nics = ds::network_interfaces_of(&mut nexus.conn, id)
            .await
            .unwrap();
        let ips: Vec<&str> = nics.iter().map(|n| n.ip.as_str()).collect();
        assert_eq!(ips, ["172.30.9.5", "172.30.9.6"]);
    }

    /// With `start` and no sled with room: the reservation is refused and the whole instance unwinds, with
    /// no VMM on the sled agent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_sled_with_room_unwinds() {
        let spec = WorldSpec {
            sled_threads: 1,
            ..WorldSpec::default()
        };
        let mut nexus = Nexus::with(spec, |_| {}).await;
        let mut params = nexus.instance_params("homeless");
        params.create_disks = disk_specs(1);
        params.boot_disk = true;
        params.start = true;
        refused!(
            &mut nexus,
            InstanceCreate,
            params,
            "reserve_sled",
            &["exhausted", "no sled has room"]
        );
        assert!(nexus.services.sled_agent.vmms().is_empty());
        nexus.assert_no_violations().await;
    }
}

mod disk_attach {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_attaches_in_the_first_free_slot() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let first = nexus.detached_disk("first").await;
        let second = nexus.detached_disk("second").await;
        for disk in [first, second] {
            let (_, outcome) = nexus
                .engine
                .run::<DiskAttach>(params(instance, disk))
                .await
                .unwrap();
            assert_succeeded(&outcome);
        }
        for (disk, slot) in [(first, 0), (second, 1)] {
            let disk = nexus.disk(disk).await;
            assert_eq!(disk.disk_state, DiskState::Attached);
            assert_eq!(disk.attach_instance_id, Some(instance));
            assert_eq!(disk.slot, Some(slot));
            // Created 1, finalized 2, attached 3.
            assert_eq!(disk.state_generation, 3);
        }
        // Attaching changes nothing on the instance.
        let row = nexus.instance(instance).await;
        assert_eq!((row.state, row.state_generation), (InstanceState::NoVmm, 2));
        assert_eq!(row.boot_disk_id, None);
        nexus.assert_no_violations().await;
    }

    /// Attaching a disk already attached to the same instance succeeds and writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attaching_again_to_the_same_instance_succeeds() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        nexus.attach(instance, disk).await;
        let before = nexus.live_rows().await;
        let (_, outcome) = nexus
            .engine
            .run::<DiskAttach>(params(instance, disk))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        assert_eq!(nexus.live_rows().await, before);
        let disk = nexus.disk(disk).await;
        assert_eq!((disk.slot, disk.state_generation), (Some(0), 3));
        nexus.assert_no_violations().await;
    }

    /// Hot-plug: an instance with a VMM refuses the attach.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_instance_refuses_hot_plug() {
        let mut nexus = Nexus::start().await;
        let mut running = nexus.instance_params("running");
        running.start = true;
        let running = nexus.create_instance(running).await;
        let disk = nexus.detached_disk("disk").await;
        refused!(
            &mut nexus,
            DiskAttach,
            params(running, disk),
            "attach_disk",
            &[&format!(
                "cannot attach a disk while instance {running} is running: stop it first \
                 (hot-plug is not supported)"
            )]
        );
        assert_eq!(nexus.disk(disk).await.disk_state, DiskState::Detached);
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        ds::instance_transition(
            &mut nexus.conn,
            instance,
            2,
            InstanceState::NoVmm,
            InstanceState::Failed,
        )
        .await
        .unwrap();
        let disk = nexus.detached_disk("disk").await;
        refused!(
            &mut nexus,
            DiskAttach,
            params(instance, disk),
            "attach_disk",
            &[&format!(
                "cannot attach a disk on instance {instance} in state failed"
            )]
        );
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_attached_to_another_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let owner = nexus.stopped_instance("owner").await;
        let thief = nexus.stopped_instance("thief").await;
        let disk = nexus.detached_disk("disk").await;
        nexus.attach(owner, disk).await;
        refused!(
            &mut nexus,
            DiskAttach,
            params(thief, disk),
            "attach_disk",
            &[&format!(
                "disk {disk} is attached to another instance ({owner})"
            )]
        );
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_in_maintenance_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        let held = nexus.hold_in_maintenance(disk).await;
        refused!(
            &mut nexus,
            DiskAttach,
            params(instance, disk),
            "attach_disk",
            &[&format!(
                "disk {disk} cannot be attached in state maintenance"
            )]
        );
        nexus.release_maintenance(disk, held).await;
        nexus.assert_no_violations().await;
    }

    /// Twelve disks attached: the thirteenth is refused by the attach CTE's limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thirteenth_disk_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        for i in 0..12 {
            let disk = nexus.detached_disk(&format!("disk-{i}")).await;
            nexus.attach(instance, disk).await;
        }
        let thirteenth = nexus.detached_disk("disk-12").await;
        refused!(
            &mut nexus,
            DiskAttach,
            params(instance, thirteenth),
            "attach_disk",
            &[
                "limit reached",
                &format!("cannot attach more than 12 disks to instance {instance} (12 attached)"),
            ]
        );
        assert_eq!(nexus.disk(thirteenth).await.disk_state, DiskState::Detached);
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_disk_or_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        let ghost = Uuid::new_v4();
        refused!(
            &mut nexus,
            DiskAttach,
            params(instance, ghost),
            "attach_disk",
            &[&format!("disk {ghost} not found")]
        );
        refused!(
            &mut nexus,
            DiskAttach,
            params(ghost, disk),
            "attach_disk",
            &[&format!("instance {ghost} not found")]
        );
        nexus.assert_no_violations().await;
    }
}

mod disk_detach {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_detaches() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let kept = nexus.detached_disk("kept").await;
        let disk = nexus.detached_disk("disk").await;
        nexus.attach(instance, kept).await;
        nexus.attach(instance, disk).await;
        let (_, outcome) = nexus
            .engine
            .run::<DiskDetach>(params(instance, disk))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        let detached = nexus.disk(disk).await;
        assert_eq!(detached.disk_state, DiskState::Detached);
        assert_eq!((detached.attach_instance_id, detached.slot), (None, None));
        // Created 1, finalized 2, attached 3, detached 4.
        assert_eq!(detached.state_generation, 4);
        // The other disk keeps its slot.
        let kept = nexus.disk(kept).await;
        assert_eq!(
            (kept.disk_state, kept.slot, kept.state_generation),
            (DiskState::Attached, Some(0), 3)
        );
        nexus.assert_no_violations().await;
    }

    /// Detaching a detached disk succeeds and writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detaching_a_detached_disk_succeeds() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        let before = nexus.live_rows().await;
        let (_, outcome) = nexus
            .engine
            .run::<DiskDetach>(params(instance, disk))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        assert_eq!(nexus.live_rows().await, before);
        nexus.assert_no_violations().await;
    }

    /// Hot-plug: a disk of a running instance cannot be detached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn running_instance_refuses_hot_unplug() {
        let mut nexus = Nexus::start().await;
        let (running, disk) = nexus.running_instance_with_a_disk().await;
        refused!(
            &mut nexus,
            DiskDetach,
            params(running, disk),
            "detach_disk",
            &[&format!(
                "cannot detach a disk while instance {running} is running: stop it first \
                 (hot-plug is not supported)"
            )]
        );
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn boot_disk_is_refused() {
        let mut nexus = Nexus::start().await;
        let mut params_ = nexus.instance_params("booted");
        params_.create_disks = disk_specs(1);
        params_.boot_disk = true;
        let instance = nexus.create_instance(params_).await;
        let boot = nexus.instance(instance).await.boot_disk_id.unwrap();
        refused!(
            &mut nexus,
            DiskDetach,
            params(instance, boot),
            "detach_disk",
            &[&format!(
                "disk {boot} is the boot disk of instance {instance}: set another boot disk first"
            )]
        );
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_attached_to_another_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let owner = nexus.stopped_instance("owner").await;
        let other = nexus.stopped_instance("other").await;
        let disk = nexus.detached_disk("disk").await;
        nexus.attach(owner, disk).await;
        refused!(
            &mut nexus,
            DiskDetach,
            params(other, disk),
            "detach_disk",
            &[&format!(
                "disk {disk} is attached to another instance ({owner}), not {other}"
            )]
        );
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_in_maintenance_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        let held = nexus.hold_in_maintenance(disk).await;
        refused!(
            &mut nexus,
            DiskDetach,
            params(instance, disk),
            "detach_disk",
            &[&format!(
                "disk {disk} cannot be detached in state maintenance"
            )]
        );
        nexus.release_maintenance(disk, held).await;
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_disk_or_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let instance = nexus.stopped_instance("inst").await;
        let disk = nexus.detached_disk("disk").await;
        nexus.attach(instance, disk).await;
        let ghost = Uuid::new_v4();
        refused!(
            &mut nexus,
            DiskDetach,
            params(instance, ghost),
            "detach_disk",
            &[&format!("disk {ghost} not found")]
        );
        refused!(
            &mut nexus,
            DiskDetach,
            params(ghost, disk),
            "detach_disk",
            &[&format!("instance {ghost} not found")]
        );
        nexus.assert_no_violations().await;
    }
}

mod snapshot_create {
    use super::*;
    use ratchet_sim::Operation;

    fn params(nexus: &Nexus, disk_id: Uuid, name: &str) -> SnapshotCreateParams {
        SnapshotCreateParams {
            project_id: nexus.world.project_id,
            disk_id,
            name: name.to_owned(),
        }
    }

    /// The rows and the pantry after a successful snapshot of `disk` named `name`: the snapshot `ready`
    /// with its volume, the disk `detached` at generation 4 (2, maintenance 3, detached 4), nothing attached
    /// to the pantry, the snapshot on the pantry.
    async fn assert_snapshot_taken(nexus: &mut Nexus, disk: Uuid, name: &str) {
        let rows = nexus.live_rows().await;
        let snapshots = rows["snapshot"].as_array().unwrap();
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        let snapshot_id: Uuid = serde_json::from_value(snapshots[0]["id"].clone()).unwrap();
        let snapshot = ds::snapshot_fetch(&mut nexus.conn, snapshot_id)
            .await
            .unwrap();
        assert_eq!(snapshot.state, ds::SnapshotState::Ready);
        assert_eq!(
            (
                snapshot.disk_id,
                snapshot.project_id,
                snapshot.name.as_str()
            ),
            (disk, nexus.world.project_id, name)
        );
        assert_eq!(snapshot.size_bytes, GIB);
        let volume = ds::volume_fetch(&mut nexus.conn, snapshot.volume_id)
            .await
            .expect("the snapshot's volume");
        assert_eq!(
            volume.data,
            serde_json::json!({"type": "snapshot", "of_disk": disk})
        );

        let disk_row = nexus.disk(disk).await;
        assert_eq!(disk_row.disk_state, DiskState::Detached);
        assert_eq!(disk_row.state_generation, 4);
        assert_eq!((disk_row.attach_instance_id, disk_row.slot), (None, None));

        let pantry = &nexus.services.pantry;
        assert!(
            pantry.attachments().is_empty(),
            "{:?}",
            pantry.attachments()
        );
        let on_pantry: Vec<(Uuid, Uuid)> = pantry
            .snapshots()
            .iter()
            .map(|s| (s.snapshot_id, s.disk_id))
            .collect();
        assert_eq!(on_pantry, [(snapshot_id, disk)]);
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_takes_a_ready_snapshot() {
        let mut nexus = Nexus::start().await;
        let disk = nexus.detached_disk("disk").await;
        let (_, outcome) = nexus
            .engine
            .run::<SnapshotCreate>(params(&nexus, disk, "snap"))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        assert_snapshot_taken(&mut nexus, disk, "snap").await;
        let faults = nexus.services.pantry.faults();
        for op in [
            Operation::DiskAttach,
            Operation::DiskSnapshot,
            Operation::DiskDetach,
        ] {
            assert_eq!(faults.applied(op), 1, "{op}");
        }
    }

    /// The pantry applies the detach and loses its answer. The node must not fail while the outcome is
    /// unknown: it retries with the same idempotency key, the pantry answers from its record, and the saga
    /// *succeeds* (a definite answer was obtainable, so there is nothing to unwind). The disk is `detached`,
    /// never left in `maintenance`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_pantry_detach_answer_leaves_no_maintenance() {
        let mut nexus = Nexus::start().await;
        let disk = nexus.detached_disk("disk").await;
        let faults = nexus.services.pantry.faults();
        faults
            .op(Operation::DiskDetach)
            .drop_response_after_apply(1);
        let (id, outcome) = nexus
            .engine
            .run::<SnapshotCreate>(params(&nexus, disk, "snap"))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        assert_eq!(nexus.saga_state(id).await, "done");
        let detach = faults.counters(Operation::DiskDetach);
        assert_eq!(detach.responses_dropped, 1, "{detach:?}");
        assert_eq!(detach.applied, 1, "applied once: {detach:?}");
        assert!(
            detach.replayed >= 1,
            "the retry was answered from the record: {detach:?}"
        );
        assert_snapshot_taken(&mut nexus, disk, "snap").await;
    }

    /// A disk attached to a running instance. (Nexus snapshots such a disk through the sled agent, a path
    /// this simplified saga does not model: it refuses, naming the state.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_attached_to_running_instance_is_refused() {
        let mut nexus = Nexus::start().await;
        let (_, disk) = nexus.running_instance_with_a_disk().await;
        refused!(
            &mut nexus,
            SnapshotCreate,
            params(&nexus, disk, "snap"),
            "create_snapshot_record",
            &[&format!(
                "disk {disk} is in state attached: only a detached disk can be snapshotted through the pantry"
            )]
        );
        assert!(nexus.services.pantry.state().attachments.is_empty());
        assert!(nexus.services.pantry.snapshots().is_empty());
        nexus.assert_no_violations().await;
    }

    /// A disk in `maintenance` (another snapshot in progress) is refused, as Nexus's pantry path does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_in_maintenance_is_refused() {
        let mut nexus = Nexus::start().await;
        let disk = nexus.detached_disk("disk").await;
        let held = nexus.hold_in_maintenance(disk).await;
        refused!(
            &mut nexus,
            SnapshotCreate,
            params(&nexus, disk, "snap"),
            "create_snapshot_record",
            &[&format!("disk {disk} is in state maintenance")]
        );
        assert!(nexus.services.pantry.snapshots().is_empty());
        nexus.release_maintenance(disk, held).await;
        nexus.assert_no_violations().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_disk_is_refused() {
        let mut nexus = Nexus::start().await;
        let ghost = Uuid::new_v4();
        refused!(
            &mut nexus,
            SnapshotCreate,
            params(&nexus, ghost, "snap"),
            "create_snapshot_record",
            &[&format!("disk {ghost} not found")]
        );
        nexus.assert_no_violations().await;
    }

    /// A name already taken in the project: the record is refused, the disk untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_name_is_refused() {
        let mut nexus = Nexus::start().await;
        let disk = nexus.detached_disk("disk").await;
        let (_, outcome) = nexus
            .engine
            .run::<SnapshotCreate>(params(&nexus, disk, "snap"))
            .await
            .unwrap();
        assert_succeeded(&outcome);
        refused!(
            &mut nexus,
            SnapshotCreate,
            params(&nexus, disk, "snap"),
            "create_snapshot_record",
            &["conflict", "snapshot name \"snap\" is already in use"]
        );
        assert_eq!(nexus.services.pantry.snapshots().len(), 1);
        nexus.assert_no_violations().await;
    }
}

/// The contended load of `ratchet run instance-create --count 30 --create-disks 11 --concurrency 30
/// --pool-size 4` on a fresh database. With the default forward budget (8 attempts, 20 ms doubling to 1 s)
/// 15 to 26 of the 30 sagas unwound in five runs here, each at a node whose transient failures (serialization
/// failures and pool checkout timeouts) outlasted the budget; with no bound every saga succeeded, the worst
/// node needing 17 attempts. The engine's default is now 32 attempts (see `EngineConfig::new`); this test runs
/// the load with that default. See the test's comments for why it is enough.
mod retry_budget {
    use super::*;
    use ratchet_engine::EngineConfig;
    use ratchet_store::PoolConfig;
    use std::time::Duration;

    /// Why the load exhausted the old default budget, and why the default's 32 attempts suffice:
    ///
    /// - 30 sagas each run their 11 `create_disk_record` and 11 `finalize_disk` nodes in parallel: up to 330
    ///   node attempts wait on 4 pooled connections, and a 1 s checkout timeout counts as a transient failure
    ///   (about a third of all retries);
    /// - every disk, NIC and external-IP write reads the same few B-tree pages (one leaf page per index on a
    ///   fresh database), so SERIALIZABLE's page-level predicate locks make almost every pair of concurrent
    ///   disk writers a read/write cycle, and one of them fails with 40001: the ~1,000 disk-writing commits
    ///   of the run are in effect serialized, and a node can lose many times in a row.
    ///
    /// PostgreSQL's SSI guarantees progress (a retried transaction is not cancelled again by the same
    /// pivot), so the budget only has to outlast the queue: 32 attempts with the backoff capped at 1 s is up
    /// to about 26 s of waiting per phase, against the 17 attempts (about 11 s) the worst node needed here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a load test (about 30 s on a debug build): cargo nextest run -p ratchet-sagas --test sagas --run-ignored only"]
    async fn thirty_instances_with_eleven_disks_succeed_with_the_default_budget() {
        let mut nexus = Nexus::with(WorldSpec::default(), |config: &mut EngineConfig| {
            config.pool = PoolConfig {
                max_size: 4,
                checkout_timeout: Duration::from_millis(1_000),
                ..PoolConfig::default()
            };
        })
        .await;
        let runs = (0..30).map(|i| {
            let mut params = nexus.instance_params(&format!("load-{i}"));
            params.create_disks = (0..11)
                .map(|d| DiskSpec {
                    name: format!("load-{i}-disk-{d}"),
                    size_bytes: GIB,
                })
                .collect();
            params.boot_disk = true;
            let engine = nexus.engine.clone();
            async move { engine.run::<InstanceCreate>(params).await }
        });
        let outcomes = futures::future::join_all(runs).await;
        let failed: Vec<SagaOutcome> = outcomes
            .into_iter()
            .map(|result| result.expect("the saga runs").1)
            .filter(|outcome| !matches!(outcome, SagaOutcome::Succeeded { .. }))
            .collect();
        let counters = nexus.engine.counters().snapshot();
        println!(
            "30 sagas: {} failed, {} transient retries",
            failed.len(),
            counters.retries
        );
        assert!(failed.is_empty(), "{failed:#?}");
        for i in 0..30 {
            let (id, deleted) = nexus
                .instance_named(&format!("load-{i}"))
                .await
                .expect("every instance");
            assert!(!deleted);
            let disks = ds::disks_attached_to(&mut nexus.conn, id).await.unwrap();
            let slots: Vec<Option<i16>> = disks.iter().map(|d| d.slot).collect();
            assert_eq!(slots, (0..11).map(Some).collect::<Vec<_>>());
        }
        nexus.assert_no_violations().await;
    }
}
