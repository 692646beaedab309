//! The host service is killed with SIGKILL while a typed saga (in the middle of its subsaga) and a plain
//! steno saga are both in flight; started again with the same executor id, it resumes and finishes both,
//! every effect applied once.
//!
//! The child says what it does on stdout, one line per event (see `src/main.rs`). Started with
//! `EMBEDDING_PAUSE_AT=allocate_volume,publish_project`, it parks each saga in its second node and prints
//! `paused NODE SAGA_ID`: the typed saga as its subsaga's `allocate_volume` prepares (`reserve_widget`
//! committed), the plain steno saga right after `publish_project`'s write, before steno records it done (so
//! the restart runs that action again: only its own idempotence keeps the effect single). The test waits for
//! both lines (no sleeping), then kills it.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ratchet_test_utils::testing::test_server;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use uuid::Uuid;

const HOST: &str = env!("CARGO_BIN_EXE_embedding-example");
/// How long any one expected line may take: generous, for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running host process and its stdout lines (read on a thread of their own).
struct Host {
    process: Child,
    lines: Receiver<String>,
    /// Every line it printed, and those no `expect` took yet.
    printed: Vec<String>,
    unclaimed: Vec<String>,
}

impl Host {
    fn start(
        url: &str,
        executor: Uuid,
        log: &std::path::Path,
        extra: &[&str],
        pause_at: &str,
    ) -> Host {
        let mut process = Command::new(HOST)
            .args([
                "--database-url",
                url,
                "--executor-id",
                &executor.to_string(),
            ])
            .arg("--log-file")
            .arg(log)
            .args(extra)
            .env("EMBEDDING_PAUSE_AT", pause_at)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the host");
        let stdout = process.stdout.take().expect("stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Host {
            process,
            lines,
            printed: Vec::new(),
            unclaimed: Vec::new(),
        }
    }

    /// The first line starting with `prefix` (its rest) that no earlier call took, whenever it was printed;
    /// panics, showing everything the host printed, if the host exits or stays silent too long first.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.unclaimed.iter().position(|l| l.starts_with(prefix)) {
                let line = self.unclaimed.remove(at);
                return line[prefix.len()..].trim_start().to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    self.unclaimed.push(line);
                }
                Err(why) => {
                    let why = match why {
                        RecvTimeoutError::Timeout => "went silent",
                        RecvTimeoutError::Disconnected => "exited",
                    };
                    panic!(
                        "the host {why} before printing {prefix:?}; it printed:\n{}",
                        self.printed.join("\n")
                    );
                }
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `GET path` on the host's status endpoint; the body.
fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the status endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    body.to_owned()
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    audit: i64,
}

/// Each `table` row's state, with how many audit events it has.
async fn rows(conn: &mut AsyncPgConnection, table: &str) -> Vec<Row> {
    diesel::sql_query(format!(
        "SELECT t.state, (SELECT count(*) FROM audit_event a WHERE a.subject_id = t.id) AS audit \
         FROM {table} t ORDER BY t.name"
    ))
    .load(conn)
    .await
    .expect("read the host's table")
}

