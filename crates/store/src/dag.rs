//! The one reader of a persisted saga DAG: every part of ratchet that reads a DAG (the store's diagnoses, the
//! engine's registration of a saga and its recovery checks, the CLI) reads it through [`PersistedDag`].
//!
//! # The form
//!
//! steno persists a saga's DAG as its serialized `SagaDag`: petgraph's serialized graph, where
//! `graph.nodes[i]` is steno node id `i`, one of `{"Action": {"name", "label", "action_name"}}`,
//! `{"Constant": {"name", "value"}}`, `{"SubsagaStart": {"saga_name", "params_node_name"}}`,
//! `{"SubsagaEnd": {"name"}}`, `{"Start": {"params"}}` or `"End"`; `end_node` is the end node's id. The engine
//! reads the DAGs it builds in the same form (it serializes steno's `SagaDag`), so a saga is read the same way
//! on creation and on recovery.
//!
//! # Paths
//!
//! A node inside a subsaga has a path (`attach_disk_0/attach_disk`: the subsaga's path, `/`, its name there;
//! see the engine's `SagaBuilder::subsaga`), which keys its commit and compensation records; steno's own node
//! name is only unique within the node's saga or subsaga. The engine makes the path an action node's steno
//! label, so it can be read back from the persisted DAG ([`action_path`]). Every other node holds no record
//! and is known by its name, or by its kind in lower case (`start`, `end`, `subsagastart`).
//!
//! Invariant: for a DAG ratchet built without subsagas every action's label is its name, so the paths are the
//! names. A form this reader does not recognise reads as nodes of kind [`DagNodeKind::Unknown`] (or as no
//! nodes at all), never as an error: the engine then holds no event back and finds no action node, and every
//! node fails, loudly, as not in the saga's DAG.

use std::collections::BTreeMap;

/// The key, beside steno's own fields in a persisted DAG, under which ratchet keeps its typed nodes'
/// arguments (an object by node path). steno's parameters stay the saga's own, as plain steno actions read
/// them (`ActionContext::saga_params`); steno, and any other reader that decodes the column as a `SagaDag`,
/// ignores the key. Written by the store's `saga_create`, in the saga's own `INSERT`; read on recovery from
/// the row that is loaded anyway.
pub const NODE_ARGS_KEY: &str = "ratchet_node_args";

/// The typed nodes' arguments a persisted DAG holds under [`NODE_ARGS_KEY`], by path: `None` when it holds
/// none (a saga without typed nodes, one plain steno created, or one an earlier release created, whose
/// arguments are in its parameters).
pub fn node_args(dag: &serde_json::Value) -> Option<BTreeMap<String, serde_json::Value>> {
    dag.get(NODE_ARGS_KEY)?
        .as_object()
        .map(|args| args.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The separator of a node path (the engine's `PATH_SEPARATOR`).
pub const PATH_SEPARATOR: char = '/';

/// What a node of a persisted DAG is: steno's node kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DagNodeKind {
    Start,
    End,
    Action,
    Constant,
    SubsagaStart,
    SubsagaEnd,
    /// A node in a form this reader does not recognise.
    Unknown,
}

impl DagNodeKind {
    fn of(tag: &str) -> DagNodeKind {
        match tag {
            "Start" => DagNodeKind::Start,
            "End" => DagNodeKind::End,
            "Action" => DagNodeKind::Action,
            "Constant" => DagNodeKind::Constant,
            "SubsagaStart" => DagNodeKind::SubsagaStart,
            "SubsagaEnd" => DagNodeKind::SubsagaEnd,
            _ => DagNodeKind::Unknown,
        }
    }

    /// Whether steno runs no action for a node of this kind (it only passes values on): the start and end
    /// nodes, a constant, a subsaga's start and end nodes.
    pub fn is_without_action(self) -> bool {
        !matches!(self, DagNodeKind::Action | DagNodeKind::Unknown)
    }
}

/// One node of a persisted DAG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DagNode {
    pub kind: DagNodeKind,
    /// The node's path for an action node (`action_path`); for any other node, its name, or its kind in
    /// lower case when it has none (`start`, `end`, `subsagastart`), or `#i` when even that is missing.
    pub path: String,
    /// The action an action node runs (`action_name`); `None` for every other node, and for an action node
    /// without a name or an action name (such a node is not an action node to anyone reading the DAG).
    pub action_name: Option<String>,
    /// An action node's steno label, when it is not its path (a plain steno node labelled for people, as
    /// Nexus's are): a plain action knows itself only by its label. `None` for every other node.
    pub label: Option<String>,
}

/// A persisted DAG, read: its nodes by steno node id, and its end node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistedDag {
    /// `nodes[i]` is steno node id `i`.
    nodes: Vec<DagNode>,
    end_node: Option<u32>,
}

