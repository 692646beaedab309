//! The fault matrix on the Nexus-shaped sagas, on the embedded PostgreSQL.

mod common;

use common::{assert_all_pass, run};
use ratchet_engine::FaultPoint;
use ratchet_fault_injection::{
    DiskAttachSuite, DiskDetachSuite, Fault, InstanceCreateSuite, Matrix, SnapshotCreateSuite,
    Status,
};

/// How many faults apply to a database node: all but `response_lost` and `unknown_then_refused`.
const DB_FAULTS: usize = Fault::ALL.len() - 2;
/// How many faults apply to an external node: all but `commit_reply_lost`.
const EXTERNAL_FAULTS: usize = Fault::ALL.len() - 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_attach_and_detach_pass_every_cell() {
    let report = run(Matrix::new().suite(DiskAttachSuite).suite(DiskDetachSuite)).await;
    // One database node each, and every fault but the two that need a service call.
    assert_all_pass(&report, 2 * DB_FAULTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_create_passes_every_cell() {
    let report = run(Matrix::new().suite(SnapshotCreateSuite)).await;
    // Five database nodes and three external ones (pantry attach, snapshot, detach).
    assert_all_pass(&report, 5 * DB_FAULTS + 3 * EXTERNAL_FAULTS);
}

/// instance-create's whole fault set, on one database node (the disk attach, where Omicron 10695 struck) and
/// one external node (the sled agent's VMM ensure).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_create_every_fault_at_an_attach_and_the_vmm_ensure() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite::new(false))
        .nodes(&["attach_disk_0/attach_disk", "ensure_vmm"]))
    .await;
    assert_all_pass(&report, DB_FAULTS + EXTERNAL_FAULTS);
}

/// The harness must not pass what it did not test: with a fault point disabled in the engines' failpoint
/// registry (a mutation), every cell that arms a fault there fails with "fault not reached".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_fault_point_fails_its_cells_as_not_reached() {
    let report = run(Matrix::new()
        .suite(SnapshotCreateSuite)
        .faults(&[Fault::AfterCommit, Fault::CommitReplyLost])
        .nodes(&["create_snapshot_record", "pantry_snapshot"])
        .disable_point(FaultPoint::AfterCommit))
    .await;
    let after_commit: Vec<_> = report
        .cells
        .iter()
        .filter(|c| c.cell.fault == Fault::AfterCommit)
        .collect();
    assert_eq!(after_commit.len(), 2, "{}", report.table());
    for cell in after_commit {
        assert_eq!(cell.status, Status::Fail, "{}", report.table());
        assert!(
            cell.problems
                .iter()
                .any(|p| p.contains("fault not reached")),
            "{:?}",
            cell.problems
        );
    }
    // The other point still fires, and its cell passes: only the disabled point's cells fail.
    assert_eq!(report.count(Status::Pass), 1, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_create_after_commit_and_crash_after_commit() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite::new(false))
        .faults(&[Fault::AfterCommit, Fault::CrashAfterCommit]))
    .await;
    // Every action node of the saga (13: a NIC, two IPs, a created disk and its finalize, two attaches, the
    // boot disk, two state moves, the sled reservation, the VMM ensure, the record): two faults each. The
    // two attaches are the nodes of two instances of the disk-attach subsaga, one cell each by path.
    let order = &report.dag_order["instance-create"];
    for path in ["attach_disk_0/attach_disk", "attach_disk_1/attach_disk"] {
        assert!(order.iter().any(|n| n == path), "{path}: {order:?}");
        assert_eq!(
            report.cells.iter().filter(|c| c.cell.node == path).count(),
            2,
            "{}",
            report.table()
        );
    }
    assert_all_pass(&report, 13 * 2);
}

/// The harness's teeth: the legacy attach leaks or wedges after its commit, and the harness sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_attach_defect_is_detected() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite::new(true))
        .faults(&[Fault::AfterCommit, Fault::PoolExhausted]))
    .await;
    assert!(report.failures().is_empty(), "{}", report.table());
    // Two legacy attach nodes (a created disk, an existing one), two faults each: the created disk's attach
    // is detected under both, the existing one's under pool exhaustion.
    assert_eq!(report.cells.len(), 4, "{}", report.table());
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

/// The services' books have teeth: a caller that makes every attempt a new request (a mutant: the VMM ensure,
/// idempotent by generation, sends a newer generation on every attempt, as a caller minting a fresh key would)
/// gets its VMM ensure applied twice when a response is lost, and the cell fails on the sled agent's books.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_making_each_retry_a_new_request_fails_the_response_lost_cell() {
    let report = run(Matrix::new()
        .suite(InstanceCreateSuite {
            legacy: false,
            fresh_request_per_attempt: true,
        })
        .faults(&[Fault::ResponseLost])
        .nodes(&["ensure_vmm"]))
    .await;
    assert_eq!(report.cells.len(), 1, "{}", report.table());
    let cell = &report.cells[0];
    assert_eq!(cell.status, Status::Fail, "{}", report.table());
    assert!(
        cell.problems
            .iter()
            .any(|p| p.contains("vmm_ensure applied 2 times to resource")),
        "{:?}",
        cell.problems
    );
}
