//! The datastore on a real PostgreSQL: every operation, every refusal, and the invariant checker.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_datastore::*;
use std::collections::BTreeSet;
use uuid::Uuid;

const GIB: i64 = 1 << 30;

async fn connect() -> AsyncPgConnection {
    let db = ratchet_test_utils::testing::fresh_database(&[&ratchet_datastore::MIGRATIONS])
        .await
        .expect("a fresh test database");
    AsyncPgConnection::establish(&db.url)
        .await
        .expect("connecting to the test database")
}

async fn exec(conn: &mut AsyncPgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A project with one stopped (`no_vmm`) instance.
struct Fixture {
    conn: AsyncPgConnection,
    project: Project,
    instance: Instance,
}

async fn fixture() -> Fixture {
    let mut conn = connect().await;
    let project = project_create(&mut conn, Uuid::new_v4(), "proj")
        .await
        .expect("project");
    let instance = stopped_instance(&mut conn, project.id, "inst").await;
    Fixture {
        conn,
        project,
        instance,
    }
}

async fn stopped_instance(conn: &mut AsyncPgConnection, project_id: Uuid, name: &str) -> Instance {
    let created = instance_insert(conn, Uuid::new_v4(), project_id, name, 2, 4 * GIB)
        .await
        .expect("instance");
    instance_transition(
        conn,
        created.id,
        created.state_generation,
        InstanceState::Creating,
        InstanceState::NoVmm,
    )
    .await
    .expect("instance to no_vmm")
}

/// A finalized (detached) disk.
async fn detached_disk(conn: &mut AsyncPgConnection, project_id: Uuid, name: &str) -> Disk {
    let disk = disk_create(conn, Uuid::new_v4(), project_id, name, GIB, Uuid::new_v4())
        .await
        .expect("disk");
    disk_finalize(conn, disk.id).await.expect("disk finalize")
}

/// Starts an instance the way instance-start does: a sled reservation (on a sled of its own), then `vmm`.
async fn start(conn: &mut AsyncPgConnection, instance: &Instance) -> Instance {
    sled_create(conn, Uuid::new_v4(), "sled", 64, 512 * GIB, 256 * GIB)
        .await
        .expect("sled");
    let propolis_id = Uuid::new_v4();
    sled_reservation_create(conn, propolis_id, instance.id, 2, GIB, GIB)
        .await
        .expect("sled reservation");
    instance_set_vmm(conn, instance.id, instance.state_generation, propolis_id)
        .await
        .expect("set vmm")
}

fn rules_of(violations: &[Violation]) -> BTreeSet<&str> {
    violations.iter().map(|v| v.rule.as_ref()).collect()
}

// --- projects and instances ------------------------------------------------------------------------------

#[tokio::test]
async fn instances_are_created_fetched_and_named_uniquely() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    assert_eq!(instance.state, InstanceState::NoVmm);
    assert_eq!(instance.state_generation, 2);
    assert_eq!(
        instance_fetch(&mut conn, instance.id).await.expect("fetch"),
        instance
    );

    let err = instance_insert(&mut conn, Uuid::new_v4(), project.id, "inst", 1, GIB)
        .await
        .expect_err("name taken");
    assert!(
        matches!(err, DatastoreError::Conflict(ref m) if m.contains("inst")),
        "{err:?}"
    );
    let err = project_create(&mut conn, Uuid::new_v4(), "proj")
        .await
        .expect_err("name taken");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let missing = Uuid::new_v4();
    let err = instance_insert(&mut conn, Uuid::new_v4(), missing, "x", 1, GIB)
        .await
        .expect_err("no project");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "project", id } if id == missing),
        "{err:?}"
    );
    let err = instance_insert(&mut conn, Uuid::new_v4(), project.id, "", 1, GIB)
        .await
        .expect_err("empty name");
    assert!(matches!(err, DatastoreError::InvalidArgument(_)), "{err:?}");
    let err = instance_fetch(&mut conn, missing)
        .await
        .expect_err("missing");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );

    // Deleting frees the name; a deleted instance is not found; deleting again is a no-op.
    let deleted = instance_soft_delete(&mut conn, instance.id)
        .await
        .expect("delete");
    assert_eq!(deleted.state, InstanceState::Destroyed);
    assert!(deleted.time_deleted.is_some());
    assert_eq!(
        instance_soft_delete(&mut conn, instance.id)
            .await
            .expect("delete again"),
        deleted
    );
    assert!(matches!(
        instance_fetch(&mut conn, instance.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
    instance_insert(&mut conn, Uuid::new_v4(), project.id, "inst", 1, GIB)
        .await
        .expect("the name is free again");
    assert!(matches!(
        instance_soft_delete(&mut conn, missing).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn instance_transitions_are_guarded_by_state_and_generation() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    // Wrong state: the instance is no_vmm, not creating.
    let err = instance_transition(
        &mut conn,
        instance.id,
        instance.state_generation,
        InstanceState::Creating,
        InstanceState::NoVmm,
    )
    .await
    .expect_err("wrong state");
    assert!(
        matches!(err, DatastoreError::InvalidState { ref state, ref wanted, .. }
            if state == "no_vmm" && wanted == "creating"),
        "{err:?}"
    );
    // Right state, stale generation.
    let err = instance_transition(
        &mut conn,
        instance.id,
        instance.state_generation - 1,
        InstanceState::NoVmm,
        InstanceState::Failed,
    )
    .await
    .expect_err("stale generation");
    assert!(
        matches!(
            err,
            DatastoreError::GenerationMismatch {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // Pairs with their own functions are refused outright.
    let err = instance_transition(
        &mut conn,
        instance.id,
        2,
        InstanceState::NoVmm,
        InstanceState::Vmm,
    )
    .await
    .expect_err("vmm has its own function");
    assert!(matches!(err, DatastoreError::InvalidArgument(_)), "{err:?}");

    // no_vmm -> creating: the undo of move-to-stopped, guarded by the generation it wrote.
    let err = instance_transition(
        &mut conn,
        instance.id,
        1,
        InstanceState::NoVmm,
        InstanceState::Creating,
    )
    .await
    .expect_err("stale");
    assert!(
        matches!(err, DatastoreError::GenerationMismatch { .. }),
        "{err:?}"
    );
    let back = instance_transition(
        &mut conn,
        instance.id,
        2,
        InstanceState::NoVmm,
        InstanceState::Creating,
    )
    .await
    .expect("undo of move-to-stopped");
    assert_eq!(
        (back.state, back.state_generation),
        (InstanceState::Creating, 3)
    );
    let instance = instance_transition(
        &mut conn,
        instance.id,
        3,
        InstanceState::Creating,
        InstanceState::NoVmm,
    )
    .await
    .expect("forward again");
    assert_eq!(instance.state_generation, 4);

    let failed = instance_transition(
        &mut conn,
        instance.id,
        4,
        InstanceState::NoVmm,
        InstanceState::Failed,
    )
    .await
    .expect("no_vmm -> failed");
    assert_eq!(
        (failed.state, failed.state_generation),
        (InstanceState::Failed, 5)
    );

    // set_vmm needs no_vmm; clear_vmm is fenced by the propolis id and idempotent.
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let propolis = Uuid::new_v4();
    let err = instance_set_vmm(&mut conn, other.id, 1, propolis)
        .await
        .expect_err("stale");
    assert!(
        matches!(err, DatastoreError::GenerationMismatch { .. }),
        "{err:?}"
    );
    let running = instance_set_vmm(&mut conn, other.id, other.state_generation, propolis)
        .await
        .expect("set vmm");
    assert_eq!(running.state, InstanceState::Vmm);
    assert_eq!(running.active_propolis_id, Some(propolis));
    assert_eq!(
        instance_set_vmm(&mut conn, other.id, other.state_generation, propolis)
            .await
            .expect("set vmm again"),
        running
    );
    let err = instance_clear_vmm(&mut conn, other.id, Uuid::new_v4())
        .await
        .expect_err("another VMM");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let err = instance_soft_delete(&mut conn, other.id)
        .await
        .expect_err("running");
    assert!(
        matches!(err, DatastoreError::InvalidState { ref state, .. } if state == "vmm"),
        "{err:?}"
    );
    let stopped = instance_clear_vmm(&mut conn, other.id, propolis)
        .await
        .expect("clear");
    assert_eq!(stopped.state, InstanceState::NoVmm);
    assert_eq!(stopped.active_propolis_id, None);
    assert_eq!(stopped.state_generation, running.state_generation + 1);
    assert_eq!(
        instance_clear_vmm(&mut conn, other.id, propolis)
            .await
            .expect("clear again"),
        stopped
    );
}

// --- attach and detach -----------------------------------------------------------------------------------

#[tokio::test]
async fn attach_and_detach_choose_slots_and_return_the_written_rows() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let mut disks = Vec::new();
    for name in ["d0", "d1", "d2", "d3"] {
        disks.push(detached_disk(&mut conn, project.id, name).await);
    }
    for (slot, disk) in disks.iter().take(3).enumerate() {
        let (inst, attached) = instance_attach_disk(&mut conn, instance.id, disk.id, 12)
            .await
            .expect("attach");
        assert_eq!(inst, instance);
        assert_eq!(attached.disk_state, DiskState::Attached);
        assert_eq!(attached.attach_instance_id, Some(instance.id));
        assert_eq!(attached.slot, Some(i16::try_from(slot).expect("slot")));
        assert_eq!(attached.state_generation, disk.state_generation + 1);
        // What the statement returned is what it wrote.
        assert_eq!(
            disk_fetch(&mut conn, disk.id).await.expect("fetch"),
            attached
        );
    }
    let detached = instance_detach_disk(&mut conn, instance.id, disks[1].id, false)
        .await
        .expect("detach");
    assert_eq!(detached.disk_state, DiskState::Detached);
    assert_eq!((detached.attach_instance_id, detached.slot), (None, None));
    assert_eq!(detached.state_generation, disks[1].state_generation + 2);
    assert_eq!(
        disk_fetch(&mut conn, disks[1].id).await.expect("fetch"),
        detached
    );

    // The next attach takes the first free slot, the one just vacated.
    let (_, attached) = instance_attach_disk(&mut conn, instance.id, disks[3].id, 12)
        .await
        .expect("attach");
    assert_eq!(attached.slot, Some(1));
    let slots: Vec<_> = disks_attached_to(&mut conn, instance.id)
        .await
        .expect("list")
        .iter()
        .map(|d| d.slot)
        .collect();
    assert_eq!(slots, [Some(0), Some(1), Some(2)]);

    // A disk in `creating` can be attached too (Nexus's ok_to_attach_disk_states).
    let creating = disk_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        "c",
        GIB,
        Uuid::new_v4(),
    )
    .await
    .expect("disk");
    let (_, attached) = instance_attach_disk(&mut conn, instance.id, creating.id, 12)
        .await
        .expect("attach a creating disk");
    assert_eq!(attached.slot, Some(3));
}

#[tokio::test]
async fn attach_and_detach_are_idempotent() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    let first = instance_attach_disk(&mut conn, instance.id, disk.id, 12)
        .await
        .expect("attach");
    let second = instance_attach_disk(&mut conn, instance.id, disk.id, 12)
        .await
        .expect("attach again");
    assert_eq!(first, second, "the second attach changes nothing");

    let detached = instance_detach_disk(&mut conn, instance.id, disk.id, false)
        .await
        .expect("detach");
    let again = instance_detach_disk(&mut conn, instance.id, disk.id, false)
        .await
        .expect("detach again");
    assert_eq!(detached, again, "the second detach changes nothing");
}

#[tokio::test]
async fn attach_refusals_name_the_reason() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let missing = Uuid::new_v4();

    let err = instance_attach_disk(&mut conn, missing, disk.id, 12)
        .await
        .expect_err("no instance");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "instance", id } if id == missing),
        "{err:?}"
    );
    let err = instance_attach_disk(&mut conn, instance.id, missing, 12)
        .await
        .expect_err("no disk");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "disk", id } if id == missing),
        "{err:?}"
    );
    let err = instance_attach_disk(&mut conn, instance.id, disk.id, 13)
        .await
        .expect_err("max");
    assert!(matches!(err, DatastoreError::InvalidArgument(_)), "{err:?}");

    // Attached elsewhere.
    instance_attach_disk(&mut conn, other.id, disk.id, 12)
        .await
        .expect("attach to other");
    let err = instance_attach_disk(&mut conn, instance.id, disk.id, 12)
        .await
        .expect_err("attached elsewhere");
    assert!(
        matches!(err, DatastoreError::Conflict(ref m) if m.contains(&other.id.to_string())),
        "{err:?}"
    );

    // Hot-plug: the instance is running.
    let running = start(&mut conn, &other).await;
    let spare = detached_disk(&mut conn, project.id, "spare").await;
    let err = instance_attach_disk(&mut conn, running.id, spare.id, 12)
        .await
        .expect_err("hot-plug");
    assert!(
        matches!(err, DatastoreError::HotPlug { instance_id } if instance_id == running.id),
        "{err:?}"
    );

    // A failed instance.
    let failed = instance_transition(
        &mut conn,
        instance.id,
        instance.state_generation,
        InstanceState::NoVmm,
        InstanceState::Failed,
    )
    .await
    .expect("fail");
    let err = instance_attach_disk(&mut conn, failed.id, spare.id, 12)
        .await
        .expect_err("failed instance");
    assert!(
        matches!(err, DatastoreError::InvalidState { kind: "instance", ref state, .. }
            if state == "failed"),
        "{err:?}"
    );

    // A disk in maintenance.
    let third = stopped_instance(&mut conn, project.id, "third").await;
    let held = disk_set_maintenance(&mut conn, spare.id, spare.state_generation)
        .await
        .expect("maintenance");
    let err = instance_attach_disk(&mut conn, third.id, held.id, 12)
        .await
        .expect_err("maintenance");
    assert!(
        matches!(err, DatastoreError::InvalidState { kind: "disk", ref state, .. }
            if state == "maintenance"),
        "{err:?}"
    );

    // A deleted instance is not found.
    instance_soft_delete(&mut conn, third.id)
        .await
        .expect("delete");
    let fresh = detached_disk(&mut conn, project.id, "fresh").await;
    let err = instance_attach_disk(&mut conn, third.id, fresh.id, 12)
        .await
        .expect_err("deleted instance");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing above wrote anything.
    assert_eq!(disk_fetch(&mut conn, fresh.id).await.expect("fetch"), fresh);
}

