//! Reading a persisted saga DAG's nodes by **path**.
//!
//! A node inside a subsaga has a path (`attach_disk_0/attach_disk`: the subsaga's path, `/`, its name there;
//! see the engine's `SagaBuilder::subsaga`), which keys its commit and compensation records; steno's own node
//! name is only unique within the node's saga or subsaga. The engine makes the path an action node's steno
//! label, so it can be read back from the persisted DAG (petgraph's serialized graph: `graph.nodes[i]` is
//! `{"Action": {"name", "label", "action_name"}}`, `{"Constant": {"name", …}}`, `{"SubsagaStart": …}`,
//! `{"SubsagaEnd": {"name"}}`, `{"Start": …}` or `"End"`).
//!
//! Invariant: for a DAG ratchet built without subsagas every action's label is its name, so the paths are the names
//! [`crate::ops::dag_node_names`] gives.

use std::collections::BTreeMap;

/// steno node id to path for every action node of a persisted DAG, and to name (or kind, in lower case) for
/// every other node, which holds no record.
pub fn node_paths(dag: &serde_json::Value) -> BTreeMap<i64, String> {
    let mut paths = crate::ops::dag_node_names(dag);
    let nodes = dag
        .pointer("/graph/nodes")
        .and_then(serde_json::Value::as_array);
    for (index, node) in nodes.into_iter().flatten().enumerate() {
        if let Some(path) = node.get("Action").and_then(action_path) {
            paths.insert(index as i64, path);
        }
    }
    paths
}

/// The path of a persisted action node (`graph.nodes[i].Action`): its label when the label is a path ratchet
/// gave it (the node's name, or a subsaga path ending `/name`), its name otherwise. A DAG plain steno built
/// (Nexus's, recovered by ratchet) labels its nodes for people (`"Reserve"` for `reserve`): those nodes are
/// known by their names (unique only within their saga or subsaga; they hold no records).
pub fn action_path(action: &serde_json::Value) -> Option<String> {
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

/// The separator of a node path (the engine's `PATH_SEPARATOR`).
pub const PATH_SEPARATOR: char = '/';

#[cfg(test)]
mod test {
    use super::node_paths;

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
        ]}});
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
    }
}
