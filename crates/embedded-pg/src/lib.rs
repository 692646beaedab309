//! A private PostgreSQL server for ratchet's CLI and tests.
//!
//! # Design
//!
//! ratchet's saga log lives in PostgreSQL. A newcomer should not need to set a server up: with no
//! `--database-url` / `DATABASE_URL`, the CLI and the tests run a private cluster made with the machine's own
//! `initdb` and `pg_ctl`. A [`Cluster`] is a data directory plus a Unix socket directory; it listens on no TCP
//! port (`listen_addresses = ''`): two checkouts on one machine take no port to collide on.
//!
//! Invariants:
//! - The server runs with `default_transaction_isolation = serializable`, CockroachDB's default and Nexus's
//!   database, so retry paths (SQLSTATE 40001) are real in every test; `fsync` stays on, so commit counts and
//!   timings are those of a durable database.
//! - PostgreSQL refuses to run as root. When this process is root, every server binary runs as the `postgres`
//!   user (looked up in `/etc/passwd`), and the cluster's directories are owned by it.
//! - The `postgres` user must be able to traverse every parent of the data directory. Where it cannot (a clone
//!   under `/root`), the cluster is placed under the system temp directory instead and a log line says so.
//! - A Unix socket path is limited to about 100 bytes; the socket directory is kept short (relocated under the
//!   temp directory when the data directory's path is long).
//! - Starting is idempotent: `start` on a running cluster is a no-op; concurrent starters (several test
//!   processes at once) serialise on a lock file beside the data directory.
//!
//! The superuser is named `postgres` and local connections use `trust` authentication: the socket
//! directory is the only way in, and it is only reachable on this machine.

mod binaries;
mod cluster;
mod os_user;

pub use binaries::PgBinaries;
pub use cluster::{Cluster, ClusterStatus};

use std::path::PathBuf;

/// Everything that can go wrong managing the private cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    /// No `initdb` / `pg_ctl` on PATH nor under /usr/lib/postgresql/*/bin.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl on PATH and under \
         /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql` on Debian or Ubuntu, \
         or point ratchet at a running server with --database-url / DATABASE_URL"
    )]
    BinariesNotFound,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user in \
         /etc/passwd to run it as; create one (installing the postgresql package does) or run ratchet as \
         an ordinary user"
    )]
    NoPostgresUser,
    /// A file-system operation on the cluster's directories failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL binary ran and failed.
    #[error("{command} failed ({status}); its output:\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
}
