//! `ratchet run` beside other executors on one database, as operators run it from several hosts: processes
//! started the same instant seed (or take) the same world without tripping on each other, and each judges its
//! own sagas, not the others' in flight. Real processes, released together through a barrier file.
//!
//! Also what `run` prints on stdout: its result lines only, the engine's log (retries, injected faults)
//! elsewhere.

mod common;

use common::{RATCHET, Run, Scratch, assert_only_result_lines, is_run_result_line};
use ratchet_example_saga as example;
use ratchet_sagas::DATASTORE_MIGRATIONS;
use ratchet_test_utils::testing::fresh_database;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How many `ratchet run`s share the database in one round.
const RUNS: usize = 3;

/// How many rounds, each on a fresh database.
const ROUNDS: usize = 3;

/// Starts `ratchet ARGS…` held back by a shell until `barrier` exists (polled every millisecond), so that all
/// the processes of a round are released within a few milliseconds of each other.
fn held_back(
    barrier: &std::path::Path,
    dir: &std::path::Path,
    args: &[String],
) -> std::process::Child {
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.001; done; exec \"$@\"",
        barrier.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(RATCHET)
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("RATCHET_SEC_ID")
        .env_remove("RATCHET_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ratchet behind its barrier")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_started_together_on_one_database_all_succeed() {
    for round in 0..ROUNDS {
        let db = fresh_database(&[&DATASTORE_MIGRATIONS, &example::MIGRATIONS])
            .await
            .expect("test database");
        let scratch = Scratch::new("concurrent-runs");
        let barrier = scratch.0.join("go");
        let children: Vec<_> = (0..RUNS)
            .map(|_| {
                let args: Vec<String> = [
                    "--database-url",
                    &db.url,
                    "run",
                    "instance-create",
                    "--count",
                    "6",
                    "--concurrency",
                    "3",
                    "--disks",
                    "1",
                    "--create-disks",
                    "1",
                    "--sec-id",
                    &Uuid::new_v4().to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                held_back(&barrier, &scratch.0, &args)
            })
            .collect();
        // Let every shell reach its loop, then release them all at once.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&barrier, b"").expect("write the barrier file");
        let released = Instant::now();
        let runs: Vec<Run> = children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().expect("wait for ratchet");
                Run {
                    code: output.status.code(),
                    ok: output.status.success(),
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                }
            })
            .collect();
        for (i, run) in runs.iter().enumerate() {
            assert!(
                run.ok,
                "round {round}, run {i} of {RUNS} (released together {:?} ago) failed: {run:?}",
                released.elapsed()
            );
            assert!(
                run.stdout.contains("6 saga(s) in "),
                "round {round}, run {i}: {run:?}"
            );
            assert_only_result_lines(run, is_run_result_line);
        }
    }
}
