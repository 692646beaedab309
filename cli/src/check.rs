//! `ratchet check [--sled-agent ADDR --pantry ADDR]`: the invariant checker on a database at rest, and on the
//! services (`ratchet sim`) when given their addresses.

use crate::cli::{CheckArgs, Global};
use crate::output::print_json;
use crate::registry::ServiceAddrs;
use crate::setup;
use anyhow::bail;
use std::collections::BTreeMap;

/// What `ratchet check --json` prints.
#[derive(serde::Serialize)]
struct CheckOutput {
    /// How many sagas are in each state.
    sagas: BTreeMap<String, i64>,
    /// Sagas running or unwinding: the rules hold only at rest.
    not_at_rest: i64,
    /// Whether the Nexus tables are there (their rules are checked only then).
    datastore_checked: bool,
    /// Whether the sled agent's and the pantry's rules were checked (with --sled-agent and --pantry).
    services_checked: bool,
    violations: Vec<ratchet_datastore::Violation>,
}

/// `ratchet check [--sled-agent ADDR --pantry ADDR]`: the invariant check on the database, and on the
/// services when given. Fails when a rule is broken. Reads only: on a database without the saga log it fails
/// and creates nothing, and without the Nexus tables it checks only what is there.
pub async fn check(global: &Global, args: &CheckArgs) -> anyhow::Result<()> {
    let json = args.output.json();
    let say = crate::output::Commentary { json };
    let (_, mut conn) = setup::read_only(global, "check").await?;
    let services = ServiceAddrs::from_args(&args.services);

    let states = ratchet_store::count_by_state(&mut conn).await?;
    let summary: Vec<String> = states
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    say.line(format_args!(
        "sagas: {}",
        if summary.is_empty() {
            "none".to_owned()
        } else {
            summary.join(", ")
        }
    ));
    let unfinished: i64 = states
        .iter()
        .filter(|(state, _)| matches!(state.as_str(), "running" | "unwinding"))
        .map(|(_, count)| count)
        .sum();
    if unfinished > 0 {
        say.line(format_args!(
            "note: {unfinished} saga(s) are not at rest; the rules hold only at rest, so what they are doing \
             may show below (recover them first: `ratchet recover`)"
        ));
    }

    let datastore = datastore_present(&mut conn).await?;
    let violations = match (&services, datastore) {
        (_, false) => {
            say.line(
                "the Nexus tables are not in this database (no Nexus saga has run on it): their rules are not \
                 checked",
            );
            vec![]
        }
        (Some(services), true) => {
            ratchet_sagas::check_nexus_invariants(
                &mut conn,
                &services.sled_agent(),
                &services.pantry(),
            )
            .await?
        }
        (None, true) => {
            say.line(
                "the sled agent and pantry rules are not checked: pass --sled-agent ADDR --pantry ADDR",
            );
            ratchet_datastore::check_invariants(&mut conn).await?
        }
    };
    if json {
        print_json(&CheckOutput {
            sagas: states.clone(),
            not_at_rest: unfinished,
            datastore_checked: datastore,
            services_checked: datastore && services.is_some(),
            violations: violations.clone(),
        })?;
    } else {
        println!("invariant check: {} violation(s)", violations.len());
        for violation in &violations {
            println!("  {}: {}", violation.rule, violation.detail);
        }
    }
    if !violations.is_empty() {
        bail!("{} invariant violation(s)", violations.len());
    }
    Ok(())
}

/// Whether every migration of the Nexus tables (`ratchet_sagas::DATASTORE_MIGRATIONS`) is applied, read from
/// diesel's migration table without creating it.
async fn datastore_present(conn: &mut ratchet_store::DbConnection) -> anyhow::Result<bool> {
    Ok(ratchet_store::migrations_applied(conn, &ratchet_sagas::DATASTORE_MIGRATIONS).await?)
}
