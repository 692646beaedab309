//! Real crashes: a crash cell's saga runs in a child process, which the harness kills with `SIGKILL` at the
//! fault point; a new engine in the harness's process then recovers the saga from the database.
//!
//! # Design
//!
//! The in-process crash of [`crate::cell`] ends the engine's sessions from the server's side and aborts its
//! tasks. A real crash leaves nothing to chance: the operating system ends the process, its sockets close
//! wherever their bytes were, and no code of the dead engine runs again. With [`crate::Matrix::real_crash`],
//! every cell whose fault crashes the engine (`crash_before_commit`, `crash_after_commit`,
//! `crash_in_compensation` and the pairs) runs so:
//!
//! 1. The harness sets up the cell's world as usual (database, simulated services) and puts a
//!    [`PgProxy`](ratchet_wire_proxy::PgProxy) between the child and the database.
//! 2. It starts the child ([`ChildProgram`]) with a [`ChildSpec`]: the suite, the proxied URL, the executor
//!    id, the cell, the saga's parameters and the services' addresses
//!    ([`SagaSuite::services_handle`](crate::SagaSuite::services_handle)). The child builds an engine against
//!    them ([`SagaSuite::register_remote`](crate::SagaSuite::register_remote)), creates the saga, arms a
//!    long pause at the kill point, prints `saga <id>`, runs the saga, and prints `paused` when the pause is
//!    reached.
//! 3. The harness kills the child at that point. Where the point is a database node's `COMMIT`, the kill lands
//!    in the middle of the `COMMIT`'s round trip: the harness arms the proxy, wakes the child (a line `wake`
//!    on its stdin), waits until the proxy has the `COMMIT` in hand, and sends `SIGKILL`:
//!    - `crash_before_commit`: the proxy withholds the `COMMIT` (it never reaches the server); after the kill
//!      the proxy closes the server side and the server rolls the transaction back;
//!    - `crash_after_commit`: the proxy delivers the `COMMIT` and drops its reply; the process dies with the
//!      reply in flight. The harness then checks the node's commit record landed (so it was this node's
//!      `COMMIT` the proxy held).
//!
//!    Elsewhere (an external node's call, a compensation, a pair's compensation) the child is killed while
//!    paused at the fault point itself.
//! 4. The harness checks the child died of `SIGKILL`, recovers with a new engine under the same executor id
//!    (a new epoch: anything the dead engine left is fenced), and checks the cell at rest as any other.
//!
//! A child that never reaches its kill point runs the saga to rest and prints `outcome <json>`; the cell then
//! fails as "fault not reached". The child prints one line per event on stdout and nothing else there.

use crate::HarnessError;
use crate::cell::{Cell, Running, cell_config, recover_saga, unwind_after};
use crate::fault::Fault;
use crate::suite::SagaSuite;
use ratchet_engine::{Engine, EngineBuilder, FaultEffect, FaultPoint, NodeKind, SagaOutcome};
use ratchet_store::saga_history;
use ratchet_wire_proxy::{PgProxy, Upstream};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

/// How long the child's pause lasts: longer than any cell, so only the harness's `SIGKILL` ends it.
const PAUSE: Duration = Duration::from_secs(600);
/// How long the harness waits for the child's next line, or for the proxy to have the `COMMIT` in hand.
const CHILD_PATIENCE: Duration = Duration::from_secs(60);

