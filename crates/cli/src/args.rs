//! A small argument parser: positional words, `--flag`, and `--option VALUE` (or `--option=VALUE`).

use anyhow::{Context, bail};
use std::str::FromStr;

pub struct Args {
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

/// Options that take a value (everything else starting with `--` is a flag).
const VALUED: &[&str] = &[
    "--database-url",
    "--data-dir",
    "--sec-id",
    "--state",
    "--fail-after-commit",
    "--name",
    "--price",
    "--reason",
    "--from",
    "--saga",
    "--fault",
    "--json",
    "--parallel",
    "--disks",
    "--create-disks",
    "--nics",
    "--count",
    "--concurrency",
    "--pool-size",
    "--pool-timeout-ms",
    "--fail-refetch",
    "--sled-agent",
    "--pantry",
];

impl Args {
    pub fn from_env() -> Args {
        Args::parse(std::env::args().skip(1))
    }

    pub fn parse(words: impl IntoIterator<Item = String>) -> Args {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            if let Some((key, value)) = word.split_once('=').filter(|_| word.starts_with("--")) {
                options.push((key.to_owned(), Some(value.to_owned())));
            } else if VALUED.contains(&word.as_str()) {
                let value = words.next();
                options.push((word, value));
            } else if word.starts_with("--") {
                options.push((word, None));
            } else {
                positional.push(word);
            }
        }
        Args {
            positional,
            options,
        }
    }

    pub fn positional(&self) -> &[String] {
        &self.positional
    }

    pub fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(key, _)| key == name)
    }

    /// The value of `--name`, parsed; `None` if absent.
    pub fn value<T: FromStr>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.options.iter().rev().find(|(key, _)| key == name) {
            None => Ok(None),
            Some((_, None)) => bail!("{name} needs a value"),
            Some((_, Some(value))) => value
                .parse()
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("bad value {value:?} for {name}")),
        }
    }

    /// Every value of a repeatable `--name`, in order.
    pub fn values(&self, name: &str) -> anyhow::Result<Vec<String>> {
        self.options
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| {
                value
                    .clone()
                    .with_context(|| format!("{name} needs a value"))
            })
            .collect()
    }

    /// Fails on any option not in `known`.
    pub fn only(&self, known: &[&str]) -> anyhow::Result<()> {
        for (key, _) in &self.options {
            if !known.contains(&key.as_str())
                && !["--database-url", "--data-dir", "--sec-id"].contains(&key.as_str())
            {
                bail!("unknown option {key} (see `ratchet --help`)");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_words_flags_and_values() {
        let args = Args::parse(
            [
                "sagas",
                "list",
                "--state",
                "stuck",
                "--data-dir=/x",
                "--verbose",
            ]
            .map(String::from),
        );
        assert_eq!(args.positional(), ["sagas", "list"]);
        assert_eq!(
            args.value::<String>("--state").unwrap().as_deref(),
            Some("stuck")
        );
        assert_eq!(
            args.value::<String>("--data-dir").unwrap().as_deref(),
            Some("/x")
        );
        assert!(args.flag("--verbose"));
        assert!(args.only(&["--state"]).is_err());
        assert!(
            Args::parse(["--state".to_owned()])
                .value::<String>("--state")
                .is_err()
        );
    }
}
