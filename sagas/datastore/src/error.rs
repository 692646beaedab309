//! The datastore's errors.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
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

/// Whether a diesel error is worth retrying (the same rules as `ratchet_store::is_transient_diesel`, which this
/// crate does not depend on).
fn is_transient_diesel(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            // A concurrent allocator took the value this statement chose; a retry chooses another.
            DatabaseErrorKind::UniqueViolation => info
                .constraint_name()
                .is_some_and(|index| ALLOCATION_INDEXES.contains(&index)),
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection => true,
            // diesel does not expose the SQLSTATE of other errors: these are PostgreSQL's messages for 40P01
            // (deadlock), 40001 when reported without the code, 57P01 (the server is closing the connection),
            // and 25P02 (an earlier statement of this transaction failed, see `ABORTED_TRANSACTION`).
            DatabaseErrorKind::Unknown => {
                let message = info.message();
                message.contains("deadlock detected")
                    || message.contains("could not serialize")
                    || message.contains("terminating connection")
                    || message.contains(ABORTED_TRANSACTION)
            }
            _ => false,
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// PostgreSQL's message for SQLSTATE 25P02: a statement ran in a transaction that an earlier statement's
/// error had aborted. That earlier error can be lost: diesel-async's `get_result` reads the first row of a
/// result and drops the rest of the stream, and a SERIALIZABLE read can fail *after* its first row (an index
/// scan that returns the visible version of a row and then meets a newer version written by a concurrent
/// transaction is cancelled there, "conflict out to pivot, during read"). The fetch returns its row, the
/// transaction is doomed, and the next statement reports 25P02. Retrying the whole transaction is what the
/// lost serialization failure called for, so this is transient. (Seen under `ratchet run instance-create
/// --count 30 --create-disks 11 --concurrency 30 --pool-size 4`: `attach_disk`'s prepare failed
/// permanently on its `disk_fetch`, right after its `instance_fetch` had lost a 40001.)
const ABORTED_TRANSACTION: &str = "current transaction is aborted";

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
}