/// The program a real-crash cell runs as its child, with the leading arguments that make it one (the
/// [`ChildSpec`] follows as the last argument, as JSON). Its `main` calls [`run_child`].
#[derive(Clone, Debug)]
pub struct ChildProgram {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl ChildProgram {
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> ChildProgram {
        ChildProgram {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// What a child process needs to run one real-crash cell's saga.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    /// The suite's label ([`SagaSuite::label`]).
    pub suite: String,
    /// The database, through the harness's proxy.
    pub url: String,
    pub sec_id: Uuid,
    pub node: String,
    pub kind: NodeKind,
    pub fault: Fault,
    pub crash_in_compensation_of: Option<String>,
    pub last_node: String,
    /// The saga's parameters, as the suite gives them for this cell's world.
    pub params: serde_json::Value,
    /// The services' addresses ([`SagaSuite::services_handle`]).
    pub services: serde_json::Value,
    /// A fault point the child's engine never fires (the harness's own mutation test).
    pub disabled_point: Option<FaultPoint>,
}

/// How the harness kills a child once it is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// Paused at the fault point itself: killed there.
    AtPoint,
    /// Paused just before a database node's `COMMIT`: the proxy withholds the `COMMIT`, then the kill.
    CommitWithheld,
    /// Paused just before a database node's `COMMIT`: the proxy delivers it and drops the reply, then the kill.
    CommitReplyInFlight,
}

impl ChildSpec {
    /// Where the child pauses, and how it is killed there.
    fn kill_point(&self) -> (&str, FaultPoint, Kill) {
        if let Some(other) = &self.crash_in_compensation_of {
            return (other, FaultPoint::InCompensation, Kill::AtPoint);
        }
        let node = self.node.as_str();
        let db = self.kind == NodeKind::Db;
        match self.fault {
            Fault::CrashBeforeCommit if db => {
                (node, FaultPoint::BeforeCommit, Kill::CommitWithheld)
            }
            Fault::CrashAfterCommit if db => {
                (node, FaultPoint::BeforeCommit, Kill::CommitReplyInFlight)
            }
            Fault::CrashBeforeCommit => (node, FaultPoint::BeforeCommit, Kill::AtPoint),
            Fault::CrashAfterCommit => (node, FaultPoint::AfterCommit, Kill::AtPoint),
            _ => (node, FaultPoint::InCompensation, Kill::AtPoint),
        }
    }
}

/// The child's side: runs the cell's saga with a pause at its kill point. Called by the child program's
/// `main` with the [`ChildSpec`] it was given; `suites` are the suites it knows (it finds the spec's by label).
pub(crate) async fn child_cell<T: SagaSuite>(
    suite: &T,
    spec: ChildSpec,
) -> Result<(), HarnessError> {
    let config = cell_config(&spec.url, spec.sec_id, spec.fault);
    let (engine, _) = suite
        .register_remote(EngineBuilder::new(config), &spec.services)?
        .start()
        .await?;
    if let Some(point) = spec.disabled_point {
        engine.failpoints().disable(point);
    }
    let params = serde_json::from_value(spec.params.clone())
        .map_err(|e| HarnessError::Fixture(format!("the saga's parameters: {e}")))?;
    let saga = engine.create::<T::Saga>(params).await?;
    let id = saga.id;
    say(&format!("saga {id}"));

    let failpoints = engine.failpoints();
    let (pause_node, pause_point, _) = spec.kill_point();
    let pause = FaultEffect::Delay {
        millis: PAUSE.as_millis() as u64,
    };
    failpoints.arm(id, pause_node, pause_point, pause, 1);
    let cell = Cell {
        node: spec.node.clone(),
        kind: spec.kind,
        fault: spec.fault,
        crash_in_compensation_of: spec.crash_in_compensation_of.clone(),
        last_node: spec.last_node.clone(),
        disabled_point: spec.disabled_point,
        child: None,
    };
    if cell.crash_in_compensation_of.is_some() {
        // A pair: the error after N's commit starts the unwind that reaches the paused compensation.
        failpoints.arm(
            id,
            &cell.node,
            FaultPoint::AfterCommit,
            FaultEffect::PermanentError,
            1,
        );
    } else if cell.fault == Fault::CrashInCompensation
        && let Some(injection) = unwind_after(&saga, &engine, &cell)
    {
        injection.await?;
    }

    let watcher = tokio::spawn(watch_pause(
        engine.clone(),
        id,
        pause_node.to_owned(),
        pause_point,
    ));
    wake_on_stdin(engine.clone(), id);
    let outcome = saga.run().await?;
    watcher.abort();
    let json = serde_json::to_string(&outcome)
        .map_err(|e| HarnessError::Engine(format!("encoding the outcome: {e}")))?;
    say(&format!("outcome {json}"));
    Ok(())
}

/// Prints `paused` once the pause at the kill point has fired.
async fn watch_pause(engine: Engine, id: Uuid, node: String, point: FaultPoint) {
    while !engine.failpoints().has_fired(id, &node, point) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    say("paused");
}

/// Ends the pause when the harness writes `wake` on stdin. A plain thread, not tokio's stdin: tokio reads
/// stdin on a blocking-pool thread that a runtime's shutdown waits for, and the harness keeps stdin open.
fn wake_on_stdin(engine: Engine, id: Uuid) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) if line.trim() == "wake" => engine.failpoints().wake(id),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

/// One line on stdout, flushed at once (the harness reads it while the child runs).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What the harness's side of a real-crash cell ends with: the engine that holds the saga now, the saga,
/// its outcome, and whether the child was killed at its kill point.
pub(crate) struct Driven {
    pub engine: Engine,
    pub id: Uuid,
    pub outcome: SagaOutcome,
    pub crashed: bool,
}

/// The harness's side: runs the cell's saga in a child, kills it at the kill point, recovers the saga.
/// Problems with the kill itself (a `COMMIT` that was not the node's, a child that died of something else)
/// go to `problems`.
pub(crate) async fn drive_in_child<T: SagaSuite>(
    running: &Running<'_, T>,
    cell: &Cell,
    program: &ChildProgram,
    problems: &mut Vec<String>,
) -> Result<Driven, HarnessError> {
    let (upstream, user, dbname) = Upstream::from_url(&running.db.url)
        .map_err(|e| HarnessError::Fixture(format!("the proxy's upstream: {e}")))?;
    let proxy = PgProxy::start(upstream)
        .await
        .map_err(|e| HarnessError::Fixture(format!("starting the proxy: {e}")))?;
    let spec = ChildSpec {
        suite: running.suite.label(),
        url: proxy.url_for(&dbname, &user),
        sec_id: running.sec_id,
        node: cell.node.clone(),
        kind: cell.kind,
        fault: cell.fault,
        crash_in_compensation_of: cell.crash_in_compensation_of.clone(),
        last_node: cell.last_node.clone(),
        params: serde_json::to_value(running.suite.params(&running.fixture))
            .map_err(|e| HarnessError::Fixture(format!("encoding the parameters: {e}")))?,
        services: running.suite.services_handle(&running.fixture),
        disabled_point: cell.disabled_point,
    };
    let (_, _, kill) = spec.kill_point();
    let encoded = serde_json::to_string(&spec)
        .map_err(|e| HarnessError::Fixture(format!("encoding the child's spec: {e}")))?;
    let mut child = tokio::process::Command::new(&program.program)
        .args(&program.args)
        .arg(encoded)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            HarnessError::Fixture(format!("starting {}: {e}", program.program.display()))
        })?;
    let child_error = |what: &str| HarnessError::Engine(format!("the child process: {what}"));
    let mut stdin = child.stdin.take().ok_or_else(|| child_error("no stdin"))?;
    // Read all along, so that a child that logs much never blocks on a full pipe.
    let mut stderr_pipe = child
        .stderr
        .take()
        .ok_or_else(|| child_error("no stderr"))?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| child_error("no stdout"))?,
    )
    .lines();
    let mut next_line = async || -> Result<Option<String>, HarnessError> {
        tokio::time::timeout(CHILD_PATIENCE, lines.next_line())
            .await
            .map_err(|_| HarnessError::Timeout("the child's next line".to_owned()))?
            .map_err(|e| child_error(&e.to_string()))
    };

    let first = next_line().await?;
    let Some(id) = first
        .as_deref()
        .and_then(|line| line.strip_prefix("saga "))
        .and_then(|id| id.parse::<Uuid>().ok())
    else {
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .map_err(|e| child_error(&e.to_string()))?;
        let text = stderr.await.unwrap_or_default();
        return Err(child_error(&format!(
            "it did not create the saga ({status}; first line {first:?}): {}",
            text.trim()
        )));
    };

    let line = next_line().await?.unwrap_or_default();
    if let Some(json) = line.strip_prefix("outcome ") {
        // The kill point was never reached: the child ran the saga to rest.
        let outcome: SagaOutcome = serde_json::from_str(json)
            .map_err(|e| child_error(&format!("its outcome {json:?}: {e}")))?;
        drop(stdin);
        if tokio::time::timeout(CHILD_PATIENCE, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            problems.push("the child did not exit after its saga came to rest".to_owned());
        }
        let engine = running.engine().await?;
        return Ok(Driven {
            engine,
            id,
            outcome,
            crashed: false,
        });
    }
    if line != "paused" {
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .map_err(|e| child_error(&e.to_string()))?;
        let text = stderr.await.unwrap_or_default();
        return Err(child_error(&format!(
            "expected `paused`, read {line:?} ({status}): {}",
            text.trim()
        )));
    }

    // Paused at the kill point. For a COMMIT, arm the proxy and let the COMMIT go.
    let in_hand: Option<fn(&PgProxy) -> usize> = match kill {
        Kill::AtPoint => None,
        Kill::CommitWithheld => {
            proxy.withhold_next_commit(PAUSE);
            Some(PgProxy::commits_withheld)
        }
        Kill::CommitReplyInFlight => {
            proxy.drop_next_commit_reply(PAUSE);
            Some(PgProxy::commit_replies_dropped)
        }
    };
    if let Some(in_hand) = in_hand {
        stdin
            .write_all(b"wake\n")
            .await
            .map_err(|e| child_error(&format!("waking it: {e}")))?;
        let deadline = Instant::now() + CHILD_PATIENCE;
        while in_hand(&proxy) == 0 {
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(
                    "the COMMIT reaching the proxy".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    child
        .start_kill()
        .map_err(|e| child_error(&format!("SIGKILL: {e}")))?;
    let status = child
        .wait()
        .await
        .map_err(|e| child_error(&e.to_string()))?;
    let killed = status.signal() == Some(9);
    if !killed {
        problems.push(format!("the child did not die of SIGKILL: {status}"));
    }
    match kill {
        Kill::AtPoint => {}
        // The COMMIT never reached the server: the server ends the session and rolls the transaction back. It
        // was this node's COMMIT the proxy withheld only if the node has no commit record (another
        // connection's COMMIT caught instead would let the node's own go through before the kill).
        Kill::CommitWithheld => {
            proxy.release_withheld();
            if commit_record_within(running, id, &cell.node, Duration::ZERO).await? {
                problems.push(format!(
                    "the COMMIT withheld before the kill was not {}'s: it committed",
                    cell.node
                ));
            }
        }
        // The COMMIT reached the server; its reply died with the process. It was this node's COMMIT if the
        // node's commit record is there.
        Kill::CommitReplyInFlight => {
            if !commit_record_within(running, id, &cell.node, Duration::from_secs(10)).await? {
                problems.push(format!(
                    "the COMMIT delivered before the kill was not {}'s: no commit record",
                    cell.node
                ));
            }
        }
    }

    // A new engine under the same executor id recovers the saga from the database (a new epoch).
    let (engine, outcome) = recover_saga(running, id).await?;
    drop(proxy);
    Ok(Driven {
        engine,
        id,
        outcome,
        crashed: killed,
    })
}

/// Whether `node`'s commit record is there, or appears within `patience` (a delivered `COMMIT` may still be
/// running on the server when the child dies).
async fn commit_record_within<T: SagaSuite>(
    running: &Running<'_, T>,
    id: Uuid,
    node: &str,
    patience: Duration,
) -> Result<bool, HarnessError> {
    let mut conn = ratchet_store::establish(&running.db.url).await?;
    let deadline = Instant::now() + patience;
    loop {
        let history = saga_history(&mut conn, id)
            .await
            .map_err(ratchet_store::DbError::from)?;
        if history.is_some_and(|h| h.commits.iter().any(|c| c.node_name == node)) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
