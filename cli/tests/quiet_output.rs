//! What `ratchet run` and `ratchet bench` print on stdout: their result lines only. The engine's log (its
//! serialization retries, the bench's injected crashes) goes to a file named at the end, as `matrix`'s and
//! `demo`'s does, unless `RATCHET_LOG` asks for it on stderr.

mod common;

use common::{Run, assert_only_result_lines, is_log_record, is_run_result_line, ratchet};
use ratchet_example_saga as example;
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::fresh_database;
use uuid::Uuid;

/// Whether `line` is one `ratchet bench` prints on stdout: a step of the benchmark (`[bench] …`, not on a
/// terminal), a line of its table, or the file the JSON went to. The table's lines are free text; what they
/// must not be is a record of the engine's log.
fn is_bench_result_line(line: &str) -> bool {
    !is_log_record(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_only_its_results() {
    let db = fresh_database(&[&DATASTORE_MIGRATIONS, &example::MIGRATIONS])
        .await
        .expect("test database");
    let sec = Uuid::new_v4().to_string();
    let run = ratchet(
        &db,
        &[
            "run",
            "instance-create",
            "--count",
            "8",
            "--concurrency",
            "8",
            "--create-disks",
            "2",
            "--sec-id",
            &sec,
        ],
    );
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|line| line == "invariant check: 0 violation(s)"),
        "{run:?}"
    );
    assert_only_result_lines(&run, is_run_result_line);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_quick_prints_only_its_results() {
    let db = fresh_database(&[]).await.expect("test database");
    let run: Run = ratchet(&db, &["bench", "--quick"]);
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains("quick run:"), "{run:?}");
    assert_only_result_lines(&run, is_bench_result_line);
}
