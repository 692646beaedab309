//! Cross-crate tests (see `tests/`) and what they share: reading a child process's progress lines.

use std::io::BufRead;

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