impl PersistedDag {
    /// Reads a DAG in steno's serialized form.
    pub fn read(dag: &serde_json::Value) -> PersistedDag {
        let nodes = dag
            .pointer("/graph/nodes")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, node)| read_node(index, node))
            .collect();
        let end_node = dag
            .get("end_node")
            .and_then(serde_json::Value::as_u64)
            .and_then(|index| u32::try_from(index).ok());
        PersistedDag { nodes, end_node }
    }

    /// Every node with its steno node id, in steno's order.
    pub fn nodes(&self) -> impl Iterator<Item = (u32, &DagNode)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| Some((u32::try_from(index).ok()?, node)))
    }

    /// The steno node id of the DAG's end node.
    pub fn end_node(&self) -> Option<u32> {
        self.end_node
    }

    /// Every action node's steno node id, path and action name, in steno's order. A path may repeat (two
    /// instances of a subsaga plain steno built, whose labels are not paths).
    pub fn action_nodes(&self) -> impl Iterator<Item = (u32, &str, &str)> {
        self.nodes().filter_map(|(id, node)| {
            let action_name = node.action_name.as_deref()?;
            Some((id, node.path.as_str(), action_name))
        })
    }

    /// The path of every plain action node whose label is not its path, by label, for the labels only one
    /// node has (a plain action finds its path by its label).
    pub fn paths_by_label(&self) -> BTreeMap<String, String> {
        let mut by_label: BTreeMap<String, Option<String>> = BTreeMap::new();
        for node in &self.nodes {
            if let Some(label) = &node.label {
                by_label
                    .entry(label.clone())
                    .and_modify(|path| *path = None)
                    .or_insert_with(|| Some(node.path.clone()));
            }
        }
        by_label
            .into_iter()
            .filter_map(|(label, path)| Some((label, path?)))
            .collect()
    }

    /// Every action node's path, by steno node id.
    pub fn action_paths(&self) -> BTreeMap<u32, String> {
        self.action_nodes()
            .map(|(id, path, _)| (id, path.to_owned()))
            .collect()
    }

    /// Every action node's steno node id, by path (the later node's, where a path repeats).
    pub fn action_ids_by_path(&self) -> BTreeMap<String, u32> {
        self.action_nodes()
            .map(|(id, path, _)| (path.to_owned(), id))
            .collect()
    }

    /// steno node id to path, for every node ([`DagNode::path`]).
    pub fn node_paths(&self) -> BTreeMap<i64, String> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (index as i64, node.path.clone()))
            .collect()
    }
}

/// steno node id to path for every action node of a persisted DAG, and to name (or kind, in lower case) for
/// every other node, which holds no record.
pub fn node_paths(dag: &serde_json::Value) -> BTreeMap<i64, String> {
    PersistedDag::read(dag).node_paths()
}

/// The action each action node of a persisted DAG runs, with the node's path, in DAG order. Every node is
/// listed: a path may repeat (two instances of a subsaga plain steno built), and each instance's action is
/// checked.
pub fn action_names(dag: &serde_json::Value) -> Vec<(String, String)> {
    PersistedDag::read(dag)
        .action_nodes()
        .map(|(_, path, action_name)| (path.to_owned(), action_name.to_owned()))
        .collect()
}

/// The saga's parameters in a persisted DAG (its start node's): `None` in a form this reader does not
/// recognise.
pub fn saga_params(dag: &serde_json::Value) -> Option<&serde_json::Value> {
    dag.pointer("/graph/nodes")?
        .as_array()?
        .iter()
        .find_map(|node| node.get("Start")?.get("params"))
}

/// One node of the serialized graph (`graph.nodes[index]`), read.
fn read_node(index: usize, node: &serde_json::Value) -> DagNode {
    let (kind, body) = match node {
        serde_json::Value::String(tag) => (DagNodeKind::of(tag), None),
        serde_json::Value::Object(fields) => match fields.iter().next() {
            Some((tag, body)) => (DagNodeKind::of(tag), Some(body)),
            None => (DagNodeKind::Unknown, None),
        },
        _ => (DagNodeKind::Unknown, None),
    };
    if kind == DagNodeKind::Action
        && let Some(action) = body
        && let Some(path) = action_path(action)
    {
        let action_name = action
            .get("action_name")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let label = action
            .get("label")
            .and_then(serde_json::Value::as_str)
            .filter(|label| *label != path)
            .map(str::to_owned);
        return DagNode {
            kind,
            path,
            action_name,
            label,
        };
    }
    let named = body
        .and_then(|body| body.get("name"))
        .and_then(serde_json::Value::as_str);
    let path = match (named, node) {
        (Some(name), _) => name.to_owned(),
        (None, serde_json::Value::String(tag)) => tag.to_lowercase(),
        (None, serde_json::Value::Object(fields)) => fields
            .keys()
            .next()
            .map(|tag| tag.to_lowercase())
            .unwrap_or_else(|| format!("#{index}")),
        (None, _) => format!("#{index}"),
    };
    DagNode {
        kind,
        path,
        action_name: None,
        label: None,
    }
}

