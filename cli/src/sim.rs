//! `ratchet sim`: the simulated sled agent and pantry in a process of their own (`ratchet check` checks the
//! invariants against them: `check.rs`).
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

use anyhow::Context;
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
