//! What the harness's test files share: running a matrix on the test server, and the all-pass check.

use ratchet_fault_injection::{Matrix, MatrixReport, Status};
use ratchet_test_utils::testing::test_server;

/// Runs `matrix` four cells at a time on the test server and prints its table.
pub async fn run(matrix: Matrix) -> MatrixReport {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("error")
        .try_init();
    let server = test_server().await.expect("test server");
    let report = matrix
        .parallel(4)
        .run(&server, |_, _, _| {})
        .await
        .expect("the matrix runs");
    println!("{}", report.table());
    report
}

/// Every one of the report's `cells` cells passed.
pub fn assert_all_pass(report: &MatrixReport, cells: usize) {
    assert_eq!(report.cells.len(), cells, "{}", report.table());
    assert_eq!(report.count(Status::Pass), cells, "{}", report.table());
}
