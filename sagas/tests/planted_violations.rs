//! The invariant checker shown a violation of every rule it has.
//!
//! Each test starts from one world at rest, built by the sagas themselves ([`AtRest::build`]: a running
//! instance with a boot disk, a NIC, SNAT and ephemeral IPs, a sled reservation and its VMM on the sled agent;
//! a stopped instance with a NIC, a SNAT IP and a data disk attached; a detached disk with a ready snapshot on
//! the pantry), asserts the whole checker ([`check`]: the datastore's SQL rules and the service rules) reports
//! nothing, plants exactly one violation of one rule (raw SQL on the datastore's tables, or a call to the
//! simulated sled agent or pantry), and asserts the checker reports exactly that: one violation, of that
//! rule, whose detail names the planted rows' ids ([`verdict`]).
//!
//! Then, on the same planted world, it runs a mutant checker in which that one rule reports nothing, and
//! asserts that the very same [`verdict`] fails: the planted test passes only because the rule does its job.
//! For a database rule the mutant is the rule's own SQL (read from [`Rule`]'s `Debug`, since its `sql` field
//! is private) wrapped as `SELECT detail FROM (<sql>) AS mutant WHERE false`, run next to the others' real SQL
//! (which is first checked to reproduce [`ds::check_invariants`] exactly); for a service rule (Rust code in
//! [`check`]), it is the checker's output without that rule's violations.
//!
//! [`every_rule_has_a_planted_test`] fails when a rule (a new entry of [`RULES`], or a new `rule: "..."` in
//! `sagas/src/invariants.rs`) has no planted test here.
//!
//! [`check`]: ratchet_sagas::check_nexus_invariants

#[allow(dead_code)]
mod common;

use common::{GIB, Nexus, assert_succeeded};
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use ratchet_datastore::{self as ds, RULES, Rule, Violation};
use ratchet_sagas::{DiskSpec, SnapshotCreate, SnapshotCreateParams};
use std::collections::BTreeSet;
use uuid::Uuid;

/// The service rules of `ratchet_sagas::check_nexus_invariants`, as its module documents them.
const SERVICE_RULES: [&str; 4] = [
    "vmm_without_live_owner",
    "running_instance_without_vmm",
    "pantry_attachment_without_owner",
    "pantry_snapshot_without_record",
];

/// A world at rest, made by the sagas, and the ids of the rows the plants touch.
struct AtRest {
    nexus: Nexus,
    /// `vmm`, with a boot disk, a NIC, SNAT and ephemeral IPs, the sled reservation `propolis`
    /// and that VMM on the sled agent.
    running: Uuid,
    propolis: Uuid,
    running_ephemeral_ip: Uuid,
    /// `no_vmm`, with the NIC `stopped_nic`, the SNAT IP `stopped_snat` and the disk `stopped_data` attached.
    stopped: Uuid,
    stopped_nic: Uuid,
    stopped_snat: Uuid,
    stopped_data: Uuid,
    /// `no_vmm`, with nothing but the disk `leaky_disk` attached.
    leaky: Uuid,
    leaky_disk: Uuid,
    /// A detached disk with the ready snapshot `snapshot` (its row and the pantry's copy).
    spare: Uuid,
    snapshot: Uuid,
}

