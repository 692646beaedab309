//! What the saga log needs of the database, checked at start: for an embedder that applies ratchet's
//! migrations with its own schema tooling (`EngineConfig::run_migrations` off), a missing table or column is
//! named at once instead of failing the first saga that touches it.

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::BTreeSet;

/// Every table of the saga log and the columns ratchet reads or writes (the migrations in
/// [`crate::pool::MIGRATIONS_SQL`] create them all).
pub(crate) const REQUIRED: &[(&str, &[&str])] = &[
    (
        "saga",
        &[
            "id",
            "creator",
            "time_created",
            "name",
            "saga_dag",
            "saga_state",
            "current_sec",
            "adopt_generation",
            "adopt_time",
            "abandon_time",
            "abandon_reason",
            "abandon_comment",
            "definition_version",
            "time_finished",
            "stuck_node",
            "stuck_reason",
            "time_stuck",
            "driven_by_ratchet",
        ],
    ),
    (
        "saga_node_event",
        &[
            "saga_id",
            "node_id",
            "event_type",
            "data",
            "event_time",
            "creator",
        ],
    ),
    (
        "saga_commit_record",
        &[
            "saga_id",
            "node_name",
            "receipt",
            "time_committed",
            "creator",
            "adopt_generation",
        ],
    ),
    (
        "saga_compensation_record",
        &[
            "saga_id",
            "node_name",
            "had_commit",
            "time_compensated",
            "creator",
            "adopt_generation",
        ],
    ),
    (
        "saga_node_start",
        &["saga_id", "node_name", "phase", "starts", "time_last_start"],
    ),
    (
        "saga_waiting",
        &["saga_id", "node_name", "reason", "time_waiting", "creator"],
    ),
    (
        "saga_undo_failure",
        &["saga_id", "node_id", "data", "event_time", "creator"],
    ),
];

/// The columns of [`REQUIRED`] whose type is a PostgreSQL enum, with its name: (table, column, type).
pub(crate) const ENUM_COLUMNS: &[(&str, &str, &str)] = &[
    ("saga", "saga_state", "saga_state"),
    ("saga", "abandon_reason", "saga_abandon_reason"),
];

/// Every table's primary key: the commit and compensation records' keys are what make a node exactly-once.
pub(crate) const PRIMARY_KEYS: &[(&str, &[&str])] = &[
    ("saga", &["id"]),
    ("saga_node_event", &["saga_id", "node_id", "event_type"]),
    ("saga_commit_record", &["saga_id", "node_name"]),
    ("saga_compensation_record", &["saga_id", "node_name"]),
    ("saga_node_start", &["saga_id", "node_name", "phase"]),
    ("saga_waiting", &["saga_id", "node_name"]),
];

/// ratchet's columns of `saga`, which must be nullable: Nexus's store inserts sagas naming none of them.
pub(crate) const NULLABLE_SAGA_COLUMNS: &[&str] = &[
    "definition_version",
    "time_finished",
    "stuck_node",
    "stuck_reason",
    "time_stuck",
];

#[derive(diesel::QueryableByName)]
struct KeyColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

#[derive(diesel::QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
}