/// A saga's state (as text, whatever the column's type).
async fn saga_state(conn: &mut AsyncPgConnection, id: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct State {
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
    }
    let id: Uuid = id.parse().expect("a saga id");
    let row: State = diesel::sql_query("SELECT saga_state::text AS state FROM saga WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_result(conn)
        .await
        .expect("the saga's row");
    row.state
}

#[tokio::test]
async fn killed_mid_saga_the_host_restarts_and_finishes_both_sagas_once() {
    // An empty database on the test server: the host's migrations make all of it, ratchet's tables included.
    let server = test_server().await.expect("test server");
    let name = format!("embedding_{}", Uuid::new_v4().simple());
    ratchet_store::create_database_if_missing(&server.url("postgres"), &name)
        .await
        .expect("create the database");
    let url = server.url(&name);
    let executor = Uuid::new_v4();
    let log = std::env::temp_dir().join(format!("{name}.log"));

    // First run: both sagas created, each parked in its second node.
    let mut host = Host::start(
        &url,
        executor,
        &log,
        &["--create-widget", "w1", "--create-project", "p1"],
        "allocate_volume,publish_project",
    );
    let widget_saga = host.expect("created widget-create");
    let project_saga = host.expect("created project-create");
    let mut paused = [host.expect("paused"), host.expect("paused")];
    paused.sort();
    assert_eq!(
        paused,
        [
            format!("allocate_volume {widget_saga}"),
            format!("publish_project {project_saga}")
        ]
    );

    // Mid-flight: the widget reserved, not active, its volume not allocated; the project published, the
    // action not recorded done.
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    let mid = (
        rows(&mut conn, "widget").await,
        rows(&mut conn, "project").await,
    );
    assert_eq!(rows(&mut conn, "volume").await, vec![]);
    let one = |state: &str, audit| {
        vec![Row {
            state: state.to_owned(),
            audit,
        }]
    };
    assert_eq!(mid, (one("reserved", 1), one("ready", 2)));

    host.process.kill().expect("SIGKILL");
    let status = host.process.wait().expect("reap the host");
    assert_eq!(status.signal(), Some(9), "killed: {status:?}");
    for saga in [&widget_saga, &project_saga] {
        assert_eq!(saga_state(&mut conn, saga).await, "running");
    }
    drop(host);

    // Second run, same executor id, nothing to create, nothing to pause: it resumes both and finishes them.
    let mut host = Host::start(&url, executor, &log, &[], "");
    let addr = host.expect("listening");
    let recovered: serde_json::Value =
        serde_json::from_str(&host.expect("recovered")).expect("the recovery report");
    let mut resumed: Vec<String> = recovered["resumed"]
        .as_array()
        .expect("resumed")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    resumed.sort();
    let mut both = vec![widget_saga.clone(), project_saga.clone()];
    both.sort();
    assert_eq!(resumed, both);
    for _ in 0..2 {
        let outcome = host.expect("outcome");
        let (id, outcome) = outcome.split_once(' ').expect("outcome ID JSON");
        assert!(both.iter().any(|saga| saga == id), "{id}");
        assert!(
            outcome.starts_with(r#"{"outcome":"succeeded""#),
            "{id}: {outcome}"
        );
    }

    // Every effect once: one widget, active, reserved and activated once, on the one volume its subsaga
    // allocated once; one project, ready, created and published once.
    let done = (
        rows(&mut conn, "widget").await,
        rows(&mut conn, "project").await,
    );
    assert_eq!(done, (one("active", 2), one("ready", 2)));
    assert_eq!(rows(&mut conn, "volume").await, one("allocated", 1));
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let on_its_volume: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM widget w JOIN volume v ON v.id = w.volume_id AND v.name = w.name",
    )
    .get_result(&mut conn)
    .await
    .expect("the widget's volume");
    assert_eq!(
        on_its_volume.count, 1,
        "activate_widget read the subsaga's output"
    );
    for saga in [&widget_saga, &project_saga] {
        assert_eq!(saga_state(&mut conn, saga).await, "done");
    }

    // The restarted engine's counters: both sagas succeeded here; the two typed commits it made are the
    // subsaga's allocate_volume and activate_widget (reserve_widget committed before the kill and was not run
    // again; the plain steno actions are not counted).
    let counters: serde_json::Value =
        serde_json::from_str(&get(&addr, "/counters")).expect("counters JSON");
    assert_eq!(
        (
            &counters["succeeded"],
            &counters["commits"],
            &counters["started"]
        ),
        (&2.into(), &2.into(), &0.into()),
        "{counters}"
    );

    // ratchet's and steno's records landed in the host's log.
    let logged = std::fs::read_to_string(&log).expect("the host's log");
    let records: Vec<serde_json::Value> = logged
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let has = |key: &str, value: &str| records.iter().any(|r| r[key] == value);
    assert!(
        has("event", "commit"),
        "a commit in the host's log:\n{logged}"
    );
    assert!(
        has("component", "steno"),
        "steno in the host's log:\n{logged}"
    );

    // A clean stop.
    let pid = host.process.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    host.expect("shutdown");
    let status = host.process.wait().expect("reap the host");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(&log);
    drop(conn);
    let database = ratchet_template_db::TestDatabase { url, name };
    server
        .drop_database(&database)
        .await
        .expect("drop the database");
}
