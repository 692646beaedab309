//! Clients for the simulated services.
//!
//! Each call opens a connection, sends one request and reads one response, all within the client's timeout
//! ([`DEFAULT_TIMEOUT`] unless set with `with_timeout`). The answer is classified:
//!
//! - a 2xx whose body decodes: `Ok`;
//! - an error status whose body is the service's error document saying `applied: false`:
//!   [`CallOutcomeError::Refused`];
//! - anything else (connect failure, reset, timeout, connection closed without an answer, undecodable
//!   answer, an error status without that document): [`CallOutcomeError::Unknown`].
//!
//! Mutating calls take the idempotency key from the caller, who must reuse it when retrying an unknown
//! outcome: that is what makes the retry safe.
//!
//! The removals ([`SledAgentClient::vmm_unregister`], [`PantryClient::disk_detach`],
//! [`PantryClient::snapshot_delete`]) also take `compensates`: when the call undoes a forward call, the
//! forward call's idempotency key, sent as `X-Compensates-Key`. Once the service has applied the
//! compensation it refuses every request under that forward key, so that a late duplicate of the forward
//! request (a retry still in flight, a stale executor) cannot redo what was undone; the caller of such a
//! request sees a permanent [`CallOutcomeError::Refused`] whose message starts with
//! `"409 idempotency_key_compensated: "`. A compensation must name the forward key whether or not the forward
//! call is known to have been applied. `None` is for a removal that is a forward step of its own.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{CallOutcomeError, ErrorBody};
use crate::http::{Response, exchange};
use crate::pantry::{
    Attachment, DiskAttachBody, DiskDetachResponse, DiskSnapshotBody, PantryState, Snapshot,
    SnapshotDeleteResponse,
};
use crate::service::{COMPENSATES_KEY, IDEMPOTENCY_KEY};
use crate::sled_agent::{Vmm, VmmEnsureBody, VmmUnregisterBody, VmmUnregisterResponse};

/// How long a call waits for its answer, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to send requests and how long to wait.
#[derive(Debug, Clone, Copy)]
struct Endpoint {
    addr: SocketAddr,
    timeout: Duration,
}

impl Endpoint {
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        key: Option<Uuid>,
        compensates: Option<Uuid>,
        body: Option<&impl Serialize>,
    ) -> Result<T, CallOutcomeError> {
        let body = match body.map(serde_json::to_vec).transpose() {
            Ok(body) => body,
            // Nothing was sent.
            Err(e) => {
                return Err(CallOutcomeError::Refused(format!(
                    "failed to serialize the request: {e}"
                )));
            }
        };
        let headers: Vec<(&str, String)> = key
            .map(|k| (IDEMPOTENCY_KEY, k.to_string()))
            .into_iter()
            .chain(compensates.map(|k| (COMPENSATES_KEY, k.to_string())))
            .collect();
        tracing::debug!(addr = %self.addr, %method, path, ?key, ?compensates, "calling simulated service");
        let response = exchange(
            self.addr,
            method.clone(),
            path,
            &headers,
            body,
            self.timeout,
        )
        .await
        .map_err(|e| CallOutcomeError::Unknown(format!("{method} {path}: {e}")))?;
        classify(&method, path, response)
    }
}

fn classify<T: DeserializeOwned>(
    method: &Method,
    path: &str,
    response: Response,
) -> Result<T, CallOutcomeError> {
    let status = response.status;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&response.body).map_err(|e| {
            CallOutcomeError::Unknown(format!(
                "{method} {path}: {status} with an undecodable body: {e}"
            ))
        });
    }
    match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(error) if !error.applied => Err(CallOutcomeError::Refused(format!(
            "{status} {}: {}",
            error.code, error.message
        ))),
        _ => Err(CallOutcomeError::Unknown(format!(
            "{method} {path}: {status} without a body saying the request was not applied"
        ))),
    }
}

/// A client of a simulated sled agent. Cheap to clone; safe to share between tasks.
#[derive(Debug, Clone)]
pub struct SledAgentClient {
    endpoint: Endpoint,
}

