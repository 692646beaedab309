//! What each phase of a node may touch. Only the engine can make these.

use crate::error::{NodeError, RunError};
use crate::saga::definition::{SagaDef, StenoSaga};
use crate::saga::output::NodeOutput;
use ratchet_store::DbConnection;
use serde::de::DeserializeOwned;
use std::panic::AssertUnwindSafe;
use uuid::Uuid;

/// The prepare phase's view: the saga's parameters, earlier nodes' outputs, and one connection inside a
/// read-only transaction (PostgreSQL rejects any write made through it). `C` is the connection's type: the
/// engine's diesel-async connection unless the node runs on another ([`crate::DbNode`]'s `C`).
pub struct PrepareCx<'a, S: SagaDef, C = DbConnection> {
    /// steno's view of the node's ancestors, scoped to the node's own saga or subsaga (inside a subsaga, only
    /// the subsaga's earlier nodes are visible, by their names there).
    pub(crate) steno: &'a dyn Ancestors,
    pub(crate) params: &'a S::Params,
    pub(crate) conn: &'a mut C,
    pub(crate) saga_id: Uuid,
    pub(crate) node_name: &'a str,
    pub(crate) app: &'a S::Context,
    pub(crate) log: slog::Logger,
}

impl<S: SagaDef, C> PrepareCx<'_, S, C> {
    /// The saga's logger: the host's (`EngineConfig::log`; steno's log bridged into `tracing` without one),
    /// with the saga's id (`saga_id`), its name (`saga_name`) and this node's path (`node`) attached, as
    /// Nexus's actions log with their saga's logger.
    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    /// The saga's parameters.
    pub fn params(&self) -> &S::Params {
        self.params
    }

    /// The application context the saga was registered with (clients of other services, configuration).
    pub fn context(&self) -> &S::Context {
        self.app
    }

    /// The connection, inside the engine's read-only transaction.
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// This node's path in the DAG: its name, or inside a subsaga the subsaga's path, `/`, and its name
    /// there (see [`crate::SagaBuilder::subsaga`]). Its records, idempotency keys and derived ids are keyed
    /// by it.
    pub fn node_name(&self) -> &str {
        self.node_name
    }

    /// The output of an earlier node (an ancestor in the DAG). Naming a node that is not an ancestor is a
    /// permanent error (steno itself would panic: steno#32).
    pub fn output<T: NodeOutput>(&self, node_name: &str) -> Result<T, NodeError<S::Error>> {
        let steno = self.steno;
        std::panic::catch_unwind(AssertUnwindSafe(|| steno.output_json(node_name)))
            .map_err(|_| {
                NodeError::permanent(format!(
                    "node {:?} looked up {node_name:?}, which is not one of its ancestors",
                    self.node_name
                ))
            })?
            .and_then(|value| serde_json::from_value::<T>(value).map_err(|e| e.to_string()))
            .map_err(|error| {
                NodeError::permanent(format!("output of {node_name:?} does not decode: {error}"))
            })
    }
}

/// The outputs of a node's ancestors, as steno's `ActionContext` of the saga the node runs in (the root saga,
/// whose steno type may differ from the node's own saga when the node runs inside a subsaga) gives them.
pub(crate) trait Ancestors: Send + Sync {
    /// The output of ancestor `name`, as JSON. steno panics when `name` is not an ancestor (steno#32): the
    /// caller catches that.
    fn output_json(&self, name: &str) -> Result<serde_json::Value, String>;
}

impl<R: SagaDef> Ancestors for steno::ActionContext<StenoSaga<R>> {
    fn output_json(&self, name: &str) -> Result<serde_json::Value, String> {
        self.lookup::<serde_json::Value>(name)
            .map_err(|e| e.to_string())
    }
}

/// Decodes a value of type `T` from JSON (the node's parameters, inside a subsaga the subsaga's).
pub(crate) fn decode_params<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, RunError> {
    T::deserialize(value)
        .map_err(|e| NodeError::permanent(format!("saga parameters do not decode: {e}")))
}

