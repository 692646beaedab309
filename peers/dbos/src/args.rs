//! The command line: `dbos-peer --database-url URL --workflows N --concurrency C [--warmup W]`.
//!
//! Parsed by hand, because four flags do not justify a parser crate in a project whose dependency
//! tree is meant to be dbos's own plus the least around it. Every flag takes a value, given either
//! as the next argument or after `=`; an unknown flag, a missing value or a value out of range is
//! an error naming the flag, never a silent default.

use thiserror::Error;

/// What the benchmark was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The PostgreSQL database the workflows write to; DBOS's system schema goes there too.
    pub database_url: String,
    /// How many workflows are timed.
    pub workflows: u32,
    /// How many of them are in flight at once.
    pub concurrency: u32,
    /// How many untimed workflows run first, at the same concurrency ([`DEFAULT_WARMUP`] unless
    /// given).
    pub warmup: u32,
    /// The database on the same server the commit probe watches from, so that its own statements
    /// are not counted against the target database.
    pub monitor_database: String,
    /// The isolation level of DBOS's own (system database) connections.
    pub dbos_isolation: DbosIsolation,
}

/// The isolation level DBOS's own connections run at.
///
/// DBOS is written for PostgreSQL's default, `READ COMMITTED` (its source: "No isolation level is
/// pinned ... On PostgreSQL that is the default"); at `SERIALIZABLE`, which ratchet's server sets
/// as its default, concurrent workflows abort each other's status writes (SQLSTATE 40001) and DBOS
/// retries them after a back-off of about a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbosIsolation {
    /// `READ COMMITTED`, set on DBOS's connections whatever the server's default is.
    ReadCommitted,
    /// Whatever the server's `default_transaction_isolation` is.
    ServerDefault,
}

impl DbosIsolation {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            DbosIsolation::ReadCommitted => "read-committed",
            DbosIsolation::ServerDefault => "server-default",
        }
    }
}

/// A command line that does not describe a run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument `{0}` (usage: {USAGE})")]
    Unknown(String),
    #[error("`{0}` needs a value (usage: {USAGE})")]
    MissingValue(&'static str),
    #[error("`{flag}` must be a whole number of at least {min}, got `{value}`")]
    BadNumber {
        flag: &'static str,
        min: u32,
        value: String,
    },
    #[error("`--dbos-isolation` is `read-committed` or `server-default`, got `{0}`")]
    BadIsolation(String),
    #[error("`{0}` is required (usage: {USAGE})")]
    Required(&'static str),
}

/// The warm-up when `--warmup` is not given: the same as `ratchet bench`'s own.
pub const DEFAULT_WARMUP: u32 = 20;

/// The one-line usage every error repeats.
pub const USAGE: &str = "dbos-peer --database-url URL --workflows N --concurrency C [--warmup W] \
                         [--monitor-database NAME] [--dbos-isolation read-committed|server-default]";

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(arguments: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
        let mut database_url = None;
        let mut workflows = None;
        let mut concurrency = None;
        let mut warmup = DEFAULT_WARMUP;
        let mut monitor_database = "postgres".to_owned();
        let mut dbos_isolation = DbosIsolation::ReadCommitted;

        let mut arguments = arguments.into_iter();
        while let Some(argument) = arguments.next() {
            let (flag, inline) = match argument.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (argument.clone(), None),
            };
            let flag: &'static str = match flag.as_str() {
                "--database-url" => "--database-url",
                "--workflows" => "--workflows",
                "--concurrency" => "--concurrency",
                "--warmup" => "--warmup",
                "--monitor-database" => "--monitor-database",
                "--dbos-isolation" => "--dbos-isolation",
                _ => return Err(ArgsError::Unknown(argument)),
            };
            let value = match inline {
                Some(value) => value,
                None => arguments.next().ok_or(ArgsError::MissingValue(flag))?,
            };
            if value.is_empty() {
                return Err(ArgsError::MissingValue(flag));
            }
            match flag {
                "--database-url" => database_url = Some(value),
                "--workflows" => workflows = Some(number(flag, &value, 1)?),
                "--concurrency" => concurrency = Some(number(flag, &value, 1)?),
                "--warmup" => warmup = number(flag, &value, 0)?,
                "--dbos-isolation" => {
                    dbos_isolation = match value.as_str() {
                        "read-committed" => DbosIsolation::ReadCommitted,
                        "server-default" => DbosIsolation::ServerDefault,
                        _ => return Err(ArgsError::BadIsolation(value)),
                    }
                }
                _ => monitor_database = value,
            }
        }

        Ok(Args {
            database_url: database_url.ok_or(ArgsError::Required("--database-url"))?,
            workflows: workflows.ok_or(ArgsError::Required("--workflows"))?,
            concurrency: concurrency.ok_or(ArgsError::Required("--concurrency"))?,
            warmup,
            monitor_database,
            dbos_isolation,
        })
    }
}

fn number(flag: &'static str, value: &str, min: u32) -> Result<u32, ArgsError> {
    match value.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(ArgsError::BadNumber {
            flag,
            min,
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, ArgsError> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn a_full_command_line_parses_in_both_spellings() {
        let args = parse(
            "--database-url postgres://x/db --workflows=200 --concurrency 8 --warmup=5 \
             --dbos-isolation server-default",
        )
        .unwrap();
        assert_eq!(
            args,
            Args {
                database_url: "postgres://x/db".to_owned(),
                workflows: 200,
                concurrency: 8,
                warmup: 5,
                monitor_database: "postgres".to_owned(),
                dbos_isolation: DbosIsolation::ServerDefault,
            }
        );
    }

    #[test]
    fn bad_input_names_the_flag() {
        assert_eq!(
            parse("--database-url u --workflows 0 --concurrency 1"),
            Err(ArgsError::BadNumber {
                flag: "--workflows",
                min: 1,
                value: "0".to_owned()
            })
        );
        assert_eq!(
            parse("--database-url u --workflows 3"),
            Err(ArgsError::Required("--concurrency"))
        );
        assert_eq!(
            parse("--database-url u --workflows 3 --concurrency 2").map(|a| a.warmup),
            Ok(DEFAULT_WARMUP)
        );
        assert_eq!(
            parse("--database-url u --workflows 3 --concurrency"),
            Err(ArgsError::MissingValue("--concurrency"))
        );
        assert_eq!(
            parse("--database-url u --workflows 3 --concurrency 1 --fast"),
            Err(ArgsError::Unknown("--fast".to_owned()))
        );
        assert_eq!(
            parse("--database-url u --workflows 3 --concurrency 1 --dbos-isolation snapshot"),
            Err(ArgsError::BadIsolation("snapshot".to_owned()))
        );
    }
}
