//! A saga's typed error survives a real process kill: a child runs the example's `OrderWidget` saga, whose
//! check refuses it with the saga's typed error (`ApiError::Conflict`, a 409), pauses at a fault point and is
//! killed with SIGKILL; a new process with the same executor id recovers the saga and finishes the unwind. Two
//! places: between the typed failure and its recording (the check failed, steno has not recorded `failed`:
//! the recovering process runs the check again), and after its recording (inside the debit's compensation:
//! the recovering process reads the typed error back from the log). Either way the recovered outcome carries
//! the typed error, decoded as the saga's error type.

mod common;

use common::database_with_account;
use ratchet_engine::SagaOutcome;
use ratchet_example_saga::{self as example, ApiError, CONFLICT_MESSAGE, OrderWidget};
use ratchet_store::{get_saga, saga_error_of, saga_history};
use ratchet_tests::{after, lines_of, read_until};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_ratchet-crash-child");

async fn kill_around_a_typed_failure_then_recover(node: &str, point: &str, recorded: bool) {
    let (db, mut conn, account) = database_with_account().await;
    let sec_id = Uuid::new_v4();
    let mut child = Command::new(CHILD)
        .args(["order", &db.url, &sec_id.to_string(), &account.to_string()])
        .args([node, point])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = lines_of(child.stdout.take().expect("stdout"));
    let printed = read_until(&mut lines, "fault point reached");
    let saga_id: Uuid = after(&printed, "saga")
        .expect("child printed its saga id")
        .parse()
        .expect("saga id");
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap child");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child died of SIGKILL: {status:?}"
    );

    // Whether the check's failure (with its typed error) was durable when the process died.
    let history = saga_history(&mut conn, saga_id).await.unwrap().unwrap();
    let failed: Vec<_> = history
        .events
        .iter()
        .filter(|e| e.event_type == "failed")
        .collect();
    if recorded {
        let [failed] = failed.as_slice() else {
            panic!("the failure is recorded: {:?}", history.events);
        };
        let typed = saga_error_of(failed.data.as_ref()).expect("the typed error is in the event");
        assert_eq!(
            serde_json::from_value::<ApiError>(typed).unwrap().status(),
            409
        );
    } else {
        assert!(failed.is_empty(), "not recorded yet: {failed:?}");
    }

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
    let printed: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let outcome: SagaOutcome =
        serde_json::from_str(after(&printed, "outcome").expect("an outcome"))
            .expect("outcome json");
    let SagaOutcome::Unwound { node, .. } = &outcome else {
        panic!("expected an unwind: {outcome:?}");
    };
    assert_eq!(node, "check");
    assert_eq!(
        outcome.saga_error::<OrderWidget>(),
        Ok(Some(ApiError::Conflict {
            message: CONFLICT_MESSAGE.to_owned()
        })),
        "{stdout}"
    );

    let after_all = example::account_state(&mut conn, account).await.unwrap();
    assert_eq!(after_all.balance, 100, "the debit was given back once");
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
async fn sigkill_between_a_typed_failure_and_its_recording() {
    kill_around_a_typed_failure_then_recover("check", "after_failure", false).await;
}

#[tokio::test]
async fn sigkill_after_a_typed_failure_is_recorded() {
    kill_around_a_typed_failure_then_recover("debit", "in_compensation", true).await;
}
