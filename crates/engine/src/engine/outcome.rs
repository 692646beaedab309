//! How a saga came to rest, as the engine reports it ([`SagaOutcome`]).
//!
//! # Design
//!
//! The outcome is one type for every saga (it is kept in the ring of recent outcomes, printed as JSON by the
//! CLI, and returned by [`Engine::wait`](crate::Engine::wait), which knows no saga type), so what is typed in
//! it is held serialized and decoded on demand, by the caller who knows the saga:
//!
//! - a succeeded saga's outputs by node path ([`SagaOutcome::lookup_node_output`]), read from steno's log of
//!   the run (the events of a recovered saga's earlier process included), so the same before and after a
//!   crash;
//! - a failed node's typed error ([`SagaOutcome::saga_error`]) and a failed compensation's
//!   ([`SagaOutcome::undo_saga_error`]), read from the node's recorded failure, decoded as the saga's
//!   [`SagaDef::Error`].

use crate::saga::definition::SagaDef;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// How a saga came to rest, or why this engine stopped driving it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum SagaOutcome {
    /// Every node succeeded; the saga's output, and every node's output by path
    /// ([`SagaOutcome::lookup_node_output`]).
    Succeeded {
        output: serde_json::Value,
        #[serde(default)]
        outputs: BTreeMap<String, serde_json::Value>,
    },
    /// A node failed and every committed node was compensated. `saga_error`: the saga's typed error the node
    /// failed with, serialized ([`SagaOutcome::saga_error`]).
    Unwound {
        node: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saga_error: Option<serde_json::Value>,
    },
    /// A compensation failed for good: the saga is stuck (recorded `stuck`).
    Stuck {
        node: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saga_error: Option<serde_json::Value>,
        undo_node: String,
        undo_error: String,
        /// The saga's typed error the compensation failed with ([`SagaOutcome::undo_saga_error`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        undo_saga_error: Option<serde_json::Value>,
    },
    /// The saga was abandoned (by recovery, which could not resume it, or by an operator), its rows left as
    /// they were.
    Abandoned { reason: String },
    /// Another executor adopted the saga (or an operator abandoned it); this one stopped driving it.
    Fenced,
    /// This engine shut down (or lost steno's executor) before the saga came to rest: it stays unfinished in
    /// the database, and the next engine with this executor id recovers it.
    Interrupted { reason: String },
}

/// Why a lookup in a [`SagaOutcome`] found no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeLookupError {
    #[error("the saga did not succeed, so it has no outputs")]
    NotSucceeded,
    #[error("the saga has no output of a node at path {0:?}")]
    NoSuchNode(String),
    #[error("{what} does not decode as {wanted}: {message}")]
    Decode {
        what: String,
        wanted: &'static str,
        message: String,
    },
}

impl SagaOutcome {
    /// The output of the node at `path` (its name, or inside a subsaga its path: `attach_disk_0/attach_disk`),
    /// decoded as `T`: steno's `SagaResultOk::lookup_node_output`, by path. Every action node's output is
    /// there (constants and subsaga entries by their name at the top level).
    pub fn lookup_node_output<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, OutcomeLookupError> {
        let SagaOutcome::Succeeded { outputs, .. } = self else {
            return Err(OutcomeLookupError::NotSucceeded);
        };
        let value = outputs
            .get(path)
            .ok_or_else(|| OutcomeLookupError::NoSuchNode(path.to_owned()))?;
        decode(&format!("the output of {path:?}"), value)
    }

    /// The saga's typed error the failed node failed with, decoded as `S::Error`: `Ok(None)` when the saga
    /// did not fail, or failed with an untyped (transient, permanent, injected) error.
    pub fn saga_error<S: SagaDef>(&self) -> Result<Option<S::Error>, OutcomeLookupError> {
        match self {
            SagaOutcome::Unwound {
                saga_error: Some(value),
                ..
            }
            | SagaOutcome::Stuck {
                saga_error: Some(value),
                ..
            } => decode("the saga's error", value).map(Some),
            _ => Ok(None),
        }
    }

    /// The saga's typed error the failed compensation of a stuck saga failed with, decoded as `S::Error`.
    pub fn undo_saga_error<S: SagaDef>(&self) -> Result<Option<S::Error>, OutcomeLookupError> {
        match self {
            SagaOutcome::Stuck {
                undo_saga_error: Some(value),
                ..
            } => decode("the compensation's error", value).map(Some),
            _ => Ok(None),
        }
    }
}

fn decode<T: DeserializeOwned>(
    what: &str,
    value: &serde_json::Value,
) -> Result<T, OutcomeLookupError> {
    T::deserialize(value).map_err(|e| OutcomeLookupError::Decode {
        what: what.to_owned(),
        wanted: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}
