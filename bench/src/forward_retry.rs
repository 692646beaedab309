//! The retries of a forward transaction that both implementations under measure share (ratchet's engine and
//! the plain-steno baseline), so that neither fails a saga the other would have retried.

use ratchet_store::RetryPolicy;
use std::time::Duration;

/// The retries of a forward transaction, for both implementations (the engine's default backoff, with the
/// attempts doubled: parallel nodes of one saga meet serialization failures under load, and neither side
/// should fail a saga the other would have retried).
pub(crate) const FORWARD_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(2),
    max_delay: Duration::from_secs(1),
    max_attempts: Some(24),
};
