//! The project-scoped insert: one statement that inserts a row named within a project only if the project is
//! live, the name is free among the project's live rows of the table and (for some tables) another row the new
//! one refers to is live, and that says which of those held, so that the refusal is named without a second
//! query. Disks, instances and snapshots are created with it. Its shape, whose parts are
//! [`ProjectScopedInsert`]'s fields and [`RequiredRow`]'s:
//!
//! ```text
//! WITH p     AS (SELECT id FROM project WHERE id = $2 AND time_deleted IS NULL),
//!      req   AS (SELECT id FROM <required table> WHERE id = <required id> AND time_deleted IS NULL),
//!      taken AS (SELECT id FROM <table> WHERE project_id = $2 AND name = $3 AND time_deleted IS NULL),
//!      ins   AS (INSERT INTO <table> (id, project_id, name, <columns>)
//!                SELECT $1, $2, $3, <values>
//!                WHERE EXISTS (SELECT 1 FROM p) AND EXISTS (SELECT 1 FROM req)
//!                  AND NOT EXISTS (SELECT 1 FROM taken)
//!                RETURNING <returning>)
//! SELECT EXISTS (SELECT 1 FROM p) AS project_found,
//!        EXISTS (SELECT 1 FROM req) AS required_found,
//!        EXISTS (SELECT 1 FROM taken) AS name_taken,
//!        ins.*
//! FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE
//! ```
//!
//! Without a required row, `req` and its condition are left out and `required_found` is `TRUE`. `$1`, `$2`
//! and `$3` (the new row's id, project and name) are bound by [`ProjectScopedInsert::run`]; `<values>` and `<required id>` name `$4`
//! onwards, which the caller binds. The `LEFT JOIN` makes the statement return exactly one row, inserted or
//! not. A concurrent insert of the same name that `taken` could not see is caught by the table's partial
//! unique index (`<name index>`), and reported as the same `Conflict`.

use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Bool, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// A statement being built: the caller binds its own parameters (`$4` onwards) on it.
pub(crate) type Query<'a> = BoxedSqlQuery<'a, Pg, SqlQuery>;

/// What one table's insert fills into the shape in the module documentation.
pub(crate) struct ProjectScopedInsert {
    /// The table; also names the row in refusals (`"disk"`).
    pub table: &'static str,
    /// The partial unique index on `(project_id, name)` over the live rows.
    pub name_index: &'static str,
    /// The columns inserted after `id, project_id, name`.
    pub columns: &'static str,
    /// Their values, in the same order (literals, `now()`, `$4` onwards).
    pub values: &'static str,
    /// The columns returned.
    pub returning: &'static str,
}

/// Another live row the new one must refer to (a snapshot's disk). Its id is one of the caller's parameters.
pub(crate) struct RequiredRow {
    /// Its table; also the `kind` of the `NotFound` when it is missing.
    pub table: &'static str,
    /// The parameter that holds its id (`"$4"`).
    pub id_param: &'static str,
    /// Its id, for the refusal.
    pub id: Uuid,
}

/// What the statement found: the inserted row, or why there is none.
#[derive(diesel::QueryableByName)]
pub(crate) struct Found<T> {
    #[diesel(sql_type = Bool)]
    project_found: bool,
    #[diesel(sql_type = Bool)]
    required_found: bool,
    #[diesel(sql_type = Bool)]
    name_taken: bool,
    #[diesel(embed)]
    row: Option<T>,
}

impl ProjectScopedInsert {
    fn sql(&self, required: Option<&RequiredRow>) -> String {
        let ProjectScopedInsert {
            table,
            name_index: _,
            columns,
            values,
            returning,
        } = self;
        let (required_cte, required_condition, required_found) = match required {
            Some(RequiredRow {
                table: required_table,
                id_param,
                id: _,
            }) => (
                format!(
                    "req AS (SELECT id FROM {required_table} \
                             WHERE id = {id_param} AND time_deleted IS NULL), "
                ),
                "AND EXISTS (SELECT 1 FROM req) ",
                "EXISTS (SELECT 1 FROM req)",
            ),
            None => (String::new(), "", "TRUE"),
        };
        format!(
            "WITH \
               p AS (SELECT id FROM project WHERE id = $2 AND time_deleted IS NULL), \
               {required_cte}\
               taken AS (SELECT id FROM {table} \
                         WHERE project_id = $2 AND name = $3 AND time_deleted IS NULL), \
               ins AS ( \
                 INSERT INTO {table} (id, project_id, name, {columns}) \
                 SELECT $1, $2, $3, {values} \
                 WHERE EXISTS (SELECT 1 FROM p) {required_condition}\
                   AND NOT EXISTS (SELECT 1 FROM taken) \
                 RETURNING {returning}) \
             SELECT EXISTS (SELECT 1 FROM p) AS project_found, \
                    {required_found} AS required_found, \
                    EXISTS (SELECT 1 FROM taken) AS name_taken, \
                    ins.* \
             FROM (SELECT 1) AS one LEFT JOIN ins ON TRUE"
        )
    }

    /// Inserts the row `id` named `name` in project `project_id` (`$1` to `$3`), with the caller's parameters
    /// (bound by `bind_values`, `$4` onwards), and returns it. Refusals, checked in this order: `NotFound` (the project, then the required row),
    /// `Conflict` (the name is in use in the project, or the id exists).
    pub async fn run<'a, T>(
        &self,
        conn: &mut AsyncPgConnection,
        id: Uuid,
        project_id: Uuid,
        name: &'a str,
        required: Option<RequiredRow>,
        bind_values: impl FnOnce(Query<'a>) -> Query<'a>,
    ) -> DatastoreResult<T>
    where
        Found<T>: QueryableByName<Pg> + Send + 'static,
    {
        let table = self.table;
        let query = diesel::sql_query(self.sql(required.as_ref()))
            .into_boxed::<Pg>()
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(project_id)
            .bind::<Text, _>(name);
        let found: Found<T> = bind_values(query).get_result(conn).await.map_err(|error| {
            conflict_on_unique(error, |index| {
                if index == self.name_index {
                    format!("{table} name {name:?} is already in use in project {project_id}")
                } else {
                    format!("{table} {id} already exists")
                }
            })
        })?;
        let Found {
            project_found,
            required_found,
            name_taken,
            row,
        } = found;
        if let Some(row) = row {
            return Ok(row);
        }
        if !project_found {
            return Err(DatastoreError::NotFound {
                kind: "project",
                id: project_id,
            });
        }
        if let Some(RequiredRow {
            table: kind, id, ..
        }) = required.filter(|_| !required_found)
        {
            return Err(DatastoreError::NotFound { kind, id });
        }
        if name_taken {
            return Err(DatastoreError::Conflict(format!(
                "{table} name {name:?} is already in use in project {project_id}"
            )));
        }
        Err(DatastoreError::Conflict(format!(
            "{table} {id} was not inserted"
        )))
    }
}
