//! A real process is killed with SIGKILL in the middle of a saga; a new process resumes the saga from the
//! database and finishes it, with every commit applied exactly once.
//!
//! The child (`ratchet-crash-child`) pauses at a fault point of `charge_account`, the example saga's
//! non-idempotent node (it subtracts the price and appends a ledger row), and says so on stdout; the parent
//! then kills it. Two places: inside the commit transaction before `COMMIT` (PostgreSQL rolls the open
//! transaction back when the connection dies), and right after `COMMIT` (the charge is durable; the commit
//! record makes the recovering process skip it).

use ratchet_engine::example;
use ratchet_store::saga::{get_saga, saga_history};
use ratchet_tests::{after, database_with_account, lines_of, read_until};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_ratchet-crash-child");

async fn kill_mid_saga_then_recover(point: &str) {
    let (db, mut conn, account) = database_with_account().await;
    let sec_id = Uuid::new_v4();

    let mut child = Command::new(CHILD)
        .args(["start", &db.url, &sec_id.to_string(), &account.to_string()])
        .args(["charge_account", point])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = lines_of(child.stdout.take().expect("stdout"));
    let printed = read_until(&mut lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("child printed its saga id")
        .parse()
        .expect("saga id");

    // The charge is durable after COMMIT and invisible before it.
    let before = example::account_state(&mut conn, account).await.unwrap();
    let charged = point == "after_commit";
    assert_eq!(before.ledger.len(), usize::from(charged), "{before:?}");

    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap child");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child died of SIGKILL: {status:?}"
    );
    let row = get_saga(&mut conn, saga_id)
        .await
        .unwrap()
        .expect("saga row");
    assert_eq!(row.saga_state, "running", "killed mid-saga");

    // A new process with the same executor id resumes the saga from the database.
    let output = Command::new(CHILD)
        .args([
            "recover",
            &db.url,
            &sec_id.to_string(),
            &saga_id.to_string(),
        ])
        .output()
        .expect("run recovering child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "recovery failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&saga_id.to_string()),
        "it resumed our saga:\n{stdout}"
    );
    assert!(
        stdout.contains(r#"outcome {"outcome":"succeeded""#),
        "the saga finished:\n{stdout}"
    );

    // Every commit applied exactly once: one charge, one ledger row, the widget active.
    let after = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(after.balance, 70, "{after:?}");
    assert_eq!(after.ledger, vec![-30], "{after:?}");
    assert_eq!(after.widgets.len(), 1, "{after:?}");
    assert_eq!(after.widgets[0].1, "active", "{after:?}");
    let history = saga_history(&mut conn, saga_id)
        .await
        .unwrap()
        .expect("history");
    let mut committed: Vec<_> = history
        .commits
        .iter()
        .map(|c| c.node_name.as_str())
        .collect();
    committed.sort_unstable();
    assert_eq!(
        committed,
        ["activate_widget", "charge_account", "reserve_widget"]
    );
    assert!(history.compensations.is_empty());
    assert_eq!(
        get_saga(&mut conn, saga_id)
            .await
            .unwrap()
            .unwrap()
            .saga_state,
        "done"
    );
}

#[tokio::test]
async fn sigkill_after_commit_then_recover_in_a_new_process() {
    kill_mid_saga_then_recover("after_commit").await;
}

#[tokio::test]
async fn sigkill_inside_the_commit_transaction_then_recover_in_a_new_process() {
    kill_mid_saga_then_recover("before_commit").await;
}