impl AtRest {
    async fn build() -> AtRest {
        let mut nexus = Nexus::start().await;

        let mut params = nexus.instance_params("running");
        params.external_ip = true;
        params.create_disks = vec![DiskSpec {
            name: "running-boot".to_owned(),
            size_bytes: GIB,
        }];
        params.boot_disk = true;
        params.start = true;
        let running = nexus.create_instance(params).await;
        let instance = nexus.instance(running).await;
        let propolis = instance.active_propolis_id.expect("a running instance");
        assert!(instance.boot_disk_id.is_some(), "a boot disk");
        let running_ephemeral_ip = ds::external_ips_of(&mut nexus.conn, running)
            .await
            .expect("the running instance's IPs")
            .into_iter()
            .find(|ip| ip.kind == ds::IpKind::Ephemeral)
            .expect("an ephemeral IP")
            .id;

        let stopped_data = nexus.detached_disk("stopped-data").await;
        let mut params = nexus.instance_params("stopped");
        params.attach_disks = vec![stopped_data];
        let stopped = nexus.create_instance(params).await;
        let nics = ds::network_interfaces_of(&mut nexus.conn, stopped)
            .await
            .expect("the stopped instance's NICs");
        assert_eq!(nics.len(), 1, "{nics:?}");
        let ips = ds::external_ips_of(&mut nexus.conn, stopped)
            .await
            .expect("the stopped instance's IPs");
        assert_eq!(ips.len(), 1, "SNAT only: {ips:?}");
        assert_eq!(ips[0].kind, ds::IpKind::Snat);

        let leaky = nexus.stopped_instance("leaky").await;
        let leaky_disk = nexus.detached_disk("leaky-disk").await;
        nexus.attach(leaky, leaky_disk).await;

        let spare = nexus.detached_disk("spare").await;
        let (_, outcome) = nexus
            .engine
            .run::<SnapshotCreate>(SnapshotCreateParams {
                project_id: nexus.world.project_id,
                disk_id: spare,
                name: "spare-snapshot".to_owned(),
            })
            .await
            .expect("snapshot-create runs");
        assert_succeeded(&outcome);
        let snapshot = id_of(
            &mut nexus,
            "SELECT id FROM snapshot WHERE name = 'spare-snapshot' AND time_deleted IS NULL",
        )
        .await;

        // The world really has what the plants rely on, in the services too.
        let vmms = nexus.services.sled_agent.vmms();
        assert_eq!(
            vmms.iter()
                .map(|v| (v.propolis_id, v.instance_id))
                .collect::<Vec<_>>(),
            [(propolis, running)]
        );
        let pantry = nexus.services.pantry.state();
        assert!(pantry.attachments.is_empty(), "{pantry:?}");
        assert_eq!(
            pantry
                .snapshots
                .iter()
                .map(|s| (s.snapshot_id, s.disk_id))
                .collect::<Vec<_>>(),
            [(snapshot, spare)]
        );

        AtRest {
            nexus,
            running,
            propolis,
            running_ephemeral_ip,
            stopped,
            stopped_nic: nics[0].id,
            stopped_snat: ips[0].id,
            stopped_data,
            leaky,
            leaky_disk,
            spare,
            snapshot,
        }
    }

    /// Runs one statement that must change exactly one row.
    async fn exec(&mut self, sql: &str) {
        let rows = diesel::sql_query(sql)
            .execute(&mut self.nexus.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rows, 1, "{sql} changed {rows} rows");
    }

