//! `ratchet matrix` on one saga and one fault: its table (a snapshot), its exit status, and where the log of
//! the faults it injects on purpose goes (a file, or stderr with RATCHET_LOG).

mod common;

use common::{ratchet_at, redacted};
use ratchet_test_utils::testing::test_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_prints_its_table_and_keeps_the_injected_faults_log_apart() {
    let server = test_server().await.unwrap();
    let url = server.url("postgres");
    let args = [
        "--database-url",
        &url,
        "matrix",
        "--saga",
        "disk-detach",
        "--fault",
        "after_commit",
    ];
    let run = ratchet_at(None, &args, &[]);
    assert!(run.ok, "{run:?}");
    // Not a terminal: one line per cell, then the table.
    assert!(
        run.stdout.contains("disk-detach / ") && run.stdout.contains(": ok ("),
        "{run:?}"
    );
    let table = run
        .stdout
        .split_once("\n\n")
        .map(|(_, table)| table)
        .unwrap_or_else(|| panic!("no table: {run:?}"));
    redacted(&[]).bind(|| insta::assert_snapshot!("matrix_disk_detach_after_commit", table));

    // The engine's warnings about the injected faults went to a file, named at the end, not to stderr.
    let path = run
        .stderr
        .lines()
        .find_map(|l| l.split_once("faults' warnings and errors): "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no log file named: {run:?}"));
    let log = std::fs::read_to_string(path).unwrap();
    assert!(log.contains("WARN") || log.contains("ERROR"), "{log}");
    assert!(!run.stderr.contains(" WARN "), "{run:?}");
    std::fs::remove_file(path).unwrap();

    // With RATCHET_LOG, on stderr.
    let logged = ratchet_at(None, &args, &[("RATCHET_LOG", "warn")]);
    assert!(logged.ok, "{logged:?}");
    assert!(logged.stderr.contains("WARN"), "{logged:?}");
    assert!(!logged.stderr.contains("faults' warnings"), "{logged:?}");
}
