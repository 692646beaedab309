//! The serving skeleton both simulated services (the sled agent and the pantry) share, so that each service's
//! own file holds only its state, its operations and its routes:
//!
//! - [`Served`]: the service behind its HTTP server (the accept loop is [`Server`]'s), and
//!   [`served_service_api!`], the public methods every service's handle has (`start`, `addr`, `faults`,
//!   `client`, `idempotency_records`, `tombstones`, `shutdown`);
//! - [`Service`]: the state under one lock with its books (the idempotency [`Ledger`]) and its fault knobs
//!   ([`Faults`]), and the pipeline every mutating request goes through ([`Service::mutate_at`] for a
//!   resource named by a path segment, [`Service::mutate`]);
//! - the answers shared by every route table ([`method_not_allowed`], [`not_found`]).
//!
//! The pipeline: validation, injected faults, idempotency, and the state change itself, in that order.
//!
//! 1. The `Idempotency-Key` header, the optional `X-Compensates-Key` header and the JSON body are validated;
//!    a bad one gets 400 (not applied).
//! 2. The request is counted as received, and delayed if a delay knob is set.
//! 3. If a "fail before apply" is armed, the answer is 503 (not applied).
//! 4. Under the service's lock, the key is looked up: a tombstoned key (one a compensation has named) gets
//!    409 `idempotency_key_compensated`, whatever else is recorded under it; a recorded key with the same
//!    request is answered from the record, a recorded key with a different request gets 409; a new key is
//!    applied, and a success is recorded under the key together with its response. A semantic refusal gets
//!    409 and is not recorded. A compensation that is applied (or replayed) tombstones the key it names.
//! 5. If a "drop response" is armed, the connection is closed without an answer, whatever the answer was.
//!
//! Step 4 holds one lock across lookup, apply, record and tombstone, so two concurrent requests with the same
//! key apply at most once, and a forward request and the compensation naming its key are ordered: either the
//! forward request is applied first and then undone, or it is refused.
//!
//! # Tombstones
//!
//! The contract with the engine: a compensation by key leaves a tombstone at the service, and a late forward
//! request with that key is refused. A compensating request (unregister, detach, delete; see
//! [`Operation::can_compensate`]) carries `X-Compensates-Key: <uuid>`, the idempotency key of the forward
//! request it undoes, next to its own `Idempotency-Key`. When the service applies it, that forward key is
//! tombstoned, whether or not a request under it was ever applied: a compensation sent after an unknown
//! outcome does not know whether the forward request was applied, was lost, or is still on its way. From
//! then on, any request under the tombstoned key is refused with 409 and the error document
//! `{"applied": false, "code": "idempotency_key_compensated", ...}`, even one that the idempotency record
//! would have answered (the compensation wins over the replay). The client sees a permanent
//! [`CallOutcomeError::Refused`](crate::CallOutcomeError::Refused) (not retryable). Tombstones are kept for
//! the life of the service; see the `TODO-robustness` on the ledger.
//!
//! # The generation form
//!
//! Nexus's sled agent takes no idempotency key: its calls are idempotent by resource id and generation (an
//! ensure carries a generation; a removal fences lower generations). An operation whose handler serves that
//! form ([`Service::mutate_by_generation_at`]) takes requests without `Idempotency-Key`: they skip the
//! ledger, and the state alone decides (the handler says whether the request changed anything:
//! [`Applied`]). Steps 1–3 and 5 are the same; the fault knobs and the books name such a request by the
//! resource it acts on (retries of one request act on one resource), so a dropped answer's retries are
//! refused as for a keyed request, and a resource changed twice by one operation shows in the books.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::error::SimError;
use crate::faults::{Faults, Operation, Outcome};
use crate::http::{Handler, Reply, Request, Response, Server};
use crate::idempotency::{Fingerprint, Ledger, Lookup};

/// The header that carries a mutating request's idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The header by which a compensating request names the idempotency key of the forward request it undoes;
/// the service tombstones that key (see the module documentation).
pub(crate) const COMPENSATES_KEY: &str = "X-Compensates-Key";

/// What a request in the generation form did: changed the state, or found it as asked already (a retry, a
/// replay: counted `replayed`, not `applied`).
#[derive(Debug)]
pub(crate) enum Applied<T> {
    Changed(T),
    Unchanged(T),
}

/// A semantic refusal: the request is well-formed but the service will not apply it (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug)]
struct Guarded<S> {
    state: S,
    ledger: Ledger,
}

