#![allow(dead_code)]

//! What the CLI's test files share: running the `ratchet` binary as a user would, and asserting on what it
//! printed.

use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ratchet_template_db::TestDatabase;
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

pub const RATCHET: &str = env!("CARGO_BIN_EXE_ratchet");

/// What one run of the CLI printed, and its exit status.
pub struct Run {
    pub code: Option<i32>,
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `ratchet --database-url URL ARGS…` in a scratch directory (so that nothing lands in the repository).
pub fn ratchet(db: &TestDatabase, args: &[&str]) -> Run {
    let mut all = vec!["--database-url", db.url.as_str()];
    all.extend_from_slice(args);
    ratchet_at(None, &all, &[])
}

/// A scratch directory of its own, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ratchet-{what}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `ratchet ARGS…` in `dir` (a scratch directory when `None`), with `env` set and neither
/// `DATABASE_URL`, `RATCHET_SEC_ID` nor `RATCHET_LOG` inherited, stdin closed.
pub fn ratchet_at(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let scratch = Scratch::new("cli-test");
    let output = Command::new(RATCHET)
        .args(args)
        .current_dir(dir.unwrap_or(&scratch.0))
        .env_remove("DATABASE_URL")
        .env_remove("RATCHET_SEC_ID")
        .env_remove("RATCHET_LOG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ratchet");
    Run {
        code: output.status.code(),
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts the CLI refused the command line (exit status 2), saying `message` on stderr.
#[track_caller]
pub fn assert_usage_error(run: &Run, message: &str) {
    assert!(
        run.code == Some(2) && run.stderr.contains(message),
        "expected a usage error saying {message:?}: {run:?}"
    );
}

/// Asserts the CLI refused (exit status 1), saying `message` on stderr.
#[track_caller]
pub fn assert_refused(run: &Run, message: &str) {
    assert!(
        run.code == Some(1) && run.stderr.contains(message),
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
/// a saga created by another release would name it: recovery must leave that saga alone, with the reason.
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

/// Snapshot settings that replace what changes from run to run: the ids in `labels` by their label, any
/// other UUID by `[UUID]` (and 32 hex digits by `[HEX]`), times by `[TIME]`, durations by `[DURATION]`.
pub fn redacted(labels: &[(Uuid, &str)]) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    for (id, label) in labels {
        settings.add_filter(&id.to_string(), format!("[{label}]"));
    }
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[UUID]",
    );
    settings.add_filter(r"[0-9a-f]{32}", "[HEX]");
    // The start of an id cut short (`sagas show` clips long receipts).
    settings.add_filter(r"[0-9a-f][0-9a-f-]{0,34}…", "[UUID…]");
    settings.add_filter(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
        "[TIME]",
    );
    // A duration's width varies: one padded in a column keeps two spaces after it.
    let duration = r"\b(\d+(\.\d+)? (ms|s)|\d+m \d+s|\d+h \d+m|\d+d \d+h)\b";
    settings.add_filter(&format!("{duration} {{2,}}"), "[DURATION]  ");
    settings.add_filter(duration, "[DURATION]");
    settings
}

/// Whether `line` is one of the lines `ratchet run` prints on stdout (without `--json`, not on a terminal).
pub fn is_run_result_line(line: &str) -> bool {
    const SHAPES: [&str; 9] = [
        "running ",
        "preparing ",
        "created ",
        "recovered ",
        "using the sled agent",
        "instances: ",
        "invariant check",
        "this run's sagas",
        "other executors",
    ];
    line.is_empty()
        || SHAPES.iter().any(|shape| line.starts_with(shape))
        || (line.starts_with('[') && line.contains("] saga "))
        || line.contains(" saga(s) in ")
        || line.starts_with("  ")
}

/// Whether `line` is a record of the engine's log (`tracing`'s format: time, level, target, message).
pub fn is_log_record(line: &str) -> bool {
    ["WARN", "ERROR", "INFO", "DEBUG", "TRACE"]
        .iter()
        .any(|level| line.contains(&format!(" {level} ")))
}

/// Asserts a command's stdout holds only result lines (those `is_result` accepts, none holding `WARN` or
/// `ERROR`), and that no record of the engine's log reached stdout or stderr: it goes to a file.
#[track_caller]
pub fn assert_only_result_lines(run: &Run, is_result: impl Fn(&str) -> bool) {
    for line in run.stdout.lines() {
        assert!(
            !line.contains("WARN") && !line.contains("ERROR") && is_result(line),
            "not a result line on stdout: {line:?}\n{run:?}"
        );
    }
    for line in run.stderr.lines() {
        assert!(
            !is_log_record(line),
            "a log record on stderr: {line:?}\n{run:?}"
        );
    }
}
