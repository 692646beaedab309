//! How the simulated services' errors become call errors.
//!
//! A datastore error needs no helper: `ratchet_datastore` converts it into a `NodeError` (`From`), so `?`
//! applies it in a node's phases; it is transient exactly when retrying the same transaction can succeed
//! (serialization failure, lost connection), and every refusal is permanent with its message. A service's
//! refusal is transient only for a 503 (the service did not apply the request and may later); a lost answer
//! is `Unknown`, never an error the saga acts on.

use ratchet_engine::{CallError, NodeError};
use ratchet_sim::CallOutcomeError;

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
