//! `ratchet sagas …`: list, show (a saga's node-by-node timeline and its stuck diagnosis), retry-unwind,
//! abandon, adopt.
//!
//! What is printed is meant for someone who was not at the machine: every line says what happened, when, and
//! by which executor, and a stuck saga says what to do next.

use crate::args::Args;
use crate::commands::{Also, database_url, engine};
use crate::engine_setup::SERVICE_OPTIONS;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use ratchet_engine::{Engine, SagaOutcome};
use ratchet_store::ops::{UncompensatedCommit, dag_node_names};
use ratchet_store::saga::{SagaHistory, list_sagas, saga_history};
use ratchet_store::{PoolConfig, SagaState, pool};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// A saga id from the command line.
pub fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    id.parse()
        .with_context(|| format!("{id:?} is not a saga id (a UUID)"))
}

/// A connection to the database, with the saga log's schema in place (so an empty database lists nothing
/// instead of failing).
async fn connect(args: &Args) -> anyhow::Result<(String, ratchet_store::DbConnection)> {
    let url = database_url(args).await?;
    pool::run_migrations(&url, &ratchet_store::SAGA_LOG_MIGRATIONS).await?;
    let conn = pool::establish(&url).await?;
    Ok((url, conn))
}

pub async fn list(args: &Args) -> anyhow::Result<()> {
    args.only(&["--state"])?;
    let state = args
        .value::<String>("--state")?
        .map(|s| s.parse::<SagaState>().map_err(anyhow::Error::msg))
        .transpose()?;
    let (_, mut conn) = connect(args).await?;
    let rows = list_sagas(&mut conn, state, 1000).await?;
    if rows.is_empty() {
        match state {
            Some(state) => println!("no {state} sagas"),
            None => println!("no sagas"),
        }
        return Ok(());
    }
    println!(
        "{:<36}  {:<20} {:<10} {:>7}  {:<23}  executor",
        "id", "name", "state", "version", "created"
    );
    for row in &rows {
        println!(
            "{:<36}  {:<20} {:<10} {:>7}  {:<23}  {}",
            row.id,
            row.name,
            row.saga_state,
            row.definition_version,
            row.time_created.format("%Y-%m-%d %H:%M:%S%.3f"),
            row.current_sec.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    println!("{} saga(s)", rows.len());
    Ok(())
}

pub async fn show(args: &Args, id: &str) -> anyhow::Result<()> {
    args.only(&[])?;
    let id = parse_id(id)?;
    let (_, mut conn) = connect(args).await?;
    let history = saga_history(&mut conn, id)
        .await?
        .with_context(|| format!("no saga with id {id}"))?;
    print_history(&history);
    if let Some((reason, since)) = ratchet_store::saga::waiting(&mut conn, id).await? {
        println!(
            "WAITING since {}: {reason} (the node neither fails nor goes on until the database says whether \
             the COMMIT landed)",
            format_time(since)
        );
    }
    Ok(())
}

pub async fn retry_unwind(args: &Args, id: &str) -> anyhow::Result<()> {
    args.only(&SERVICE_OPTIONS)?;
    let id = parse_id(id)?;
    let engine = started(args, "sagas retry-unwind", Also::Saga(id)).await?;
    println!(
        "retrying the unwind of saga {id} as executor {}",
        engine.sec_id()
    );
    let outcome = engine.retry_unwind(id).await;
    engine.shutdown().await;
    let outcome = outcome?;
    println!("saga {id}: {}", describe(&outcome));
    match outcome {
        SagaOutcome::Unwound { .. } => {
            println!("the unwind completed: every commit is compensated, and the saga is done");
            Ok(())
        }
        SagaOutcome::Stuck { .. } => {
            bail!("a compensation failed again: saga {id} is stuck (see `ratchet sagas show {id}`)")
        }
        other => bail!("saga {id} did not finish its unwind: {}", describe(&other)),
    }
}

pub async fn abandon(args: &Args, id: &str) -> anyhow::Result<()> {
    args.only(&["--reason"])?;
    let id = parse_id(id)?;
    let reason = args.value::<String>("--reason")?.context(
        "`ratchet sagas abandon ID` needs --reason TEXT (it is recorded with the saga for whoever finds it)",
    )?;
    let (url, _) = connect(args).await?;
    let pool = pool::connect_pool(&url, &PoolConfig::default()).await?;
    let abandoned = ratchet_engine::abandon(&pool, id, &reason).await?;
    println!(
        "saga {id} ({}) is abandoned; it was {}",
        abandoned.name, abandoned.previous_state
    );
    println!("reason recorded: {}", abandoned.reason);
    println!(
        "its rows are left as they are: nothing was compensated, and its log, commit records and \
         compensation records are kept"
    );
    if abandoned.uncompensated.is_empty() {
        println!("no commit of it is still in effect");
    } else {
        println!("commits still in effect (not compensated), oldest first:");
        print_commits("  ", &abandoned.uncompensated);
    }
    Ok(())
}

pub async fn adopt(args: &Args) -> anyhow::Result<()> {
    args.only(&["--from", SERVICE_OPTIONS[0], SERVICE_OPTIONS[1]])?;
    let from: Uuid = args.value("--from")?.context(
        "`ratchet sagas adopt` needs --from SEC_ID (the executor whose unfinished sagas to take over)",
    )?;
    let engine = started(args, "sagas adopt", Also::Executor(from)).await?;
    let report = engine.adopt(from).await;
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            engine.shutdown().await;
            return Err(error.into());
        }
    };
    if report.adopted.is_empty() {
        println!("executor {from} has no running or unwinding sagas: nothing adopted");
        engine.shutdown().await;
        return Ok(());
    }
    println!(
        "executor {} adopted {} saga(s) from executor {from}, which is fenced out of them:",
        report.to_sec,
        report.adopted.len()
    );
    for saga in &report.adopted {
        println!(
            "  {} ({}) now at generation {}",
            saga.id, saga.name, saga.generation
        );
    }
    for (id, reason) in &report.abandoned {
        println!("  {id}: could not be resumed, abandoned: {reason}");
    }
    for id in &report.resumed {
        print_outcome(&engine, *id).await;
    }
    engine.shutdown().await;
    Ok(())
}

