//! The simulated storage pantry: disks attached by volume, and snapshots taken of attached disks.
//!
//! | Operation                  | Request                                            | Answer                     |
//! |----------------------------|----------------------------------------------------|----------------------------|
//! | [`Operation::DiskAttach`]     | `POST /disks/{disk_id}/attach` `{volume}`       | [`Attachment`]             |
//! | [`Operation::DiskSnapshot`]   | `POST /disks/{disk_id}/snapshot` `{snapshot_id}` | [`Snapshot`]              |
//! | [`Operation::DiskDetach`]     | `DELETE /disks/{disk_id}`                       | [`DiskDetachResponse`]     |
//! | [`Operation::SnapshotDelete`] | `DELETE /snapshots/{snapshot_id}`               | [`SnapshotDeleteResponse`] |
//! | (inspection)               | `GET /state`                                       | [`PantryState`]            |
//!
//! Attaching an attached disk with the same volume succeeds (answering the existing attachment); with another
//! volume it is refused (409). A snapshot needs the disk attached (else 409); taking a snapshot id that exists
//! for the same disk succeeds, for another disk is refused. Detaching a detached disk and deleting an unknown
//! snapshot succeed. Snapshots outlive the attachment they were taken through.
//!
//! A detach that undoes an attach, and a delete that undoes a snapshot, name the undone request's
//! idempotency key in `X-Compensates-Key`; from then on a request under that key is refused (409
//! `idempotency_key_compensated`), so a late duplicate of it cannot attach the disk or take the snapshot
//! again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::client::PantryClient;
use crate::faults::Operation;
use crate::http::{Handler, Reply, Request, Response};
use crate::service::{Refusal, Served, Service, method_not_allowed, not_found, served_service_api};

/// A disk attached to the pantry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The disk.
    pub disk_id: Uuid,
    /// The volume construction request the disk was attached with (opaque to the pantry).
    pub volume: Value,
    /// The idempotency key of the request that attached it.
    pub attached_at_key: Uuid,
}

/// A snapshot taken by the pantry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot.
    pub snapshot_id: Uuid,
    /// The disk it was taken of.
    pub disk_id: Uuid,
    /// The idempotency key of the request that took it.
    pub taken_at_key: Uuid,
}

/// The answer to `DELETE /disks/{disk_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDetachResponse {
    /// Whether the disk was attached when the request was applied.
    pub was_attached: bool,
}

/// The answer to `DELETE /snapshots/{snapshot_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDeleteResponse {
    /// Whether the snapshot existed when the request was applied.
    pub existed: bool,
}

/// Everything the pantry holds, as `GET /state` answers it (each list ordered by id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PantryState {
    /// Attached disks.
    pub attachments: Vec<Attachment>,
    /// Snapshots.
    pub snapshots: Vec<Snapshot>,
}

/// The body of `POST /disks/{disk_id}/attach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskAttachBody {
    pub(crate) volume: Value,
}

/// The body of `POST /disks/{disk_id}/snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiskSnapshotBody {
    pub(crate) snapshot_id: Uuid,
}

/// The pantry's state.
#[derive(Debug, Default)]
pub(crate) struct Pantry {
    attachments: BTreeMap<Uuid, Attachment>,
    snapshots: BTreeMap<Uuid, Snapshot>,
}

impl Pantry {
    fn snapshot_state(&self) -> PantryState {
        PantryState {
            attachments: self.attachments.values().cloned().collect(),
            snapshots: self.snapshots.values().cloned().collect(),
        }
    }

    fn attach(
        &mut self,
        key: Uuid,
        disk_id: Uuid,
        body: DiskAttachBody,
    ) -> Result<Attachment, Refusal> {
        if let Some(existing) = self.attachments.get(&disk_id) {
            if existing.volume == body.volume {
                return Ok(existing.clone());
            }
            return Err(Refusal::new(
                "attached_with_other_volume",
                format!("disk {disk_id} is already attached with a different volume"),
            ));
        }
        let attachment = Attachment {
            disk_id,
            volume: body.volume,
            attached_at_key: key,
        };
        self.attachments.insert(disk_id, attachment.clone());
        Ok(attachment)
    }

    fn snapshot(
        &mut self,
        key: Uuid,
        disk_id: Uuid,
        body: DiskSnapshotBody,
    ) -> Result<Snapshot, Refusal> {
        let snapshot_id = body.snapshot_id;
        if let Some(existing) = self.snapshots.get(&snapshot_id) {
            if existing.disk_id == disk_id {
                return Ok(existing.clone());
            }
            return Err(Refusal::new(
                "snapshot_id_in_use",
                format!(
                    "snapshot {snapshot_id} was taken of disk {}, not {disk_id}",
                    existing.disk_id
                ),
            ));
        }
        if !self.attachments.contains_key(&disk_id) {
            return Err(Refusal::new(
                "disk_not_attached",
                format!("disk {disk_id} is not attached"),
            ));
        }
        let snapshot = Snapshot {
            snapshot_id,
            disk_id,
            taken_at_key: key,
        };
        self.snapshots.insert(snapshot_id, snapshot.clone());
        Ok(snapshot)
    }

    fn detach(&mut self, disk_id: Uuid) -> DiskDetachResponse {
        DiskDetachResponse {
            was_attached: self.attachments.remove(&disk_id).is_some(),
        }
    }

    fn delete_snapshot(&mut self, snapshot_id: Uuid) -> SnapshotDeleteResponse {
        SnapshotDeleteResponse {
            existed: self.snapshots.remove(&snapshot_id).is_some(),
        }
    }
}

impl Handler for Service<Pantry> {
    async fn handle(&self, request: Request) -> Reply {
        let segments = request.segments();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["state"]) => Reply::Send(Response::json(&self.read(Pantry::snapshot_state))),
            ("POST", ["disks", id, "attach"]) => {
                self.mutate_at(Operation::DiskAttach, id, &request, Pantry::attach)
                    .await
            }
            ("POST", ["disks", id, "snapshot"]) => {
                self.mutate_at(Operation::DiskSnapshot, id, &request, Pantry::snapshot)
                    .await
            }
            ("DELETE", ["disks", id]) => {
                self.mutate_at(
                    Operation::DiskDetach,
                    id,
                    &request,
                    |pantry, _key, disk_id, (): ()| Ok(pantry.detach(disk_id)),
                )
                .await
            }
            ("DELETE", ["snapshots", id]) => {
                self.mutate_at(
                    Operation::SnapshotDelete,
                    id,
                    &request,
                    |pantry, _key, snapshot_id, (): ()| Ok(pantry.delete_snapshot(snapshot_id)),
                )
                .await
            }
            (
                _,
                ["state"] | ["disks", _, "attach" | "snapshot"] | ["disks", _] | ["snapshots", _],
            ) => method_not_allowed(&request),
            _ => not_found(&request),
        }
    }
}

/// A running simulated pantry: an HTTP server on 127.0.0.1 with its own state and faults. Dropping it stops
/// the server.
#[derive(Debug)]
pub struct PantrySim {
    served: Served<Pantry>,
}

served_service_api!(PantrySim {
    name: "pantry",
    what: "pantry",
    client: PantryClient,
    state: Pantry,
});

impl PantrySim {
    /// The attached disks, by disk id.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.served
            .read(|p| p.attachments.values().cloned().collect())
    }

    /// The snapshots, by snapshot id.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.served
            .read(|p| p.snapshots.values().cloned().collect())
    }

    /// Attachments and snapshots together.
    pub fn state(&self) -> PantryState {
        self.served.read(Pantry::snapshot_state)
    }
}
