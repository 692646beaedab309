//! A simulated sled agent and a simulated storage pantry, for ratchet's Nexus-shaped sagas and its
//! fault-injection harness.
//!
//! # Big theory statement
//!
//! A saga node that calls an external service can lose the answer: the service may have applied the request
//! and the node not know it. This crate makes that situation real, so the engine's handling of it can be
//! tested: [`SledAgentSim`] and [`PantrySim`] are real HTTP/1.1 servers on `127.0.0.1`, each on an ephemeral
//! port, each with its own in-memory state, idempotency records and fault knobs. Clients ([`SledAgentClient`],
//! [`PantryClient`]) talk to them over TCP; nothing is mocked. The HTTP is hyper's, server and client, over
//! tokio: one request per connection, JSON bodies. A request whose head does not parse gets hyper's own bare
//! 400 (431 for a head over 16 KiB); a request that parses but cannot be accepted (a body cut short or over
//! 1 MiB, a missing or malformed idempotency key, a bad JSON body, an unknown path) gets a 4xx with the
//! service's error document. Either way the server keeps serving.
//!
//! ## Idempotency
//!
//! Every mutating request carries an `Idempotency-Key: <uuid>` header; a request without one is refused
//! (400), except in the sled agent's generation form (below). A service records, for every key under which it applied a request, a fingerprint of the request
//! (operation, resource id, compensated key if any, canonical JSON body) and the response it gave. Then:
//!
//! - the same key with the same request is answered with the recorded response, byte for byte, and is not
//!   applied again (the `replayed` counter moves, not `applied`);
//! - the same key with a different request is refused (409);
//! - a request the service refuses (409: an older VMM generation, a snapshot of a detached disk, ...) leaves
//!   no record, so a retry under the same key is judged afresh;
//! - a key that a compensation has named is tombstoned: every later request under it is refused (409
//!   `idempotency_key_compensated`, permanent), even one the record would have replayed.
//!
//! ## Tombstones
//!
//! A compensation by key leaves a tombstone at the service: a late forward request with that key is refused.
//! The compensating request (unregister, detach, delete) carries, next to its own `Idempotency-Key`, an
//! `X-Compensates-Key: <uuid>` header naming the forward request's key (the clients take it as their
//! `compensates` argument). When the service applies the compensation it tombstones that key, whether or not
//! a forward request under it was ever applied: the engine compensates after an unknown outcome without
//! knowing whether the forward request was applied, lost, or is still on its way (delayed, retried by a
//! stale executor). Without the tombstone such a late request would be applied after its undo and leak what
//! it creates; with it, the late request is refused with `applied: false` and changes nothing. Tombstones
//! live as long as the service (see the `TODO-robustness` in the idempotency module);
//! [`SledAgentSim::tombstones`] and [`PantrySim::tombstones`] count them, and
//! [`OpCounters::refused_tombstoned`] counts the refusals.
//!
//! The operations are also idempotent by nature, so that compensation is easy: ensuring a VMM at its current
//! generation, attaching a disk already attached with the same volume, taking a snapshot id that exists for
//! the same disk succeed; unregistering an unknown VMM, detaching a detached disk and deleting an unknown
//! snapshot succeed too (`existed: false`). The engine's idempotency key (saga id + node) is what makes
//! retrying safe; natural idempotency is what makes an undo by a *new* key safe.
//!
//! Lookup, apply and record happen under one lock: concurrent requests with one key apply at most once.
//!
//! ## The generation form
//!
//! Nexus's sled agent takes no idempotency keys: its calls are idempotent by resource id and generation. The
//! simulated sled agent serves that form too ([`SledAgentClient::vmm_ensure_at_generation`],
//! [`SledAgentClient::vmm_unregister_fencing`]): an ensure without a key carries a generation, and a retry at
//! the VMM's generation changes nothing; an unregister without a key carries a `fence_generation`, removes
//! the VMM and fences every generation up to it, so a late ensure of a fenced generation is refused (409
//! `vmm_fenced`): a keyless one, or a keyed one under a key not yet recorded (a keyed retry the ledger
//! recorded is answered from the record, applying nothing; the two forms are not meant to be mixed). That fence is the tombstone, by generation instead of key. The fault knobs
//! and [`Faults::applied_keys`] name such a request by its resource (the propolis id).
//!
//! ## Fault knobs
//!
//! Each service has a [`Faults`] handle (thread-safe, settable while the service runs), with knobs global to
//! the service or scoped to one [`Operation`] via [`Faults::op`]:
//!
//! - [`fail_before_apply(n)`](Faults::fail_before_apply): the next `n` matching requests are answered 503
//!   without being applied or recorded. The caller sees [`CallOutcomeError::Refused`].
//! - [`drop_response_after_apply(n)`](Faults::drop_response_after_apply): the next `n` matching requests are
//!   handled as usual (applied and recorded, or replayed, or refused) and then the server closes the
//!   connection without answering. The caller sees [`CallOutcomeError::Unknown`]; a retry with the same key
//!   gets the recorded answer.
//! - [`delay(d)`](Faults::delay): every matching request waits `d` before it is handled, and is then handled
//!   even if the caller has gone. With `d` longer than the client's timeout the caller sees `Unknown` while
//!   the request is still applied, later: the most realistic lost answer.
//! - [`clear()`](Faults::clear): every knob off.
//!
//! Counters per operation ([`OpCounters`]: received, failed before apply, applied, replayed, conflicted,
//! refused as tombstoned, responses dropped) let tests check, for instance, that a retried request was
//! applied once.
//!
//! ## What "outcome unknown" means to a caller
//!
//! A call ends in `Ok`, in [`CallOutcomeError::Refused`] or in [`CallOutcomeError::Unknown`]. `Refused` is
//! only ever returned when the service itself answered, with an error document saying `applied: false`: the
//! request had no effect, and a node may fail without compensating it. `Unknown` covers everything else:
//! connection refused or reset, the client's timeout (default [`DEFAULT_TIMEOUT`]), the connection closed
//! without an answer, an answer that does not parse. The request may have been applied, may be applied later
//! (it may still be waiting out a delay), or may never be. A caller that sees `Unknown` must not treat it as a
//! failure: it retries with the same idempotency key until the outcome is definite (the retry either applies
//! the request or returns the recorded answer), or it compensates by key, and only then fails. (Even a refused
//! connection is reported as `Unknown`: this crate does not try to tell where in the network a request died.)

mod client;
mod error;
mod faults;
mod http;
mod idempotency;
mod pantry;
mod service;
mod sled_agent;

pub use client::{DEFAULT_TIMEOUT, PantryClient, SledAgentClient};
pub use error::{CallOutcomeError, SimError};
pub use faults::{Faults, OpCounters, OpFaults, Operation, UnknownOperation};
pub use pantry::{
    Attachment, DiskDetachResponse, PantrySim, PantryState, Snapshot, SnapshotDeleteResponse,
};
pub use sled_agent::{SledAgentSim, Vmm, VmmState, VmmUnregisterResponse};