/// An engine for this executor, saying what the recovery it runs first did (if anything).
async fn started(args: &Args, command: &str, also: Also) -> anyhow::Result<Engine> {
    let (engine, recovery) = engine(args, command, also).await?;
    if !recovery.resumed.is_empty() || !recovery.abandoned.is_empty() {
        println!(
            "(executor {} first recovered its own unfinished sagas: resumed {}, abandoned {})",
            engine.sec_id(),
            recovery.resumed.len(),
            recovery.abandoned.len()
        );
    }
    Ok(engine)
}

/// Waits for saga `id`, resumed by `engine`, and prints its outcome.
pub async fn print_outcome(engine: &Engine, id: Uuid) -> Option<SagaOutcome> {
    let outcome = engine.wait(id).await;
    match &outcome {
        Some(outcome) => println!("  {id}: {}", describe(outcome)),
        None => println!("  {id}: no longer tracked"),
    }
    outcome
}

/// One line for an outcome.
pub fn describe(outcome: &SagaOutcome) -> String {
    match outcome {
        SagaOutcome::Succeeded { output } => format!("succeeded, output {output}"),
        SagaOutcome::Unwound { node, error } => {
            format!("unwound cleanly after {node} failed: {error}")
        }
        SagaOutcome::Stuck {
            node,
            error,
            undo_node,
            undo_error,
        } => {
            format!(
                "STUCK: {node} failed ({error}), then the compensation of {undo_node} failed ({undo_error})"
            )
        }
        SagaOutcome::Abandoned { reason } => format!("abandoned: {reason}"),
        SagaOutcome::Fenced => {
            "fenced out: another executor (or a newer incarnation of this one) owns it now"
                .to_owned()
        }
        SagaOutcome::Interrupted { reason } => format!("interrupted: {reason}"),
    }
}

