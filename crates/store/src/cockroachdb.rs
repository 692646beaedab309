//! ratchet's schema changes in CockroachDB's dialect, for a host on CockroachDB (Nexus) that applies them with
//! its own schema tooling.
//!
//! The PostgreSQL migrations ([`crate::pool::MIGRATIONS_SQL`]) use `DO` blocks where PostgreSQL lacks
//! `IF NOT EXISTS`; CockroachDB v22.1 has no `DO` blocks but has the `IF NOT EXISTS` forms, and Omicron applies
//! one schema change per file. So the same changes are kept a second time, in `crates/store/cockroachdb/`, one
//! statement per file, every one idempotent; the first PostgreSQL migration (Omicron's own tables, which Nexus's
//! database holds) has no counterpart there. The directory's README says how Omicron would add them and what
//! was not verified.
//!
//! That the two define the same schema is checked on PostgreSQL (`crates/engine/tests/cockroachdb_schema.rs`):
//! a change to one that the other lacks fails that test. This module's tests check the files' shape, and what
//! PostgreSQL cannot tell apart: an integer column says its width (CockroachDB's `INT` is PostgreSQL's
//! `BIGINT`).

/// ratchet's schema changes (the PostgreSQL migrations 2 to 6) in CockroachDB's dialect, in order, each as
/// (file name, SQL): one schema change per file, no `DO` blocks, each idempotent. Apply each in its own
/// transaction, in this order, on a database holding Omicron's `saga` and `saga_node_event` tables: the first
/// adds the `stuck` value of `saga_state`, which no statement may use in the transaction that adds it.
pub const COCKROACHDB_SCHEMA_SQL: &[(&str, &str)] = &[
    ("up01.sql", include_str!("../cockroachdb/up01.sql")),
    ("up02.sql", include_str!("../cockroachdb/up02.sql")),
    ("up03.sql", include_str!("../cockroachdb/up03.sql")),
    ("up04.sql", include_str!("../cockroachdb/up04.sql")),
    ("up05.sql", include_str!("../cockroachdb/up05.sql")),
    ("up06.sql", include_str!("../cockroachdb/up06.sql")),
    ("up07.sql", include_str!("../cockroachdb/up07.sql")),
    ("up08.sql", include_str!("../cockroachdb/up08.sql")),
    ("up09.sql", include_str!("../cockroachdb/up09.sql")),
    ("up10.sql", include_str!("../cockroachdb/up10.sql")),
    ("up11.sql", include_str!("../cockroachdb/up11.sql")),
    ("up12.sql", include_str!("../cockroachdb/up12.sql")),
    ("up13.sql", include_str!("../cockroachdb/up13.sql")),
];

#[cfg(test)]
mod test {
    use super::COCKROACHDB_SCHEMA_SQL;

    /// The SQL of a file without its comments (`--` to the end of the line, and `/* … */`), trimmed.
    fn without_comments(sql: &str) -> String {
        let mut out = String::new();
        let mut rest = sql;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("--") {
                rest = after.find('\n').map_or("", |end| &after[end..]);
            } else if let Some(after) = rest.strip_prefix("/*") {
                let end = after.find("*/").expect("a block comment is closed");
                rest = &after[end + 2..];
            } else {
                let c = rest.chars().next().unwrap();
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out.trim().to_owned()
    }

    #[test]
    fn the_exported_list_is_every_file_of_the_directory_numbered_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cockroachdb");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let exported: Vec<&str> = COCKROACHDB_SCHEMA_SQL.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, exported);
        let numbered: Vec<String> = (1..=exported.len())
            .map(|n| format!("up{n:02}.sql"))
            .collect();
        assert_eq!(exported, numbered);
    }

    #[test]
    fn each_file_is_one_idempotent_statement_without_a_do_block() {
        for (name, sql) in COCKROACHDB_SCHEMA_SQL {
            let statement = without_comments(sql);
            assert!(statement.ends_with(';'), "{name}: ends its statement");
            assert_eq!(
                statement.matches(';').count(),
                1,
                "{name}: one statement per file"
            );
            let upper = statement.to_uppercase();
            assert!(!upper.contains("DO $"), "{name}: no DO block");
            assert!(upper.contains("IF NOT EXISTS"), "{name}: idempotent");
            // CockroachDB's `INT` and `INTEGER` are 64 bits, PostgreSQL's 32: a file says `INT4` or `BIGINT`. The
            // PostgreSQL-side comparison cannot see this (there both spellings are 32 bits).
            let words: Vec<&str> = upper
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .collect();
            assert!(
                !words.contains(&"INT") && !words.contains(&"INTEGER"),
                "{name}: an integer's width is explicit (INT4 or BIGINT)"
            );
            let changes = [
                "ADD VALUE",
                "ADD COLUMN",
                "ADD CONSTRAINT",
                "CREATE TABLE",
                "CREATE INDEX",
            ];
            let found: Vec<&str> = changes
                .iter()
                .copied()
                .filter(|change| upper.contains(change))
                .collect();
            assert_eq!(found.len(), 1, "{name}: one schema change, found {found:?}");
        }
    }
}
