//! steno's own example saga, trip booking (steno's `examples/trip.rs`), run unchanged on ratchet.
//!
//! [`steno_trip`] is steno's file, [`ratchet_trip`] the same file ported to ratchet. The port changes no
//! action, no action's registration name and no DAG: the saga type `TripSaga` becomes an alias of ratchet's
//! (`StenoSaga<Trip>`, with `Trip` declaring the same actions as unchecked steno actions), and `book_trip`
//! creates the saga on an [`Engine`](ratchet_engine::Engine) from the DAG `make_trip_dag` builds with steno's
//! own `DagBuilder` (`Engine::create_from_dag`, with the trip's own context) instead of on a `SecClient`.
//! The actions read their parameters with steno's `saga_params` and their context with `user_data()`, as
//! under steno. (In both files, steno's `main` gave way to a `book_trip` that returns a [`TripOutcome`]
//! rather than printing, since the comparison needs it.)
//!
//! The tests (`tests/trip.rs`) run both, cleanly and with an error injected at each node, and compare the
//! outcomes, the outputs and which actions ran and were undone; one of them checks that the two files' action
//! code is the same text.

pub mod ratchet_trip;
pub mod steno_trip;

use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use std::collections::BTreeSet;
use uuid::Uuid;

/// How a trip came to rest, in terms both executors give: the saga's output or the node that failed (and
/// the undo that failed, if one did), and the events of its action nodes, by action node name.
#[derive(Debug, PartialEq, Eq)]
pub struct TripOutcome {
    pub result: Result<serde_json::Value, (String, Option<String>)>,
    /// (action node name, event type) for every event of an action node, sorted.
    pub events: BTreeSet<(String, String)>,
}

impl TripOutcome {
    /// The outcome of a trip whose DAG is `dag`, given its events by steno node id.
    pub fn new(
        dag: &steno::SagaDag,
        result: Result<serde_json::Value, (String, Option<String>)>,
        events: Vec<(u32, String)>,
    ) -> TripOutcome {
        let names = ["payment", "hotel", "flight", "car", "output"];
        let by_id: Vec<(u32, &str)> = names
            .iter()
            .filter_map(|name| Some((dag.get_index(name).ok()?.index() as u32, *name)))
            .collect();
        let events = events
            .into_iter()
            .filter_map(|(id, event)| {
                let name = by_id.iter().find(|(node, _)| *node == id)?.1;
                Some((name.to_owned(), event))
            })
            .collect();
        TripOutcome { result, events }
    }
}

#[derive(diesel::QueryableByName)]
struct LoggedEvent {
    #[diesel(sql_type = BigInt)]
    node_id: i64,
    #[diesel(sql_type = Text)]
    event_type: String,
}

/// The events ratchet's saga log holds for saga `id`, by steno node id (empty if the log does not read).
pub async fn logged_events(engine: &ratchet_engine::Engine, id: Uuid) -> Vec<(u32, String)> {
    let Ok(mut conn) = engine.pool().get().await else {
        return Vec::new();
    };
    diesel::sql_query("SELECT node_id, event_type FROM saga_node_event WHERE saga_id = $1")
        .bind::<SqlUuid, _>(id)
        .load::<LoggedEvent>(&mut conn)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|event| Some((u32::try_from(event.node_id).ok()?, event.event_type)))
        .collect()
}