fn print_commits(indent: &str, commits: &[UncompensatedCommit]) {
    for commit in commits {
        println!(
            "{indent}{:<20} committed {} by executor {} at generation {}",
            commit.node,
            format_time(commit.time_committed),
            commit.creator,
            commit.adopt_generation
        );
    }
}

fn format_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration < Duration::from_secs(1) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else if secs < 60 {
        format!("{:.2} s", duration.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}d {}h", secs / 86_400, (secs % 86_400) / 3600)
    }
}

fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format_duration((to - from).to_std().unwrap_or_default())
}

/// The order of a node's events at the same instant (steno's own order).
fn event_rank(event_type: &str) -> u8 {
    match event_type {
        "started" => 0,
        "succeeded" => 1,
        "failed" => 2,
        "undo_started" => 3,
        "undo_finished" => 4,
        _ => 5,
    }
}

/// A `failed` event's error: ratchet's `NodeFailure` (`{"ActionFailed": {"source_error": {node, phase,
/// message}}}`) as "phase: message"; anything else as JSON.
fn failure_message(data: &serde_json::Value) -> String {
    let source = data.pointer("/ActionFailed/source_error");
    let field = |name: &str| {
        source
            .and_then(|s| s.get(name))
            .and_then(serde_json::Value::as_str)
    };
    match (field("phase"), field("message")) {
        (Some(phase), Some(message)) => format!("in {phase}: {message}"),
        _ => clip(data.to_string(), 100),
    }
}

