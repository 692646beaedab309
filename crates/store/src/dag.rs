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
        let label = node
            .get("Action")
            .and_then(|action| action.get("label"))
            .and_then(serde_json::Value::as_str);
        if let Some(label) = label {
            paths.insert(index as i64, label.to_owned());
        }
    }
    paths
}

#[cfg(test)]
mod test {
    use super::node_paths;

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
