//! Adoption across real processes: process A runs a saga and pauses inside `charge_account` (the example's
//! non-idempotent node), after its prepare and before its commit; process B adopts A's sagas and finishes
//! the saga; then A, alive all along, wakes and tries to carry on. Every write A attempts is refused by the
//! fence: it commits nothing, records nothing, notices, and stops driving the saga without unwinding it. The
//! operator's `retry-unwind` and `abandon`, run as `ratchet` processes against a live owner, are attacked the
//! same way.

mod common;

use common::database_with_account;
use ratchet_example_saga as example;
use ratchet_store::saga_history;
use ratchet_tests::{Scratch, after, lines_of, ratchet_cli, read_until};
use std::io::Write;
use std::process::{Command, Stdio};
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_ratchet-crash-child");

#[tokio::test]
async fn a_live_stale_process_is_fenced_out_after_another_adopts_its_saga() {
    let (db, mut conn, account) = database_with_account().await;
    let (sec_a, sec_b) = (Uuid::new_v4(), Uuid::new_v4());

    let mut a = Command::new(CHILD)
        .args(["pause", &db.url, &sec_a.to_string(), &account.to_string()])
        .args(["charge_account", "after_prepare"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn process A");
    let mut a_lines = lines_of(a.stdout.take().expect("stdout"));
    let printed = read_until(&mut a_lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("A printed its saga id")
        .parse()
        .expect("saga id");

    let b = Command::new(CHILD)
        .args(["adopt", &db.url, &sec_b.to_string(), &sec_a.to_string()])
        .arg(saga_id.to_string())
        .output()
        .expect("run process B");
    let b_out = String::from_utf8_lossy(&b.stdout);
    assert!(
        b.status.success(),
        "B failed:\n{b_out}\n{}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(
        b_out.contains(&format!(r#""id":"{saga_id}""#)) && b_out.contains(r#""generation":2"#),
        "B adopted the saga at generation 2:\n{b_out}"
    );
    assert!(
        b_out.contains(r#"outcome {"outcome":"succeeded""#),
        "B finished the saga:\n{b_out}"
    );
    assert!(
        a.try_wait().expect("poll A").is_none(),
        "A is alive (and paused) after B finished"
    );

    // A wakes and tries to commit charge_account.
    writeln!(a.stdin.as_mut().expect("A's stdin"), "wake").expect("wake A");
    let printed = read_until(&mut a_lines, "counters");
    assert_eq!(
        after(&printed, "outcome"),
        Some(r#"{"outcome":"fenced"}"#),
        "A noticed the fence:\n{}",
        printed.join("\n")
    );
    let counters: serde_json::Value =
        serde_json::from_str(after(&printed, "counters").expect("A's counters")).unwrap();
    assert!(
        counters["fenced"].as_u64() >= Some(1),
        "A's refused writes are counted: {counters}"
    );
    assert_eq!(counters["commits"], 1, "A committed reserve_widget only");
    assert_eq!(counters["compensations"], 0, "A did not unwind");
    drop(a.stdin.take());
    let status = a.wait().expect("reap A");
    assert!(
        status.success(),
        "A exited cleanly, without a panic: {status:?}"
    );

    // One charge, B's; nothing of A's after the adoption.
    let state = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!((state.balance, state.ledger), (70, vec![-30]));
    assert_eq!(state.widgets.len(), 1);
    assert_eq!(state.widgets[0].1, "active");
    let history = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(history.saga.saga_state, "done");
    assert_eq!(history.saga.current_sec, Some(sec_b));
    assert_eq!(history.saga.adopt_generation, 2);
    let mut commits: Vec<(&str, Uuid, i64)> = history
        .commits
        .iter()
        .map(|c| (c.node_name.as_str(), c.creator, c.adopt_generation))
        .collect();
    commits.sort_unstable();
    assert_eq!(
        commits,
        [
            ("activate_widget", sec_b, 2),
            ("charge_account", sec_b, 2),
            ("reserve_widget", sec_a, 1)
        ]
    );
    assert!(history.compensations.is_empty());
    for event in history.events.iter().filter(|e| e.creator == sec_a) {
        assert!(
            event.event_time < history.saga.adopt_time,
            "A recorded an event after the adoption: {event:?}"
        );
    }
}

/// The operator's commands against a saga whose owner is alive in another process: `ratchet sagas
/// retry-unwind` refuses a saga that is not stuck and changes nothing; `ratchet sagas abandon` abandons it, and
/// the owner, woken, is fenced: it commits nothing more, records nothing after the abandonment, and does not
/// unwind.
#[tokio::test]
async fn operator_commands_against_a_live_owner_in_another_process() {
    let (db, mut conn, account) = database_with_account().await;
    let (owner, operator) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = Command::new(CHILD)
        .args(["pause", &db.url, &owner.to_string(), &account.to_string()])
        .args(["charge_account", "after_prepare"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the owner");
    let mut a_lines = lines_of(a.stdout.take().expect("stdout"));
    let printed = read_until(&mut a_lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("the owner printed its saga id")
        .parse()
        .expect("saga id");
    let before = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(before.saga.saga_state, "running");

    let ratchet = ratchet_cli();
    let scratch = Scratch::new();
    let operator_cli = |verb: &[&str]| {
        Command::new(&ratchet)
            .args(["--database-url", &db.url, "--sec-id", &operator.to_string()])
            .args(verb)
            .current_dir(scratch.path())
            .env_remove("DATABASE_URL")
            .output()
            .expect("run ratchet")
    };

    // retry-unwind: refused, nothing changed.
    let id = saga_id.to_string();
    let refused = operator_cli(&["sagas", "retry-unwind", &id, "--yes"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "retry-unwind of a running saga fails: {stderr}"
    );
    assert!(
        stderr.contains("running") && stderr.contains("stuck"),
        "the refusal says the saga is running, not stuck: {stderr}"
    );
    let after_refusal = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(
        (
            &after_refusal.saga.saga_state,
            after_refusal.saga.current_sec,
            after_refusal.saga.adopt_generation,
            after_refusal.events.len(),
            after_refusal.commits.len(),
        ),
        (
            &before.saga.saga_state,
            before.saga.current_sec,
            before.saga.adopt_generation,
            before.events.len(),
            before.commits.len(),
        ),
        "the refused retry-unwind changed nothing"
    );

    // abandon: the saga is abandoned under its live owner.
    let abandoned = operator_cli(&[
        "sagas",
        "abandon",
        &id,
        "--reason",
        "operator test",
        "--yes",
    ]);
    assert!(
        abandoned.status.success(),
        "abandon failed: {}",
        String::from_utf8_lossy(&abandoned.stderr)
    );
    let at_abandonment = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(at_abandonment.saga.saga_state, "abandoned");

    // The owner wakes and tries to commit charge_account: fenced.
    writeln!(a.stdin.as_mut().expect("the owner's stdin"), "wake").expect("wake the owner");
    let printed = read_until(&mut a_lines, "counters");
    let outcome = after(&printed, "outcome").unwrap_or_default().to_owned();
    assert!(
        outcome.contains("fenced") || outcome.contains("abandoned"),
        "the owner stopped driving the saga: {outcome}"
    );
    let counters: serde_json::Value =
        serde_json::from_str(after(&printed, "counters").expect("the owner's counters")).unwrap();
    assert_eq!(
        counters["commits"], 1,
        "the owner committed reserve_widget only"
    );
    assert_eq!(counters["compensations"], 0, "the owner did not unwind");
    drop(a.stdin.take());
    assert!(a.wait().expect("reap the owner").success());

    // Nothing after the abandonment: no charge, the saga's log as it was.
    let state = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!((state.balance, state.ledger.len()), (100, 0), "no charge");
    let end = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(end.saga.saga_state, "abandoned");
    assert_eq!(
        (end.events.len(), end.commits.len(), end.compensations.len()),
        (at_abandonment.events.len(), at_abandonment.commits.len(), 0),
        "the owner wrote nothing after the abandonment"
    );
}
