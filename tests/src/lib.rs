//! Cross-crate tests (see `tests/`) and what they share: reading a child process's progress lines, and
//! finding the `ratchet` CLI to run as a child.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `ratchet` binary (package `ratchet-cli`), up to date: `RATCHET_BIN` if set; otherwise this function
/// builds it with `cargo build -p ratchet-cli --bin ratchet`, in this test's target directory and profile,
/// once per test process (a no-op when it is fresh).
///
/// `CARGO_BIN_EXE_*` names only the test's own package's binaries, and a binary-only package cannot be a
/// dependency, so the test builds it; nextest and `cargo test` hold no build lock while tests run.
pub fn ratchet_cli() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RATCHET_BIN") {
            return PathBuf::from(bin);
        }
        // A test binary is <target dir>/<profile dir>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("a target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory in {}", exe.display()),
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ratchet-cli", "--bin", "ratchet"])
            .arg("--profile")
            .arg(profile)
            .arg("--target-dir")
            .arg(target_dir)
            .arg("--manifest-path")
            .arg(&manifest)
            .status()
            .expect("run cargo build for the ratchet CLI");
        assert!(
            status.success(),
            "building the ratchet CLI failed: {status}"
        );
        let bin = profile_dir.join("ratchet");
        assert!(bin.exists(), "no ratchet binary at {}", bin.display());
        bin
    })
    .clone()
}

/// Reads a child's stdout lines until one contains `until`; returns every line read, that one included.
/// Panics, showing what the child printed, if the child's stdout ends first.
pub fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    until: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines {
        let line = line.expect("child stdout");
        let done = line.contains(until);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!(
        "child exited before printing {until:?}; it printed:\n{}",
        seen.join("\n")
    );
}

/// The lines of a child's stdout.
pub fn lines_of(
    stdout: std::process::ChildStdout,
) -> std::io::Lines<std::io::BufReader<std::process::ChildStdout>> {
    std::io::BufReader::new(stdout).lines()
}

/// The value after `prefix ` on the first line that starts with it.
pub fn after<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))
}

// ---------------------------------------------------------------------------------------------------------
// Load tests against `ratchet` child processes (moved from `tests/recovery_under_load.rs`, shared by
// `two_recoveries.rs`, `frozen_executor.rs` and `database_restart.rs`): the seeded kill schedule, a scratch
// directory, `ratchet` children read line by line, `ratchet sim`, and the instance-create domain checks.
// ---------------------------------------------------------------------------------------------------------

/// The seed of a test's random schedule: `RATCHET_TEST_SEED` if set (to replay one), else one from the clock.
/// Prints it, so that a failure can be replayed.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("RATCHET_TEST_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("RATCHET_TEST_SEED is a number"))
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("{what} seed: RATCHET_TEST_SEED={seed}");
    seed
}

/// SplitMix64: a small seeded generator for kill schedules.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub fn below(&mut self, max: usize) -> u64 {
        self.next_u64() % (max as u64 + 1)
    }
}

