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
//!
//! # The generation form, as Nexus's sled agent takes calls
//!
//! Both operations are also served without an `Idempotency-Key` (see the serving skeleton's generation
//! form): the request is idempotent by propolis id and generation.
//!
//! - `PUT /vmms/{propolis_id}` `{instance_id, generation}`: as above; an ensure at the VMM's generation
//!   changes nothing and succeeds (a retry). An ensure at or below the propolis id's *fence* is refused
//!   (409 `vmm_fenced`): a keyless one, or a keyed one under a key the ledger has not recorded (a recorded
//!   keyed retry is answered from its record, changing nothing).
//! - `DELETE /vmms/{propolis_id}` `{fence_generation}`: unregisters the VMM and fences generations up to
//!   `fence_generation`: from then on an ensure of that propolis id at a generation no newer is refused. A
//!   compensation fences the generation its ensure carried, so a late duplicate of that ensure (a retry still
//!   in flight, a stale executor) cannot bring the VMM back: the tombstone, expressed by generation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::SledAgentClient;
use crate::faults::Operation;
use crate::http::{Handler, Reply, Request, Response};
use crate::service::{
    Applied, IDEMPOTENCY_KEY, Refusal, Served, Service, method_not_allowed, not_found,
    served_service_api,
};

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

/// The body of `DELETE /vmms/{propolis_id}` in the generation form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmmUnregisterBody {
    pub(crate) fence_generation: u64,
}

/// The sled agent's state.
#[derive(Debug, Default)]
pub(crate) struct SledAgentState {
    vmms: BTreeMap<Uuid, Vmm>,
    /// By propolis id: the newest generation an unregister in the generation form fenced.
    fences: BTreeMap<Uuid, u64>,
}

impl SledAgentState {
    fn ensure(&mut self, propolis_id: Uuid, body: VmmEnsureBody) -> Result<Vmm, Refusal> {
        if let Some(&fence) = self.fences.get(&propolis_id)
            && body.generation <= fence
        {
            return Err(Refusal::new(
                "vmm_fenced",
                format!(
                    "VMM {propolis_id} was unregistered with generations up to {fence} fenced; the ensure has \
                     generation {}",
                    body.generation
                ),
            ));
        }
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

    /// An ensure in the generation form: [`SledAgentState::ensure`], unchanged when the VMM is at that
    /// generation already.
    fn ensure_by_generation(
        &mut self,
        propolis_id: Uuid,
        body: VmmEnsureBody,
    ) -> Result<Applied<Vmm>, Refusal> {
        let unchanged = self.vmms.get(&propolis_id).is_some_and(|vmm| {
            vmm.instance_id == body.instance_id && vmm.generation == body.generation
        });
        let vmm = self.ensure(propolis_id, body)?;
        Ok(if unchanged {
            Applied::Unchanged(vmm)
        } else {
            Applied::Changed(vmm)
        })
    }

    /// An unregister in the generation form: removes the VMM and raises the propolis id's fence.
    fn unregister_fencing(
        &mut self,
        propolis_id: Uuid,
        body: VmmUnregisterBody,
    ) -> Applied<VmmUnregisterResponse> {
        let fence = self.fences.entry(propolis_id).or_default();
        let raised = body.fence_generation > *fence;
        *fence = (*fence).max(body.fence_generation);
        let response = self.unregister(propolis_id);
        if raised || response.existed {
            Applied::Changed(response)
        } else {
            Applied::Unchanged(response)
        }
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
            ("PUT", ["vmms", id]) if request.header(IDEMPOTENCY_KEY).is_none() => {
                self.mutate_by_generation_at(
                    Operation::VmmEnsure,
                    id,
                    &request,
                    |state, propolis_id, body| state.ensure_by_generation(propolis_id, body),
                )
                .await
            }
            ("DELETE", ["vmms", id]) if request.header(IDEMPOTENCY_KEY).is_none() => {
                self.mutate_by_generation_at(
                    Operation::VmmUnregister,
                    id,
                    &request,
                    |state, propolis_id, body| Ok(state.unregister_fencing(propolis_id, body)),
                )
                .await
            }
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