/// One simulated service: its state, its idempotency records and its faults.
#[derive(Debug)]
pub(crate) struct Service<S> {
    name: &'static str,
    faults: Faults,
    guarded: Mutex<Guarded<S>>,
}

impl<S> Service<S> {
    pub(crate) fn new(name: &'static str, state: S) -> Service<S> {
        Service {
            name,
            faults: Faults::new(),
            guarded: Mutex::new(Guarded {
                state,
                ledger: Ledger::default(),
            }),
        }
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    fn lock(&self) -> MutexGuard<'_, Guarded<S>> {
        // State changes are made in one step under the lock, so a poisoned lock still guards consistent state.
        self.guarded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.lock().state)
    }

    /// How many idempotency keys are recorded.
    pub(crate) fn idempotency_records(&self) -> usize {
        self.lock().ledger.len()
    }

    /// How many forward keys are tombstoned.
    pub(crate) fn tombstones(&self) -> usize {
        self.lock().ledger.tombstones()
    }

    /// Runs a mutating request on the resource whose id is the path segment `id_segment` through the pipeline
    /// (a segment that is no id is answered 400). `apply` gets the state, the request's idempotency key, the
    /// resource's id and the decoded body.
    pub(crate) async fn mutate_at<B, T>(
        &self,
        op: Operation,
        id_segment: &str,
        request: &Request,
        apply: impl FnOnce(&mut S, Uuid, Uuid, B) -> Result<T, Refusal>,
    ) -> Reply
    where
        B: DeserializeOwned,
        T: Serialize,
    {
        match parse_id(id_segment) {
            Ok(resource) => {
                self.mutate(op, resource, request, |state, key, body| {
                    apply(state, key, resource, body)
                })
                .await
            }
            Err(response) => Reply::Send(response),
        }
    }

    /// Runs a mutating request through the pipeline. `apply` gets the state, the request's idempotency key and
    /// its decoded body.
    pub(crate) async fn mutate<B, T>(
        &self,
        op: Operation,
        resource: Uuid,
        request: &Request,
        apply: impl FnOnce(&mut S, Uuid, B) -> Result<T, Refusal>,
    ) -> Reply
    where
        B: DeserializeOwned,
        T: Serialize,
    {
        let name = self.name;
        let key = match request.header(IDEMPOTENCY_KEY).map(|k| k.parse::<Uuid>()) {
            Some(Ok(key)) => key,
            Some(Err(e)) => {
                return Reply::Send(Response::error(
                    400,
                    "bad_idempotency_key",
                    format!("{IDEMPOTENCY_KEY}: {e}"),
                ));
            }
            None => {
                return Reply::Send(Response::error(
                    400,
                    "missing_idempotency_key",
                    format!("{op} requires an {IDEMPOTENCY_KEY} header"),
                ));
            }
        };
        let compensates = match request.header(COMPENSATES_KEY).map(|k| k.parse::<Uuid>()) {
            None => None,
            Some(Err(e)) => {
                return Reply::Send(Response::error(
                    400,
                    "bad_compensates_key",
                    format!("{COMPENSATES_KEY}: {e}"),
                ));
            }
            Some(Ok(_)) if !op.can_compensate() => {
                return Reply::Send(Response::error(
                    400,
                    "bad_compensates_key",
                    format!("{op} is not a compensation and takes no {COMPENSATES_KEY} header"),
                ));
            }
            Some(Ok(forward)) if forward == key => {
                return Reply::Send(Response::error(
                    400,
                    "bad_compensates_key",
                    format!(
                        "{COMPENSATES_KEY} {forward} is the request's own {IDEMPOTENCY_KEY}: a compensation \
                         needs a key of its own"
                    ),
                ));
            }
            Some(Ok(forward)) => Some(forward),
        };
        let (body, decoded) = match decode_body::<B>(op, request) {
            Ok(decoded) => decoded,
            Err(response) => return Reply::Send(response),
        };
        let fingerprint = Fingerprint::new(op, resource, compensates, &body);

        if let Some(refused) = self.before_apply(op, key).await {
            return refused;
        }
        let response = {
            let mut guarded = self.lock();
            match guarded.ledger.lookup(key, &fingerprint) {
                Lookup::Tombstoned => {
                    tracing::warn!(service = name, %op, %key, "refusing a request under a compensated key");
                    self.faults.record(op, Outcome::Tombstoned);
                    Response::error(
                        409,
                        "idempotency_key_compensated",
                        format!(
                            "idempotency key {key} was compensated: a compensation named it, so {op} under \
                             it is refused"
                        ),
                    )
                }
                Lookup::Replay(response) => {
                    tracing::info!(service = name, %op, %key, "replaying recorded response");
                    // The tombstone was left when this compensation was applied; leaving it again is a no-op.
                    if let Some(forward) = compensates {
                        guarded.ledger.tombstone(forward);
                    }
                    self.faults.record(op, Outcome::Replayed);
                    response
                }
                Lookup::Conflict => {
                    tracing::warn!(service = name, %op, %key, "idempotency key reused for a different request");
                    self.faults.record(op, Outcome::Conflicted);
                    Response::error(
                        409,
                        "idempotency_key_reused",
                        format!("idempotency key {key} was already used for a different request"),
                    )
                }
                Lookup::New => match apply(&mut guarded.state, key, decoded) {
                    Ok(result) => {
                        let response = Response::json(&result);
                        tracing::info!(service = name, %op, %key, %resource, ?compensates, "applied");
                        guarded.ledger.record(key, fingerprint, response.clone());
                        if let Some(forward) = compensates {
                            tracing::info!(service = name, %op, %key, %forward, "tombstoned the compensated key");
                            guarded.ledger.tombstone(forward);
                        }
                        self.faults.record_applied(op, key);
                        response
                    }
                    Err(refusal) => {
                        tracing::info!(service = name, %op, %key, code = refusal.code, "refused");
                        self.faults.record(op, Outcome::Conflicted);
                        Response::error(409, refusal.code, refusal.message)
                    }
                },
            }
        };

        self.answer(op, key, response)
    }

    /// Runs a request in the generation form (no idempotency key: see the module documentation) on the
    /// resource named by the path segment `id_segment`. `apply` gets the state, the resource's id and the
    /// decoded body, and says whether the request changed the state.
    pub(crate) async fn mutate_by_generation_at<B, T>(
        &self,
        op: Operation,
        id_segment: &str,
        request: &Request,
        apply: impl FnOnce(&mut S, Uuid, B) -> Result<Applied<T>, Refusal>,
    ) -> Reply
    where
        B: DeserializeOwned,
        T: Serialize,
    {
        let name = self.name;
        let resource = match parse_id(id_segment) {
            Ok(resource) => resource,
            Err(response) => return Reply::Send(response),
        };
        if request.header(COMPENSATES_KEY).is_some() {
            return Reply::Send(Response::error(
                400,
                "bad_compensates_key",
                format!(
                    "{op} without an {IDEMPOTENCY_KEY} is idempotent by generation and takes no \
                     {COMPENSATES_KEY} header: a removal fences by generation"
                ),
            ));
        }
        let (_, decoded) = match decode_body::<B>(op, request) {
            Ok(decoded) => decoded,
            Err(response) => return Reply::Send(response),
        };
        if let Some(refused) = self.before_apply(op, resource).await {
            return refused;
        }
        let response = {
            let mut guarded = self.lock();
            match apply(&mut guarded.state, resource, decoded) {
                Ok(Applied::Changed(result)) => {
                    tracing::info!(service = name, %op, %resource, "applied (by generation)");
                    self.faults.record_applied(op, resource);
                    Response::json(&result)
                }
                Ok(Applied::Unchanged(result)) => {
                    tracing::info!(service = name, %op, %resource, "already so (by generation)");
                    self.faults.record(op, Outcome::Replayed);
                    Response::json(&result)
                }
                Err(refusal) => {
                    tracing::info!(service = name, %op, %resource, code = refusal.code, "refused");
                    self.faults.record(op, Outcome::Conflicted);
                    Response::error(409, refusal.code, refusal.message)
                }
            }
        };
        self.answer(op, resource, response)
    }

    /// Steps 2 and 3 of the pipeline: counts the request, delays it if asked, and answers 503 instead of
    /// applying it if a "fail before apply" is armed (for the request named `key`).
    async fn before_apply(&self, op: Operation, key: Uuid) -> Option<Reply> {
        let name = self.name;
        if let Some(delay) = self.faults.on_received(op) {
            tracing::info!(service = name, %op, ?delay, "injected fault: delaying request");
            tokio::time::sleep(delay).await;
        }
        if self.faults.take_fail_before_apply(op, key) {
            tracing::warn!(service = name, %op, %key, "injected fault: failing before apply");
            return Some(Reply::Send(Response::error(
                503,
                "fail_before_apply",
                format!("injected fault: {op} failed before applying"),
            )));
        }
        None
    }

    /// Step 5: sends `response`, unless a "drop response" is armed.
    fn answer(&self, op: Operation, key: Uuid, response: Response) -> Reply {
        if self.faults.take_drop_response(op, key) {
            tracing::warn!(service = self.name, %op, %key, status = response.status, "injected fault: dropping response");
            return Reply::Drop;
        }
        Reply::Send(response)
    }
}

