//! Saga log events as rows, and back: every steno event type round-trips, `undo_failed` included.

use crate::error::DbError;
use crate::schema::saga_node_event;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use steno::{SagaId, SagaNodeEvent, SagaNodeEventType};
use uuid::Uuid;

/// One row of `saga_node_event`.
#[derive(
    Clone, Debug, PartialEq, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = saga_node_event)]
pub struct EventRow {
    pub saga_id: Uuid,
    pub node_id: i64,
    pub event_type: String,
    /// The event's data: `None` (SQL `NULL`) for `started`, `undo_started` and `undo_finished`; for the others
    /// a JSON value, which may be JSON `null` (the start node's output). In serde's form the field is absent
    /// for `None` and present (possibly `null`) for `Some`, so that the two round-trip apart.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<serde_json::Value>,
    pub event_time: DateTime<Utc>,
    pub creator: Uuid,
}

/// A field that is present, whatever its value (JSON `null` included), is `Some` (see [`EventRow::data`]).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

impl EventRow {
    /// The row for a steno event, recorded now by `creator`.
    pub fn new(event: &SagaNodeEvent, creator: Uuid) -> Result<EventRow, DbError> {
        let data = match &event.event_type {
            SagaNodeEventType::Succeeded(output) => Some((**output).clone()),
            SagaNodeEventType::Failed(error) => Some(to_json(error)?),
            SagaNodeEventType::UndoFailed(error) => Some(to_json(error)?),
            SagaNodeEventType::Started
            | SagaNodeEventType::UndoStarted
            | SagaNodeEventType::UndoFinished => None,
        };
        Ok(EventRow {
            saga_id: uuid_of(event.saga_id),
            node_id: i64::from(u32::from(event.node_id)),
            event_type: event.event_type.label().to_owned(),
            data,
            event_time: Utc::now(),
            creator,
        })
    }

    /// Back to steno's event. A row that does not decode is a corrupt log, named as such.
    pub fn to_steno(&self) -> Result<SagaNodeEvent, DbError> {
        let corrupt = |why: String| {
            DbError::CorruptRow(format!(
                "saga {} node {} event {:?}: {why}",
                self.saga_id, self.node_id, self.event_type
            ))
        };
        let data = || {
            self.data
                .clone()
                .ok_or_else(|| corrupt("no data".to_owned()))
        };
        let event_type = match self.event_type.as_str() {
            "started" => SagaNodeEventType::Started,
            "succeeded" => SagaNodeEventType::Succeeded(std::sync::Arc::new(data()?)),
            "failed" => SagaNodeEventType::Failed(
                serde_json::from_value(data()?).map_err(|e| corrupt(e.to_string()))?,
            ),
            "undo_started" => SagaNodeEventType::UndoStarted,
            "undo_finished" => SagaNodeEventType::UndoFinished,
            // Nexus's store records no error for an `undo_failed` event (its `data` is NULL): the event still
            // says the undo failed for good.
            "undo_failed" => SagaNodeEventType::UndoFailed(match &self.data {
                Some(data) => {
                    serde_json::from_value(data.clone()).map_err(|e| corrupt(e.to_string()))?
                }
                None => steno::UndoActionError::PermanentFailure {
                    source_error: serde_json::json!({"message": UNDO_FAILED_WITHOUT_ERROR}),
                },
            }),
            other => return Err(corrupt(format!("unknown event type {other:?}"))),
        };
        let node_id = u32::try_from(self.node_id).map_err(|e| corrupt(e.to_string()))?;
        Ok(SagaNodeEvent {
            saga_id: newtype_uuid::GenericUuid::from_untyped_uuid(self.saga_id),
            node_id: node_id.into(),
            event_type,
        })
    }
}

/// The error an `undo_failed` event without data (as Nexus's store writes them) reads as.
pub(crate) const UNDO_FAILED_WITHOUT_ERROR: &str =
    "undo failed (the store that recorded it kept no error)";

/// A readable message from the `data` of an `undo_failed` event: steno's `UndoActionError::PermanentFailure`
/// carries `{"source_error": {"message": "undo action attempt N: <error>"}}`. Anything else is shown as JSON.
pub fn undo_error_message(data: Option<&serde_json::Value>) -> String {
    match data {
        None => UNDO_FAILED_WITHOUT_ERROR.to_owned(),
        Some(data) => data
            .pointer("/PermanentFailure/source_error/message")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| data.to_string()),
    }
}

/// The field of a failure's `source_error` that holds the saga's typed error, serialized: in a `failed`
/// event, ratchet's node failure carries it (`{"ActionFailed": {"source_error": {.., "saga_error": E}}}`); in
/// an `undo_failed` event, the store adds it beside steno's message
/// (`{"PermanentFailure": {"source_error": {"message": .., "saga_error": E}}}`).
pub const SAGA_ERROR_FIELD: &str = "saga_error";

