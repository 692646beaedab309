//! The CockroachDB rendering of ratchet's schema changes (`ratchet_store::COCKROACHDB_SCHEMA_SQL`)
//! defines what the PostgreSQL migrations (`ratchet_store::MIGRATIONS_SQL`) define, checked on
//! PostgreSQL: both are applied to a database holding only Omicron's tables, and the two schemas are compared
//! (columns with types, lengths, nullability and defaults; constraints with their definitions; indexes; enum
//! labels). A column, constraint, index or enum value added to one and not to the other fails it.
//!
//! Every CockroachDB file is applied as written, except where PostgreSQL lacks the statement's form
//! ([`postgresql_equivalent`]). What this cannot check is CockroachDB itself (see the files' README).

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ratchet_store::{COCKROACHDB_SCHEMA_SQL, MIGRATIONS_SQL, establish};
use ratchet_test_utils::omicron::OMICRON_SAGA_SCHEMA;
use ratchet_test_utils::testing::test_server;

/// CockroachDB's `ADD CONSTRAINT IF NOT EXISTS`, which PostgreSQL lacks.
const ADD_CONSTRAINT_IF_NOT_EXISTS: &str = "ADD CONSTRAINT IF NOT EXISTS";

/// What PostgreSQL runs for a CockroachDB file: the file as written, except that a statement with
/// `ADD CONSTRAINT IF NOT EXISTS` runs without `IF NOT EXISTS`, in a `DO` block that ignores
/// `duplicate_object` (the constraint exists): the PostgreSQL migration's own form. The one mechanical
/// rewrite; everything else the files say is PostgreSQL too.
fn postgresql_equivalent(sql: &str) -> String {
    if sql.contains(ADD_CONSTRAINT_IF_NOT_EXISTS) {
        format!(
            "DO $$ BEGIN\n{}\nEXCEPTION WHEN duplicate_object THEN NULL;\nEND $$;",
            sql.replace(ADD_CONSTRAINT_IF_NOT_EXISTS, "ADD CONSTRAINT")
        )
    } else {
        sql.to_owned()
    }
}

/// A schema as PostgreSQL's catalogs describe it, in the connection's current schema, one sorted list per kind.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    /// `table.column: type(length) nullable default`
    columns: Vec<String>,
    /// `table.name: definition`
    constraints: Vec<String>,
    /// `name: definition`
    indexes: Vec<String>,
    /// `type: label`, in each type's order
    enum_labels: Vec<String>,
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

async fn lines(conn: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    diesel::sql_query(sql)
        .load::<Line>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|l| l.line)
        .collect()
}

async fn shape(conn: &mut AsyncPgConnection) -> Shape {
    Shape {
        columns: lines(
            conn,
            "SELECT table_name || '.' || column_name || ': ' || udt_name \
                 || coalesce('(' || character_maximum_length || ')', '') \
                 || ' nullable=' || is_nullable || ' default=' || coalesce(column_default, 'none') AS line \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             ORDER BY table_name, column_name",
        )
        .await,
        constraints: lines(
            conn,
            "SELECT conrelid::regclass::TEXT || '.' || conname || ': ' || pg_get_constraintdef(oid) AS line \
             FROM pg_constraint WHERE connamespace = current_schema()::regnamespace \
             ORDER BY conrelid::regclass::TEXT, conname",
        )
        .await,
        indexes: lines(
            conn,
            "SELECT indexname || ': ' || indexdef AS line FROM pg_indexes \
             WHERE schemaname = current_schema() ORDER BY indexname",
        )
        .await,
        enum_labels: lines(
            conn,
            "SELECT t.typname || ': ' || e.enumlabel AS line \
             FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
             WHERE t.typnamespace = current_schema()::regnamespace \
             ORDER BY t.typname, e.enumsortorder",
        )
        .await,
    }
}

