//! The simulated sled agent: VMMs keyed by propolis id.
//!
//! | Operation            | Request                                              | Answer                    |
//! |----------------------|------------------------------------------------------|---------------------------|
//! | [`Operation::VmmEnsure`] | `PUT /vmms/{propolis_id}` `{instance_id, generation}` | [`Vmm`]               |
//! | [`Operation::VmmUnregister`] | `DELETE /vmms/{propolis_id}`                     | [`VmmUnregisterResponse`] |
//! | (inspection)         | `GET /vmms`                                          | `[Vmm]`, by propolis id   |
//!
//! Ensure creates the VMM, or moves an existing one to a newer generation; the same generation is a no-op
//! success. An older generation, or a propolis id that already belongs to another instance, is refused (409).
//! Unregistering a VMM that does not exist succeeds with `existed: false`.
//!
//! An unregister that undoes an ensure names the ensure's idempotency key in `X-Compensates-Key`; from then
//! on an ensure under that key is refused (409 `idempotency_key_compensated`), so a late duplicate of it
//! cannot bring the VMM back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::SledAgentClient;
use crate::faults::Operation;
use crate::http::{Handler, Reply, Request, Response};
use crate::service::{Refusal, Served, Service, method_not_allowed, not_found, served_service_api};

/// A VMM's run state. The simulation only ever has running VMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmState {
    /// The VMM is running.
    Running,
}

/// A VMM registered on the sled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vmm {
    /// The VMM's id (Nexus's `propolis_id`).
    pub propolis_id: Uuid,
    /// The instance the VMM runs.
    pub instance_id: Uuid,
    /// The generation of the VMM's runtime state; only a newer one replaces it.
    pub generation: u64,
    /// The run state.
    pub state: VmmState,
}

/// The answer to `DELETE /vmms/{propolis_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmUnregisterResponse {
    /// Whether the VMM was registered when the request was applied.
    pub existed: bool,
    /// The VMM that was removed, if there was one.
    pub vmm: Option<Vmm>,
}

/// The body of `PUT /vmms/{propolis_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmmEnsureBody {
    pub(crate) instance_id: Uuid,
    pub(crate) generation: u64,
}

/// The sled agent's state.
#[derive(Debug, Default)]
pub(crate) struct SledAgentState {
    vmms: BTreeMap<Uuid, Vmm>,
}

impl SledAgentState {
    fn ensure(&mut self, propolis_id: Uuid, body: VmmEnsureBody) -> Result<Vmm, Refusal> {
        let Some(vmm) = self.vmms.get_mut(&propolis_id) else {
            let vmm = Vmm {
                propolis_id,
                instance_id: body.instance_id,
                generation: body.generation,
                state: VmmState::Running,
            };
            self.vmms.insert(propolis_id, vmm.clone());
            return Ok(vmm);
        };
        if vmm.instance_id != body.instance_id {
            return Err(Refusal::new(
                "propolis_id_in_use",
                format!(
                    "VMM {propolis_id} belongs to instance {}, not {}",
                    vmm.instance_id, body.instance_id
                ),
            ));
        }
        if body.generation < vmm.generation {
            return Err(Refusal::new(
                "stale_generation",
                format!(
                    "VMM {propolis_id} is at generation {}, request has {}",
                    vmm.generation, body.generation
                ),
            ));
        }
        vmm.generation = body.generation;
        Ok(vmm.clone())
    }

    fn unregister(&mut self, propolis_id: Uuid) -> VmmUnregisterResponse {
        let vmm = self.vmms.remove(&propolis_id);
        VmmUnregisterResponse {
            existed: vmm.is_some(),
            vmm,
        }
    }
}

impl Handler for Service<SledAgentState> {
    async fn handle(&self, request: Request) -> Reply {
        let segments = request.segments();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["vmms"]) => Reply::Send(Response::json(
                &self.read(|s| s.vmms.values().cloned().collect::<Vec<_>>()),
            )),
            ("PUT", ["vmms", id]) => {
                self.mutate_at(
                    Operation::VmmEnsure,
                    id,
                    &request,
                    |state, _key, propolis_id, body| state.ensure(propolis_id, body),
                )
                .await
            }
            ("DELETE", ["vmms", id]) => {
                self.mutate_at(
                    Operation::VmmUnregister,
                    id,
                    &request,
                    |state, _key, propolis_id, (): ()| Ok(state.unregister(propolis_id)),
                )
                .await
            }
            (_, ["vmms"] | ["vmms", _]) => method_not_allowed(&request),
            _ => not_found(&request),
        }
    }
}

/// A running simulated sled agent: an HTTP server on 127.0.0.1 with its own state and faults. Dropping it
/// stops the server.
#[derive(Debug)]
pub struct SledAgentSim {
    served: Served<SledAgentState>,
}

served_service_api!(SledAgentSim {
    name: "sled-agent",
    what: "sled agent",
    client: SledAgentClient,
    state: SledAgentState,
});

impl SledAgentSim {
    /// The registered VMMs, by propolis id.
    pub fn vmms(&self) -> Vec<Vmm> {
        self.served.read(|s| s.vmms.values().cloned().collect())
    }
}