/// The saga's typed error (serialized) recorded in the `data` of a `failed` or `undo_failed` event, if any.
pub fn saga_error_of(data: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    let data = data?;
    [
        "/ActionFailed/source_error/",
        "/PermanentFailure/source_error/",
    ]
    .iter()
    .find_map(|prefix| data.pointer(&format!("{prefix}{SAGA_ERROR_FIELD}")))
    .cloned()
}

/// The plain UUID of a steno saga id.
pub fn uuid_of(saga_id: SagaId) -> Uuid {
    use newtype_uuid::GenericUuid;
    saga_id.into_untyped_uuid()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(value)
        .map_err(|e| DbError::CorruptRow(format!("serializing an event: {e}")))
}

#[cfg(test)]
mod test {
    use super::*;
    use steno::{ActionError, UndoActionError};

    #[test]
    fn no_data_and_null_data_round_trip_apart_as_json() {
        let row = |data| EventRow {
            saga_id: Uuid::new_v4(),
            node_id: 3,
            event_type: "succeeded".to_owned(),
            data,
            event_time: Utc::now(),
            creator: Uuid::new_v4(),
        };
        for row in [
            row(None),
            row(Some(serde_json::Value::Null)),
            row(Some(serde_json::json!({"a": 1}))),
        ] {
            let json = serde_json::to_string(&row).unwrap();
            let back: EventRow = serde_json::from_str(&json).unwrap();
            assert_eq!(back, row, "{json}");
        }
    }

    #[test]
    fn every_event_type_round_trips() {
        let saga_id = SagaId::new_v4();
        let types = vec![
            SagaNodeEventType::Started,
            SagaNodeEventType::Succeeded(std::sync::Arc::new(serde_json::json!({"a": 1}))),
            SagaNodeEventType::Failed(ActionError::action_failed("boom".to_owned())),
            SagaNodeEventType::UndoStarted,
            SagaNodeEventType::UndoFinished,
            SagaNodeEventType::UndoFailed(UndoActionError::PermanentFailure {
                source_error: serde_json::json!({"message": "undo broke"}),
            }),
        ];
        for event_type in types {
            let event = SagaNodeEvent {
                saga_id,
                node_id: 7.into(),
                event_type,
            };
            let row = EventRow::new(&event, Uuid::new_v4()).unwrap();
            let back = row.to_steno().unwrap();
            assert_eq!(format!("{event:?}"), format!("{back:?}"));
        }
    }

    /// Nexus's store writes `undo_failed` with no data: such a row still reads as a failed undo, with a
    /// message saying no error was kept, not as a corrupt log.
    #[test]
    fn an_undo_failed_event_without_data_reads_as_a_failed_undo() {
        let row = EventRow {
            saga_id: Uuid::new_v4(),
            node_id: 2,
            event_type: "undo_failed".to_owned(),
            data: None,
            event_time: Utc::now(),
            creator: Uuid::new_v4(),
        };
        let event = row.to_steno().expect("decodes");
        let SagaNodeEventType::UndoFailed(error) = event.event_type else {
            panic!("not an undo failure: {:?}", event.event_type);
        };
        let data = serde_json::to_value(error).unwrap();
        assert_eq!(
            data.pointer("/PermanentFailure/source_error/message"),
            Some(&serde_json::json!(UNDO_FAILED_WITHOUT_ERROR))
        );
        assert_eq!(undo_error_message(None), UNDO_FAILED_WITHOUT_ERROR);
    }

    #[test]
    fn undo_errors_read_as_their_message() {
        let error = UndoActionError::PermanentFailure {
            source_error: serde_json::json!({"message": "undo action attempt 1: disk busy"}),
        };
        let data = serde_json::to_value(error).unwrap();
        assert_eq!(
            undo_error_message(Some(&data)),
            "undo action attempt 1: disk busy"
        );
        assert_eq!(
            undo_error_message(Some(&serde_json::json!({"odd": 1}))),
            r#"{"odd":1}"#
        );
    }

    #[test]
    fn corrupt_rows_are_named() {
        let row = EventRow {
            saga_id: Uuid::nil(),
            node_id: 3,
            event_type: "exploded".to_owned(),
            data: None,
            event_time: Utc::now(),
            creator: Uuid::nil(),
        };
        let error = row.to_steno().unwrap_err().to_string();
        assert!(error.contains("unknown event type \"exploded\""), "{error}");
        let row = EventRow {
            event_type: "succeeded".to_owned(),
            ..row
        };
        assert!(row.to_steno().unwrap_err().to_string().contains("no data"));
    }
}