/// Compares two shapes kind by kind, naming every kind that differs and the lines only one side has.
fn assert_same(postgresql: &Shape, cockroachdb: &Shape, what: &str) {
    let kinds = [
        ("columns", &postgresql.columns, &cockroachdb.columns),
        (
            "constraints",
            &postgresql.constraints,
            &cockroachdb.constraints,
        ),
        ("indexes", &postgresql.indexes, &cockroachdb.indexes),
        (
            "enum labels",
            &postgresql.enum_labels,
            &cockroachdb.enum_labels,
        ),
    ];
    let mut differences = Vec::new();
    for (kind, by_postgresql, by_cockroachdb) in kinds {
        if by_postgresql != by_cockroachdb {
            let only = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
                a.iter().filter(|line| !b.contains(line)).cloned().collect()
            };
            let (missing, extra) = (
                only(by_postgresql, by_cockroachdb),
                only(by_cockroachdb, by_postgresql),
            );
            differences.push(if missing.is_empty() && extra.is_empty() {
                format!("{kind}, in another order: {by_postgresql:?} vs {by_cockroachdb:?}")
            } else {
                format!(
                    "{kind}: only the PostgreSQL migrations have {missing:?}; \
                     only the CockroachDB files have {extra:?}"
                )
            });
        }
    }
    assert!(
        differences.is_empty(),
        "{what}: the schemas differ:\n{}",
        differences.join("\n")
    );
}

async fn apply_postgresql_migrations(conn: &mut AsyncPgConnection) {
    for (name, sql) in MIGRATIONS_SQL {
        conn.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL migration {name}: {e}"));
    }
}

async fn apply_cockroachdb_files(conn: &mut AsyncPgConnection) {
    for (name, sql) in COCKROACHDB_SCHEMA_SQL {
        conn.batch_execute(&postgresql_equivalent(sql))
            .await
            .unwrap_or_else(|e| panic!("CockroachDB file {name}: {e}"));
    }
}

/// On Omicron's tables, the CockroachDB files (applied twice: they are idempotent) build exactly what the
/// PostgreSQL migrations build; applied over the PostgreSQL migrations they change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cockroachdb_files_define_what_the_postgresql_migrations_define() {
    let server = test_server().await.unwrap();
    let by_postgresql = server.blank_database().await.unwrap();
    let by_cockroachdb = server.blank_database().await.unwrap();

    let mut postgresql = establish(&by_postgresql.url).await.unwrap();
    postgresql.batch_execute(OMICRON_SAGA_SCHEMA).await.unwrap();
    apply_postgresql_migrations(&mut postgresql).await;
    let expected = shape(&mut postgresql).await;
    assert!(
        expected
            .columns
            .iter()
            .any(|c| c.starts_with("saga_waiting.")),
        "the PostgreSQL migrations built ratchet's tables: {expected:?}"
    );

    let mut cockroachdb = establish(&by_cockroachdb.url).await.unwrap();
    cockroachdb
        .batch_execute(OMICRON_SAGA_SCHEMA)
        .await
        .unwrap();
    apply_cockroachdb_files(&mut cockroachdb).await;
    assert_same(&expected, &shape(&mut cockroachdb).await, "applied once");
    apply_cockroachdb_files(&mut cockroachdb).await;
    assert_same(&expected, &shape(&mut cockroachdb).await, "applied twice");

    // A database the PostgreSQL migrations built takes the CockroachDB files without a change: the files'
    // names (constraints included) are the migrations' names.
    apply_cockroachdb_files(&mut postgresql).await;
    assert_same(
        &expected,
        &shape(&mut postgresql).await,
        "over the PostgreSQL migrations",
    );

    drop(postgresql);
    drop(cockroachdb);
    server.drop_database(&by_postgresql).await.unwrap();
    server.drop_database(&by_cockroachdb).await.unwrap();
}

/// The rewrite touches only what PostgreSQL lacks: exactly the files with `ADD CONSTRAINT IF NOT EXISTS`, and
/// every other file is applied byte for byte.
#[test]
fn the_postgresql_equivalent_rewrites_only_add_constraint_if_not_exists() {
    let mut rewritten = Vec::new();
    for (name, sql) in COCKROACHDB_SCHEMA_SQL {
        let equivalent = postgresql_equivalent(sql);
        if equivalent != *sql {
            assert!(sql.contains(ADD_CONSTRAINT_IF_NOT_EXISTS), "{name}");
            assert!(!equivalent.contains(ADD_CONSTRAINT_IF_NOT_EXISTS), "{name}");
            rewritten.push(*name);
        }
    }
    assert_eq!(rewritten, ["up07.sql"]);
}
