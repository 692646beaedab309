//! The datastore's errors.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use ratchet_engine::NodeError;
use uuid::Uuid;

/// Why a datastore operation did not happen.
///
/// Every variant but [`DatastoreError::Database`] is a refusal computed from the rows the statement saw: the
/// statement wrote nothing. Whether to retry is [`DatastoreError::is_transient`]'s call.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// The row does not exist, or is soft-deleted.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: Uuid },

    /// The operation collides with other rows: a name already in use, an id already taken, a disk attached to
    /// another instance, the boot disk.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The row exists but its state does not allow the operation.
    #[error("{kind} {id} is in state \"{state}\"; the operation needs {wanted}")]
    InvalidState {
        kind: &'static str,
        id: Uuid,
        /// The state the statement found.
        state: String,
        /// The state(s) the operation needs.
        wanted: String,
    },

    /// The row is in the expected state but its `state_generation` has moved on: someone else changed it.
    #[error("{kind} {id} has moved on: expected state_generation {expected}, found {found}")]
    GenerationMismatch {
        kind: &'static str,
        id: Uuid,
        expected: i64,
        found: i64,
    },

    /// A pool of resources is used up: an IP pool, a subnet, sled capacity.
    #[error("exhausted: {0}")]
    Exhausted(String),

    /// A per-instance limit is reached (disks, NICs).
    #[error("limit reached: {0}")]
    Limit(String),

    /// A disk can be attached or detached only while the instance has no VMM.
    #[error(
        "cannot attach or detach a disk: instance {instance_id} has an active VMM (no hot-plug; stop it first)"
    )]
    HotPlug { instance_id: Uuid },

    /// The caller passed something no row could satisfy (an empty name, a bad CIDR block, slot 9).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The database failed (or a row could not be decoded).
    #[error("database error: {0}")]
    Database(#[from] DieselError),
}

impl DatastoreError {
    /// Whether retrying the same operation in a new transaction may succeed: serialization failures (SQLSTATE
    /// 40001), deadlocks, lost or closed connections, and a concurrent allocator winning the race for a slot or
    /// address. Every refusal is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            DatastoreError::Database(error) => is_transient_diesel(error),
            _ => false,
        }
    }
}

/// A datastore error as a saga node's error, so that `?` applies it in a node's phases: transient exactly when
/// [`DatastoreError::is_transient`] says a new transaction may succeed (the engine then retries the node's
/// whole transaction), permanent for every refusal, with the error's message either way.
impl From<DatastoreError> for NodeError {
    fn from(error: DatastoreError) -> Self {
        if error.is_transient() {
            NodeError::transient(error.to_string())
        } else {
            NodeError::permanent(error.to_string())
        }
    }
}

/// Whether a diesel error is worth retrying: the engine's rules (`ratchet_store::is_transient_diesel`:
/// serialization failures, deadlocks, lost connections, a transaction a lost error aborted), plus a unique
/// violation on an index over a value the statement chose ([`ALLOCATION_INDEXES`]).
fn is_transient_diesel(error: &DieselError) -> bool {
    match error {
        // A concurrent allocator took the value this statement chose; a retry chooses another.
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => info
            .constraint_name()
            .is_some_and(|index| ALLOCATION_INDEXES.contains(&index)),
        _ => ratchet_store::is_transient_diesel(error),
    }
}

/// The unique indexes over values a statement *chooses* (a disk slot, a private or external address). Two
/// concurrent allocators can choose the same value from the same snapshot (at READ COMMITTED; at SERIALIZABLE
/// PostgreSQL usually reports a serialization failure first); the loser's unique violation is transient, since
/// a retry sees the winner's row and chooses another value.
const ALLOCATION_INDEXES: &[&str] = &[
    "lookup_disk_by_instance_slot",
    "network_interface_subnet_id_ip_key",
    "external_ip_unique",
];

/// Maps a unique-index violation to [`DatastoreError::Conflict`], described from the index's name; any other
/// error, and a violation of an allocation index (transient, see [`DatastoreError::is_transient`]), passes
/// through as [`DatastoreError::Database`]. The statements check for collisions themselves and refuse without
/// writing; the indexes are the backstop for concurrent writers, so this is reached only in races (or when an
/// id is reused).
pub(crate) fn conflict_on_unique(
    error: DieselError,
    describe: impl FnOnce(&str) -> String,
) -> DatastoreError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            match info.constraint_name() {
                Some(index) if ALLOCATION_INDEXES.contains(&index) => {
                    DatastoreError::Database(error)
                }
                index => DatastoreError::Conflict(describe(index.unwrap_or("a unique index"))),
            }
        }
        _ => DatastoreError::Database(error),
    }
}

/// The error for a decoded value the database should never have produced.
pub(crate) fn corrupt(message: String) -> DatastoreError {
    DatastoreError::Database(DieselError::DeserializationError(message.into()))
}

/// Shorthand.
pub type DatastoreResult<T> = Result<T, DatastoreError>;

#[cfg(test)]
mod test {
    use super::{DatastoreError, DieselError};
    use diesel::result::DatabaseErrorKind;
    use ratchet_engine::NodeError;

    fn unknown(message: &str) -> DatastoreError {
        DatastoreError::Database(DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(message.to_owned()),
        ))
    }

    #[test]
    fn aborted_transaction_is_transient() {
        assert!(
            unknown(
                "current transaction is aborted, commands ignored until end of transaction block"
            )
            .is_transient()
        );
        assert!(unknown("deadlock detected").is_transient());
        assert!(!unknown("syntax error at or near \"SELEC\"").is_transient());
        assert!(!DatastoreError::Limit("12 disks".to_owned()).is_transient());
    }

    #[test]
    fn node_error_keeps_the_classification_and_the_message() {
        let transient = unknown("deadlock detected");
        let message = transient.to_string();
        assert_eq!(NodeError::from(transient), NodeError::transient(message));
        let refusal = DatastoreError::Limit("12 disks".to_owned());
        let message = refusal.to_string();
        assert_eq!(NodeError::from(refusal), NodeError::permanent(message));
        let syntax = unknown("syntax error at or near \"SELEC\"");
        assert!(!NodeError::from(syntax).is_transient());
    }
}