/// Step 1's body: JSON (an empty body is `null`), decoded as the operation's body type; else 400.
fn decode_body<B: DeserializeOwned>(
    op: Operation,
    request: &Request,
) -> Result<(Value, B), Response> {
    let body: Value = if request.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&request.body)
            .map_err(|e| Response::error(400, "bad_body", format!("body is not JSON: {e}")))?
    };
    let decoded = serde_json::from_value(body.clone())
        .map_err(|e| Response::error(400, "bad_body", format!("invalid {op} body: {e}")))?;
    Ok((body, decoded))
}

/// A service being served: its [`Service`] behind a [`Server`] on 127.0.0.1 (the accept loop). Each
/// simulated service's public handle holds one in a field named `served`, and [`served_service_api!`] gives
/// the handle the methods every service has; dropping it stops the server.
#[derive(Debug)]
pub(crate) struct Served<S> {
    service: Arc<Service<S>>,
    server: Server,
}

impl<S> Served<S>
where
    Service<S>: Handler,
{
    /// Binds 127.0.0.1 on an ephemeral port and serves `state` as the service `name` on the current tokio
    /// runtime.
    pub(crate) fn start(name: &'static str, state: S) -> Result<Served<S>, SimError> {
        let service = Arc::new(Service::new(name, state));
        let server = Server::start(name, Arc::clone(&service))?;
        Ok(Served { service, server })
    }
}