#[tokio::test]
async fn the_thirteenth_disk_is_refused() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    for i in 0..12 {
        let disk = detached_disk(&mut conn, project.id, &format!("d{i}")).await;
        let (_, attached) = instance_attach_disk(&mut conn, instance.id, disk.id, 12)
            .await
            .expect("attach");
        assert_eq!(attached.slot, Some(i));
    }
    let thirteenth = detached_disk(&mut conn, project.id, "d12").await;
    let err = instance_attach_disk(&mut conn, instance.id, thirteenth.id, 12)
        .await
        .expect_err("13th");
    assert!(
        matches!(err, DatastoreError::Limit(ref m) if m.contains("12")),
        "{err:?}"
    );

    // A lower cap from the caller.
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let a = detached_disk(&mut conn, project.id, "a").await;
    let b = detached_disk(&mut conn, project.id, "b").await;
    instance_attach_disk(&mut conn, other.id, a.id, 1)
        .await
        .expect("first");
    let err = instance_attach_disk(&mut conn, other.id, b.id, 1)
        .await
        .expect_err("cap");
    assert!(matches!(err, DatastoreError::Limit(_)), "{err:?}");
}

#[tokio::test]
async fn detach_refusals_and_the_boot_disk() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let boot = detached_disk(&mut conn, project.id, "boot").await;
    let data = detached_disk(&mut conn, project.id, "data").await;
    instance_attach_disk(&mut conn, instance.id, boot.id, 12)
        .await
        .expect("attach");
    instance_attach_disk(&mut conn, instance.id, data.id, 12)
        .await
        .expect("attach");

    // Only an attached disk can be the boot disk.
    let loose = detached_disk(&mut conn, project.id, "loose").await;
    let err = instance_set_boot_disk(&mut conn, instance.id, Some(loose.id))
        .await
        .expect_err("not attached");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let missing = Uuid::new_v4();
    let err = instance_set_boot_disk(&mut conn, instance.id, Some(missing))
        .await
        .expect_err("no disk");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "disk", .. }),
        "{err:?}"
    );
    let with_boot = instance_set_boot_disk(&mut conn, instance.id, Some(boot.id))
        .await
        .expect("boot disk");
    assert_eq!(with_boot.boot_disk_id, Some(boot.id));

    let err = instance_detach_disk(&mut conn, instance.id, boot.id, false)
        .await
        .expect_err("boot disk");
    assert!(
        matches!(err, DatastoreError::Conflict(ref m) if m.contains("boot disk")),
        "{err:?}"
    );
    let err = instance_detach_disk(&mut conn, missing, data.id, false)
        .await
        .expect_err("no instance");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );
    let err = instance_detach_disk(&mut conn, instance.id, missing, false)
        .await
        .expect_err("no disk");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "disk", .. }),
        "{err:?}"
    );
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let err = instance_detach_disk(&mut conn, other.id, data.id, false)
        .await
        .expect_err("attached elsewhere");
    assert!(
        matches!(err, DatastoreError::Conflict(ref m) if m.contains(&instance.id.to_string())),
        "{err:?}"
    );
    let running = start(&mut conn, &with_boot).await;
    let err = instance_detach_disk(&mut conn, running.id, data.id, false)
        .await
        .expect_err("hot-unplug");
    assert!(matches!(err, DatastoreError::HotPlug { .. }), "{err:?}");
    let err = instance_set_boot_disk(&mut conn, running.id, None)
        .await
        .expect_err("running");
    assert!(
        matches!(err, DatastoreError::InvalidState { .. }),
        "{err:?}"
    );
    let propolis = running.active_propolis_id.expect("propolis");
    let stopped = instance_clear_vmm(&mut conn, running.id, propolis)
        .await
        .expect("stop");
    sled_reservation_delete(&mut conn, propolis)
        .await
        .expect("release");

    // With allow_boot_disk the boot disk detaches and the instance forgets it in the same statement.
    let detached = instance_detach_disk(&mut conn, stopped.id, boot.id, true)
        .await
        .expect("detach boot disk");
    assert_eq!(detached.disk_state, DiskState::Detached);
    assert_eq!(
        instance_fetch(&mut conn, stopped.id)
            .await
            .expect("fetch")
            .boot_disk_id,
        None
    );
    assert!(check_invariants(&mut conn).await.expect("check").is_empty());
}

