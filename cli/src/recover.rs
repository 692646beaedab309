//! `ratchet recover`: says which executor this is and how many unfinished sagas it owns, then resumes them (an
//! engine's start recovers its executor's sagas: see [`crate::setup`]) and waits for each to come to rest. The
//! exit status says whether an operator is needed.

use crate::cli::{Global, RecoverArgs};
use crate::output::{Commentary, print_json};
use crate::sagas;
use crate::setup::{self, AlsoUnstranded, NexusServices};
use anyhow::bail;
use ratchet_engine::{RecoveryReport, SagaOutcome};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What `recover --json` prints.
#[derive(serde::Serialize)]
struct RecoverOutput<'a> {
    executor: Uuid,
    /// The unfinished sagas this executor owned before it recovered.
    unfinished_owned: usize,
    recovery: &'a RecoveryReport,
    /// How each resumed saga came to rest (`null`: no longer tracked).
    outcomes: BTreeMap<Uuid, Option<SagaOutcome>>,
    /// Whether a saga ended stuck, abandoned, left alone or not at rest (the exit status is then 1).
    needs_operator: bool,
}

pub async fn recover(global: &Global, args: &RecoverArgs) -> anyhow::Result<()> {
    let json = args.output.json();
    let say = Commentary { json };
    let (url, executor) = setup::open(global, "recover").await?;
    let sec = executor.id;
    let owned = setup::unfinished_of(&url, sec).await?;
    say.line(format_args!(
        "executor {sec} ({}): owns {owned} unfinished saga(s) (running or unwinding)",
        executor.origin
    ));
    let services = NexusServices::from_args(&args.services);
    let (engine, report) = setup::start_engine(
        &url,
        &executor,
        &services,
        "recover",
        AlsoUnstranded::Nothing,
        |_| {},
    )
    .await?;
    if report.resumed.is_empty() && report.abandoned.is_empty() && report.left_alone.is_empty() {
        engine.shutdown().await;
        if json {
            return print_json(&RecoverOutput {
                executor: sec,
                unfinished_owned: owned,
                recovery: &report,
                outcomes: BTreeMap::new(),
                needs_operator: false,
            });
        }
        println!("executor {sec}: nothing to recover (it has no running or unwinding saga)");
        return Ok(());
    }
    say.line(format_args!(
        "executor {sec}: resumed {} saga(s), abandoned {}, left alone {}",
        report.resumed.len(),
        report.abandoned.len(),
        report.left_alone.len()
    ));
    for (id, reason) in &report.abandoned {
        say.line(format_args!("  abandoned {id}: {reason}"));
    }
    for (id, reason) in &report.left_alone {
        say.line(format_args!(
            "  left alone {id} (unfinished, not driven): {reason}"
        ));
    }
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for id in &report.resumed {
        let outcome = sagas::wait_outcome(&engine, *id, say).await;
        let kind = match &outcome {
            Some(SagaOutcome::Succeeded { .. }) => "succeeded",
            Some(SagaOutcome::Unwound { .. }) => "unwound",
            Some(SagaOutcome::Stuck { .. }) => "stuck",
            // Another executor, or a newer incarnation of this one (a second `recover`), claimed the saga
            // after this one did: it drives the saga now, and this process wrote nothing more for it.
            Some(SagaOutcome::Fenced) => "taken over by a newer claim",
            Some(_) | None => "not at rest",
        };
        *tally.entry(kind).or_default() += 1;
        outcomes.insert(*id, outcome);
    }
    let summary: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
    say.line(format_args!(
        "recovered {} saga(s): {}; abandoned {}; left alone {}",
        report.resumed.len(),
        summary.join(", "),
        report.abandoned.len(),
        report.left_alone.len()
    ));
    engine.shutdown().await;
    // A script that runs `recover` after a restart learns from the exit status whether an operator is needed.
    let stuck = tally.get("stuck").copied().unwrap_or(0);
    let not_at_rest = tally.get("not at rest").copied().unwrap_or(0);
    let abandoned = report.abandoned.len();
    let left_alone = report.left_alone.len();
    let needs_operator = stuck + not_at_rest + abandoned + left_alone > 0;
    if json {
        print_json(&RecoverOutput {
            executor: sec,
            unfinished_owned: owned,
            recovery: &report,
            outcomes,
            needs_operator,
        })?;
    }
    if needs_operator {
        bail!(
            "recovery needs an operator: {stuck} saga(s) stuck (see `ratchet sagas list --state stuck`, fix the \
             cause, then `ratchet sagas retry-unwind ID`), {abandoned} abandoned (they could not be resumed), \
             {left_alone} left alone (this binary lacks their definitions: recover them with a binary that has \
             them, or `ratchet sagas abandon ID --reason TEXT`), {not_at_rest} not at rest"
        );
    }
    Ok(())
}
