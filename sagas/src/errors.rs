//! How the datastore's and the simulated services' errors become node errors.
//!
//! A datastore error is transient when retrying the same transaction can succeed (serialization failure,
//! lost connection); every refusal (bad state, limit, exhausted pool, hot-plug) is permanent and keeps its
//! message, which names the problem. A service's refusal is transient only for a 503 (the service did not
//! apply the request and may later); a lost answer is `Unknown`, never an error the saga acts on.

use ratchet_datastore::DatastoreError;
use ratchet_engine::{CallError, NodeError};
use ratchet_sim::CallOutcomeError;

/// A datastore error as a node error.
pub(crate) fn db(error: DatastoreError) -> NodeError {
    if error.is_transient() {
        NodeError::transient(error.to_string())
    } else {
        NodeError::permanent(error.to_string())
    }
}

/// A simulated service's answer as a call error.
pub(crate) fn call(error: CallOutcomeError) -> CallError {
    let retryable = error.is_retryable();
    match error {
        CallOutcomeError::Refused(message) if retryable => {
            CallError::Refused(NodeError::transient(message))
        }
        CallOutcomeError::Refused(message) => CallError::Refused(NodeError::permanent(message)),
        CallOutcomeError::Unknown(message) => CallError::Unknown(message),
    }
}