/// A scratch working directory for the children (so that nothing lands in the repository), removed at the end.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ratchet-load-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `ratchet` child process, its stdout read line by line on a thread of its own and its stderr kept (the
/// last 64 KiB) for failure messages. Dropping it kills it (SIGKILL ends a stopped process too).
pub struct Child {
    name: &'static str,
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    printed: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Why a line did not come: the child closed its stdout, or the deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoLine {
    Closed,
    TimedOut,
}

impl Child {
    /// Spawns `ratchet ARGS` in `dir`, with `RATCHET_LOG=error` and no `DATABASE_URL`; `stdin` pipes its
    /// stdin (for `ratchet sim`'s requests), else it reads nothing.
    pub fn spawn<I, S>(
        ratchet: &Path,
        dir: &Path,
        name: &'static str,
        args: I,
        stdin: bool,
    ) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::Read;
        use std::process::Stdio;
        let mut process = Command::new(ratchet)
            .args(args)
            .current_dir(dir)
            .env("RATCHET_LOG", "error")
            .env_remove("DATABASE_URL")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `ratchet {name}`: {e}"));
        let (sender, lines) = std::sync::mpsc::channel();
        let stdout = process.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pipe = process.stderr.take().expect("stderr");
        let kept = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(64 * 1024);
                kept.drain(..excess);
            }
        });
        Child {
            name,
            process,
            lines,
            printed: Vec::new(),
            stderr,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next line on stdout; `None` once stdout is closed (the child exited).
    pub fn next_line(&mut self) -> Option<String> {
        let line = self.lines.recv().ok()?;
        self.printed.push(line.clone());
        Some(line)
    }

    /// The next line on stdout, waiting until `deadline` at most.
    pub fn next_line_by(&mut self, deadline: std::time::Instant) -> Result<String, NoLine> {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.printed.push(line.clone());
                Ok(line)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(NoLine::TimedOut),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(NoLine::Closed),
        }
    }

    /// Reads lines until one satisfies `wanted`; `None` if stdout closes first.
    pub fn read_until(&mut self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        while let Some(line) = self.next_line() {
            if wanted(&line) {
                return Some(line);
            }
        }
        None
    }

    /// Reads lines until one satisfies `wanted`; `None` if stdout closes first. Panics, with what the child
    /// printed, if `deadline` passes first (`what` names the line awaited).
    pub fn read_until_by(
        &mut self,
        deadline: std::time::Instant,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Option<String> {
        loop {
            match self.next_line_by(deadline) {
                Ok(line) if wanted(&line) => return Some(line),
                Ok(_) => {}
                Err(NoLine::Closed) => return None,
                Err(NoLine::TimedOut) => {
                    panic!("timed out waiting for {what}:\n{}", self.output())
                }
            }
        }
    }

    /// Reads lines until `n` satisfied `wanted` or stdout closed; returns how many did.
    pub fn count_lines(&mut self, n: u64, wanted: impl Fn(&str) -> bool) -> u64 {
        let mut seen = 0;
        while seen < n {
            match self.next_line() {
                Some(line) if wanted(&line) => seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        seen
    }

    /// [`Child::count_lines`], panicking with what the child printed if `deadline` passes first.
    pub fn count_lines_by(
        &mut self,
        n: u64,
        deadline: std::time::Instant,
        wanted: impl Fn(&str) -> bool,
    ) -> u64 {
        let mut seen = 0;
        while seen < n {
            match self.next_line_by(deadline) {
                Ok(line) if wanted(&line) => seen += 1,
                Ok(_) => {}
                Err(NoLine::Closed) => break,
                Err(NoLine::TimedOut) => panic!(
                    "timed out after {seen} of {n} awaited line(s):\n{}",
                    self.output()
                ),
            }
        }
        seen
    }

    /// Writes a line to the child's stdin (spawned with `stdin`).
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.process.stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}").expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(
            status.success(),
            "kill -{signal} {} failed: {status}",
            self.pid()
        );
    }

    /// SIGKILLs the child and reaps it. Returns true if the kill ended it, false if it had exited on its own
    /// (which it must have done successfully).
    pub fn kill(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let _ = self.process.kill();
        let status = self.process.wait().expect("reap the child");
        if status.signal() == Some(9) {
            return true;
        }
        if !status.success() {
            panic!("the child failed on its own ({status}):\n{}", self.output());
        }
        false
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_wait().expect("poll the child")
    }

    /// Waits for the child to exit, until `deadline` at most: `None` if it is still running then.
    pub fn wait_by(&mut self, deadline: std::time::Instant) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit and for the end of its stdout, until `deadline`; returns its exit status
    /// and every line it printed. Panics, with what it printed, if the deadline passes first.
    pub fn finish_by(
        &mut self,
        deadline: std::time::Instant,
    ) -> (std::process::ExitStatus, Vec<String>) {
        let Some(status) = self.wait_by(deadline) else {
            let name = self.name;
            panic!(
                "`ratchet {name}` still running at its deadline:\n{}",
                self.output()
            );
        };
        loop {
            match self.next_line_by(deadline) {
                Ok(_) => {}
                Err(NoLine::Closed) => break,
                Err(NoLine::TimedOut) => {
                    let name = self.name;
                    panic!(
                        "`ratchet {name}` exited ({status}) but its stdout stayed open past the deadline:\n{}",
                        self.output()
                    )
                }
            }
        }
        (status, self.printed.clone())
    }

    /// What the child printed so far, for failure messages.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
        let stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "--- stdout of `ratchet {}`\n{}\n--- stderr (last 64 KiB)\n{}",
            self.name,
            self.printed.join("\n"),
            String::from_utf8_lossy(&stderr)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The address after `option` in `words` (`--sled-agent ADDR`).
