//! What each saga promises once it is at rest, read from the database: a caller that ran sagas (`ratchet run`)
//! asks here for a saga's postcondition instead of restating it.
//!
//! - instance-create: the instance it names is either gone (never created, or deleted by the unwind) or
//!   complete: every disk it asked for (those it created and those it attached) attached to it, each in a slot
//!   of its own ([`instance_create`]).
//!
//! A postcondition holds only once its saga is at rest (done, stuck or abandoned); the caller waits for that.

use crate::instance_create::InstanceCreateParams;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_datastore::DatastoreError;
use uuid::Uuid;

/// What became of the instance an instance-create saga names, once the saga is at rest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "end")]
pub enum InstanceCreateEnd {
    /// No live instance of that name: never created, or deleted by the unwind.
    Gone,
    /// Every disk asked for is attached, each in a slot of its own.
    Complete { instance_id: Uuid },
    /// The postcondition is broken: the instance is live with some of its disks missing (or sharing a slot).
    Incomplete {
        instance_id: Uuid,
        state: String,
        /// How many disks the saga asked for.
        wanted: usize,
        attached: i64,
        /// How many distinct slots the attached disks are in.
        slots: i64,
    },
}

impl InstanceCreateEnd {
    /// Whether the postcondition holds.
    pub fn holds(&self) -> bool {
        !matches!(self, InstanceCreateEnd::Incomplete { .. })
    }
}

impl std::fmt::Display for InstanceCreateEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceCreateEnd::Gone => write!(f, "gone"),
            InstanceCreateEnd::Complete { instance_id } => {
                write!(f, "instance {instance_id} is complete")
            }
            InstanceCreateEnd::Incomplete {
                instance_id,
                state,
                wanted,
                attached,
                slots,
            } => write!(
                f,
                "instance {instance_id} ({state}) is incomplete: {attached} of {wanted} disk(s) attached, \
                 {slots} distinct slot(s)"
            ),
        }
    }
}

#[derive(diesel::QueryableByName)]
struct InstanceDisks {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    attached: i64,
    #[diesel(sql_type = BigInt)]
    slots: i64,
}

/// The postcondition of the instance-create saga run with `params`, read at rest: the live instance of that
/// name in that project, if any, has every disk of `params` (created and attached) attached, in distinct
/// slots. Reads only.
pub async fn instance_create_postcondition(
    conn: &mut diesel_async::AsyncPgConnection,
    params: &InstanceCreateParams,
) -> Result<InstanceCreateEnd, DatastoreError> {
    let wanted = params.create_disks.len() + params.attach_disks.len();
    let rows: Vec<InstanceDisks> = diesel::sql_query(
        "SELECT i.id, i.state, count(d.id) AS attached, count(DISTINCT d.slot) AS slots \
         FROM instance i LEFT JOIN disk d ON d.attach_instance_id = i.id AND d.time_deleted IS NULL \
         WHERE i.project_id = $1 AND i.name = $2 AND i.time_deleted IS NULL GROUP BY i.id, i.state",
    )
    .bind::<SqlUuid, _>(params.project_id)
    .bind::<Text, _>(&params.name)
    .load(conn)
    .await?;
    // The name is unique among a project's live instances (`lookup_instance_by_project`): one row at most.
    Ok(match rows.into_iter().next() {
        None => InstanceCreateEnd::Gone,
        Some(row) if row.attached as usize == wanted && row.slots as usize == wanted => {
            InstanceCreateEnd::Complete {
                instance_id: row.id,
            }
        }
        Some(row) => InstanceCreateEnd::Incomplete {
            instance_id: row.id,
            state: row.state,
            wanted,
            attached: row.attached,
            slots: row.slots,
        },
    })
}
