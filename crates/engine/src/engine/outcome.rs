//! How a saga came to rest, as the engine reports it ([`SagaOutcome`]).

/// How a saga came to rest, or why this engine stopped driving it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum SagaOutcome {
    /// Every node succeeded; the saga's output.
    Succeeded { output: serde_json::Value },
    /// A node failed and every committed node was compensated.
    Unwound { node: String, error: String },
    /// A compensation failed for good: the saga is stuck (recorded `stuck`).
    Stuck {
        node: String,
        error: String,
        undo_node: String,
        undo_error: String,
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
