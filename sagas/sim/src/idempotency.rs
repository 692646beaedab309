//! Idempotency records and tombstones: what a service remembers about each key it has applied a request
//! under, and about each key a compensation has named.
//!
//! A record maps a key to the fingerprint of the request applied under it and the response given. A request
//! with a recorded key and the same fingerprint is answered with the recorded response and not applied again;
//! one with a recorded key and a different fingerprint is refused. Only applied requests are recorded: a
//! refused request leaves no record, so nothing stops the caller from retrying it, under the same key, once
//! whatever made the service refuse has changed.
//!
//! A tombstone is left by a compensation: a compensating request names, in its `X-Compensates-Key` header,
//! the key of the forward request it undoes, and once the service has applied it, that forward key is
//! tombstoned. Every later request under a tombstoned key is refused (409 `idempotency_key_compensated`),
//! before the records are consulted: a late duplicate of the forward request (a retry still in flight, a
//! stale executor) must not redo what was undone, and a replay of a recorded answer would tell the caller
//! that something exists which the compensation removed. The compensation wins whether or not the forward
//! request had been applied: a compensation sent after an unknown outcome does not know, and must still stop
//! the request from being applied later. A tombstone refusal is permanent.
//!
//! The fingerprint is the operation, the resource id from the path, the compensated key if there is one, and
//! the JSON body in a canonical form (object keys sorted, no whitespace), so that a body re-serialized with
//! its keys in another order is still the same request.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use uuid::Uuid;

use crate::faults::Operation;
use crate::http::Response;

/// What a request is, for deciding whether a repeated key carries the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(String);

impl Fingerprint {
    pub(crate) fn new(
        op: Operation,
        resource: Uuid,
        compensates: Option<Uuid>,
        body: &Value,
    ) -> Fingerprint {
        let mut text = format!("{op} {resource} ");
        if let Some(forward) = compensates {
            text.push_str(&format!("compensates={forward} "));
        }
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
    /// The key was named by a compensation: refuse the request, whatever the records say.
    Tombstoned,
    /// The key is new.
    New,
    /// The key was applied for this same request; answer with this.
    Replay(Response),
    /// The key was applied for a different request.
    Conflict,
}

/// The idempotency records and tombstones of one service.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    records: HashMap<Uuid, Record>,
    /// Forward keys named by an applied compensation. Kept for the life of the service.
    ///
    /// TODO-robustness: nothing bounds this set (nor `records`). A real service would expire a tombstone once
    /// no request under its key can still arrive: after the saga's lifetime, or a bound on retries and
    /// executor leases longer than any in-flight request can take.
    tombstones: HashSet<Uuid>,
}

impl Ledger {
    /// What to do with a request under `key`. A tombstone takes precedence over a record.
    pub(crate) fn lookup(&self, key: Uuid, fingerprint: &Fingerprint) -> Lookup {
        if self.tombstones.contains(&key) {
            return Lookup::Tombstoned;
        }
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

    /// Tombstones `forward`: every later request under it is refused. Idempotent.
    pub(crate) fn tombstone(&mut self, forward: Uuid) {
        self.tombstones.insert(forward);
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.tombstones.len()
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
            Fingerprint::new(Operation::DiskAttach, id, None, &a),
            Fingerprint::new(Operation::DiskAttach, id, None, &b)
        );
        assert_ne!(
            Fingerprint::new(Operation::DiskAttach, id, None, &a),
            Fingerprint::new(Operation::DiskDetach, id, None, &a)
        );
    }

    #[test]
    fn fingerprint_includes_the_compensated_key() {
        let (id, k1, k2) = (Uuid::nil(), Uuid::new_v4(), Uuid::new_v4());
        let op = Operation::VmmUnregister;
        assert_eq!(
            Fingerprint::new(op, id, Some(k1), &Value::Null),
            Fingerprint::new(op, id, Some(k1), &Value::Null)
        );
        assert_ne!(
            Fingerprint::new(op, id, Some(k1), &Value::Null),
            Fingerprint::new(op, id, Some(k2), &Value::Null)
        );
        assert_ne!(
            Fingerprint::new(op, id, Some(k1), &Value::Null),
            Fingerprint::new(op, id, None, &Value::Null)
        );
    }

    #[test]
    fn a_tombstone_overrides_a_record() {
        let mut ledger = Ledger::default();
        let (key, other) = (Uuid::new_v4(), Uuid::new_v4());
        let fingerprint = Fingerprint::new(Operation::VmmEnsure, Uuid::nil(), None, &Value::Null);
        ledger.record(key, fingerprint.clone(), Response::json(&1));
        assert!(matches!(
            ledger.lookup(key, &fingerprint),
            Lookup::Replay(_)
        ));
        ledger.tombstone(key);
        ledger.tombstone(key);
        assert!(matches!(
            ledger.lookup(key, &fingerprint),
            Lookup::Tombstoned
        ));
        assert!(matches!(ledger.lookup(other, &fingerprint), Lookup::New));
        // Never applied, tombstoned all the same.
        ledger.tombstone(other);
        assert!(matches!(
            ledger.lookup(other, &fingerprint),
            Lookup::Tombstoned
        ));
        assert_eq!((ledger.len(), ledger.tombstones()), (1, 2));
    }
}