pub fn address_after(words: &[String], option: &str) -> std::net::SocketAddr {
    words
        .iter()
        .position(|w| w == option)
        .and_then(|i| words.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {option} ADDR in {words:?}"))
}

/// `ratchet sim` as a child (its stdin piped, for `counters`), the options naming its services
/// (`--sled-agent A --pantry P`), and clients of both.
pub struct Sim {
    pub child: Child,
    pub options: Vec<String>,
    pub sled_agent: ratchet_sim::SledAgentClient,
    pub pantry: ratchet_sim::PantryClient,
}

impl Sim {
    /// Starts `ratchet sim` and reads its addresses (within 60 s).
    pub fn start(ratchet: &Path, dir: &Path) -> Sim {
        let mut child = Child::spawn(ratchet, dir, "sim", ["sim"], true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let services_line = child
            .read_until_by(deadline, "`ratchet sim`'s addresses", |l| {
                l.starts_with("services: ")
            })
            .unwrap_or_else(|| panic!("`ratchet sim` printed no addresses:\n{}", child.output()));
        let options: Vec<String> = services_line
            .trim_start_matches("services: ")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let sled_agent = ratchet_sim::SledAgentClient::new(address_after(&options, "--sled-agent"));
        let pantry = ratchet_sim::PantryClient::new(address_after(&options, "--pantry"));
        Sim {
            child,
            options,
            sled_agent,
            pantry,
        }
    }

    /// The services' request counters (`counters` on its stdin), as JSON: `{"sled_agent": {"vmm_ensure":
    /// {"applied": N, ...}, ...}, "pantry": {...}}`.
    pub fn counters(&mut self) -> serde_json::Value {
        self.child.send("counters");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let line = self
            .child
            .read_until_by(deadline, "`ratchet sim`'s counters", |l| {
                l.starts_with("counters ")
            })
            .unwrap_or_else(|| {
                panic!(
                    "`ratchet sim` printed no counters:\n{}",
                    self.child.output()
                )
            });
        serde_json::from_str(line.trim_start_matches("counters ")).expect("counters JSON")
    }
}

/// A `(key, count)` row.
#[derive(Debug, diesel::QueryableByName)]
pub struct Count {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub key: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub count: i64,
}

/// How many sagas are in each state.
pub async fn saga_states(
    conn: &mut diesel_async::AsyncPgConnection,
) -> std::collections::BTreeMap<String, i64> {
    use diesel_async::RunQueryDsl;
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT saga_state AS key, count(*) AS count FROM saga GROUP BY saga_state",
    )
    .load(conn)
    .await
    .expect("count the sagas by state");
    rows.into_iter().map(|c| (c.key, c.count)).collect()
}

/// Fails, with each one's reason, if a saga is stuck or abandoned.
pub async fn assert_no_saga_given_up(
    conn: &mut diesel_async::AsyncPgConnection,
    states: &std::collections::BTreeMap<String, i64>,
) {
    use diesel_async::RunQueryDsl;
    if !states.contains_key("stuck") && !states.contains_key("abandoned") {
        return;
    }
    // The state as ratchet's readers see it: a stuck saga may be recorded `unwinding` (an Omicron-readable log).
    let state = ratchet_store::EFFECTIVE_STATE_SQL;
    let given_up: Vec<Count> = diesel::sql_query(format!(
        "SELECT id::text || ' ' || {state}::text || ' at ' || COALESCE(stuck_node, '-') || ': ' \
                || COALESCE(stuck_reason, abandon_comment, '-') AS key, 1::int8 AS count \
         FROM saga WHERE {state} IN ('stuck', 'abandoned') ORDER BY id"
    ))
    .load(conn)
    .await
    .expect("list the stuck and abandoned sagas");
    let reasons: Vec<&str> = given_up.iter().map(|c| c.key.as_str()).collect();
    panic!(
        "no saga may be stuck or abandoned: {states:?}\n{}",
        reasons.join("\n")
    );
}

/// The instance-create sagas of a load test: `--nics N --create-disks C --disks A --external-ip --start` (the
/// domain checks assume an ephemeral IP and a start, so every kind of node runs).
#[derive(Clone, Copy, Debug)]
pub struct InstanceCreateShape {
    pub nics: usize,
    pub create_disks: usize,
    pub attach_disks: usize,
}

impl InstanceCreateShape {
    /// Two NICs, two new disks and one existing: every kind of node.
    pub const ALL_NODES: InstanceCreateShape = InstanceCreateShape {
        nics: 2,
        create_disks: 2,
        attach_disks: 1,
    };

    pub fn disks(&self) -> usize {
        self.create_disks + self.attach_disks
    }

    /// The options of `ratchet run instance-create` for this shape.
    pub fn run_options(&self) -> Vec<String> {
        [
            "--nics".to_owned(),
            self.nics.to_string(),
            "--create-disks".to_owned(),
            self.create_disks.to_string(),
            "--disks".to_owned(),
            self.attach_disks.to_string(),
            "--external-ip".to_owned(),
            "--start".to_owned(),
        ]
        .into()
    }

    /// The commits of a saga of this shape that succeeded, by node name.
    pub fn expected_commits(&self) -> std::collections::BTreeSet<String> {
        let mut nodes: Vec<String> = vec!["create_instance_record".into()];
        nodes.extend((0..self.nics).map(|i| format!("create_nic_{i}")));
        nodes.extend(["allocate_snat_ip".into(), "allocate_ephemeral_ip".into()]);
        nodes.extend((0..self.create_disks).map(|i| format!("create_disk_record_{i}")));
        nodes.extend((0..self.create_disks).map(|i| format!("finalize_disk_{i}")));
        nodes.extend((0..self.disks()).map(|i| format!("attach_disk_{i}/attach_disk")));
        nodes.extend(
            [
                "set_boot_disk",
                "move_to_stopped",
                "reserve_sled",
                "ensure_vmm",
                "mark_running",
            ]
            .map(String::from),
        );
        nodes.into_iter().collect()
    }
}

/// What [`check_instance_create_domain`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainOutcome {
    pub succeeded: usize,
    pub unwound: usize,
}

