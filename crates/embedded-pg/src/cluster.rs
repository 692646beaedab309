//! One private PostgreSQL cluster: a data directory, a socket directory, a log file and a lock file.

use crate::os_user::OsUser;
use crate::{EmbeddedPgError, PgBinaries};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The longest socket directory we accept before relocating: the kernel's limit for a socket path is 108 bytes
/// and PostgreSQL appends `/.s.PGSQL.5432` (14 bytes).
const MAX_SOCKET_DIR_LEN: usize = 90;

/// A private PostgreSQL cluster rooted at one directory.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The directory the caller asked for.
    requested: PathBuf,
    /// Where the cluster actually lives: `requested`, or a directory under the temp directory when the
    /// `postgres` user cannot reach `requested` or its path is too long for a socket.
    base: PathBuf,
    binaries: PgBinaries,
    owner: Option<OsUser>,
}

/// What `pg_ctl status` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterStatus {
    /// The data directory does not exist yet.
    NotInitialized,
    /// Initialised, no server running.
    Stopped,
    /// A server is running on the socket.
    Running,
}

impl Cluster {
    /// Describes the cluster for `dir` (nothing is created yet). Fails only when no server binaries exist or
    /// no user can run them.
    pub fn new(dir: &Path) -> Result<Cluster, EmbeddedPgError> {
        let binaries = PgBinaries::locate()?;
        let owner = OsUser::server_owner()?;
        let requested = absolute(dir)?;
        let base = choose_base(&requested, owner);
        if base != requested {
            tracing::info!(
                requested = %requested.display(),
                actual = %base.display(),
                "the embedded PostgreSQL cluster lives under the temp directory: the postgres user cannot \
                 reach the requested directory, or its path is too long for a Unix socket"
            );
        }
        Ok(Cluster {
            requested,
            base,
            binaries,
            owner,
        })
    }

    /// The directory the caller asked for.
    pub fn requested_dir(&self) -> &Path {
        &self.requested
    }

    /// The directory the cluster lives in (see [`Cluster::new`]).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.base.join("s")
    }

    pub fn log_file(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    /// A connection URL for database `dbname`, accepted by both `psql` and ratchet.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://postgres@/{dbname}?host={}",
            self.socket_dir().display()
        )
    }

    /// What `pg_ctl status` reports.
    pub fn status(&self) -> Result<ClusterStatus, EmbeddedPgError> {
        if !self.data_dir().join("PG_VERSION").is_file() {
            return Ok(ClusterStatus::NotInitialized);
        }
        let mut command = self.command("pg_ctl");
        command.arg("status").arg("-D").arg(self.data_dir());
        let output = command.output().map_err(|source| EmbeddedPgError::Io {
            what: "running",
            path: self.binaries.path("pg_ctl"),
            source,
        })?;
        // pg_ctl status: 0 = running, 3 = not running, 4 = no accessible data directory.
        match output.status.code() {
            Some(0) => Ok(ClusterStatus::Running),
            Some(3) => Ok(ClusterStatus::Stopped),
            _ => Err(command_failed("pg_ctl status", &output)),
        }
    }

    /// Initialises the cluster if needed and starts the server if it is not running. Idempotent, and safe to
    /// call from several processes at once. Returns whether this call started the server.
    pub fn start(&self) -> Result<bool, EmbeddedPgError> {
        self.create_base()?;
        let _lock = self.lock()?;
        match self.status()? {
            ClusterStatus::Running => return Ok(false),
            ClusterStatus::NotInitialized => self.initdb()?,
            ClusterStatus::Stopped => {}
        }
        let socket_dir = self.socket_dir();
        create_dir(&socket_dir)?;
        if let Some(owner) = self.owner {
            owner.chown(&socket_dir)?;
        }
        let mut command = self.command("pg_ctl");
        command
            .arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .arg("-w")
            // A cluster whose server died (a power cut, a full disk) first syncs its whole data directory and
            // replays its WAL: minutes, not seconds, for a large one on a loaded machine (seen: 100 s of
            // fsync alone). Waiting for it beats failing a start that would have succeeded.
            .args(["-t", "600"]);
        run(command, "pg_ctl start")?;
        tracing::info!(socket = %socket_dir.display(), "embedded PostgreSQL started");
        Ok(true)
    }

    /// Stops the server (fast shutdown: open transactions roll back). A no-op if it is not running.
    pub fn stop(&self) -> Result<(), EmbeddedPgError> {
        let _lock = self.lock()?;
        if self.status()? != ClusterStatus::Running {
            return Ok(());
        }
        let mut command = self.command("pg_ctl");
        command
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w"]);
        run(command, "pg_ctl stop")
    }

    fn initdb(&self) -> Result<(), EmbeddedPgError> {
        let mut command = self.command("initdb");
        command.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]);
        run(command, "initdb")?;
        // Our settings go into the cluster's own configuration, so `pg_ctl start` needs no options and a
        // server started by hand behaves the same.
        let conf = self.data_dir().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|source| EmbeddedPgError::Io {
                what: "opening",
                path: conf.clone(),
                source,
            })?;
        let settings = format!(
            "\n# ratchet: a private server on a Unix socket only.\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             # CockroachDB's default, so that serialization-failure retry paths are exercised.\n\
             default_transaction_isolation = 'serializable'\n\
             max_connections = 400\n\
             fsync = on\n",
            self.socket_dir().display()
        );
        file.write_all(settings.as_bytes())
            .map_err(|source| EmbeddedPgError::Io {
                what: "writing",
                path: conf,
                source,
            })
    }

    fn create_base(&self) -> Result<(), EmbeddedPgError> {
        create_dir(&self.base)?;
        if let Some(owner) = self.owner {
            owner.chown(&self.base)?;
        }
        Ok(())
    }

    /// An exclusive lock on the cluster, held while it is inspected, initialised or started.
    fn lock(&self) -> Result<File, EmbeddedPgError> {
        let path = self.base.join("lock");
        let file = File::create(&path).map_err(|source| EmbeddedPgError::Io {
            what: "creating lock file",
            path: path.clone(),
            source,
        })?;
        file.lock().map_err(|source| EmbeddedPgError::Io {
            what: "locking",
            path,
            source,
        })?;
        Ok(file)
    }

    /// A command for one of the server binaries, run as the server's owner, from the cluster's directory (the
    /// `postgres` user may not be able to enter our working directory).
    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(self.binaries.path(binary));
        command.current_dir(&self.base);
        if let Some(owner) = self.owner {
            owner.apply(&mut command);
        }
        command
    }
}

