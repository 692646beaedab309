//! Error types: what starting a simulator can fail with, what a client call can end in, and the error body a
//! simulated service writes on the wire.

use serde::{Deserialize, Serialize};

/// Starting a simulated service failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// `start` was called outside a tokio runtime; the server task needs one to run on.
    #[error("no tokio runtime: a simulated service must be started from within a tokio runtime")]
    NoRuntime,
    /// Binding the loopback listener failed.
    #[error("failed to bind a loopback listener: {0}")]
    Bind(#[source] std::io::Error),
}

/// How a call to a simulated service ended, when it did not succeed.
///
/// The distinction is the whole point of the simulator: a saga node may fail on [`Refused`](Self::Refused)
/// (nothing happened, nothing to undo), but must never fail on [`Unknown`](Self::Unknown) (something may have
/// happened). On `Unknown` the caller retries with the same idempotency key until the answer is definite, or
/// compensates by key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallOutcomeError {
    /// The service answered, and its answer says the request was NOT applied: an injected "fail before
    /// applying" (503), a semantic refusal (409: unknown or conflicting resource, idempotency key reused for a
    /// different request, idempotency key tombstoned by a compensation), or a request the service could not
    /// accept (4xx). The message starts with the HTTP
    /// status code, then the service's error code, e.g. `"503 fail_before_apply: ..."`.
    #[error("refused (not applied): {0}")]
    Refused(String),
    /// The outcome is unknown: the connection was refused or reset, the call timed out, the server closed
    /// the connection without answering, or the answer was malformed. The request may or may not have been
    /// applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

impl CallOutcomeError {
    /// True for [`CallOutcomeError::Refused`].
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// True for [`CallOutcomeError::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Unknown(_))
    }

    /// True for a refusal that may go the other way if the same request is sent again: the service was
    /// unavailable (503) and applied nothing. Other refusals (409, 4xx) will be refused again; in particular
    /// a request under a key a compensation has named (`409 idempotency_key_compensated`) is refused for
    /// good.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Refused(m) if m.starts_with("503 "))
    }

    /// The message carried by either variant.
    pub fn message(&self) -> &str {
        match self {
            Self::Refused(m) | Self::Unknown(m) => m,
        }
    }
}

/// The JSON body of every error response a simulated service writes.
///
/// `applied` is always `false`: a simulated service only answers with an error when it did not apply the
/// request. A client treats an error response as a refusal only if its body parses and says `applied: false`;
/// anything else (say, an empty 502 from something in between) is an unknown outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) applied: bool,
    pub(crate) code: String,
    pub(crate) message: String,
}
