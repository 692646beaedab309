//! A real process is killed with SIGKILL in the middle of a saga; a new process resumes the saga from the
//! database and finishes it, with every commit applied exactly once.
//!
//! The child (`ratchet-crash-child`) pauses at a fault point of `charge_account`, the example saga's
//! non-idempotent node (it subtracts the price and appends a ledger row), and says so on stdout; the parent
//! then kills it. Two places: inside the commit transaction before `COMMIT` (PostgreSQL rolls the open
//! transaction back when the connection dies), and right after `COMMIT` (the charge is durable; the commit
//! record makes the recovering process skip it).

mod common;

use common::database_with_account;
use ratchet_example_saga as example;
use ratchet_store::{get_saga, saga_history};
use ratchet_tests::{after, lines_of, read_until};
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

/// The child's saga as a recovering child sees it: runs `recover` for `saga_id` and returns its stdout,
/// having checked that it exited 0.
fn recover_in_a_new_process(url: &str, sec_id: Uuid, saga_id: Uuid) -> String {
    let output = Command::new(CHILD)
        .args(["recover", url, &sec_id.to_string(), &saga_id.to_string()])
        .output()
        .expect("run recovering child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "recovery failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A real crash inside a compensation: the child unwinds the saga, pauses inside charge_account's
/// compensation transaction (after its writes, before COMMIT) and is killed; a new process recovers the
/// unwind: the refund happens once.
#[tokio::test]
async fn sigkill_inside_a_compensation_then_recover_in_a_new_process() {
    let (db, mut conn, account) = database_with_account().await;
    let sec_id = Uuid::new_v4();
    let mut child = Command::new(CHILD)
        .args([
            "start-unwinding",
            &db.url,
            &sec_id.to_string(),
            &account.to_string(),
        ])
        .args(["charge_account", "in_compensation"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = lines_of(child.stdout.take().expect("stdout"));
    let printed = read_until(&mut lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("saga id")
        .parse()
        .expect("saga id");
    // Charged, and the refund not yet committed.
    let before = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(before.balance, 70, "{before:?}");
    child.kill().expect("SIGKILL");
    assert_eq!(child.wait().expect("reap child").signal(), Some(9));

    let stdout = recover_in_a_new_process(&db.url, sec_id, saga_id);
    assert!(
        stdout.contains(r#"outcome {"outcome":"unwound""#),
        "{stdout}"
    );
    let after = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!((after.balance, after.ledger.len()), (100, 0), "{after:?}");
    let history = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    let refunds = history
        .compensations
        .iter()
        .filter(|c| c.node_name == "charge_account" && c.had_commit)
        .count();
    assert_eq!(refunds, 1);
    assert_eq!(history.saga.saga_state, "done");
}

/// A real crash in the middle of a COMMIT's round trip: the child talks to PostgreSQL through a proxy, which
/// delivers charge_account's COMMIT and holds back the reply (`withhold` false: the COMMIT lands) or holds
/// back the COMMIT itself (`withhold` true: it never reaches the server, whose transaction stays idle until
/// released); the child is killed while it waits. A new process recovers the saga: one charge either way.
async fn sigkill_during_a_commit_round_trip(withhold: bool) {
    use ratchet_wire_proxy::{PgProxy, Upstream};
    let (db, mut conn, account) = database_with_account().await;
    let (upstream, _, _) = Upstream::from_url(&db.url).unwrap();
    let proxy = PgProxy::start(upstream).await.unwrap();
    let through_proxy = proxy.url_for(&db.name, "postgres");
    let sec_id = Uuid::new_v4();
    let mut child = Command::new(CHILD)
        .args([
            "pause",
            &through_proxy,
            &sec_id.to_string(),
            &account.to_string(),
        ])
        .args(["charge_account", "before_commit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = lines_of(child.stdout.take().expect("stdout"));
    let printed = read_until(&mut lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("saga id")
        .parse()
        .expect("saga id");
    let hold = std::time::Duration::from_secs(600);
    if withhold {
        proxy.withhold_next_commit(hold);
    } else {
        proxy.drop_next_commit_reply(hold);
    }
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "wake").expect("wake the child");
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while proxy.commits_withheld() + proxy.commit_replies_dropped() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the child sent its COMMIT");
    // The child is waiting for the COMMIT's reply: kill it there.
    child.kill().expect("SIGKILL");
    assert_eq!(child.wait().expect("reap child").signal(), Some(9));
    // The COMMIT landed only if it was delivered (the server may still be applying it: wait for it).
    let expected = usize::from(!withhold);
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let charged = example::account_state(&mut conn, account).await.unwrap();
            if charged.ledger.len() == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the ledger shows the charge exactly when the COMMIT was delivered");
    // The withheld transaction ends with its server-side connection.
    proxy.release_withheld();

    let stdout = recover_in_a_new_process(&db.url, sec_id, saga_id);
    assert!(
        stdout.contains(r#"outcome {"outcome":"succeeded""#),
        "{stdout}"
    );
    let after = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(
        (after.balance, after.ledger),
        (70, vec![-30]),
        "charged once"
    );
    let history = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    assert_eq!(
        history
            .commits
            .iter()
            .filter(|c| c.node_name == "charge_account")
            .count(),
        1
    );
    assert_eq!(history.saga.saga_state, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_a_delivered_commit_awaits_its_reply_then_recover() {
    sigkill_during_a_commit_round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_commit_is_still_on_the_wire_then_recover() {
    sigkill_during_a_commit_round_trip(true).await;
}