/// Where the cluster for `requested` lives: there, unless the server's user cannot reach it or its socket path
/// would be too long, in which case a directory under the temp directory named after `requested`.
fn choose_base(requested: &Path, owner: Option<OsUser>) -> PathBuf {
    let reachable = owner.is_none_or(|owner| owner.can_traverse(requested));
    let short_enough = requested.join("s").as_os_str().len() <= MAX_SOCKET_DIR_LEN;
    if reachable && short_enough {
        return requested.to_owned();
    }
    let name = format!(
        "ratchet-pg-{:016x}",
        fnv1a(requested.as_os_str().as_encoded_bytes())
    );
    std::env::temp_dir().join(name)
}

/// FNV-1a: a hash that is the same in every build and every run, unlike std's `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn absolute(dir: &Path) -> Result<PathBuf, EmbeddedPgError> {
    std::path::absolute(dir).map_err(|source| EmbeddedPgError::Io {
        what: "resolving",
        path: dir.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), EmbeddedPgError> {
    std::fs::create_dir_all(dir).map_err(|source| EmbeddedPgError::Io {
        what: "creating directory",
        path: dir.to_owned(),
        source,
    })
}

fn run(mut command: Command, what: &str) -> Result<(), EmbeddedPgError> {
    let output = command.output().map_err(|source| EmbeddedPgError::Io {
        what: "running",
        path: PathBuf::from(command.get_program()),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(command_failed(what, &output))
    }
}

fn command_failed(what: &str, output: &std::process::Output) -> EmbeddedPgError {
    EmbeddedPgError::CommandFailed {
        command: what.to_owned(),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn long_paths_move_under_the_temp_directory() {
        let long = PathBuf::from(format!("/{}", "x".repeat(120)));
        let base = choose_base(&long, None);
        assert!(base.starts_with(std::env::temp_dir()), "{}", base.display());
        assert_eq!(base, choose_base(&long, None), "the relocation is stable");
        let short = PathBuf::from("/work/short/.ratchet");
        assert_eq!(choose_base(&short, None), short);
    }
}
