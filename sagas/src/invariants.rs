//! The invariant checker: the datastore's SQL rules, plus the rules that need the simulated services.
//!
//! At rest (no saga running) every rule must hold; each violation names the rule and the row or the service
//! state that breaks it. The service rules:
//! - `vmm_without_live_owner`: a VMM on the sled agent whose instance is not `vmm` with that propolis id;
//! - `running_instance_without_vmm`: an instance in `vmm` whose VMM the sled agent does not have;
//! - `pantry_attachment_without_owner`: a disk attached to the pantry that is not in `maintenance`;
//! - `pantry_snapshot_without_record`: a snapshot on the pantry with no live snapshot row.

use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_datastore::{self as ds, Violation};
use ratchet_sim::{CallOutcomeError, PantryClient, SledAgentClient};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading the datastore: {0}")]
    Datastore(#[from] ds::DatastoreError),
    #[error("reading the datastore: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("asking the {service} for its state: {error}")]
    Service {
        service: &'static str,
        error: CallOutcomeError,
    },
}

#[derive(diesel::QueryableByName)]
struct LiveInstance {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    active_propolis_id: Option<Uuid>,
}

#[derive(diesel::QueryableByName)]
struct IdState {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
}

/// Every violation at rest, in the database and in the services.
pub async fn check_nexus_invariants(
    conn: &mut diesel_async::AsyncPgConnection,
    sled_agent: &SledAgentClient,
    pantry: &PantryClient,
) -> Result<Vec<Violation>, CheckError> {
    let mut violations = ds::check_invariants(conn).await?;

    let instances: Vec<LiveInstance> = diesel::sql_query(
        "SELECT id, state, active_propolis_id FROM instance WHERE time_deleted IS NULL",
    )
    .load(conn)
    .await?;
    let instances: HashMap<Uuid, LiveInstance> = instances.into_iter().map(|i| (i.id, i)).collect();
    let vmms = sled_agent
        .list_vmms()
        .await
        .map_err(|error| CheckError::Service {
            service: "sled agent",
            error,
        })?;
    let mut running = HashSet::new();
    for vmm in &vmms {
        match instances.get(&vmm.instance_id) {
            Some(i) if i.state == "vmm" && i.active_propolis_id == Some(vmm.propolis_id) => {
                running.insert(vmm.propolis_id);
            }
            owner => violations.push(Violation {
                rule: "vmm_without_live_owner".into(),
                detail: format!(
                    "VMM {} on the sled agent belongs to instance {}, which is {}",
                    vmm.propolis_id,
                    vmm.instance_id,
                    owner.map_or("gone".to_owned(), |i| format!(
                        "{} with active propolis {:?}",
                        i.state, i.active_propolis_id
                    ))
                ),
            }),
        }
    }
    for instance in instances.values() {
        if let (true, Some(propolis)) = (instance.state == "vmm", instance.active_propolis_id)
            && !running.contains(&propolis)
        {
            violations.push(Violation {
                rule: "running_instance_without_vmm".into(),
                detail: format!(
                    "instance {} is vmm with propolis {propolis}, which the sled agent does not run",
                    instance.id
                ),
            });
        }
    }

    let state = pantry.state().await.map_err(|error| CheckError::Service {
        service: "pantry",
        error,
    })?;
    let disks: Vec<IdState> =
        diesel::sql_query("SELECT id, disk_state AS state FROM disk WHERE time_deleted IS NULL")
            .load(conn)
            .await?;
    let disks: HashMap<Uuid, String> = disks.into_iter().map(|d| (d.id, d.state)).collect();
    for attachment in &state.attachments {
        let disk_state = disks.get(&attachment.disk_id);
        if disk_state.map(String::as_str) != Some("maintenance") {
            violations.push(Violation {
                rule: "pantry_attachment_without_owner".into(),
                detail: format!(
                    "disk {} is attached to the pantry but is {}",
                    attachment.disk_id,
                    disk_state.map_or("gone", String::as_str)
                ),
            });
        }
    }
    let snapshots: Vec<IdState> =
        diesel::sql_query("SELECT id, state FROM snapshot WHERE time_deleted IS NULL")
            .load(conn)
            .await?;
    let snapshots: HashSet<Uuid> = snapshots.into_iter().map(|s| s.id).collect();
    for snapshot in &state.snapshots {
        if !snapshots.contains(&snapshot.snapshot_id) {
            violations.push(Violation {
                rule: "pantry_snapshot_without_record".into(),
                detail: format!(
                    "snapshot {} of disk {} exists on the pantry with no live snapshot record",
                    snapshot.snapshot_id, snapshot.disk_id
                ),
            });
        }
    }
    Ok(violations)
}
