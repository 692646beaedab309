//! The operating-system user the server runs as.
//!
//! PostgreSQL refuses to run as root. When we are root we run every server binary as `postgres`; otherwise as
//! ourselves. We read `/etc/passwd` rather than call into libc so that this crate needs no C bindings.

use crate::EmbeddedPgError;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The user to run the server as, when that is not the current user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OsUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl OsUser {
    /// `Some(postgres)` when this process is root, `None` when the server can run as the current user.
    pub(crate) fn server_owner() -> Result<Option<OsUser>, EmbeddedPgError> {
        if current_uid() != 0 {
            return Ok(None);
        }
        let passwd =
            std::fs::read_to_string("/etc/passwd").map_err(|source| EmbeddedPgError::Io {
                what: "reading",
                path: "/etc/passwd".into(),
                source,
            })?;
        passwd
            .lines()
            .find_map(|line| {
                let mut fields = line.split(':');
                if fields.next()? != "postgres" {
                    return None;
                }
                let _password = fields.next()?;
                let uid = fields.next()?.parse().ok()?;
                let gid = fields.next()?.parse().ok()?;
                Some(OsUser { uid, gid })
            })
            .map(Some)
            .ok_or(EmbeddedPgError::NoPostgresUser)
    }

    /// Makes `command` run as this user.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }

    /// Hands `path` to this user (we are root, so this is allowed).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), EmbeddedPgError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|source| {
            EmbeddedPgError::Io {
                what: "handing to the postgres user",
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Whether this user can traverse every directory from `/` down to `dir` (checks the "other" or group
    /// execute bit, or ownership). Used to decide whether a data directory must be relocated.
    pub(crate) fn can_traverse(&self, dir: &Path) -> bool {
        dir.ancestors()
            .all(|ancestor| match std::fs::metadata(ancestor) {
                Ok(meta) => {
                    let mode = meta.mode();
                    (meta.uid() == self.uid && mode & 0o100 != 0)
                        || (meta.gid() == self.gid && mode & 0o010 != 0)
                        || mode & 0o001 != 0
                }
                // Not there yet: it will be created by us, and owned by that user.
                Err(_) => true,
            })
    }
}

/// The real uid of this process, read from `/proc/self` (no libc).
pub(crate) fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}
