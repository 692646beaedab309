//! Database errors, classified as transient (retry) or permanent.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// The connection pool's own error type.
pub(crate) type PoolRunError = bb8::RunError<diesel_async::pooled_connection::PoolError>;

/// An error talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] DieselError),
    /// No connection could be had from the pool (timed out, or the server refused to connect).
    #[error("could not get a database connection: {0}")]
    Pool(String),
    /// Connecting to the database failed.
    #[error("could not connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    /// Running the embedded schema migrations failed.
    #[error("applying the saga log's schema migrations failed: {0}")]
    Migration(String),
    /// A row in the saga log could not be decoded.
    #[error("corrupt saga log row: {0}")]
    CorruptRow(String),
    /// A database name that is not a plain identifier.
    #[error("not a plain database name (letters, digits and `_`): {0:?}")]
    BadName(String),
}

impl From<PoolRunError> for DbError {
    fn from(error: PoolRunError) -> Self {
        DbError::Pool(error.to_string())
    }
}

impl DbError {
    /// Whether retrying the same operation may succeed: serialization failures (40001), deadlocks, lost or
    /// closed connections, and pool timeouts. Everything else is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Query(error) => is_transient_diesel(error),
            DbError::Pool(_) | DbError::Connect(_) => true,
            DbError::Migration(_) | DbError::CorruptRow(_) | DbError::BadName(_) => false,
        }
    }
}

/// Whether a diesel error is worth retrying.
pub fn is_transient_diesel(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection => true,
            // diesel does not expose the SQLSTATE of other errors; these messages are PostgreSQL's own for
            // 40P01 (deadlock), 40001 when reported without the code, 57P01 and 25P03 (the server is
            // closing the connection: shut down, backend terminated, idle in a transaction too long), 55P03
            // and 57014 (a lock or statement timeout) and 25P02 (an earlier statement of this transaction failed, see
            // `ABORTED_TRANSACTION`).
            DatabaseErrorKind::Unknown => message_is_transient(info.message()),
            _ => false,
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// Whether an error message is one of PostgreSQL's (or the client's) for a failure worth retrying, for errors
/// that reach us as text only (diesel's `Unknown` kind, an error wrapped by a library that hides its type).
pub fn message_is_transient(message: &str) -> bool {
    const TRANSIENT: [&str; 9] = [
        "deadlock detected",
        "could not serialize",
        "terminating connection",
        ABORTED_TRANSACTION,
        // 55P03 and 57014: a session limit (`SessionLimits`) ended a wait that may succeed later.
        "canceling statement due to lock timeout",
        "canceling statement due to statement timeout",
        // The client's words for a connection that broke or could not be made.
        "connection closed",
        "error communicating with the server",
        "the database system is",
    ];
    TRANSIENT.iter().any(|marker| message.contains(marker))
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