#[tokio::test]
async fn deleting_an_instance_detaches_its_disks() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    instance_attach_disk(&mut conn, instance.id, disk.id, 12)
        .await
        .expect("attach");
    instance_soft_delete(&mut conn, instance.id)
        .await
        .expect("delete");
    let after = disk_fetch(&mut conn, disk.id).await.expect("fetch");
    assert_eq!(after.disk_state, DiskState::Detached);
    assert_eq!((after.attach_instance_id, after.slot), (None, None));
    assert!(check_invariants(&mut conn).await.expect("check").is_empty());
}

// --- disks -----------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_attached_disk_cannot_be_deleted() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    instance_attach_disk(&mut conn, instance.id, disk.id, 12)
        .await
        .expect("attach");
    // The omicron#10695 refusal.
    let err = disk_soft_delete(&mut conn, disk.id)
        .await
        .expect_err("attached");
    assert!(
        matches!(err, DatastoreError::InvalidState { kind: "disk", ref state, .. } if state == "attached"),
        "{err:?}"
    );
    instance_detach_disk(&mut conn, instance.id, disk.id, false)
        .await
        .expect("detach");
    let deleted = disk_soft_delete(&mut conn, disk.id).await.expect("delete");
    assert_eq!(deleted.disk_state, DiskState::Destroyed);
    assert_eq!(
        disk_soft_delete(&mut conn, disk.id).await.expect("again"),
        deleted
    );
    assert!(matches!(
        disk_fetch(&mut conn, disk.id).await,
        Err(DatastoreError::NotFound { kind: "disk", .. })
    ));

    // A creating disk can be deleted (disk-create's undo); finalizing twice is refused.
    let creating = disk_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        "c",
        GIB,
        Uuid::new_v4(),
    )
    .await
    .expect("disk");
    disk_soft_delete(&mut conn, creating.id)
        .await
        .expect("delete creating");
    let other = detached_disk(&mut conn, project.id, "other").await;
    let err = disk_finalize(&mut conn, other.id)
        .await
        .expect_err("already finalized");
    assert!(
        matches!(err, DatastoreError::InvalidState { .. }),
        "{err:?}"
    );
    let err = disk_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        "other",
        GIB,
        Uuid::new_v4(),
    )
    .await
    .expect_err("name taken");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn maintenance_is_guarded_by_generation() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;

    let err = disk_set_maintenance(&mut conn, disk.id, disk.state_generation - 1)
        .await
        .expect_err("stale");
    assert!(
        matches!(err, DatastoreError::GenerationMismatch { expected, found, .. }
            if expected == disk.state_generation - 1 && found == disk.state_generation),
        "{err:?}"
    );
    let held = disk_set_maintenance(&mut conn, disk.id, disk.state_generation)
        .await
        .expect("maintenance");
    assert_eq!(held.disk_state, DiskState::Maintenance);
    assert_eq!(held.state_generation, disk.state_generation + 1);
    let err = disk_set_maintenance(&mut conn, disk.id, held.state_generation)
        .await
        .expect_err("already held");
    assert!(
        matches!(err, DatastoreError::InvalidState { .. }),
        "{err:?}"
    );

    assert_eq!(
        disk_restore_detached(&mut conn, disk.id, held.state_generation - 1)
            .await
            .expect("restore"),
        None,
        "a generation this caller did not write is left alone"
    );
    let restored = disk_restore_detached(&mut conn, disk.id, held.state_generation)
        .await
        .expect("restore")
        .expect("restored");
    assert_eq!(restored.disk_state, DiskState::Detached);
    assert_eq!(restored.state_generation, held.state_generation + 1);
    assert_eq!(
        disk_restore_detached(&mut conn, disk.id, held.state_generation)
            .await
            .expect("restore again"),
        None
    );

    // Someone else moved the disk on after our maintenance: restoring leaves it alone.
    let held = disk_set_maintenance(&mut conn, disk.id, restored.state_generation)
        .await
        .expect("maintenance");
    exec(
        &mut conn,
        &format!(
            "UPDATE disk SET state_generation = state_generation + 1 WHERE id = '{}'",
            disk.id
        ),
    )
    .await;
    assert_eq!(
        disk_restore_detached(&mut conn, disk.id, held.state_generation)
            .await
            .expect("restore"),
        None
    );

    // An attached disk cannot go to maintenance.
    let attached = detached_disk(&mut conn, project.id, "a").await;
    let (_, attached) = instance_attach_disk(&mut conn, instance.id, attached.id, 12)
        .await
        .expect("attach");
    let err = disk_set_maintenance(&mut conn, attached.id, attached.state_generation)
        .await
        .expect_err("attached");
    assert!(
        matches!(err, DatastoreError::InvalidState { ref state, .. } if state == "attached"),
        "{err:?}"
    );
    assert!(matches!(
        disk_restore_detached(&mut conn, Uuid::new_v4(), 1).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

// --- networking ------------------------------------------------------------------------------------------

#[tokio::test]
async fn nics_get_distinct_addresses_until_the_subnet_is_exhausted() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let big = vpc_subnet_create(&mut conn, Uuid::new_v4(), "big", "172.30.0.0/24")
        .await
        .expect("subnet");
    assert_eq!(big.ipv4_block, "172.30.0.0/24");
    let mut addresses = Vec::new();
    for slot in 0..8 {
        let nic = network_interface_insert(
            &mut conn,
            Uuid::new_v4(),
            instance.id,
            big.id,
            &format!("net{slot}"),
            slot,
            slot == 0,
        )
        .await
        .expect("nic");
        assert_eq!(nic.slot, slot);
        addresses.push(nic.ip);
    }
    // The first five addresses (network address included) are reserved.
    assert_eq!(addresses[0], "172.30.0.5");
    assert_eq!(addresses[7], "172.30.0.12");
    assert_eq!(
        addresses.iter().collect::<BTreeSet<_>>().len(),
        8,
        "distinct"
    );
    let err = network_interface_insert(
        &mut conn,
        Uuid::new_v4(),
        instance.id,
        big.id,
        "x",
        0,
        false,
    )
    .await
    .expect_err("ninth");
    assert!(matches!(err, DatastoreError::Limit(_)), "{err:?}");
    assert_eq!(
        network_interfaces_of(&mut conn, instance.id)
            .await
            .expect("list")
            .len(),
        8
    );

    // A /29 has two usable addresses: .5 and .6 (.7 is the broadcast address).
    let tiny = vpc_subnet_create(&mut conn, Uuid::new_v4(), "tiny", "10.1.2.8/29")
        .await
        .expect("subnet");
    let a = stopped_instance(&mut conn, project.id, "a").await;
    let b = stopped_instance(&mut conn, project.id, "b").await;
    let c = stopped_instance(&mut conn, project.id, "c").await;
    let nic_a = network_interface_insert(&mut conn, Uuid::new_v4(), a.id, tiny.id, "net0", 0, true)
        .await
        .expect("a");
    let nic_b = network_interface_insert(&mut conn, Uuid::new_v4(), b.id, tiny.id, "net0", 0, true)
        .await
        .expect("b");
    assert_eq!(
        (nic_a.ip.as_str(), nic_b.ip.as_str()),
        ("10.1.2.13", "10.1.2.14")
    );
    let err = network_interface_insert(&mut conn, Uuid::new_v4(), c.id, tiny.id, "net0", 0, true)
        .await
        .expect_err("exhausted");
    assert!(matches!(err, DatastoreError::Exhausted(_)), "{err:?}");

    // Deleting a NIC releases its address; deleting twice is a no-op.
    let deleted = network_interface_soft_delete(&mut conn, nic_a.id)
        .await
        .expect("delete");
    assert!(deleted.time_deleted.is_some());
    assert_eq!(
        network_interface_soft_delete(&mut conn, nic_a.id)
            .await
            .expect("again"),
        deleted
    );
    let nic_c = network_interface_insert(&mut conn, Uuid::new_v4(), c.id, tiny.id, "net0", 0, true)
        .await
        .expect("c");
    assert_eq!(nic_c.ip, "10.1.2.13");
}

#[tokio::test]
async fn nic_refusals() {
    let Fixture {
        mut conn, instance, ..
    } = fixture().await;
    let subnet = vpc_subnet_create(&mut conn, Uuid::new_v4(), "s", "172.30.0.0/24")
        .await
        .expect("subnet");
    let err = vpc_subnet_create(&mut conn, Uuid::new_v4(), "bad", "172.30.0.1/24")
        .await
        .expect_err("not a network address");
    assert!(matches!(err, DatastoreError::InvalidArgument(_)), "{err:?}");
    network_interface_insert(
        &mut conn,
        Uuid::new_v4(),
        instance.id,
        subnet.id,
        "net0",
        0,
        true,
    )
    .await
    .expect("nic");
    for (name, slot, primary) in [("net0", 1, false), ("net1", 0, false), ("net1", 1, true)] {
        let err = network_interface_insert(
            &mut conn,
            Uuid::new_v4(),
            instance.id,
            subnet.id,
            name,
            slot,
            primary,
        )
        .await
        .expect_err("conflict");
        assert!(
            matches!(err, DatastoreError::Conflict(_)),
            "{name} {slot} {primary}: {err:?}"
        );
    }
    let err = network_interface_insert(
        &mut conn,
        Uuid::new_v4(),
        instance.id,
        subnet.id,
        "n",
        8,
        false,
    )
    .await
    .expect_err("slot 8");
    assert!(matches!(err, DatastoreError::InvalidArgument(_)), "{err:?}");
    let missing = Uuid::new_v4();
    let err =
        network_interface_insert(&mut conn, Uuid::new_v4(), missing, subnet.id, "n", 1, false)
            .await
            .expect_err("no instance");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );
    let err = network_interface_insert(
        &mut conn,
        Uuid::new_v4(),
        instance.id,
        missing,
        "n",
        1,
        false,
    )
    .await
    .expect_err("no subnet");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "vpc_subnet",
                ..
            }
        ),
        "{err:?}"
    );
    let running = start(&mut conn, &instance).await;
    let err = network_interface_insert(
        &mut conn,
        Uuid::new_v4(),
        running.id,
        subnet.id,
        "n",
        1,
        false,
    )
    .await
    .expect_err("running");
    assert!(
        matches!(err, DatastoreError::InvalidState { ref state, .. } if state == "vmm"),
        "{err:?}"
    );
}

