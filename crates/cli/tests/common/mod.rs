//! What the CLI's test files share: running the `ratchet` binary as a user would, and asserting on what it
//! printed.

use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ratchet_store::testing::TestDatabase;
use std::process::Command;
use uuid::Uuid;

pub const RATCHET: &str = env!("CARGO_BIN_EXE_ratchet");

/// What one run of the CLI printed.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit ok: {}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// Runs `ratchet --database-url URL ARGS…` in a scratch directory (so that nothing lands in the repository).
pub fn ratchet(db: &TestDatabase, args: &[&str]) -> Run {
    let scratch =
        std::env::temp_dir().join(format!("ratchet-cli-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let output = Command::new(RATCHET)
        .arg("--database-url")
        .arg(&db.url)
        .args(args)
        .current_dir(&scratch)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run ratchet");
    let _ = std::fs::remove_dir_all(&scratch);
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts the CLI refused, saying `message` on stderr.
#[track_caller]
pub fn assert_refused(run: &Run, message: &str) {
    assert!(
        !run.ok && run.stderr.contains(message),
        "expected a refusal saying {message:?}: {run:?}"
    );
}

/// Asserts the CLI failed, having said each of `lines` on stdout and `message` on stderr.
#[track_caller]
pub fn assert_fails_after_saying(run: &Run, lines: &[&str], message: &str) {
    assert_refused(run, message);
    for line in lines {
        assert!(run.stdout.contains(line), "missing {line:?}: {run:?}");
    }
}

/// Asserts the CLI succeeded, saying each of `lines` on stdout.
#[track_caller]
pub fn assert_says(run: &Run, lines: &[&str]) {
    assert!(run.ok, "{run:?}");
    for line in lines {
        assert!(run.stdout.contains(line), "missing {line:?}: {run:?}");
    }
}

/// Renames the action of example saga `id`'s `activate_widget` node to one this binary does not register, as
/// a saga created by an older release would name it: recovery must abandon that saga, with the reason.
pub async fn rename_activate_widget(conn: &mut AsyncPgConnection, id: Uuid) {
    diesel::sql_query(
        "UPDATE saga SET saga_dag = jsonb_set(saga_dag, '{graph,nodes,2,Action,action_name}', \
         '\"example.activate_widget_v0\"') WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .execute(conn)
    .await
    .unwrap();
}