/// At most `max` characters of `text`.
fn clip(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        text
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A saga's header, its node-by-node timeline (events, with how long each phase took, and the commit and
/// compensation records), and the stuck diagnosis when there is something to diagnose.
pub fn print_history(history: &SagaHistory) {
    let saga = &history.saga;
    println!(
        "saga {} ({}, definition version {})",
        saga.id, saga.name, saga.definition_version
    );
    println!("  state      {}", saga.saga_state);
    println!(
        "  created    {} by executor {}",
        format_time(saga.time_created),
        saga.creator
    );
    if let Some(sec) = saga.current_sec {
        println!(
            "  executor   {sec}, generation {} (since {})",
            saga.adopt_generation,
            format_time(saga.adopt_time)
        );
    }
    if let Some(finished) = saga.time_finished {
        println!(
            "  finished   {} ({} after it was created)",
            format_time(finished),
            between(saga.time_created, finished)
        );
    }
    if let Some(reason) = &saga.abandon_reason {
        println!("  abandoned  {reason}");
    }

    // Per node, in DAG order: its events and its records, in time order.
    let mut lines: BTreeMap<String, Vec<(DateTime<Utc>, u8, String)>> = BTreeMap::new();
    let names = dag_node_names(&saga.saga_dag);
    let name_of = |node_id: i64| {
        names
            .get(&node_id)
            .cloned()
            .unwrap_or_else(|| format!("#{node_id}"))
    };
    let mut began: BTreeMap<(i64, bool), DateTime<Utc>> = BTreeMap::new();
    let mut events: Vec<_> = history.events.iter().collect();
    events.sort_by_key(|e| (e.node_id, e.event_time, event_rank(&e.event_type)));
    for event in events {
        let undo = event.event_type.starts_with("undo");
        let took = match event.event_type.as_str() {
            "started" | "undo_started" => {
                began.insert((event.node_id, undo), event.event_time);
                String::new()
            }
            _ => began
                .get(&(event.node_id, undo))
                .map(|start| format!("after {}", between(*start, event.event_time)))
                .unwrap_or_default(),
        };
        let data = match event.event_type.as_str() {
            "undo_failed" => ratchet_store::event::undo_error_message(event.data.as_ref()),
            "failed" => event.data.as_ref().map(failure_message).unwrap_or_default(),
            _ => event
                .data
                .as_ref()
                .map(|d| clip(d.to_string(), 100))
                .unwrap_or_default(),
        };
        lines.entry(name_of(event.node_id)).or_default().push((
            event.event_time,
            event_rank(&event.event_type),
            format!("{:<22} {took:<16} {data}", event.event_type),
        ));
    }
    for commit in &history.commits {
        lines.entry(commit.node_name.clone()).or_default().push((
            commit.time_committed,
            6,
            format!(
                "{:<22} {:<16} executor {} generation {}, receipt {}",
                "commit record",
                "",
                commit.creator,
                commit.adopt_generation,
                clip(commit.receipt.to_string(), 100)
            ),
        ));
    }
    for compensation in &history.compensations {
        let what = if compensation.had_commit {
            "undid the commit"
        } else {
            "nothing to undo: no commit"
        };
        lines
            .entry(compensation.node_name.clone())
            .or_default()
            .push((
                compensation.time_compensated,
                7,
                format!(
                    "{:<22} {:<16} executor {} generation {}, {what}",
                    "compensation record", "", compensation.creator, compensation.adopt_generation
                ),
            ));
    }
    println!("\nnodes, in DAG order:");
    // steno numbers its start and end nodes after the saga's own: show them first and last.
    let mut order: Vec<&String> = names.values().collect();
    order.sort_by_key(|name| match name.as_str() {
        "start" => 0,
        "end" => 2,
        _ => 1,
    });
    for name in order {
        let Some(mut node_lines) = lines.remove(name) else {
            if !matches!(name.as_str(), "start" | "end") {
                println!("  {name}\n    (not started)");
            }
            continue;
        };
        node_lines.sort_by_key(|(time, rank, _)| (*time, *rank));
        println!("  {name}");
        for (time, _, line) in node_lines {
            println!("    {}  {line}", time.format("%H:%M:%S%.3f"));
        }
    }
    for (name, _) in lines {
        println!("  {name} (not in the saga's DAG)");
    }
    print_diagnosis(history);
}

fn print_diagnosis(history: &SagaHistory) {
    let diagnosis = history.diagnosis();
    let state = diagnosis.state.as_str();
    let unfinished_unwind = matches!(state, "unwinding" | "stuck" | "abandoned");
    let worth_showing = state == "stuck"
        || !diagnosis.failed_undos.is_empty()
        || (unfinished_unwind && !diagnosis.uncompensated.is_empty());
    if !worth_showing {
        return;
    }
    let id = diagnosis.saga_id;
    println!("\ndiagnosis:");
    for failed in &diagnosis.failed_undos {
        println!(
            "  the compensation of {} failed at {}: {}",
            failed.node,
            format_time(failed.time),
            failed.error
        );
    }
    if diagnosis.failed_undos.is_empty()
        && let (Some(node), Some(reason)) = (&diagnosis.stuck_node, &diagnosis.stuck_reason)
    {
        println!("  stuck at {node}: {reason}");
    }
    if diagnosis.uncompensated.is_empty() {
        println!("  no commit awaits compensation");
    } else {
        println!("  commits not yet compensated, oldest first:");
        print_commits("    ", &diagnosis.uncompensated);
    }
    if let (Some(since), Some(stuck_for)) = (diagnosis.stuck_since, diagnosis.stuck_for) {
        println!(
            "  stuck for {} (since {})",
            format_duration(stuck_for),
            format_time(since)
        );
    }
    if state == "stuck" {
        if diagnosis.failed_undos.is_empty() {
            println!(
                "  next: steno cannot re-drive this one (no failed undo in its log): compensate the node by \
                 hand, then `ratchet sagas abandon {id} --reason TEXT`"
            );
        } else {
            println!(
                "  next: fix the cause, then `ratchet sagas retry-unwind {id}`; or give up with \
                 `ratchet sagas abandon {id} --reason TEXT` (which leaves every row as it is)"
            );
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(format_duration(Duration::from_millis(2_500)), "2.50 s");
        assert_eq!(format_duration(Duration::from_secs(192)), "3m 12s");
        assert_eq!(format_duration(Duration::from_secs(7_500)), "2h 5m");
        assert_eq!(format_duration(Duration::from_secs(81 * 86_400)), "81d 0h");
        assert_eq!(clip("abcdef".to_owned(), 3), "abc…");
    }
}
