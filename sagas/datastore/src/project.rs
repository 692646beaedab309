//! Projects: the namespace instances, disks and snapshots are named in.

use crate::common::check_name;
use crate::error::{DatastoreError, DatastoreResult, conflict_on_unique};
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A `project` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, diesel::QueryableByName)]
pub struct Project {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Timestamptz)]
    pub time_created: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub time_modified: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub time_deleted: Option<DateTime<Utc>>,
}

const PROJECT_COLUMNS: &str = "id, name, time_created, time_modified, time_deleted";

/// Creates a project. A live project of the same name, or any project with this id → `Conflict`.
pub async fn project_create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
) -> DatastoreResult<Project> {
    check_name("project", name)?;
    diesel::sql_query(format!(
        "INSERT INTO project (id, name, time_created, time_modified) \
         VALUES ($1, $2, now(), now()) RETURNING {PROJECT_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(name)
    .get_result(conn)
    .await
    .map_err(|error| {
        conflict_on_unique(error, |index| match index {
            "lookup_project_by_name" => format!("project name {name:?} is already in use"),
            _ => format!("project {id} already exists"),
        })
    })
}

/// The live project `id`.
pub async fn project_fetch(conn: &mut AsyncPgConnection, id: Uuid) -> DatastoreResult<Project> {
    diesel::sql_query(format!(
        "SELECT {PROJECT_COLUMNS} FROM project WHERE id = $1 AND time_deleted IS NULL"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?
    .ok_or(DatastoreError::NotFound {
        kind: "project",
        id,
    })
}