/// Exactly-once on the domain, for `count` instance-create sagas of `shape` at rest (every one `done`) on a
/// database whose only sagas they are, run against the sled agent whose request counters are `counters` (see
/// [`Sim::counters`]):
///
/// - a saga that succeeded has exactly the commits its DAG implies and no compensation; one that unwound
///   compensated exactly what it committed;
/// - each live instance is the instance of exactly one succeeded saga (and each succeeded saga's instance is
///   live), running (state `vmm` at state generation 3: inserted, two transitions), with exactly its NICs, its
///   SNAT and ephemeral IPs, its disks attached in distinct slots (each at generation 3: created, finalized,
///   attached), one sled reservation, the VMM's; the totals of disks, NICs, IPs and reservations match the
///   sagas' outcomes;
/// - the sled agent runs exactly one VMM per running instance (its active one), and applied exactly one
///   `vmm_ensure` per `ensure_vmm` commit record and one `vmm_unregister` per compensated `ensure_vmm`: every
///   retry (after a crash, by another executor) was answered from its idempotency record, not applied again.
///
/// (The saga log's primary keys already make a second commit or compensation record per node impossible, so
/// nothing here counts those.)
pub async fn check_instance_create_domain(
    conn: &mut diesel_async::AsyncPgConnection,
    shape: InstanceCreateShape,
    count: usize,
    sled_agent: &ratchet_sim::SledAgentClient,
    counters: &serde_json::Value,
) -> DomainOutcome {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Uuid as SqlUuid};
    use diesel_async::RunQueryDsl;
    use std::collections::{BTreeMap, BTreeSet};
    use uuid::Uuid;

    #[derive(diesel::QueryableByName)]
    struct SagaRecords {
        #[diesel(sql_type = SqlUuid)]
        saga_id: Uuid,
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Bool)]
        failed: bool,
        #[diesel(sql_type = Array<Text>)]
        commits: Vec<String>,
        #[diesel(sql_type = Array<Text>)]
        undone: Vec<String>,
        #[diesel(sql_type = Array<Text>)]
        skipped: Vec<String>,
        #[diesel(sql_type = Nullable<Text>)]
        instance_id: Option<String>,
    }
    #[derive(diesel::QueryableByName)]
    struct InstanceRow {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = BigInt)]
        state_generation: i64,
        #[diesel(sql_type = Nullable<SqlUuid>)]
        active_propolis_id: Option<Uuid>,
        #[diesel(sql_type = Bool)]
        has_boot_disk: bool,
        #[diesel(sql_type = BigInt)]
        nics: i64,
        #[diesel(sql_type = BigInt)]
        nic_slots: i64,
        #[diesel(sql_type = BigInt)]
        snat_ips: i64,
        #[diesel(sql_type = BigInt)]
        ephemeral_ips: i64,
        #[diesel(sql_type = BigInt)]
        external_ips: i64,
        #[diesel(sql_type = BigInt)]
        disks: i64,
        #[diesel(sql_type = BigInt)]
        disk_slots: i64,
        #[diesel(sql_type = BigInt)]
        reservations: i64,
        #[diesel(sql_type = BigInt)]
        vmm_reservations: i64,
    }

    let sagas: Vec<SagaRecords> = diesel::sql_query(
        "SELECT s.id AS saga_id, s.name, \
                EXISTS (SELECT 1 FROM saga_node_event e \
                        WHERE e.saga_id = s.id AND e.event_type = 'failed') AS failed, \
                ARRAY(SELECT node_name FROM saga_commit_record c \
                      WHERE c.saga_id = s.id ORDER BY node_name) AS commits, \
                ARRAY(SELECT node_name FROM saga_compensation_record c \
                      WHERE c.saga_id = s.id AND c.had_commit ORDER BY node_name) AS undone, \
                ARRAY(SELECT node_name FROM saga_compensation_record c \
                      WHERE c.saga_id = s.id AND NOT c.had_commit ORDER BY node_name) AS skipped, \
                (SELECT receipt #>> '{}' FROM saga_commit_record c \
                 WHERE c.saga_id = s.id AND c.node_name = 'create_instance_record') AS instance_id \
         FROM saga AS s",
    )
    .load(conn)
    .await
    .expect("load every saga's records");
    assert_eq!(sagas.len(), count, "{count} sagas, no more, no fewer");
    let expected = shape.expected_commits();
    let mut succeeded_instances: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let mut unwound = 0;
    for saga in &sagas {
        assert_eq!(saga.name, "instance-create", "saga {}", saga.saga_id);
        let commits: BTreeSet<String> = saga.commits.iter().cloned().collect();
        let undone: BTreeSet<String> = saga.undone.iter().cloned().collect();
        if saga.failed {
            unwound += 1;
            assert_eq!(
                commits, undone,
                "saga {} unwound: every commit compensated, and nothing compensated that did not commit",
                saga.saga_id
            );
        } else {
            assert_eq!(
                commits, expected,
                "saga {} succeeded with exactly its DAG's commits",
                saga.saga_id
            );
            assert!(
                undone.is_empty() && saga.skipped.is_empty(),
                "saga {} succeeded, yet compensated {:?} {:?}",
                saga.saga_id,
                saga.undone,
                saga.skipped
            );
            let instance: Uuid = saga
                .instance_id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .expect("the instance id in create_instance_record's receipt");
            if let Some(other) = succeeded_instances.insert(instance, saga.saga_id) {
                panic!(
                    "instance {instance} is the instance of two succeeded sagas, {other} and {}",
                    saga.saga_id
                );
            }
        }
    }
    let succeeded = succeeded_instances.len();
    println!("{succeeded} saga(s) succeeded, {unwound} unwound");
    assert_eq!(succeeded + unwound, count);
    assert!(
        succeeded > 0,
        "no saga succeeded: the domain checks below would check nothing"
    );

    // The domain: each live instance is one succeeded saga's, complete, and nothing was made twice.
    let instances: Vec<InstanceRow> = diesel::sql_query(
        "SELECT i.id, i.state, i.state_generation, i.active_propolis_id, \
                (i.boot_disk_id IS NOT NULL) AS has_boot_disk, \
                (SELECT count(*) FROM network_interface n \
                 WHERE n.instance_id = i.id AND n.time_deleted IS NULL) AS nics, \
                (SELECT count(DISTINCT n.slot) FROM network_interface n \
                 WHERE n.instance_id = i.id AND n.time_deleted IS NULL) AS nic_slots, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL \
                   AND e.kind = 'snat' AND e.state = 'attached') AS snat_ips, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL \
                   AND e.kind = 'ephemeral' AND e.state = 'attached') AS ephemeral_ips, \
                (SELECT count(*) FROM external_ip e WHERE e.parent_id = i.id AND e.time_deleted IS NULL) \
                  AS external_ips, \
                (SELECT count(*) FROM disk d WHERE d.attach_instance_id = i.id AND d.time_deleted IS NULL \
                   AND d.disk_state = 'attached' AND d.state_generation = 3) AS disks, \
                (SELECT count(DISTINCT d.slot) FROM disk d \
                 WHERE d.attach_instance_id = i.id AND d.time_deleted IS NULL) AS disk_slots, \
                (SELECT count(*) FROM sled_resource_vmm r WHERE r.instance_id = i.id) AS reservations, \
                (SELECT count(*) FROM sled_resource_vmm r \
                 WHERE r.instance_id = i.id AND r.id = i.active_propolis_id) AS vmm_reservations \
         FROM instance AS i WHERE i.time_deleted IS NULL",
    )
    .load(conn)
    .await
    .expect("load the live instances");
    let live: BTreeSet<Uuid> = instances.iter().map(|i| i.id).collect();
    let succeeded_set: BTreeSet<Uuid> = succeeded_instances.keys().copied().collect();
    assert_eq!(
        live, succeeded_set,
        "the live instances are exactly those of the succeeded sagas"
    );
    let n = |x: usize| x as i64;
    for i in &instances {
        let got = (
            i.state.as_str(),
            i.state_generation,
            i.has_boot_disk,
            (i.nics, i.nic_slots),
            (i.snat_ips, i.ephemeral_ips, i.external_ips),
            (i.disks, i.disk_slots),
            (i.reservations, i.vmm_reservations),
        );
        let want = (
            "vmm",
            3,
            true,
            (n(shape.nics), n(shape.nics)),
            (1, 1, 2),
            (n(shape.disks()), n(shape.disks())),
            (1, 1),
        );
        assert_eq!(
            got, want,
            "instance {} (saga {}): (state, generation, boot disk, (NICs, slots), (SNAT, ephemeral, all IPs), \
             (disks attached at generation 3, slots), (sled reservations, the VMM's))",
            i.id, succeeded_instances[&i.id]
        );
    }
    let disks: Vec<Count> = diesel::sql_query(
        "SELECT disk_state AS key, count(*) AS count FROM disk WHERE time_deleted IS NULL GROUP BY disk_state",
    )
    .load(conn)
    .await
    .expect("count the live disks");
    let disks: BTreeMap<String, i64> = disks.into_iter().map(|c| (c.key, c.count)).collect();
    let mut want_disks = BTreeMap::new();
    if succeeded > 0 {
        want_disks.insert("attached".to_owned(), n(succeeded * shape.disks()));
    }
    if unwound > 0 && shape.attach_disks > 0 {
        // An unwound saga deletes the disks it created and detaches the existing ones it attached.
        want_disks.insert("detached".to_owned(), n(unwound * shape.attach_disks));
    }
    assert_eq!(disks, want_disks, "live disks by state");
    let totals: Vec<Count> = diesel::sql_query(
        "SELECT 'nics' AS key, count(*) AS count FROM network_interface WHERE time_deleted IS NULL \
         UNION ALL SELECT 'external_ips', count(*) FROM external_ip WHERE time_deleted IS NULL \
         UNION ALL SELECT 'sled_reservations', count(*) FROM sled_resource_vmm",
    )
    .load(conn)
    .await
    .expect("count the live NICs, IPs and reservations");
    let totals: BTreeMap<String, i64> = totals.into_iter().map(|c| (c.key, c.count)).collect();
    let s = n(succeeded);
    assert_eq!(
        totals,
        BTreeMap::from([
            ("external_ips".to_owned(), 2 * s),
            ("nics".to_owned(), n(shape.nics) * s),
            ("sled_reservations".to_owned(), s),
        ]),
        "live NICs, external IPs and sled reservations"
    );

    // The sled agent: one VMM per running instance, each ensure applied once.
    let vmms = sled_agent.list_vmms().await.expect("the sled agent's VMMs");
    let propolis: BTreeMap<Uuid, Option<Uuid>> = instances
        .iter()
        .map(|i| (i.id, i.active_propolis_id))
        .collect();
    let vmm_instances: BTreeSet<Uuid> = vmms.iter().map(|v| v.instance_id).collect();
    assert_eq!(vmm_instances, live, "one VMM per running instance");
    assert_eq!(vmms.len(), live.len(), "one VMM per running instance");
    for vmm in &vmms {
        assert_eq!(
            propolis.get(&vmm.instance_id),
            Some(&Some(vmm.propolis_id)),
            "VMM {vmm:?} is its instance's active one"
        );
    }
    let ensure_records: Vec<Count> = diesel::sql_query(
        "SELECT 'commits' AS key, count(*) AS count FROM saga_commit_record WHERE node_name = 'ensure_vmm' \
         UNION ALL SELECT 'compensations', count(*) FROM saga_compensation_record \
                   WHERE node_name = 'ensure_vmm' AND had_commit",
    )
    .load(conn)
    .await
    .expect("count the ensure_vmm records");
    let ensure_records: BTreeMap<String, i64> = ensure_records
        .into_iter()
        .map(|c| (c.key, c.count))
        .collect();
    let applied = |op: &str| counters["sled_agent"][op]["applied"].as_i64();
    println!(
        "sled agent: vmm_ensure {}, vmm_unregister {}; ensure_vmm records: {ensure_records:?}",
        counters["sled_agent"]["vmm_ensure"], counters["sled_agent"]["vmm_unregister"]
    );
    assert_eq!(
        (applied("vmm_ensure"), applied("vmm_unregister")),
        (
            ensure_records.get("commits").copied(),
            ensure_records.get("compensations").copied()
        ),
        "the sled agent applied one ensure per ensure_vmm commit record and one unregister per compensated \
         ensure_vmm: {counters}"
    );
    DomainOutcome { succeeded, unwound }
}
