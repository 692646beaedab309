//! `ratchet check` shown a violation: on a world at rest it says `0 violation(s)` and exits 0; with one
//! violation planted (a database row, or a service's state) it lists it by rule and row and exits 1.

mod common;

use common::RATCHET;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_example_saga as example;
use ratchet_sagas::{DATASTORE_MIGRATIONS, Services, WorldSpec};
use ratchet_template_db::TestDatabase;
use ratchet_test_utils::testing::fresh_database;
use std::process::Command;
use uuid::Uuid;

/// What one `ratchet check` printed, and its exit code.
#[derive(Debug)]
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ratchet --database-url URL check ARGS…` in a scratch directory.
fn check(db: &TestDatabase, args: &[&str]) -> Checked {
    let scratch =
        std::env::temp_dir().join(format!("ratchet-check-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let output = Command::new(RATCHET)
        .arg("--database-url")
        .arg(&db.url)
        .arg("check")
        .args(args)
        .current_dir(&scratch)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run ratchet check");
    let _ = std::fs::remove_dir_all(&scratch);
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A database with a world at rest: a stopped instance with a disk attached, and a detached disk `spare`.
async fn world_at_rest() -> (TestDatabase, AsyncPgConnection, Uuid) {
    let db = fresh_database(&[&DATASTORE_MIGRATIONS, &example::MIGRATIONS])
        .await
        .expect("test database");
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let world = ratchet_sagas::seed_world(&mut conn, &WorldSpec::default())
        .await
        .unwrap();
    let instance = ratchet_sagas::stopped_instance(&mut conn, &world, "inst")
        .await
        .unwrap();
    let data = ratchet_sagas::detached_disk(&mut conn, &world, "data")
        .await
        .unwrap();
    ratchet_datastore::instance_attach_disk(&mut conn, instance, data, 12)
        .await
        .unwrap();
    let spare = ratchet_sagas::detached_disk(&mut conn, &world, "spare")
        .await
        .unwrap();
    (db, conn, spare)
}

#[track_caller]
fn assert_clean(checked: &Checked) {
    assert!(
        checked.code == Some(0) && checked.stdout.contains("invariant check: 0 violation(s)"),
        "{checked:#?}"
    );
}

/// Exit code 1, the count and the violation (rule and detail) on stdout, the count on stderr.
#[track_caller]
fn assert_violation(checked: &Checked, line: &str) {
    assert_eq!(checked.code, Some(1), "{checked:#?}");
    assert!(
        checked.stdout.contains("invariant check: 1 violation(s)"),
        "{checked:#?}"
    );
    assert!(
        checked.stdout.lines().any(|l| l == format!("  {line}")),
        "no line {line:?}: {checked:#?}"
    );
    assert!(
        checked.stderr.contains("error: 1 invariant violation(s)"),
        "{checked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_naming_a_planted_database_violation() {
    let (db, mut conn, spare) = world_at_rest().await;
    let clean = check(&db, &[]);
    assert_clean(&clean);
    assert!(
        clean
            .stdout
            .contains("the sled agent and pantry rules are not checked"),
        "{clean:#?}"
    );

    diesel::sql_query(format!(
        "UPDATE disk SET disk_state = 'maintenance' WHERE id = '{spare}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_violation(
        &check(&db, &[]),
        &format!("disk_in_transitional_state: disk {spare} is maintenance"),
    );
    // The same as JSON: the library's `Violation`, read back.
    let json = check(&db, &["--json"]);
    assert_eq!(json.code, Some(1), "{json:#?}");
    let printed: serde_json::Value = serde_json::from_str(&json.stdout).expect("check's JSON");
    let violations: Vec<ratchet_datastore::Violation> =
        serde_json::from_value(printed["violations"].clone()).expect("violations");
    assert_eq!(
        violations,
        vec![ratchet_datastore::Violation {
            rule: "disk_in_transitional_state".into(),
            detail: format!("disk {spare} is maintenance"),
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_naming_a_planted_service_violation() {
    let (db, _conn, spare) = world_at_rest().await;
    let services = Services::start().unwrap();
    let (sled_agent, pantry) = (
        services.sled_agent.addr().to_string(),
        services.pantry.addr().to_string(),
    );
    let with_services = ["--sled-agent", &sled_agent, "--pantry", &pantry];
    assert_clean(&check(&db, &with_services));

    // The spare disk attached to the pantry, with no snapshot holding it in maintenance.
    services
        .pantry
        .client()
        .disk_attach(Uuid::new_v4(), spare, serde_json::json!({"type": "blank"}))
        .await
        .unwrap();
    assert_violation(
        &check(&db, &with_services),
        &format!(
            "pantry_attachment_without_owner: disk {spare} is attached to the pantry but is detached"
        ),
    );
    // Without the services, the database alone is clean: the violation is the pantry's.
    assert_clean(&check(&db, &[]));
}