/// The path of a persisted action node (`graph.nodes[i].Action`): its label when the label is a path ratchet
/// gave it (the node's name, or a subsaga path ending `/name`), its name otherwise. A DAG plain steno built
/// (Nexus's, recovered by ratchet) labels its nodes for people (`"Reserve"` for `reserve`): those nodes are
/// known by their names (unique only within their saga or subsaga; they hold no records). `None` for an
/// action without a name.
fn action_path(action: &serde_json::Value) -> Option<String> {
    let name = action.get("name")?.as_str()?;
    let label = action.get("label").and_then(serde_json::Value::as_str);
    match label {
        Some(label)
            if label == name
                || label
                    .strip_suffix(name)
                    .is_some_and(|prefix| prefix.ends_with(PATH_SEPARATOR)) =>
        {
            Some(label.to_owned())
        }
        _ => Some(name.to_owned()),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_plain_steno_node_is_known_by_its_name_not_its_label() {
        let dag = serde_json::json!({"graph": {"nodes": [
            {"Action": {"name": "reserve", "label": "Reserve", "action_name": "legacy.reserve"}},
            {"Action": {"name": "wait", "label": "x/wait", "action_name": "legacy.wait"}},
        ]}});
        let paths: Vec<String> = node_paths(&dag).into_values().collect();
        assert_eq!(paths, ["reserve", "x/wait"]);
    }

    #[test]
    fn an_action_inside_a_subsaga_is_known_by_its_label() {
        let dag = serde_json::json!({"graph": {"nodes": [
            {"Action": {"name": "reserve", "label": "reserve", "action_name": "x.reserve"}},
            {"Constant": {"name": "attach_0.params", "value": 1}},
            {"SubsagaStart": {"saga_name": "attach", "params_node_name": "attach_0.params"}},
            {"Action": {"name": "attach", "label": "attach_0/attach", "action_name": "x.attach"}},
            {"SubsagaEnd": {"name": "attach_0"}},
            {"Start": {"params": {}}},
            "End",
        ]}, "end_node": 6});
        let paths: Vec<String> = node_paths(&dag).into_values().collect();
        assert_eq!(
            paths,
            [
                "reserve",
                "attach_0.params",
                "subsagastart",
                "attach_0/attach",
                "attach_0",
                "start",
                "end"
            ]
        );
        let read = PersistedDag::read(&dag);
        assert_eq!(read.end_node(), Some(6));
        let without_action: Vec<u32> = read
            .nodes()
            .filter(|(_, node)| node.kind.is_without_action())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(without_action, [1, 2, 4, 5, 6]);
        let actions: Vec<(u32, &str, &str)> = read.action_nodes().collect();
        assert_eq!(
            actions,
            [
                (0, "reserve", "x.reserve"),
                (3, "attach_0/attach", "x.attach")
            ]
        );
    }

    /// Two instances of a subsaga share their nodes' local names: every instance's action is listed, so a
    /// check for an unregistered action sees each (a map by name kept only the last).
    #[test]
    fn every_action_node_is_listed_even_when_local_names_repeat() {
        let dag = serde_json::json!({"graph": {"nodes": [
            {"Action": {"name": "attach", "label": "attach", "action_name": "plain.attach_v1"}},
            {"Action": {"name": "attach", "label": "attach", "action_name": "plain.attach_v2"}},
            {"Action": {"name": "attach", "label": "disk_1/attach", "action_name": "typed.attach"}},
        ]}});
        assert_eq!(
            action_names(&dag),
            [
                ("attach".to_owned(), "plain.attach_v1".to_owned()),
                ("attach".to_owned(), "plain.attach_v2".to_owned()),
                ("disk_1/attach".to_owned(), "typed.attach".to_owned()),
            ]
        );
    }

    #[test]
    fn node_names_come_from_the_persisted_dag() {
        let dag = serde_json::json!({"graph": {"nodes": [
            {"Action": {"name": "reserve", "label": "reserve", "action_name": "x.reserve"}},
            {"Constant": {"name": "c", "value": 1}},
            {"Start": {"params": {}}},
            "End",
        ]}});
        let names: Vec<String> = node_paths(&dag).into_values().collect();
        assert_eq!(names, ["reserve", "c", "start", "end"]);
        assert_eq!(
            action_names(&dag),
            [("reserve".to_owned(), "x.reserve".to_owned())]
        );
    }

    /// An action node the reader cannot make sense of is no action node: it is named as before (its kind),
    /// and no action is checked or run for it.
    #[test]
    fn an_action_without_a_name_or_an_action_name_is_not_an_action_node() {
        let dag = serde_json::json!({"graph": {"nodes": [
            {"Action": {"label": "x", "action_name": "x.nameless"}},
            {"Action": {"name": "unnamed_action", "label": "unnamed_action"}},
            17,
        ]}});
        let names: Vec<String> = node_paths(&dag).into_values().collect();
        assert_eq!(names, ["action", "unnamed_action", "#2"]);
        assert!(action_names(&dag).is_empty());
        assert_eq!(PersistedDag::read(&dag).end_node(), None);
    }
}
