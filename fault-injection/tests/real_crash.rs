//! Real crashes in the matrix: every crash cell's saga runs in a child process (`ratchet-matrix-child`),
//! killed with `SIGKILL` at the fault point (for a database node's `COMMIT`, in the middle of its round trip:
//! the `COMMIT` withheld, or delivered with its reply in flight), then recovered by a new engine.

mod common;

use common::{assert_all_pass, run};
use ratchet_engine::FaultPoint;
use ratchet_fault_injection::{
    ChildProgram, Fault, InstanceCreateSuite, Matrix, ProvisionSuite, SnapshotCreateSuite, Status,
};

const CRASHES: [Fault; 3] = [
    Fault::CrashBeforeCommit,
    Fault::CrashAfterCommit,
    Fault::CrashInCompensation,
];

fn child() -> ChildProgram {
    ChildProgram::new(env!("CARGO_BIN_EXE_ratchet-matrix-child"), &[])
}

/// snapshot-create: five database nodes (the COMMIT withheld or its reply in flight) and three external ones
/// (killed at the point, around the pantry's call), every crash fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_create_survives_every_real_crash() {
    let report = run(Matrix::new()
        .suite(SnapshotCreateSuite)
        .faults(&CRASHES)
        .real_crash(child()))
    .await;
    assert_all_pass(&report, 8 * CRASHES.len());
}

/// The example saga's real crashes, and its pairs: an error right after a node's commit, then a real crash in
/// the compensation of that node or of one before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_saga_survives_every_real_crash_and_pair() {
    let report = run(Matrix::new()
        .suite(ProvisionSuite)
        .faults(&CRASHES)
        .pairs(true)
        .real_crash(child()))
    .await;
    let nodes = report.dag_order["example-provision"].len();
    assert_eq!(nodes, 3, "{}", report.table());
    assert_all_pass(&report, nodes * CRASHES.len() + nodes * (nodes + 1) / 2);
}

/// instance-create's crash faults at the disk attach (Omicron 10695's node) and the VMM ensure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_create_survives_real_crashes_at_an_attach_and_the_vmm_ensure() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite::new(false))
        .faults(&CRASHES)
        .nodes(&["attach_disk_0/attach_disk", "ensure_vmm"])
        .real_crash(child()))
    .await;
    assert_all_pass(&report, 2 * CRASHES.len());
}

/// The real-crash cells have teeth: with the point the child pauses at before a database node's `COMMIT`
/// disabled in the child's engine (a mutation), the child never pauses, runs the saga to rest, and both
/// COMMIT cells fail as "fault not reached".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_that_never_reaches_its_kill_point_fails_its_cells() {
    let report = run(Matrix::new()
        .suite(ProvisionSuite)
        .faults(&[Fault::CrashBeforeCommit, Fault::CrashAfterCommit])
        .nodes(&["charge_account"])
        .disable_point(FaultPoint::BeforeCommit)
        .real_crash(child()))
    .await;
    assert_eq!(report.cells.len(), 2, "{}", report.table());
    for cell in &report.cells {
        assert_eq!(cell.status, Status::Fail, "{}", report.table());
        assert!(
            cell.problems
                .iter()
                .any(|p| p.contains("fault not reached")),
            "{:?}",
            cell.problems
        );
    }
}
