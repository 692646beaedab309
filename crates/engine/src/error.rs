//! Errors: a node's (transient or permanent) and the engine's.

use ratchet_store::DbError;

/// What a node's phase returns on failure.
///
/// *Transient* errors (a lost connection, a pool timeout, a serialization failure) are retried by the engine
/// with bounded exponential backoff; *permanent* ones fail the node at once (or, from a compensation, make the
/// saga stuck).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum NodeError {
    #[error("transient error: {message}")]
    Transient { message: String },
    #[error("{message}")]
    Permanent { message: String },
}

impl NodeError {
    pub fn transient(message: impl Into<String>) -> NodeError {
        NodeError::Transient {
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> NodeError {
        NodeError::Permanent {
            message: message.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, NodeError::Transient { .. })
    }

    pub fn message(&self) -> &str {
        match self {
            NodeError::Transient { message } | NodeError::Permanent { message } => message,
        }
    }
}

impl From<diesel::result::Error> for NodeError {
    fn from(error: diesel::result::Error) -> Self {
        if ratchet_store::is_transient_diesel(&error) {
            NodeError::transient(error.to_string())
        } else {
            NodeError::permanent(error.to_string())
        }
    }
}

impl From<DbError> for NodeError {
    fn from(error: DbError) -> Self {
        if error.is_transient() {
            NodeError::transient(error.to_string())
        } else {
            NodeError::permanent(error.to_string())
        }
    }
}

/// What steno records when a ratchet node fails: which node, in which phase, and why.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeFailure {
    pub node: String,
    pub phase: String,
    pub message: String,
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
