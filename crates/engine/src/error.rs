//! Errors: a node's (transient, permanent, or the saga's own typed error) and the engine's.
//!
//! # Design
//!
//! A saga names its error type ([`SagaDef::Error`](crate::SagaDef::Error)): the host's own, serializable (an
//! API error with an HTTP status, say). A node fails with [`NodeError<E>`]: a *transient* or *permanent*
//! infrastructure error (a message, as before), or [`NodeError::Saga`], the saga's typed error. The engine
//! serializes a typed error once, where the node's phase returns it ([`EncodedSagaError`]), records it in the
//! node's `failed` event (inside [`NodeFailure`]), and the saga's outcome carries it back
//! ([`SagaOutcome::saga_error`](crate::SagaOutcome::saga_error)): from steno's result in memory, or from the
//! log after a crash and recovery, it is the same JSON, decoded as the saga's error type.
//!
//! A saga without a typed error names [`Untyped`], which has no values: `NodeError` (its default parameter)
//! is then exactly the string error it always was, and node code that writes `Result<_, NodeError>` compiles
//! unchanged.
//!
//! # Converting with `?`
//!
//! `NodeError<E>` converts from a diesel error and a [`DbError`] (transient or permanent by their kind), and
//! from `E` itself when `E` implements the marker trait [`SagaError`] (as [`SagaDef::Error`](crate::SagaDef::Error)
//! must): a node of a saga whose error is `ApiError` writes `datastore_call().await?` for a
//! `Result<_, ApiError>`. The marker is what makes that blanket impl coherent beside the diesel ones: `SagaError`
//! is this crate's trait, so no other crate can implement it for `diesel::result::Error` or [`DbError`], and
//! rustc knows the impls cannot overlap. A blanket impl over every `Serialize` type could not be: diesel could
//! make its error serializable one day. Errors of other types convert into the saga's error first (one `?`
//! applies one `From`): `.map_err(ApiError::from)?`.

use ratchet_store::DbError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::fmt;

/// The marker of a saga's typed error ([`SagaDef::Error`](crate::SagaDef::Error)): serializable (it is
/// recorded in the saga's log), printable (its `Display` is the message operators read), and sent between
/// threads. Implement it with one line: `impl ratchet_engine::SagaError for ApiError {}`.
pub trait SagaError:
    Serialize + DeserializeOwned + fmt::Debug + fmt::Display + Send + Sync + 'static
{
}

/// The error type of a saga without a typed error: it has no values, so [`NodeError<Untyped>`] (plain
/// `NodeError`) is only ever transient or permanent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Untyped {}

impl fmt::Display for Untyped {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl SagaError for Untyped {}

/// What a node's phase returns on failure.
///
/// *Transient* errors (a lost connection, a pool timeout, a serialization failure) are retried by the engine
/// with bounded exponential backoff; *permanent* ones fail the node at once (or, from a compensation, make the
/// saga stuck). [`NodeError::Saga`], the saga's own typed error, is permanent: it fails the node (or makes the
/// saga stuck) and is recorded in the log, for the saga's outcome to carry back typed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum NodeError<E = Untyped> {
    #[error("transient error: {message}")]
    Transient { message: String },
    #[error("{message}")]
    Permanent { message: String },
    /// The saga's typed error ([`SagaDef::Error`](crate::SagaDef::Error)).
    #[error("{0}")]
    Saga(E),
}

