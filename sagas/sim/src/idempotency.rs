//! Idempotency records: what a service remembers about each key it has applied a request under.
//!
//! A record maps a key to the fingerprint of the request applied under it and the response given. A request
//! with a recorded key and the same fingerprint is answered with the recorded response and not applied again;
//! one with a recorded key and a different fingerprint is refused. Only applied requests are recorded: a
//! refused request leaves no record, so nothing stops the caller from retrying it, under the same key, once
//! whatever made the service refuse has changed.
//!
//! The fingerprint is the operation, the resource id from the path, and the JSON body in a canonical form
//! (object keys sorted, no whitespace), so that a body re-serialized with its keys in another order is still
//! the same request.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use crate::faults::Operation;
use crate::http::Response;

/// What a request is, for deciding whether a repeated key carries the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(String);

impl Fingerprint {
    pub(crate) fn new(op: Operation, resource: Uuid, body: &Value) -> Fingerprint {
        let mut text = format!("{op} {resource} ");
        canonical_json(body, &mut text);
        Fingerprint(text)
    }
}

/// Writes `value` with object keys sorted and no insignificant whitespace.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[derive(Debug, Clone)]
struct Record {
    fingerprint: Fingerprint,
    response: Response,
}

/// What the ledger says about a request.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The key is new.
    New,
    /// The key was applied for this same request; answer with this.
    Replay(Response),
    /// The key was applied for a different request.
    Conflict,
}

/// The idempotency records of one service.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    records: HashMap<Uuid, Record>,
}

impl Ledger {
    pub(crate) fn lookup(&self, key: Uuid, fingerprint: &Fingerprint) -> Lookup {
        match self.records.get(&key) {
            None => Lookup::New,
            Some(record) if record.fingerprint == *fingerprint => {
                Lookup::Replay(record.response.clone())
            }
            Some(_) => Lookup::Conflict,
        }
    }

    pub(crate) fn record(&mut self, key: Uuid, fingerprint: Fingerprint, response: Response) {
        self.records.insert(
            key,
            Record {
                fingerprint,
                response,
            },
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{ "a": {"x": null, "y": [1, "x"]}, "b": 1 }"#).expect("json");
        let id = Uuid::nil();
        assert_eq!(
            Fingerprint::new(Operation::DiskAttach, id, &a),
            Fingerprint::new(Operation::DiskAttach, id, &b)
        );
        assert_ne!(
            Fingerprint::new(Operation::DiskAttach, id, &a),
            Fingerprint::new(Operation::DiskDetach, id, &a)
        );
    }
}