    /// Plants one violation of `rule`; returns the ids its detail must name (the planted row's first).
    async fn plant(&mut self, rule: &str) -> Vec<Uuid> {
        match rule {
            // The omicron#10695 leak: the instance deleted, its disk left attached (deleted behind the
            // datastore's back: its soft delete would have detached the disk).
            "disk_attached_to_non_live_instance" => {
                self.exec(&format!(
                    "UPDATE instance SET state = 'destroyed', time_deleted = now() WHERE id = '{}'",
                    self.leaky
                ))
                .await;
                vec![self.leaky_disk, self.leaky]
            }
            "disk_attachment_inconsistent" => {
                self.exec(&format!(
                    "UPDATE disk SET slot = NULL WHERE id = '{}'",
                    self.stopped_data
                ))
                .await;
                vec![self.stopped_data]
            }
            "disk_in_transitional_state" => {
                self.exec(&format!(
                    "UPDATE disk SET disk_state = 'maintenance' WHERE id = '{}'",
                    self.spare
                ))
                .await;
                vec![self.spare]
            }
            "network_interface_without_live_instance" => {
                let gone = Uuid::new_v4();
                self.exec(&format!(
                    "UPDATE network_interface SET instance_id = '{gone}' WHERE id = '{}'",
                    self.stopped_nic
                ))
                .await;
                vec![self.stopped_nic, gone]
            }
            "external_ip_without_live_instance" => {
                let gone = Uuid::new_v4();
                self.exec(&format!(
                    "UPDATE external_ip SET parent_id = '{gone}' WHERE id = '{}'",
                    self.stopped_snat
                ))
                .await;
                vec![self.stopped_snat, gone]
            }
            "external_ip_in_transitional_state" => {
                self.exec(&format!(
                    "UPDATE external_ip SET state = 'detaching' WHERE id = '{}'",
                    self.running_ephemeral_ip
                ))
                .await;
                vec![self.running_ephemeral_ip]
            }
            // A reservation leaked by a start that unwound without releasing it.
            "sled_reservation_without_live_vmm" => {
                let reservation = Uuid::new_v4();
                self.exec(&format!(
                    "INSERT INTO sled_resource_vmm \
                       (id, sled_id, instance_id, hardware_threads, rss_ram, reservoir_ram) \
                     SELECT '{reservation}', id, '{}', 2, {GIB}, {GIB} FROM sled ORDER BY id LIMIT 1",
                    self.stopped
                ))
                .await;
                vec![reservation, self.stopped]
            }
            "instance_vmm_without_sled_reservation" => {
                self.exec(&format!(
                    "DELETE FROM sled_resource_vmm WHERE id = '{}'",
                    self.propolis
                ))
                .await;
                vec![self.running, self.propolis]
            }
            "snapshot_stuck_creating" => {
                self.exec(&format!(
                    "UPDATE snapshot SET state = 'creating' WHERE id = '{}'",
                    self.snapshot
                ))
                .await;
                vec![self.snapshot, self.spare]
            }
            "instance_stuck_creating" => {
                self.exec(&format!(
                    "UPDATE instance SET state = 'creating' WHERE id = '{}'",
                    self.stopped
                ))
                .await;
                vec![self.stopped]
            }
            "boot_disk_not_attached" => {
                self.exec(&format!(
                    "UPDATE instance SET boot_disk_id = '{}' WHERE id = '{}'",
                    self.spare, self.stopped
                ))
                .await;
                vec![self.stopped, self.spare]
            }
            // A VMM for the stopped instance that no saga owns (an ensure whose unwind forgot it).
            "vmm_without_live_owner" => {
                let propolis = Uuid::new_v4();
                self.nexus
                    .services
                    .sled_agent
                    .client()
                    .vmm_ensure(Uuid::new_v4(), propolis, self.stopped, 1)
                    .await
                    .expect("vmm_ensure");
                vec![propolis, self.stopped]
            }
            // The running instance's VMM gone from the sled agent.
            "running_instance_without_vmm" => {
                let gone = self
                    .nexus
                    .services
                    .sled_agent
                    .client()
                    .vmm_unregister(Uuid::new_v4(), None, self.propolis)
                    .await
                    .expect("vmm_unregister");
                assert!(gone.existed);
                vec![self.running, self.propolis]
            }
            // The detached disk attached to the pantry (a snapshot's attach whose unwind forgot it).
            "pantry_attachment_without_owner" => {
                self.nexus
                    .services
                    .pantry
                    .client()
                    .disk_attach(
                        Uuid::new_v4(),
                        self.spare,
                        serde_json::json!({"type": "blank"}),
                    )
                    .await
                    .expect("disk_attach");
                vec![self.spare]
            }
            // The snapshot's row deleted, its copy left on the pantry.
            "pantry_snapshot_without_record" => {
                self.exec(&format!(
                    "UPDATE snapshot SET time_deleted = now() WHERE id = '{}'",
                    self.snapshot
                ))
                .await;
                vec![self.snapshot, self.spare]
            }
            other => panic!("no planted violation for rule {other}: add one to AtRest::plant"),
        }
    }
}