impl<S> Served<S> {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A shared handle on the fault knobs and counters.
    pub(crate) fn faults(&self) -> Faults {
        self.service.faults().clone()
    }

    /// Reads the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        self.service.read(f)
    }

    pub(crate) fn idempotency_records(&self) -> usize {
        self.service.idempotency_records()
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.service.tombstones()
    }

    /// Stops the server: no new connections, open ones are closed.
    pub(crate) async fn shutdown(&mut self) {
        self.server.shutdown().await;
    }
}

/// The public methods every simulated service's handle has, written once: `start` and the ones that only
/// delegate to the handle's `served` field (a [`Served`]). `name` is the service's name in logs, `what` the
/// service in the documentation, `client` its client type, `state` its state type (started from its
/// `Default`).
macro_rules! served_service_api {
    ($sim:ident { name: $name:literal, what: $what:literal, client: $client:ty, state: $state:ty $(,)? }) => {
        impl $sim {
            /// Binds 127.0.0.1 on an ephemeral port and serves on the current tokio runtime.
            pub fn start() -> Result<$sim, $crate::SimError> {
                Ok($sim {
                    served: $crate::service::Served::start($name, <$state>::default())?,
                })
            }

            /// The address the server listens on.
            pub fn addr(&self) -> std::net::SocketAddr {
                self.served.addr()
            }

            /// The fault knobs and counters (a shared handle).
            pub fn faults(&self) -> $crate::Faults {
                self.served.faults()
            }

            #[doc = concat!("A client for this ", $what, ", with the default timeout.")]
            pub fn client(&self) -> $client {
                <$client>::new(self.addr())
            }

            /// How many idempotency keys have been recorded (one per applied request).
            pub fn idempotency_records(&self) -> usize {
                self.served.idempotency_records()
            }

            /// How many forward idempotency keys are tombstoned: named, in `X-Compensates-Key`, by a
            /// compensation this service applied. Every request under such a key is refused (409
            /// `idempotency_key_compensated`). Tombstones are kept for the life of the service.
            pub fn tombstones(&self) -> usize {
                self.served.tombstones()
            }

            /// Stops the server: no new connections, open ones are closed.
            pub async fn shutdown(mut self) {
                self.served.shutdown().await;
            }
        }
    };
}
pub(crate) use served_service_api;

/// Parses a path segment as a resource id; a bad one is answered 400.
fn parse_id(segment: &str) -> Result<Uuid, Response> {
    segment
        .parse()
        .map_err(|e| Response::error(400, "bad_id", format!("invalid id {segment:?}: {e}")))
}

/// The answer to a method a path does not support.
pub(crate) fn method_not_allowed(request: &Request) -> Reply {
    Reply::Send(Response::error(
        405,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method, request.path),
    ))
}

/// The answer to a path that does not exist.
pub(crate) fn not_found(request: &Request) -> Reply {
    Reply::Send(Response::error(
        404,
        "not_found",
        format!("no such resource: {}", request.path),
    ))
}