impl SledAgentClient {
    /// A client of the sled agent at `addr`, with [`DEFAULT_TIMEOUT`].
    pub fn new(addr: SocketAddr) -> SledAgentClient {
        SledAgentClient {
            endpoint: Endpoint {
                addr,
                timeout: DEFAULT_TIMEOUT,
            },
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> SledAgentClient {
        self.endpoint.timeout = timeout;
        self
    }

    /// The sled agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// `PUT /vmms/{propolis_id}`: creates the VMM, or moves it to a newer generation.
    pub async fn vmm_ensure(
        &self,
        key: Uuid,
        propolis_id: Uuid,
        instance_id: Uuid,
        generation: u64,
    ) -> Result<Vmm, CallOutcomeError> {
        self.put_vmm(Some(key), propolis_id, instance_id, generation)
            .await
    }

    /// `DELETE /vmms/{propolis_id}`: unregisters the VMM; succeeds if it does not exist.
    ///
    /// `compensates` is the idempotency key of the forward call this undoes (the `vmm_ensure` that created
    /// the VMM), whether or not that call is known to have been applied: once this is applied, the sled agent
    /// refuses every request under that key (409 `idempotency_key_compensated`, a permanent
    /// [`CallOutcomeError::Refused`]). `None` for an unregister that undoes nothing.
    pub async fn vmm_unregister(
        &self,
        key: Uuid,
        compensates: Option<Uuid>,
        propolis_id: Uuid,
    ) -> Result<VmmUnregisterResponse, CallOutcomeError> {
        self.endpoint
            .call(
                Method::DELETE,
                &format!("/vmms/{propolis_id}"),
                Some(key),
                compensates,
                None::<&()>,
            )
            .await
    }

    /// `PUT /vmms/{propolis_id}` in the generation form, as Nexus's sled agent takes it: no idempotency key;
    /// the call is idempotent by propolis id and generation (a retry at the same generation changes nothing),
    /// and refused once an unregister has fenced `generation`.
    pub async fn vmm_ensure_at_generation(
        &self,
        propolis_id: Uuid,
        instance_id: Uuid,
        generation: u64,
    ) -> Result<Vmm, CallOutcomeError> {
        self.put_vmm(None, propolis_id, instance_id, generation)
            .await
    }

    /// `PUT /vmms/{propolis_id}`, under `key` or (`None`) in the generation form.
    async fn put_vmm(
        &self,
        key: Option<Uuid>,
        propolis_id: Uuid,
        instance_id: Uuid,
        generation: u64,
    ) -> Result<Vmm, CallOutcomeError> {
        let body = VmmEnsureBody {
            instance_id,
            generation,
        };
        self.endpoint
            .call(
                Method::PUT,
                &format!("/vmms/{propolis_id}"),
                key,
                None,
                Some(&body),
            )
            .await
    }

    /// `DELETE /vmms/{propolis_id}` in the generation form: unregisters the VMM (succeeds if it does not
    /// exist) and fences every generation up to `fence_generation`, so that a late ensure of one of them is
    /// refused (409 `vmm_fenced`, a permanent [`CallOutcomeError::Refused`]). A compensation passes the
    /// generation its ensure carried.
    pub async fn vmm_unregister_fencing(
        &self,
        propolis_id: Uuid,
        fence_generation: u64,
    ) -> Result<VmmUnregisterResponse, CallOutcomeError> {
        self.endpoint
            .call(
                Method::DELETE,
                &format!("/vmms/{propolis_id}"),
                None,
                None,
                Some(&VmmUnregisterBody { fence_generation }),
            )
            .await
    }

    /// `GET /vmms`: every registered VMM, by propolis id.
    pub async fn list_vmms(&self) -> Result<Vec<Vmm>, CallOutcomeError> {
        self.endpoint
            .call(Method::GET, "/vmms", None, None, None::<&()>)
            .await
    }
}

/// A client of a simulated pantry. Cheap to clone; safe to share between tasks.
#[derive(Debug, Clone)]
pub struct PantryClient {
    endpoint: Endpoint,
}

impl PantryClient {
    /// A client of the pantry at `addr`, with [`DEFAULT_TIMEOUT`].
    pub fn new(addr: SocketAddr) -> PantryClient {
        PantryClient {
            endpoint: Endpoint {
                addr,
                timeout: DEFAULT_TIMEOUT,
            },
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> PantryClient {
        self.endpoint.timeout = timeout;
        self
    }

    /// The pantry's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// `POST /disks/{disk_id}/attach`: attaches the disk with `volume`; succeeds if it is already attached with
    /// the same volume.
    pub async fn disk_attach(
        &self,
        key: Uuid,
        disk_id: Uuid,
        volume: Value,
    ) -> Result<Attachment, CallOutcomeError> {
        let body = DiskAttachBody { volume };
        self.endpoint
            .call(
                Method::POST,
                &format!("/disks/{disk_id}/attach"),
                Some(key),
                None,
                Some(&body),
            )
            .await
    }

    /// `POST /disks/{disk_id}/snapshot`: takes a snapshot of an attached disk.
    pub async fn disk_snapshot(
        &self,
        key: Uuid,
        disk_id: Uuid,
        snapshot_id: Uuid,
    ) -> Result<Snapshot, CallOutcomeError> {
        let body = DiskSnapshotBody { snapshot_id };
        self.endpoint
            .call(
                Method::POST,
                &format!("/disks/{disk_id}/snapshot"),
                Some(key),
                None,
                Some(&body),
            )
            .await
    }

    /// `DELETE /disks/{disk_id}`: detaches the disk; succeeds if it is not attached.
    ///
    /// `compensates` is, for a detach that undoes an attach, the idempotency key of that `disk_attach` call,
    /// whether or not it is known to have been applied: once this is applied, the pantry refuses every
    /// request under that key (409 `idempotency_key_compensated`, a permanent [`CallOutcomeError::Refused`]).
    /// `None` for a detach that is a forward step of its own.
    pub async fn disk_detach(
        &self,
        key: Uuid,
        compensates: Option<Uuid>,
        disk_id: Uuid,
    ) -> Result<DiskDetachResponse, CallOutcomeError> {
        self.endpoint
            .call(
                Method::DELETE,
                &format!("/disks/{disk_id}"),
                Some(key),
                compensates,
                None::<&()>,
            )
            .await
    }

    /// `DELETE /snapshots/{snapshot_id}`: deletes the snapshot; succeeds if it does not exist.
    ///
    /// `compensates` is the idempotency key of the forward call this undoes (the `disk_snapshot` that took
    /// the snapshot), whether or not that call is known to have been applied: once this is applied, the
    /// pantry refuses every request under that key (409 `idempotency_key_compensated`, a permanent
    /// [`CallOutcomeError::Refused`]). `None` for a delete that undoes nothing.
    pub async fn snapshot_delete(
        &self,
        key: Uuid,
        compensates: Option<Uuid>,
        snapshot_id: Uuid,
    ) -> Result<SnapshotDeleteResponse, CallOutcomeError> {
        self.endpoint
            .call(
                Method::DELETE,
                &format!("/snapshots/{snapshot_id}"),
                Some(key),
                compensates,
                None::<&()>,
            )
            .await
    }

    /// `GET /state`: every attachment and snapshot.
    pub async fn state(&self) -> Result<PantryState, CallOutcomeError> {
        self.endpoint
            .call(Method::GET, "/state", None, None, None::<&()>)
            .await
    }
}