async fn id_of(nexus: &mut Nexus, sql: &str) -> Uuid {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let row: Id = diesel::sql_query(sql)
        .get_result(&mut nexus.conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.id
}

/// The planted test's assertion: exactly one violation, of `rule`, whose detail names every one of `ids`.
fn verdict(violations: &[Violation], rule: &str, ids: &[Uuid]) -> Result<(), String> {
    let [violation] = violations else {
        return Err(format!(
            "expected exactly one violation, of {rule}; got {}: {violations:#?}",
            violations.len()
        ));
    };
    if violation.rule != rule {
        return Err(format!("expected a violation of {rule}, got {violation:?}"));
    }
    for id in ids {
        if !violation.detail.contains(&id.to_string()) {
            return Err(format!(
                "the detail of {rule} does not name {id}: {:?}",
                violation.detail
            ));
        }
    }
    Ok(())
}

/// A database rule's SQL, read from the rule's `Debug` (its `sql` field is private): `sql: "..."`, the last
/// field, with Rust's string escapes undone.
fn sql_of(rule: &Rule) -> String {
    let debug = format!("{rule:?}");
    let start = debug.find("sql: \"").expect("Rule's Debug shows its sql") + "sql: \"".len();
    let end = debug.rfind("\" }").expect("sql is Rule's last field");
    let mut sql = String::new();
    let mut chars = debug[start..end].chars();
    while let Some(c) = chars.next() {
        sql.push(match c {
            '\\' => match chars.next() {
                Some('"') => '"',
                Some('\\') => '\\',
                Some('\'') => '\'',
                Some('n') => '\n',
                Some('t') => '\t',
                Some('r') => '\r',
                other => panic!("an escape \\{other:?} in the Debug of {}", rule.name),
            },
            c => c,
        });
    }
    assert!(sql.starts_with("SELECT "), "{}: {sql}", rule.name);
    sql
}

/// The same SQL, reporting nothing.
fn reports_nothing(sql: &str) -> String {
    format!("SELECT detail FROM ({sql}) AS mutant WHERE false")
}

/// Runs `(name, sql)` rules the way [`ds::check_invariants`] runs [`RULES`].
async fn run_rules(nexus: &mut Nexus, rules: &[(&'static str, String)]) -> Vec<Violation> {
    #[derive(diesel::QueryableByName)]
    struct DetailRow {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    let mut violations = Vec::new();
    for (name, sql) in rules {
        let rows: Vec<DetailRow> = diesel::sql_query(sql)
            .load(&mut nexus.conn)
            .await
            .unwrap_or_else(|e| panic!("rule {name}: {e}"));
        violations.extend(rows.into_iter().map(|row| Violation {
            rule: (*name).into(),
            detail: row.detail,
        }));
    }
    violations
}

/// The checker with rule `mutant` reporting nothing, every other rule as it is: for a database rule, its SQL
/// wrapped by [`reports_nothing`] (the others' SQL run as written, checked first to reproduce
/// [`ds::check_invariants`]), followed by the service rules' violations; for a service rule, the checker's
/// violations without that rule's.
async fn mutant_check(nexus: &mut Nexus, mutant: &str) -> Vec<Violation> {
    let all = nexus.violations().await;
    let db = ds::check_invariants(&mut nexus.conn)
        .await
        .expect("the datastore's rules run");
    assert_eq!(
        &all[..db.len()],
        &db[..],
        "check_nexus_invariants reports the datastore's rules first"
    );
    let services = all[db.len()..].to_vec();
    if SERVICE_RULES.contains(&mutant) {
        return all.into_iter().filter(|v| v.rule != mutant).collect();
    }
    let faithful: Vec<(&'static str, String)> = RULES.iter().map(|r| (r.name, sql_of(r))).collect();
    assert_eq!(
        run_rules(nexus, &faithful).await,
        db,
        "the rules' SQL read from Debug reproduces check_invariants"
    );
    let mutated: Vec<(&'static str, String)> = faithful
        .into_iter()
        .map(|(name, sql)| {
            let sql = if name == mutant {
                reports_nothing(&sql)
            } else {
                sql
            };
            (name, sql)
        })
        .collect();
    assert!(
        RULES.iter().any(|r| r.name == mutant),
        "{mutant} is no rule"
    );
    let mut violations = run_rules(nexus, &mutated).await;
    violations.extend(services);
    violations
}

/// The planted test of `rule`: nothing at rest; exactly `rule` once planted, naming the planted rows; and the
/// same assertion failing against a checker whose `rule` reports nothing.
async fn planted_violation_is_found(rule: &str) {
    let mut world = AtRest::build().await;
    world.nexus.assert_no_violations().await;

    let ids = world.plant(rule).await;
    let violations = world.nexus.violations().await;
    if let Err(failure) = verdict(&violations, rule, &ids) {
        panic!("planting {rule}: {failure}");
    }

    let mutant = mutant_check(&mut world.nexus, rule).await;
    assert!(
        verdict(&mutant, rule, &ids).is_err(),
        "the planted test of {rule} passes against a checker whose {rule} reports nothing: {mutant:#?}"
    );
    assert!(
        mutant.is_empty(),
        "only {rule} sees the planted violation: {mutant:#?}"
    );
}

/// One `#[tokio::test]` per rule, in module `planted`, and the list of the rules they cover.
macro_rules! planted_tests {
    ($($rule:ident),* $(,)?) => {
        const PLANTED: &[&str] = &[$(stringify!($rule)),*];

        mod planted {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    super::planted_violation_is_found(stringify!($rule)).await;
                }
            )*
        }
    };
}

planted_tests!(
    disk_attached_to_non_live_instance,
    disk_attachment_inconsistent,
    disk_in_transitional_state,
    network_interface_without_live_instance,
    external_ip_without_live_instance,
    external_ip_in_transitional_state,
    sled_reservation_without_live_vmm,
    instance_vmm_without_sled_reservation,
    snapshot_stuck_creating,
    instance_stuck_creating,
    boot_disk_not_attached,
    vmm_without_live_owner,
    running_instance_without_vmm,
    pantry_attachment_without_owner,
    pantry_snapshot_without_record,
);

/// Every rule has a planted test: the database's [`RULES`], and the service rules, both as listed here and
/// as `rule: "..."` in the checker's source.
#[test]
fn every_rule_has_a_planted_test() {
    let source = include_str!("../src/invariants.rs");
    let in_source: BTreeSet<&str> = source
        .split("rule: \"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').expect("a closing quote")])
        .collect();
    assert_eq!(
        in_source,
        BTreeSet::from(SERVICE_RULES),
        "the service rules of sagas/src/invariants.rs"
    );
    let rules: BTreeSet<&str> = RULES.iter().map(|r| r.name).chain(SERVICE_RULES).collect();
    let planted: BTreeSet<&str> = PLANTED.iter().copied().collect();
    assert_eq!(
        planted, rules,
        "rules without a planted test, or vice versa"
    );
    assert_eq!(PLANTED.len(), RULES.len() + 4);
    assert_eq!(planted.len(), PLANTED.len(), "a rule planted twice");
}

/// The mutant's SQL is the rule's own: read back from `Debug`, it is what runs, and wrapping it reports nothing
/// on a world that breaks every database rule at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutant_rule_is_the_real_rule_reporting_nothing() {
    let mut world = AtRest::build().await;
    world.nexus.assert_no_violations().await;
    // One plant per rule where they do not overlap: the stopped instance's rows for some, the running one's,
    // the spare disk's and the snapshot's for others.
    for rule in [
        "disk_attachment_inconsistent",
        "external_ip_in_transitional_state",
        "snapshot_stuck_creating",
        "instance_vmm_without_sled_reservation",
    ] {
        world.plant(rule).await;
    }
    let real = ds::check_invariants(&mut world.nexus.conn).await.unwrap();
    let found: BTreeSet<&str> = real.iter().map(|v| v.rule.as_ref()).collect();
    assert_eq!(
        found,
        BTreeSet::from([
            "disk_attachment_inconsistent",
            "external_ip_in_transitional_state",
            "snapshot_stuck_creating",
            "instance_vmm_without_sled_reservation",
        ]),
        "{real:#?}"
    );
    for rule in RULES {
        let sql = sql_of(rule);
        let theirs: Vec<Violation> = real
            .iter()
            .filter(|v| v.rule == rule.name)
            .cloned()
            .collect();
        assert_eq!(
            run_rules(&mut world.nexus, &[(rule.name, sql.clone())]).await,
            theirs,
            "{} read from Debug",
            rule.name
        );
        assert!(
            run_rules(&mut world.nexus, &[(rule.name, reports_nothing(&sql))])
                .await
                .is_empty(),
            "the mutant of {} reports nothing",
            rule.name
        );
    }
}

/// A failed instance keeps its disks: the datastore lets it fail with disks attached (`no_vmm -> failed`), be
/// restarted with them, and have them detached while failed; only its deletion detaches them. So a disk
/// attached to a failed instance is no violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_keeps_its_disks() {
    let mut world = AtRest::build().await;
    world.nexus.assert_no_violations().await;
    let stopped = world.nexus.instance(world.stopped).await;
    let failed = ds::instance_transition(
        &mut world.nexus.conn,
        world.stopped,
        stopped.state_generation,
        ds::InstanceState::NoVmm,
        ds::InstanceState::Failed,
    )
    .await
    .expect("no_vmm -> failed, with a disk attached");
    assert_eq!(failed.state, ds::InstanceState::Failed);
    let disk = world.nexus.disk(world.stopped_data).await;
    assert_eq!(
        (disk.disk_state, disk.attach_instance_id),
        (ds::DiskState::Attached, Some(world.stopped))
    );
    world.nexus.assert_no_violations().await;

    // Its disk can still be detached: the datastore treats the failed instance as its live owner.
    let detached = ds::instance_detach_disk(
        &mut world.nexus.conn,
        world.stopped,
        world.stopped_data,
        false,
    )
    .await
    .expect("detaching from a failed instance");
    assert_eq!(detached.disk_state, ds::DiskState::Detached);
    world.nexus.assert_no_violations().await;
}