impl<E> NodeError<E> {
    pub fn transient(message: impl Into<String>) -> NodeError<E> {
        NodeError::Transient {
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> NodeError<E> {
        NodeError::Permanent {
            message: message.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, NodeError::Transient { .. })
    }

    /// The error's message: a typed error's `Display`.
    pub fn message(&self) -> Cow<'_, str>
    where
        E: fmt::Display,
    {
        match self {
            NodeError::Transient { message } | NodeError::Permanent { message } => {
                Cow::Borrowed(message)
            }
            NodeError::Saga(error) => Cow::Owned(error.to_string()),
        }
    }

    /// The saga's typed error, if this is one.
    pub fn saga_error(&self) -> Option<&E> {
        match self {
            NodeError::Saga(error) => Some(error),
            NodeError::Transient { .. } | NodeError::Permanent { .. } => None,
        }
    }
}

impl<E: SagaError> From<E> for NodeError<E> {
    fn from(error: E) -> Self {
        NodeError::Saga(error)
    }
}

impl<E> From<diesel::result::Error> for NodeError<E> {
    fn from(error: diesel::result::Error) -> Self {
        if ratchet_store::is_transient_diesel(&error) {
            NodeError::transient(error.to_string())
        } else {
            NodeError::permanent(error.to_string())
        }
    }
}

impl<E> From<DbError> for NodeError<E> {
    fn from(error: DbError) -> Self {
        if error.is_transient() {
            NodeError::transient(error.to_string())
        } else {
            NodeError::permanent(error.to_string())
        }
    }
}

/// A saga's typed error as the engine carries it once a node's phase returned it: its message and its
/// serialized value (what the log records, and what the outcome decodes). Not a [`SagaError`]: the engine's
/// own errors are `NodeError<EncodedSagaError>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EncodedSagaError {
    pub(crate) message: String,
    pub(crate) value: serde_json::Value,
}

impl fmt::Display for EncodedSagaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The error type of the engine's runners: a node's error with its typed error (if any) already encoded.
pub(crate) type RunError = NodeError<EncodedSagaError>;

impl<E: SagaError> NodeError<E> {
    /// This error as the runners carry it: a typed error is serialized here, once (a typed error that does
    /// not serialize fails the node permanently, saying so).
    pub(crate) fn encode(self) -> RunError {
        match self {
            NodeError::Transient { message } => NodeError::Transient { message },
            NodeError::Permanent { message } => NodeError::Permanent { message },
            NodeError::Saga(error) => match serde_json::to_value(&error) {
                Ok(value) => NodeError::Saga(EncodedSagaError {
                    message: error.to_string(),
                    value,
                }),
                Err(e) => NodeError::permanent(format!(
                    "the saga's error {error} does not serialize ({e}), so it is not recorded typed"
                )),
            },
        }
    }
}

/// What steno records when a ratchet node fails: which node, in which phase, and why; with the saga's typed
/// error, serialized, when the node failed with one ([`NodeError::Saga`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeFailure {
    pub node: String,
    pub phase: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga_error: Option<serde_json::Value>,
}

/// The engine's own errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("saga parameters for {saga:?} could not be encoded: {message}")]
    BadParams { saga: String, message: String },
    #[error("the DAG of saga {saga:?} is invalid: {message}")]
    BadDag { saga: String, message: String },
    #[error("no saga definition named {0:?} is registered with this engine")]
    UnknownSaga(String),
    #[error("no saga with id {0}")]
    NoSuchSaga(uuid::Uuid),
    #[error("saga {id} is {state}, but this operation needs it {wanted}")]
    WrongState {
        id: uuid::Uuid,
        state: String,
        wanted: &'static str,
    },
    #[error(
        "node {node:?} of saga {saga} runs action {action:?}, which this binary does not register: a release \
         removed or renamed it"
    )]
    UnknownAction {
        /// The saga's definition: its name and version ([`ratchet_store::SagaRow::definition`]).
        saga: String,
        node: String,
        action: String,
    },
    #[error("node {node:?} is registered twice with different types")]
    DuplicateNode { node: String },
    #[error("the engine's configuration cannot work: {0}")]
    BadConfig(String),
    #[error("saga {saga:?} cannot be registered: {message}")]
    BadRegistration { saga: String, message: String },
    #[error("steno refused: {0}")]
    Steno(String),
    #[error("the engine is shutting down: it takes no new work")]
    ShuttingDown,
    #[error("the engine is quiescing: it takes no new sagas (the running ones go on to rest)")]
    Quiescing,
    #[error("steno's executor (SEC) is gone: {0}")]
    SecGone(String),
    #[error(
        "executor {0} cannot adopt its own sagas (its unfinished sagas are resumed by `recover`)"
    )]
    AdoptFromSelf(uuid::Uuid),
    #[error("saga {id} cannot be re-driven: {reason}")]
    NotRetryable { id: uuid::Uuid, reason: String },
    #[error("abandoning a saga needs a reason (it is recorded for whoever finds the saga later)")]
    EmptyReason,
    #[error(
        "the database lacks ratchet's schema: missing {}; apply the saga log's migrations \
         (ratchet_store::MIGRATIONS_SQL, or EngineConfig::run_migrations)",
        missing.join(", ")
    )]
    SchemaMissing { missing: Vec<String> },
}

impl EngineError {
    /// The engine's error for an operator action the store refused on saga `id`.
    pub(crate) fn refused(
        id: uuid::Uuid,
        refusal: ratchet_store::Refusal,
        wanted: &'static str,
    ) -> EngineError {
        use ratchet_store::Refusal;
        match refusal {
            Refusal::NoSuchSaga => EngineError::NoSuchSaga(id),
            Refusal::WrongState { state } => EngineError::WrongState { id, state, wanted },
            Refusal::NoFailedUndo {
                stuck_node,
                stuck_reason,
            } => EngineError::NotRetryable {
                id,
                reason: format!(
                    "it is stuck at node {} ({}) without a failed undo in its log: a commit there could be \
                     neither kept nor compensated inside the node, and steno never undoes a failed node; \
                     compensate that node by hand, then abandon the saga",
                    stuck_node.as_deref().unwrap_or("?"),
                    stuck_reason.as_deref().unwrap_or("no reason recorded"),
                ),
            },
        }
    }
}
