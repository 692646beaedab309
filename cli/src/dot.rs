//! `ratchet sagas show ID --dot`: a saga's DAG for Graphviz, each node coloured by what became of it.
//!
//! The DAG is the one persisted with the saga (steno's `SagaDag`, whose `graph` is petgraph's serialized
//! graph: `nodes`, and `edges` as `[from, to, weight]`); each node's state comes from its events in the log.

use ratchet_store::{SagaHistory, node_paths};
use std::collections::BTreeMap;
use std::fmt::Write;

/// What became of a node, from its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    NotRun,
    Running,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    /// Its compensation failed: the saga is stuck there.
    Stuck,
}

impl NodeState {
    fn label(self) -> &'static str {
        match self {
            NodeState::NotRun => "not run",
            NodeState::Running => "running",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Compensating => "compensating",
            NodeState::Compensated => "compensated",
            NodeState::Stuck => "stuck",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            NodeState::NotRun => "gray90",
            NodeState::Running => "lightblue",
            NodeState::Succeeded => "palegreen",
            NodeState::Failed => "salmon",
            NodeState::Compensating => "orange",
            NodeState::Compensated => "khaki",
            NodeState::Stuck => "red",
        }
    }

    /// The state after an event of `event_type`, events taken in the log's order of precedence.
    fn rank(self) -> u8 {
        match self {
            NodeState::NotRun => 0,
            NodeState::Running => 1,
            NodeState::Succeeded => 2,
            NodeState::Failed => 3,
            NodeState::Compensating => 4,
            NodeState::Compensated => 5,
            NodeState::Stuck => 6,
        }
    }
}

/// Each node's state (by steno node id), from the saga's events.
pub fn node_states(history: &SagaHistory) -> BTreeMap<i64, NodeState> {
    let mut states: BTreeMap<i64, NodeState> = BTreeMap::new();
    for event in &history.events {
        let state = match event.event_type.as_str() {
            "started" => NodeState::Running,
            "succeeded" => NodeState::Succeeded,
            "failed" => NodeState::Failed,
            "undo_started" => NodeState::Compensating,
            "undo_finished" => NodeState::Compensated,
            "undo_failed" => NodeState::Stuck,
            _ => continue,
        };
        let entry = states.entry(event.node_id).or_insert(NodeState::NotRun);
        if state.rank() > entry.rank() {
            *entry = state;
        }
    }
    states
}

/// Quotes `text` for DOT.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The saga's DAG in DOT.
pub fn render(history: &SagaHistory) -> String {
    let saga = &history.saga;
    let names = node_paths(&saga.saga_dag);
    let states = node_states(history);
    let mut out = String::new();
    let title = format!("saga {} ({}): {}", saga.id, saga.name, saga.saga_state);
    let _ = writeln!(out, "digraph {} {{", quote(&format!("saga {}", saga.id)));
    let _ = writeln!(out, "  label={}; labelloc=t;", quote(&title));
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];"
    );
    for (id, name) in &names {
        let state = states.get(id).copied().unwrap_or(NodeState::NotRun);
        // A node that failed after its commit undid that commit itself (a compensation record), or left it
        // in effect: say which.
        let committed = history.commits.iter().any(|c| &c.node_name == name);
        let undone = history
            .compensations
            .iter()
            .any(|c| &c.node_name == name && c.had_commit);
        let detail = match (state, committed, undone) {
            (NodeState::Failed, true, true) => " (its commit undone)",
            (NodeState::Failed, true, false) => " (its commit in effect)",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  n{id} [label={}, fillcolor={}];",
            quote(&format!("{name}\n{}{detail}", state.label())).replace("\n", "\\n"),
            quote(state.colour())
        );
    }
    let edges = saga
        .saga_dag
        .pointer("/graph/edges")
        .and_then(serde_json::Value::as_array);
    for edge in edges.into_iter().flatten() {
        let ends = edge.as_array().map(|pair| {
            (
                pair.first().and_then(serde_json::Value::as_i64),
                pair.get(1).and_then(serde_json::Value::as_i64),
            )
        });
        if let Some((Some(from), Some(to))) = ends {
            let _ = writeln!(out, "  n{from} -> n{to};");
        }
    }
    let _ = writeln!(out, "  subgraph cluster_legend {{");
    let _ = writeln!(out, "    label=\"legend\"; fontname=\"Helvetica\";");
    for state in [
        NodeState::Succeeded,
        NodeState::Failed,
        NodeState::Compensated,
        NodeState::Stuck,
        NodeState::Running,
        NodeState::Compensating,
        NodeState::NotRun,
    ] {
        let _ = writeln!(
            out,
            "    {} [label={}, fillcolor={}];",
            quote(&format!("legend {}", state.label())),
            quote(state.label()),
            quote(state.colour())
        );
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}