/// What of `REQUIRED` (in `schema_check.rs`) the database lacks, in its current schema: `table T` for a table
/// missing whole, `column T.C` for a column, `column T.C of type E` for a column of `ENUM_COLUMNS` of another
/// type (a saga log made by a pre-release ratchet, whose states were text), `column saga.C nullable` for a
/// column of `NULLABLE_SAGA_COLUMNS` that is `NOT NULL` (Nexus's inserts would fail), `primary key T (…)` for
/// a table of `PRIMARY_KEYS` without that key, `value stuck of type saga_state` for ratchet's one enum
/// addition. Empty when everything is there.
pub async fn missing_schema(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<String>> {
    let tables: Vec<&str> = REQUIRED.iter().map(|(table, _)| *table).collect();
    let present: Vec<Column> = diesel::sql_query(
        "SELECT table_name::TEXT AS table_name, column_name::TEXT AS column_name, udt_name::TEXT AS udt_name, \
                is_nullable::TEXT AS is_nullable \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ANY($1)",
    )
    .bind::<Array<Text>, _>(&tables)
    .load(conn)
    .await?;
    let types: BTreeSet<(String, String, String)> = present
        .iter()
        .map(|c| {
            (
                c.table_name.clone(),
                c.column_name.clone(),
                c.udt_name.clone(),
            )
        })
        .collect();
    let not_null: BTreeSet<(String, String)> = present
        .iter()
        .filter(|c| c.is_nullable == "NO")
        .map(|c| (c.table_name.clone(), c.column_name.clone()))
        .collect();
    let present: BTreeSet<(String, String)> = present
        .into_iter()
        .map(|c| (c.table_name, c.column_name))
        .collect();
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED {
        if !present.iter().any(|(t, _)| t == table) {
            missing.push(format!("table {table}"));
            continue;
        }
        for column in *columns {
            if !present.contains(&((*table).to_owned(), (*column).to_owned())) {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    for (table, column, type_name) in ENUM_COLUMNS {
        let column_present = present.contains(&((*table).to_owned(), (*column).to_owned()));
        let key = (
            (*table).to_owned(),
            (*column).to_owned(),
            (*type_name).to_owned(),
        );
        if column_present && !types.contains(&key) {
            missing.push(format!("column {table}.{column} of type {type_name}"));
        }
    }
    for column in NULLABLE_SAGA_COLUMNS {
        if not_null.contains(&("saga".to_owned(), (*column).to_owned())) {
            missing.push(format!("column saga.{column} nullable"));
        }
    }
    let keys: Vec<KeyColumn> = diesel::sql_query(
        "SELECT tc.table_name::TEXT AS table_name, k.column_name::TEXT AS column_name \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage k \
           ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema \
          AND k.table_name = tc.table_name \
         WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema() \
           AND tc.table_name = ANY($1)",
    )
    .bind::<Array<Text>, _>(&tables)
    .load(conn)
    .await?;
    for (table, key) in PRIMARY_KEYS {
        if !present.iter().any(|(t, _)| t == table) {
            continue;
        }
        let have: BTreeSet<&str> = keys
            .iter()
            .filter(|k| k.table_name == *table)
            .map(|k| k.column_name.as_str())
            .collect();
        if have != key.iter().copied().collect() {
            missing.push(format!("primary key {table} ({})", key.join(", ")));
        }
    }
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let stuck: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
         WHERE t.typname = 'saga_state' AND e.enumlabel = 'stuck'",
    )
    .get_result(conn)
    .await?;
    if stuck.count == 0 {
        missing.push("value stuck of type saga_state".to_owned());
    }
    Ok(missing)
}

/// Whether every migration of `migrations` is applied to the database, read from diesel's migration table
/// (`__diesel_schema_migrations`) without creating it: a command that only reads asks this before it reads
/// tables those migrations make (the CLI's `check`, for the Nexus tables).
pub async fn migrations_applied(
    conn: &mut AsyncPgConnection,
    migrations: &'static diesel_migrations::EmbeddedMigrations,
) -> Result<bool, crate::error::DbError> {
    use diesel::migration::MigrationSource;
    use diesel::sql_types::BigInt;
    let wanted: Vec<String> =
        MigrationSource::<diesel::pg::Pg>::migrations(&crate::pool::StaticMigrations(migrations))
            .map_err(|e| crate::error::DbError::Migration(format!("listing the migrations: {e}")))?
            .iter()
            .map(|m| m.name().version().to_string())
            .collect();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let table: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = '__diesel_schema_migrations'",
    )
    .get_result(conn)
    .await?;
    if table.count == 0 {
        return Ok(false);
    }
    let applied: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM __diesel_schema_migrations WHERE version = ANY($1)",
    )
    .bind::<Array<Text>, _>(&wanted)
    .get_result(conn)
    .await?;
    Ok(applied.count == wanted.len() as i64)
}