#[tokio::test]
async fn external_ips_come_from_the_pool_until_it_is_exhausted() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let pool = ip_pool_create(&mut conn, Uuid::new_v4(), "default", true)
        .await
        .expect("pool");
    let err = ip_pool_create(&mut conn, Uuid::new_v4(), "second", true)
        .await
        .expect_err("two defaults");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let range = ip_pool_range_add(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        "203.0.113.10",
        "203.0.113.11",
    )
    .await
    .expect("range");
    assert_eq!(
        (range.first_address.as_str(), range.last_address.as_str()),
        ("203.0.113.10", "203.0.113.11")
    );
    let err = ip_pool_range_add(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        "203.0.113.11",
        "203.0.113.20",
    )
    .await
    .expect_err("overlap");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");

    let snat_id = Uuid::new_v4();
    let snat = external_ip_allocate(
        &mut conn,
        snat_id,
        pool.id,
        instance.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect("snat");
    assert_eq!(snat.ip, "203.0.113.10");
    assert_eq!(snat.ip_pool_range_id, range.id);
    // Idempotent by id.
    assert_eq!(
        external_ip_allocate(
            &mut conn,
            snat_id,
            pool.id,
            instance.id,
            IpKind::Snat,
            IpAttachState::Attached
        )
        .await
        .expect("again"),
        snat
    );
    let err = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        instance.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect_err("second snat");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let err = external_ip_allocate(
        &mut conn,
        snat_id,
        pool.id,
        instance.id,
        IpKind::Ephemeral,
        IpAttachState::Attached,
    )
    .await
    .expect_err("same id, other allocation");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");

    let eph = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        instance.id,
        IpKind::Ephemeral,
        IpAttachState::Attaching,
    )
    .await
    .expect("ephemeral");
    assert_eq!(eph.ip, "203.0.113.11");
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let err = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        other.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect_err("exhausted");
    assert!(matches!(err, DatastoreError::Exhausted(_)), "{err:?}");
    let missing = Uuid::new_v4();
    let err = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        missing,
        other.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect_err("no pool");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "ip_pool",
                ..
            }
        ),
        "{err:?}"
    );
    let err = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        missing,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect_err("no instance");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );

    // State changes: guarded, idempotent in the target state.
    let err = external_ip_set_state(
        &mut conn,
        eph.id,
        IpAttachState::Detaching,
        IpAttachState::Detached,
    )
    .await
    .expect_err("wrong state");
    assert!(
        matches!(err, DatastoreError::InvalidState { .. }),
        "{err:?}"
    );
    let attached = external_ip_set_state(
        &mut conn,
        eph.id,
        IpAttachState::Attaching,
        IpAttachState::Attached,
    )
    .await
    .expect("attach");
    assert_eq!(attached.state, IpAttachState::Attached);
    assert_eq!(
        external_ip_set_state(
            &mut conn,
            eph.id,
            IpAttachState::Attaching,
            IpAttachState::Attached
        )
        .await
        .expect("again"),
        attached
    );
    assert_eq!(
        external_ips_of(&mut conn, instance.id)
            .await
            .expect("list")
            .len(),
        2
    );

    // Releasing an address makes it available again.
    let released = external_ip_soft_delete(&mut conn, eph.id)
        .await
        .expect("delete");
    assert_eq!(
        external_ip_soft_delete(&mut conn, eph.id)
            .await
            .expect("again"),
        released
    );
    let snat_other = external_ip_allocate(
        &mut conn,
        Uuid::new_v4(),
        pool.id,
        other.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect("snat for the other instance");
    assert_eq!(snat_other.ip, "203.0.113.11");
}

