//! The soft delete: one statement that marks a live row deleted (`time_deleted` set), if the table's guards
//! allow it, and otherwise returns the row as it is, so that the caller can tell "deleted now", "deleted
//! before" (idempotence) and the refusal apart without a second query. Every table that deletes a row by
//! itself, with nothing else in the statement, deletes it with this shape; its parts are [`SoftDelete`]'s
//! fields:
//!
//! ```text
//! WITH cur AS (SELECT <columns> FROM <table> WHERE id = $1),
//!      upd AS (UPDATE <table> SET <also_set>, time_deleted = now(), time_modified = now()
//!              WHERE id = $1 AND time_deleted IS NULL AND <guards>
//!              RETURNING <columns>)
//! <OUTCOME_TAIL: upd's row with updated = TRUE, else cur's with updated = FALSE>
//! ```
//!
//! No row: the id never existed. `cur` does not filter on `time_deleted`, so an already-deleted row comes back
//! as it is. (`instance_soft_delete` is not this shape: it locks the instance and detaches its disks in the
//! same statement.)

use crate::common::{OUTCOME_TAIL, Outcome};
use crate::error::{DatastoreError, DatastoreResult};
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// What one table's soft delete fills into the shape in the module documentation.
pub(crate) struct SoftDelete {
    /// The table; also the `kind` of its `NotFound`.
    pub table: &'static str,
    /// The columns read back (`cur` and `RETURNING`).
    pub columns: &'static str,
    /// Assignments besides `time_deleted` and `time_modified` (`state = 'destroyed'`).
    pub also_set: &'static [&'static str],
    /// Conditions besides `id = $1 AND time_deleted IS NULL` under which the row may be deleted.
    pub guards: &'static [&'static str],
}

impl SoftDelete {
    fn sql(&self) -> String {
        let SoftDelete {
            table,
            columns,
            also_set,
            guards,
        } = self;
        let set = also_set
            .iter()
            .copied()
            .chain(["time_deleted = now()", "time_modified = now()"])
            .collect::<Vec<_>>()
            .join(", ");
        let conditions = ["id = $1", "time_deleted IS NULL"]
            .into_iter()
            .chain(guards.iter().copied())
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "WITH \
               cur AS (SELECT {columns} FROM {table} WHERE id = $1), \
               upd AS ( \
                 UPDATE {table} SET {set} \
                 WHERE {conditions} \
                 RETURNING {columns}) \
             {OUTCOME_TAIL}"
        )
    }

    /// Runs the statement for row `id`: `None` if it never existed, else whether this statement deleted it and
    /// the row (as written, or as found).
    pub async fn outcome<T>(
        &self,
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> DatastoreResult<Option<Outcome<T>>>
    where
        Outcome<T>: QueryableByName<Pg> + Send + 'static,
    {
        Ok(diesel::sql_query(self.sql())
            .bind::<SqlUuid, _>(id)
            .get_result(conn)
            .await
            .optional()?)
    }

    /// Deletes row `id` of a table without guards and returns it, whether this statement deleted it or it was
    /// deleted before. An id that never existed is `NotFound`.
    pub async fn run<T>(&self, conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<T>
    where
        Outcome<T>: QueryableByName<Pg> + Send + 'static,
    {
        self.outcome(conn, id)
            .await?
            .map(|outcome| outcome.row)
            .ok_or(DatastoreError::NotFound {
                kind: self.table,
                id,
            })
    }
}
