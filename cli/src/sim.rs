//! `ratchet sim`: the simulated sled agent and pantry in a process of their own, and `ratchet check`: the
//! invariant checker on a database at rest, with those services.
//!
//! In Nexus the sled agent and the pantry are other services: they outlive a Nexus process that crashes, and
//! the sagas it leaves unfinished must be recovered against them, by whoever recovers. `ratchet sim` is that
//! arrangement on one machine: it serves both simulators on loopback until it is killed, and its first line
//! on stdout gives their addresses as the options the other commands take:
//!
//! ```text
//! services: --sled-agent 127.0.0.1:40163 --pantry 127.0.0.1:35321
//! ```
//!
//! `ratchet run --sled-agent ... --pantry ...` then runs sagas against them, and `ratchet recover` (or `sagas
//! adopt`, `sagas retry-unwind`) with the same options resumes them after a crash. The services keep their
//! state (VMMs, pantry attachments and snapshots, idempotency records) in memory for as long as this process
//! lives.
//!
//! When its stdin is a pipe (a test, a supervisor), a line on it asks for more: `counters` prints each
//! operation's request counters (received, applied, replayed, ...) as one JSON line, `counters {...}`, so that
//! a test can tell a request applied twice from one replayed under its idempotency key. The end of stdin is
//! not a request to stop. A terminal is not read at all: `ratchet sim &` in a shell would be stopped
//! (SIGTTIN) by reading it from the background. SIGINT stops it, SIGKILL too.
//!
//! Both services listen on ephemeral ports: the simulators (`ratchet-sim`) bind `127.0.0.1:0` and offer no
//! fixed address.

use crate::cli::{CheckArgs, Global};
use crate::commands;
use crate::engine_setup::ServiceAddrs;
use crate::output::print_json;
use anyhow::{Context, bail};
use ratchet_sagas::invariants;
use ratchet_sim::{Faults, Operation, PantrySim, SledAgentSim};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use tokio::io::AsyncBufReadExt;

pub async fn sim() -> anyhow::Result<()> {
    let sled_agent = SledAgentSim::start().context("starting the simulated sled agent")?;
    let pantry = PantrySim::start().context("starting the simulated pantry")?;
    println!(
        "services: --sled-agent {} --pantry {}",
        sled_agent.addr(),
        pantry.addr()
    );
    // See the module docs: a terminal is not read.
    let mut reading = !std::io::stdin().is_terminal();
    println!(
        "serving the simulated sled agent and pantry until interrupted{}",
        if reading {
            "; a `counters` line on stdin prints their request counters"
        } else {
            ""
        }
    );
    std::io::stdout().flush()?;

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line(), if reading => match line {
                Ok(Some(line)) => match line.trim() {
                    "counters" => {
                        let counters = serde_json::json!({
                            "sled_agent": counters(&sled_agent.faults(), &Operation::SLED_AGENT),
                            "pantry": counters(&pantry.faults(), &Operation::PANTRY),
                        });
                        println!("counters {counters}");
                    }
                    "" => {}
                    other => println!("unknown request {other:?} (the one request is `counters`)"),
                },
                // The end of stdin, or stdin unreadable: serve on without it.
                Ok(None) | Err(_) => reading = false,
            },
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for SIGINT")?;
                break;
            }
        }
        std::io::stdout().flush()?;
    }
    sled_agent.shutdown().await;
    pantry.shutdown().await;
    println!("stopped");
    Ok(())
}

fn counters(faults: &Faults, ops: &[Operation]) -> BTreeMap<&'static str, serde_json::Value> {
    ops.iter()
        .map(|op| {
            let counters = faults.counters(*op);
            (
                op.name(),
                serde_json::to_value(counters).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

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
    let say = crate::output::Say { json };
    let (_, mut conn) = commands::read_only(global, "check").await?;
    let services = ServiceAddrs::from_args(&args.services);

    let states = ratchet_store::saga::count_by_state(&mut conn).await?;
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
            invariants::check(&mut conn, &services.sled_agent(), &services.pantry()).await?
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
    Ok(
        ratchet_store::schema_check::migrations_applied(conn, &ratchet_sagas::DATASTORE_MIGRATIONS)
            .await?,
    )
}
