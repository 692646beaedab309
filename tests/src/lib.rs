//! Cross-crate tests (see `tests/`) and what they share: reading a child process's progress lines, and
//! finding the `ratchet` CLI to run as a child.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod pg_proxy;

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

/// A fresh database with the example saga's tables, a connection to it, and an account holding 100.
pub async fn database_with_account() -> (
    ratchet_store::testing::TestDatabase,
    diesel_async::AsyncPgConnection,
    uuid::Uuid,
) {
    use diesel_async::AsyncConnection;
    let db = ratchet_store::testing::fresh_database(&[&ratchet_engine::example::MIGRATIONS])
        .await
        .expect("database");
    let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let account = ratchet_engine::example::create_account(&mut conn, 100)
        .await
        .expect("account");
    (db, conn, account)
}