// --- snapshots, volumes, sleds ---------------------------------------------------------------------------

#[tokio::test]
async fn snapshots_and_volumes() {
    let Fixture {
        mut conn, project, ..
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    let data = serde_json::json!({"type": "volume", "sub_volumes": [{"region": 1}]});
    let volume = volume_create(&mut conn, Uuid::new_v4(), &data)
        .await
        .expect("volume");
    assert_eq!(volume.data, data);
    assert_eq!(
        volume_create(&mut conn, volume.id, &data)
            .await
            .expect("again"),
        volume
    );
    let err = volume_create(&mut conn, volume.id, &serde_json::json!({}))
        .await
        .expect_err("other data");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");

    let snapshot = snapshot_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        disk.id,
        volume.id,
        "s",
        GIB,
    )
    .await
    .expect("snapshot");
    assert_eq!(snapshot.state, SnapshotState::Creating);
    let err = snapshot_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        disk.id,
        volume.id,
        "s",
        GIB,
    )
    .await
    .expect_err("name taken");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let err = snapshot_create(
        &mut conn,
        Uuid::new_v4(),
        project.id,
        Uuid::new_v4(),
        volume.id,
        "t",
        GIB,
    )
    .await
    .expect_err("no disk");
    assert!(
        matches!(err, DatastoreError::NotFound { kind: "disk", .. }),
        "{err:?}"
    );
    let ready = snapshot_finalize(&mut conn, snapshot.id)
        .await
        .expect("finalize");
    assert_eq!(ready.state, SnapshotState::Ready);
    assert_eq!(
        snapshot_fetch(&mut conn, snapshot.id).await.expect("fetch"),
        ready
    );
    assert!(matches!(
        snapshot_finalize(&mut conn, snapshot.id).await,
        Err(DatastoreError::InvalidState { .. })
    ));
    let deleted = snapshot_soft_delete(&mut conn, snapshot.id)
        .await
        .expect("delete");
    assert_eq!(deleted.state, SnapshotState::Destroyed);
    assert_eq!(
        snapshot_soft_delete(&mut conn, snapshot.id)
            .await
            .expect("again"),
        deleted
    );

    let deleted = volume_soft_delete(&mut conn, volume.id)
        .await
        .expect("delete");
    assert_eq!(
        volume_soft_delete(&mut conn, volume.id)
            .await
            .expect("again"),
        deleted
    );
    assert!(matches!(
        volume_fetch(&mut conn, volume.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn sled_reservations_respect_capacity() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let big = sled_create(&mut conn, Uuid::new_v4(), "big", 8, 64 * GIB, 32 * GIB)
        .await
        .expect("sled");
    let small = sled_create(&mut conn, Uuid::new_v4(), "small", 4, 64 * GIB, 32 * GIB)
        .await
        .expect("sled");
    let err = sled_reservation_create(&mut conn, Uuid::new_v4(), instance.id, 16, GIB, GIB)
        .await
        .expect_err("too many threads");
    assert!(matches!(err, DatastoreError::Exhausted(_)), "{err:?}");
    let err = sled_reservation_create(&mut conn, Uuid::new_v4(), instance.id, 1, GIB, 33 * GIB)
        .await
        .expect_err("reservoir too small");
    assert!(matches!(err, DatastoreError::Exhausted(_)), "{err:?}");

    let first_id = Uuid::new_v4();
    let first = sled_reservation_create(&mut conn, first_id, instance.id, 6, GIB, GIB)
        .await
        .expect("first");
    assert_eq!(first.sled_id, big.id, "the sled with the most free threads");
    assert_eq!(
        sled_reservation_create(&mut conn, first_id, instance.id, 6, GIB, GIB)
            .await
            .expect("again"),
        first
    );
    let other = stopped_instance(&mut conn, project.id, "other").await;
    let err = sled_reservation_create(&mut conn, first_id, other.id, 6, GIB, GIB)
        .await
        .expect_err("another instance's id");
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    let second = sled_reservation_create(&mut conn, Uuid::new_v4(), other.id, 4, GIB, GIB)
        .await
        .expect("second");
    assert_eq!(second.sled_id, small.id, "big has only 2 threads left");
    let third = stopped_instance(&mut conn, project.id, "third").await;
    let err = sled_reservation_create(&mut conn, Uuid::new_v4(), third.id, 3, GIB, GIB)
        .await
        .expect_err("full");
    assert!(matches!(err, DatastoreError::Exhausted(_)), "{err:?}");
    let err = sled_reservation_create(&mut conn, Uuid::new_v4(), Uuid::new_v4(), 1, GIB, GIB)
        .await
        .expect_err("no instance");
    assert!(
        matches!(
            err,
            DatastoreError::NotFound {
                kind: "instance",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        sled_reservations_on(&mut conn, big.id).await.expect("list"),
        std::slice::from_ref(&first)
    );

    assert_eq!(
        sled_reservation_delete(&mut conn, first_id)
            .await
            .expect("delete"),
        Some(first)
    );
    assert_eq!(
        sled_reservation_delete(&mut conn, first_id)
            .await
            .expect("again"),
        None
    );
    let placed = sled_reservation_create(&mut conn, Uuid::new_v4(), third.id, 3, GIB, GIB)
        .await
        .expect("room again");
    assert_eq!(placed.sled_id, big.id);
}

// --- transactions and errors -----------------------------------------------------------------------------

#[tokio::test]
async fn reads_work_in_a_read_only_transaction() {
    let Fixture {
        mut conn,
        project,
        instance,
    } = fixture().await;
    let disk = detached_disk(&mut conn, project.id, "d").await;
    exec(&mut conn, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY").await;
    instance_fetch(&mut conn, instance.id)
        .await
        .expect("instance");
    disk_fetch(&mut conn, disk.id).await.expect("disk");
    disks_attached_to(&mut conn, instance.id)
        .await
        .expect("disks");
    network_interfaces_of(&mut conn, instance.id)
        .await
        .expect("nics");
    external_ips_of(&mut conn, instance.id).await.expect("ips");
    project_fetch(&mut conn, project.id).await.expect("project");
    check_invariants(&mut conn).await.expect("invariants");
    // And a write is refused there, so the check above means something.
    let err = disk_finalize(&mut conn, disk.id)
        .await
        .expect_err("read only");
    assert!(!err.is_transient(), "{err:?}");
    exec(&mut conn, "ROLLBACK").await;
}

#[tokio::test]
async fn serialization_failures_are_transient() {
    let db = ratchet_test_utils::testing::fresh_database(&[&ratchet_datastore::MIGRATIONS])
        .await
        .expect("database");
    let mut a = AsyncPgConnection::establish(&db.url).await.expect("a");
    let mut b = AsyncPgConnection::establish(&db.url).await.expect("b");
    let project = project_create(&mut a, Uuid::new_v4(), "p")
        .await
        .expect("project");
    let instance = stopped_instance(&mut a, project.id, "i").await;

    exec(&mut a, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
    instance_fetch(&mut a, instance.id)
        .await
        .expect("snapshot taken");
    // b changes the instance and commits after a's snapshot.
    instance_transition(
        &mut b,
        instance.id,
        2,
        InstanceState::NoVmm,
        InstanceState::Failed,
    )
    .await
    .expect("b");
    let err = instance_transition(
        &mut a,
        instance.id,
        2,
        InstanceState::NoVmm,
        InstanceState::Failed,
    )
    .await
    .expect_err("a must not overwrite b");
    assert!(err.is_transient(), "{err:?}");
    exec(&mut a, "ROLLBACK").await;

    assert!(!DatastoreError::Conflict("x".into()).is_transient());
    assert!(!DatastoreError::Database(diesel::result::Error::NotFound).is_transient());
}

/// Two attaches to one instance race: the second waits on the instance lock, then either takes the next slot
/// or fails transiently (it must never take the same slot, or fail permanently).
async fn racing_attaches(isolation: &str) {
    let db = ratchet_test_utils::testing::fresh_database(&[&ratchet_datastore::MIGRATIONS])
        .await
        .expect("database");
    let mut a = AsyncPgConnection::establish(&db.url).await.expect("a");
    let mut b = AsyncPgConnection::establish(&db.url).await.expect("b");
    let mut watcher = AsyncPgConnection::establish(&db.url)
        .await
        .expect("watcher");
    let b_pid = backend_pid(&mut b).await;
    let project = project_create(&mut a, Uuid::new_v4(), "p")
        .await
        .expect("project");
    let instance = stopped_instance(&mut a, project.id, "i").await;
    let d1 = detached_disk(&mut a, project.id, "d1").await;
    let d2 = detached_disk(&mut a, project.id, "d2").await;

    exec(&mut a, &format!("BEGIN ISOLATION LEVEL {isolation}")).await;
    exec(&mut b, &format!("BEGIN ISOLATION LEVEL {isolation}")).await;
    // Both transactions take their snapshot before either attaches.
    disk_fetch(&mut a, d1.id).await.expect("a snapshot");
    disk_fetch(&mut b, d2.id).await.expect("b snapshot");
    let (_, first) = instance_attach_disk(&mut a, instance.id, d1.id, 12)
        .await
        .expect("a attaches");
    assert_eq!(first.slot, Some(0));
    let second = tokio::spawn(async move {
        let result = instance_attach_disk(&mut b, instance.id, d2.id, 12).await;
        (b, result)
    });
    // The server shows b waiting for a lock (a's, on the instance) before a commits.
    wait_until_blocked_on_a_lock(&mut watcher, b_pid).await;
    assert!(
        !second.is_finished(),
        "b waits for a's lock on the instance"
    );
    exec(&mut a, "COMMIT").await;
    let (mut b, result) = second.await.expect("join");
    match result {
        Ok((_, disk)) => {
            assert_eq!(disk.slot, Some(1), "{isolation}");
            exec(&mut b, "COMMIT").await;
        }
        Err(err) => {
            eprintln!("{isolation}: the second attach failed transiently: {err}");
            assert!(err.is_transient(), "{isolation}: {err:?}");
            exec(&mut b, "ROLLBACK").await;
            // The retry succeeds, in the next slot.
            let (_, disk) = instance_attach_disk(&mut b, instance.id, d2.id, 12)
                .await
                .expect("retry");
            assert_eq!(disk.slot, Some(1), "{isolation}");
        }
    }
    assert!(check_invariants(&mut a).await.expect("check").is_empty());
}

#[tokio::test]
async fn racing_attaches_at_serializable() {
    racing_attaches("SERIALIZABLE").await;
}

#[tokio::test]
async fn racing_attaches_at_read_committed() {
    racing_attaches("READ COMMITTED").await;
}

// --- invariants ------------------------------------------------------------------------------------------

/// A complete, consistent state: a running instance with a boot disk, a NIC, SNAT and ephemeral IPs, a sled
/// reservation, a ready snapshot.
async fn clean_state(conn: &mut AsyncPgConnection, project_id: Uuid, name: &str) -> Instance {
    let instance = stopped_instance(conn, project_id, name).await;
    let boot = detached_disk(conn, project_id, &format!("{name}-boot")).await;
    instance_attach_disk(conn, instance.id, boot.id, 12)
        .await
        .expect("attach");
    let instance = instance_set_boot_disk(conn, instance.id, Some(boot.id))
        .await
        .expect("boot");
    let subnet = vpc_subnet_create(conn, Uuid::new_v4(), name, "172.30.0.0/24")
        .await
        .expect("subnet");
    network_interface_insert(
        conn,
        Uuid::new_v4(),
        instance.id,
        subnet.id,
        "net0",
        0,
        true,
    )
    .await
    .expect("nic");
    let pool = ip_pool_create(conn, Uuid::new_v4(), name, false)
        .await
        .expect("pool");
    let octet = u8::try_from(name.len()).expect("short name");
    ip_pool_range_add(
        conn,
        Uuid::new_v4(),
        pool.id,
        &format!("198.51.{octet}.1"),
        &format!("198.51.{octet}.9"),
    )
    .await
    .expect("range");
    external_ip_allocate(
        conn,
        Uuid::new_v4(),
        pool.id,
        instance.id,
        IpKind::Snat,
        IpAttachState::Attached,
    )
    .await
    .expect("snat");
    let eph = external_ip_allocate(
        conn,
        Uuid::new_v4(),
        pool.id,
        instance.id,
        IpKind::Ephemeral,
        IpAttachState::Attaching,
    )
    .await
    .expect("ephemeral");
    external_ip_set_state(
        conn,
        eph.id,
        IpAttachState::Attaching,
        IpAttachState::Attached,
    )
    .await
    .expect("attached");
    let volume = volume_create(conn, Uuid::new_v4(), &serde_json::json!({"v": 1}))
        .await
        .expect("volume");
    let snap = snapshot_create(
        conn,
        Uuid::new_v4(),
        project_id,
        boot.id,
        volume.id,
        name,
        GIB,
    )
    .await
    .expect("snapshot");
    snapshot_finalize(conn, snap.id).await.expect("ready");
    start(conn, &instance).await
}

#[tokio::test]
async fn a_clean_state_has_no_violations() {
    let Fixture {
        mut conn, project, ..
    } = fixture().await;
    clean_state(&mut conn, project.id, "clean").await;
    let violations = check_invariants(&mut conn).await.expect("check");
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Plants a violation of `rule` on top of a clean state.
async fn plant(rule: &str, conn: &mut AsyncPgConnection, project_id: Uuid, clean: &Instance) {
    match rule {
        "disk_attached_to_non_live_instance" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            let disk = detached_disk(conn, project_id, "stuck").await;
            instance_attach_disk(conn, victim.id, disk.id, 12)
                .await
                .expect("attach");
            // Delete the instance behind the datastore's back (no detach-many).
            exec(
                conn,
                &format!(
                    "UPDATE instance SET state = 'destroyed', time_deleted = now() WHERE id = '{}'",
                    victim.id
                ),
            )
            .await;
        }
        "disk_attachment_inconsistent" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            let disk = detached_disk(conn, project_id, "noslot").await;
            instance_attach_disk(conn, victim.id, disk.id, 12)
                .await
                .expect("attach");
            exec(
                conn,
                &format!("UPDATE disk SET slot = NULL WHERE id = '{}'", disk.id),
            )
            .await;
        }
        "disk_in_transitional_state" => {
            let disk = detached_disk(conn, project_id, "held").await;
            disk_set_maintenance(conn, disk.id, disk.state_generation)
                .await
                .expect("maintenance");
        }
        "network_interface_without_live_instance" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            let subnet = vpc_subnet_create(conn, Uuid::new_v4(), "s", "10.9.0.0/24")
                .await
                .expect("subnet");
            network_interface_insert(conn, Uuid::new_v4(), victim.id, subnet.id, "net0", 0, true)
                .await
                .expect("nic");
            instance_soft_delete(conn, victim.id).await.expect("delete");
        }
        "external_ip_without_live_instance" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            let pool = ip_pool_create(conn, Uuid::new_v4(), "p2", false)
                .await
                .expect("pool");
            ip_pool_range_add(conn, Uuid::new_v4(), pool.id, "192.0.2.1", "192.0.2.1")
                .await
                .expect("range");
            external_ip_allocate(
                conn,
                Uuid::new_v4(),
                pool.id,
                victim.id,
                IpKind::Snat,
                IpAttachState::Attached,
            )
            .await
            .expect("snat");
            instance_soft_delete(conn, victim.id).await.expect("delete");
        }
        "external_ip_in_transitional_state" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            let pool = ip_pool_create(conn, Uuid::new_v4(), "p2", false)
                .await
                .expect("pool");
            ip_pool_range_add(conn, Uuid::new_v4(), pool.id, "192.0.2.1", "192.0.2.1")
                .await
                .expect("range");
            external_ip_allocate(
                conn,
                Uuid::new_v4(),
                pool.id,
                victim.id,
                IpKind::Ephemeral,
                IpAttachState::Attaching,
            )
            .await
            .expect("ephemeral");
        }
        "sled_reservation_without_live_vmm" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            sled_reservation_create(conn, Uuid::new_v4(), victim.id, 1, GIB, GIB)
                .await
                .expect("reservation");
        }
        "instance_vmm_without_sled_reservation" => {
            let victim = stopped_instance(conn, project_id, "victim").await;
            instance_set_vmm(conn, victim.id, victim.state_generation, Uuid::new_v4())
                .await
                .expect("vmm");
        }
        "snapshot_stuck_creating" => {
            let disk = detached_disk(conn, project_id, "src").await;
            snapshot_create(
                conn,
                Uuid::new_v4(),
                project_id,
                disk.id,
                Uuid::new_v4(),
                "half",
                GIB,
            )
            .await
            .expect("snapshot");
        }
        "instance_stuck_creating" => {
            instance_insert(conn, Uuid::new_v4(), project_id, "half", 1, GIB)
                .await
                .expect("instance");
        }
        "boot_disk_not_attached" => {
            let disk = detached_disk(conn, project_id, "loose").await;
            exec(
                conn,
                &format!(
                    "UPDATE instance SET boot_disk_id = '{}' WHERE id = '{}'",
                    disk.id, clean.id
                ),
            )
            .await;
        }
        other => panic!("no planted violation for rule {other}: add one"),
    }
}

/// Plants one violation of each rule on top of a clean state and checks that exactly that rule reports it.
#[tokio::test]
async fn every_rule_finds_its_planted_violation() {
    for rule in RULES {
        let Fixture {
            mut conn, project, ..
        } = fixture().await;
        let clean = clean_state(&mut conn, project.id, "clean").await;
        plant(rule.name, &mut conn, project.id, &clean).await;
        let violations = check_invariants(&mut conn).await.expect("check");
        assert_eq!(
            rules_of(&violations),
            BTreeSet::from([rule.name]),
            "planting {}: {violations:#?}",
            rule.name
        );
        assert_eq!(violations.len(), 1, "{violations:#?}");
    }
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

async fn backend_pid(conn: &mut AsyncPgConnection) -> i32 {
    let row: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(conn)
        .await
        .expect("backend pid");
    row.pid
}

/// Waits (at most 30 s, else fails) until the server shows backend `pid` waiting for a lock.
async fn wait_until_blocked_on_a_lock(watcher: &mut AsyncPgConnection, pid: i32) {
    #[derive(diesel::QueryableByName)]
    struct Blocked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        blocked: bool,
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let row: Blocked = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
             WHERE pid = $1 AND wait_event_type = 'Lock') AS blocked",
        )
        .bind::<diesel::sql_types::Integer, _>(pid)
        .get_result(watcher)
        .await
        .expect("pg_stat_activity");
        if row.blocked {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} never waited for a lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
