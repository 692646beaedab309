//! The fault matrix on the Nexus-shaped sagas, on the embedded PostgreSQL.

mod common;

use common::{assert_all_pass, run};
use ratchet_fault_injection::nexus::{
    DiskAttachSuite, DiskDetachSuite, InstanceCreateSuite, SnapshotCreateSuite,
};
use ratchet_fault_injection::{Fault, Matrix, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_attach_and_detach_pass_every_cell() {
    let report = run(Matrix::new().suite(DiskAttachSuite).suite(DiskDetachSuite)).await;
    assert!(report.failures().is_empty(), "{}", report.table());
    assert!(report.count(Status::Pass) >= 2 * 12, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_create_passes_every_cell() {
    let report = run(Matrix::new().suite(SnapshotCreateSuite)).await;
    assert!(report.failures().is_empty(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_create_after_commit_and_crash_after_commit() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite { legacy: false })
        .faults(&[Fault::AfterCommit, Fault::CrashAfterCommit]))
    .await;
    assert!(report.failures().is_empty(), "{}", report.table());
}

/// The harness's teeth: the legacy attach leaks or wedges after its commit, and the harness sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_attach_defect_is_detected() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite { legacy: true })
        .faults(&[Fault::AfterCommit, Fault::PoolExhausted]))
    .await;
    assert!(report.failures().is_empty(), "{}", report.table());
    assert!(report.count(Status::Detected) >= 2, "{}", report.table());
}

/// The pairs: an error right after a node's commit, then a crash in the compensation of that node or of any
/// node before it, recovered by a new engine. snapshot-create's 8 action nodes make 8 × 9 / 2 pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_create_pairs_pass() {
    let report = run(Matrix::new()
        .suite(SnapshotCreateSuite)
        .faults(&[])
        .pairs(true))
    .await;
    assert_eq!(
        report.dag_order["snapshot-create"].len(),
        8,
        "{}",
        report.table()
    );
    assert_all_pass(&report, 8 * 9 / 2);
    assert!(
        report.cells.iter().all(
            |c| c.cell.fault == Fault::AfterCommit && c.cell.crash_in_compensation_of.is_some()
        ),
        "{}",
        report.table()
    );
}
