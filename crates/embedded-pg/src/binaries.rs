//! Finding the machine's PostgreSQL server binaries.

use crate::EmbeddedPgError;
use std::path::{Path, PathBuf};

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds `initdb` and `pg_ctl`: first on PATH, then under `/usr/lib/postgresql/*/bin` (the newest major
    /// version wins). Debian does not put the server binaries on PATH, hence the second place.
    pub fn locate() -> Result<PgBinaries, EmbeddedPgError> {
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if has_server_binaries(&dir) {
                    return Ok(PgBinaries { bin_dir: dir });
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                has_server_binaries(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin_dir)| PgBinaries { bin_dir })
            .ok_or(EmbeddedPgError::BinariesNotFound)
    }

    /// The path of one binary, e.g. `pg_ctl`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}
