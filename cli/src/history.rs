//! How a saga is shown to someone who was not at the machine: its node-by-node history (events, with how long
//! each phase took, commit and compensation records), the diagnosis of a stuck one, a one-line outcome, and
//! the times and durations in them (RFC 3339, with its zone). `sagas show` and `demo` print with it; `sagas
//! show --dot` draws the DAG instead (`dot.rs`).

use chrono::{DateTime, SecondsFormat, Utc};
use ratchet_engine::SagaOutcome;
use ratchet_store::{SagaEnd, SagaHistory, UncompensatedCommit, node_paths};
use std::collections::BTreeMap;
use std::time::Duration;

/// A saga's state, and how it ended when it is `done`: `done (succeeded)` or `done (unwound)`.
pub(crate) fn state_text(state: &str, ended: Option<SagaEnd>) -> String {
    match ended {
        Some(SagaEnd::Succeeded) => format!("{state} (succeeded)"),
        Some(SagaEnd::Unwound) => format!("{state} (unwound)"),
        None => state.to_owned(),
    }
}

/// One line for an outcome.
pub(crate) fn describe(outcome: &SagaOutcome) -> String {
    match outcome {
        SagaOutcome::Succeeded { output, .. } => format!("succeeded, output {output}"),
        SagaOutcome::Unwound { node, error, .. } => {
            format!("unwound cleanly after {node} failed: {error}")
        }
        SagaOutcome::Stuck {
            node,
            error,
            undo_node,
            undo_error,
            ..
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

/// One line per commit, each starting on a new line.
pub(crate) fn commits_text(indent: &str, commits: &[UncompensatedCommit]) -> String {
    commits
        .iter()
        .map(|commit| {
            format!(
                "\n{indent}{:<20} committed {} by executor {} at generation {}",
                commit.node,
                format_time(commit.time_committed),
                commit.creator,
                commit.adopt_generation
            )
        })
        .collect()
}

/// A time in RFC 3339, in UTC with its `Z`, to the millisecond.
pub(crate) fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
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
fn failure_message(data: &serde_json::Value, full: bool) -> String {
    let source = data.pointer("/ActionFailed/source_error");
    let field = |name: &str| {
        source
            .and_then(|s| s.get(name))
            .and_then(serde_json::Value::as_str)
    };
    match (field("phase"), field("message")) {
        (Some(phase), Some(message)) => format!("in {phase}: {message}"),
        _ => clip(data.to_string(), full),
    }
}

/// At most [`CLIP`] characters of `text`, unless `full`.
fn clip(text: String, full: bool) -> String {
    clip_to(text, if full { usize::MAX } else { CLIP })
}

/// How much of a receipt or an event's data `sagas show` prints without `--full`.
const CLIP: usize = 100;

fn clip_to(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        text
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// A saga definition's version as shown: the number, or `-` for a saga plain steno created (none recorded).
pub(crate) fn version_text(version: Option<i32>) -> String {
    version.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A saga's header, its node-by-node timeline (events, with how long each phase took, and the commit and
/// compensation records), and the stuck diagnosis when there is something to diagnose. Event data and
/// receipts are cut at 100 characters unless `full`.
pub(crate) fn print_history(history: &SagaHistory, full: bool) {
    let saga = &history.saga;
    println!(
        "saga {} ({}, definition version {})",
        saga.id,
        saga.name,
        version_text(saga.definition_version)
    );
    println!(
        "  state      {}",
        state_text(saga.saga_state.as_str(), history.ended())
    );
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
        let when = saga.abandon_time.map(format_time).unwrap_or_default();
        let comment = saga.abandon_comment.as_deref().unwrap_or_default();
        println!("  abandoned  {when} ({reason}): {comment}");
    }

    // Per node, in DAG order: its events and its records, in time order.
    let mut lines: BTreeMap<String, Vec<(DateTime<Utc>, u8, String)>> = BTreeMap::new();
    let names = node_paths(&saga.saga_dag);
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
            "undo_failed" => ratchet_store::undo_error_message(event.data.as_ref()),
            "failed" => event
                .data
                .as_ref()
                .map(|d| failure_message(d, full))
                .unwrap_or_default(),
            _ => event
                .data
                .as_ref()
                .map(|d| clip(d.to_string(), full))
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
                clip(commit.receipt.to_string(), full)
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
            println!("    {}  {}", format_time(time), line.trim_end());
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
        println!(
            "  commits not yet compensated, oldest first:{}",
            commits_text("    ", &diagnosis.uncompensated)
        );
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
        assert_eq!(clip_to("abcdef".to_owned(), 3), "abc…");
        let long = "x".repeat(150);
        assert_eq!(clip(long.clone(), true), long);
        assert_eq!(clip(long, false).chars().count(), CLIP + 1);
    }
}