/// The commit phase's view (also a compensation's): one connection inside the transaction the engine opened.
/// It cannot be built outside the engine, and it borrows the connection only for the phase. `C` is the
/// connection's type, as in [`PrepareCx`].
pub struct CommitTx<'a, C = DbConnection> {
    pub(crate) conn: &'a mut C,
    pub(crate) saga_id: Uuid,
    pub(crate) node_name: &'a str,
    pub(crate) log: slog::Logger,
}

impl<C> CommitTx<'_, C> {
    /// The saga's logger, with the saga's id, name and this node's path attached (see [`PrepareCx::log`]).
    /// The same in a compensation.
    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    /// The connection, inside the engine's transaction. Run the node's writes on it; do not commit.
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    pub fn node_name(&self) -> &str {
        self.node_name
    }

    /// A deterministic id for something this node creates: the same on every attempt and every replay.
    pub fn derived_id(&self, label: &str) -> Uuid {
        derived_id(self.saga_id, self.node_name, label)
    }
}

/// An external node's view while calling out: the idempotency key, the parameters and the application context.
pub struct ExternalCx<'a, S: SagaDef> {
    pub(crate) params: S::Params,
    pub(crate) app: &'a S::Context,
    pub(crate) saga_id: Uuid,
    pub(crate) node_name: &'a str,
    pub(crate) log: slog::Logger,
}

impl<S: SagaDef> ExternalCx<'_, S> {
    /// The saga's logger, with the saga's id, name and this node's path attached (see [`PrepareCx::log`]),
    /// in the call and in its compensation.
    pub fn log(&self) -> &slog::Logger {
        &self.log
    }

    /// The key the service deduplicates on: a UUIDv5 of the saga id and the node name.
    pub fn idempotency_key(&self) -> Uuid {
        derived_id(self.saga_id, self.node_name, "idempotency-key")
    }

    /// The key a compensation's call deduplicates on: distinct from the forward call's (a service that
    /// remembers a key with its request would refuse a different request under the same key), and the same
    /// on every attempt.
    pub fn compensation_key(&self) -> Uuid {
        derived_id(self.saga_id, self.node_name, "compensation-key")
    }

    pub fn params(&self) -> &S::Params {
        &self.params
    }

    pub fn context(&self) -> &S::Context {
        self.app
    }

    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// This node's path in the DAG (see [`PrepareCx::node_name`]).
    pub fn node_name(&self) -> &str {
        self.node_name
    }
}

/// What the optional step after a node's commit (or its compensation) sees: the saga's context, read-only,
/// its id, the node's path, and the saga's logger. No connection: the step reaches no database through the
/// engine (see [`crate::DbNode::after_commit`]).
pub struct AfterCommitCx<'a, S: SagaDef> {
    pub(crate) app: &'a S::Context,
    pub(crate) saga_id: Uuid,
    pub(crate) node_name: &'a str,
    pub(crate) log: slog::Logger,
}

impl<S: SagaDef> AfterCommitCx<'_, S> {
    /// The application context the saga runs with, read-only (Nexus's background-task handles).
    pub fn context(&self) -> &S::Context {
        self.app
    }

    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// This node's path in the DAG (see [`PrepareCx::node_name`]).
    pub fn node_name(&self) -> &str {
        self.node_name
    }

    /// The saga's logger, with the saga's id, name and this node's path attached (see [`PrepareCx::log`]).
    pub fn log(&self) -> &slog::Logger {
        &self.log
    }
}

/// UUIDv5 of (saga id, node name, label): deterministic ids, never `Uuid::new_v4()` inside an action.
pub fn derived_id(saga_id: Uuid, node_name: &str, label: &str) -> Uuid {
    let name = format!("{node_name}/{label}");
    Uuid::new_v5(&saga_id, name.as_bytes())
}
