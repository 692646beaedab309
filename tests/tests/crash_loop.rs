//! A crash loop under `panic = "abort"`: a node whose code kills the process every time it starts (the
//! child's `detonate` node calls `std::process::abort()`, as a deterministic panic does in a binary built with
//! `panic = "abort"`, Omicron's release profile). Each recovery starts the node again, and dies again. With a
//! start limit, the engine counts those starts durably and, past the limit, gives the node up: it fails, the
//! saga unwinds (the node before it is compensated), and the loop ends.

mod common;

use common::database_with_account;
use ratchet_example_saga as example;
use ratchet_store::saga_history;
use ratchet_tests::{after, lines_of};
use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_ratchet-crash-child");
/// The start limit the recovering processes run with.
const LIMIT: u32 = 2;
/// SIGABRT.
const ABORTED: i32 = 6;

/// Runs the child with `args` to its end; returns what it printed and how it ended.
fn run_child(args: &[&str]) -> (Vec<String>, std::process::ExitStatus) {
    let mut child = Command::new(CHILD)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().expect("reap child");
    (lines, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_kills_its_process_every_time_is_given_up_after_the_start_limit() {
    let (db, mut conn, account) = database_with_account().await;
    let sec_id = Uuid::new_v4().to_string();

    // The first run: the saga debits 1, then its second node aborts the process.
    let mut first = Command::new(CHILD)
        .args(["crashloop-start", &db.url, &sec_id, &account.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut printed = Vec::new();
    let saga_id: Uuid = lines_of(first.stdout.take().expect("stdout"))
        .map_while(Result::ok)
        .find_map(|line| {
            let id = line.strip_prefix("saga ").map(str::to_owned);
            printed.push(line);
            id
        })
        .unwrap_or_else(|| panic!("the child printed no saga id: {printed:?}"))
        .parse()
        .expect("saga id");
    let status = first.wait().expect("reap the first child");
    assert_eq!(status.signal(), Some(ABORTED), "{status:?}");

    // Every recovery up to the limit starts the node again, and dies the same way.
    for attempt in 1..=LIMIT {
        let (printed, status) = run_child(&[
            "crashloop-recover",
            &db.url,
            &sec_id,
            &saga_id.to_string(),
            &LIMIT.to_string(),
        ]);
        assert_eq!(
            status.signal(),
            Some(ABORTED),
            "recovery {attempt} should have died in the node: {status:?}\n{}",
            printed.join("\n")
        );
        assert!(printed.iter().any(|l| l == "detonating"), "{printed:?}");
    }

    // The next one finds the limit passed: the node is given up, and the saga unwinds.
    let (printed, status) = run_child(&[
        "crashloop-recover",
        &db.url,
        &sec_id,
        &saga_id.to_string(),
        &LIMIT.to_string(),
    ]);
    assert!(status.success(), "{status:?}\n{}", printed.join("\n"));
    assert!(
        !printed.iter().any(|l| l == "detonating"),
        "the node was not started again: {printed:?}"
    );
    let outcome: serde_json::Value = serde_json::from_str(
        after(&printed, "outcome").unwrap_or_else(|| panic!("no outcome: {printed:?}")),
    )
    .unwrap();
    assert_eq!(outcome["outcome"], "unwound", "{outcome}");
    assert_eq!(outcome["node"], "detonate", "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .is_some_and(|e| e.contains("given up on")),
        "{outcome}"
    );
    let state = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(state.balance, 100, "the debit was compensated");
    let history = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(history.saga.saga_state, "done");
    assert_eq!(history.compensations.len(), 1, "{history:?}");
}
