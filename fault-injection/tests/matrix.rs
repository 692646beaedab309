//! The fault matrix on the Nexus-shaped sagas, on the embedded PostgreSQL.

use ratchet_fault_injection::nexus::{
    DiskAttachSuite, DiskDetachSuite, InstanceCreateSuite, SnapshotCreateSuite,
};
use ratchet_fault_injection::{Fault, Matrix, MatrixReport, Status};
use ratchet_store::testing::DatabaseServer;

async fn run(matrix: Matrix) -> MatrixReport {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let server = DatabaseServer::for_tests().await.expect("test server");
    let report = matrix
        .parallel(4)
        .run(&server, |_, _, _| {})
        .await
        .expect("the matrix runs");
    println!("{}", report.table());
    report
}

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
