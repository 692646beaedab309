//! `ratchet sagas …`: list, show (a saga's node-by-node timeline and its stuck diagnosis, rendered by
//! `history.rs`, or its DAG for Graphviz, by `dot.rs`), retry-unwind, abandon, adopt.
//!
//! What is printed is meant for someone who was not at the machine: every line says what happened, when (in
//! RFC 3339, with its zone), and by which executor, and a stuck saga says what to do next. With `--json` each
//! command prints the library's own report types instead.
//!
//! `list` and `show` only read (see [`setup::read_only`]). `retry-unwind`, `abandon` and `adopt` take
//! `--dry-run` (say what would be done, from the database as it is, and change nothing) and, on a
//! `--database-url`, ask before changing anything unless given `--yes` ([`output::confirm`]).

use crate::cli::{
    AbandonArgs, AdoptArgs, Global, ListArgs, RetryUnwindArgs, ServiceArgs, ShowArgs,
};
use crate::history::{
    commits_text, describe, format_time, print_history, state_text, version_text,
};
use crate::output::{self, Commentary, print_json};
use crate::registry::NEXUS_SAGAS;
use crate::setup::{self, AlsoUnstranded, Executor, NexusServices};
use anyhow::bail;
use chrono::{DateTime, Utc};
use ratchet_engine::{AdoptOptions, AdoptionReport, Engine};
use ratchet_engine::{EngineError, RecoveryReport, SagaOutcome};
use ratchet_store::{
    DbConnection, FailedUndo, PoolConfig, SagaEnd, SagaFilter, SagaHistory, StuckDiagnosis,
    UncompensatedCommit, connect_pool, list_sagas_where, saga_history,
};
use std::collections::BTreeMap;
use uuid::Uuid;

pub async fn list(global: &Global, args: &ListArgs) -> anyhow::Result<()> {
    let (_, mut conn) = setup::read_only(global, "sagas list").await?;
    let filter = SagaFilter {
        state: args.state.map(Into::into),
        name: args.name.clone(),
        executor: args.executor,
        since: args.since,
        limit: args.limit,
    };
    let page = list_sagas_where(&mut conn, &filter).await?;
    if args.output.json() {
        return print_json(&page);
    }
    let filtered = filter.name.is_some() || filter.executor.is_some() || filter.since.is_some();
    if page.sagas.is_empty() {
        match (filter.state, filtered) {
            (_, true) => println!("no sagas match"),
            (Some(state), false) => println!("no {state} sagas"),
            (None, false) => println!("no sagas"),
        }
        return Ok(());
    }
    println!(
        "{:<36}  {:<20} {:<16} {:>7}  {:<24}  executor",
        "id", "name", "state", "version", "created"
    );
    for row in &page.sagas {
        let state = state_text(row.saga_state.as_str(), page.endings.get(&row.id).copied());
        println!(
            "{:<36}  {:<20} {:<16} {:>7}  {:<24}  {}",
            row.id,
            row.name,
            state,
            version_text(row.definition_version),
            format_time(row.time_created),
            row.current_sec.map(|s| s.to_string()).unwrap_or_default()
        );
    }
    if page.truncated {
        println!(
            "{} saga(s) shown, the newest: more match (raise --limit, now {}, or narrow the list with --state, \
             --name, --executor or --since)",
            page.sagas.len(),
            args.limit
        );
    } else {
        println!("{} saga(s)", page.sagas.len());
    }
    Ok(())
}

/// Why a saga waits, and since when (`ratchet_store::waiting_note`).
#[derive(serde::Serialize)]
struct Waiting {
    reason: String,
    since: DateTime<Utc>,
}

/// What `sagas show --json` prints: the library's [`SagaHistory`] (`saga`, `events`, `commits`,
/// `compensations`), how it ended if it is done ([`SagaHistory::ended`]), its [`StuckDiagnosis`], and why it
/// waits, if it does.
#[derive(serde::Serialize)]
struct ShowOutput<'a> {
    #[serde(flatten)]
    history: &'a SagaHistory,
    ended: Option<SagaEnd>,
    diagnosis: StuckDiagnosis,
    waiting: Option<Waiting>,
}

pub async fn show(global: &Global, args: &ShowArgs) -> anyhow::Result<()> {
    let id = args.id;
    let (_, mut conn) = setup::read_only(global, "sagas show").await?;
    let history = saga_history(&mut conn, id)
        .await?
        .ok_or(EngineError::NoSuchSaga(id))?;
    let waiting = ratchet_store::waiting_note(&mut conn, id).await?;
    if args.dot {
        print!("{}", crate::dot::render(&history));
        return Ok(());
    }
    if args.output.json() {
        return print_json(&ShowOutput {
            history: &history,
            ended: history.ended(),
            diagnosis: history.diagnosis(),
            waiting: waiting.map(|(reason, since)| Waiting { reason, since }),
        });
    }
    print_history(&history, args.full);
    if let Some((reason, since)) = waiting {
        println!(
            "WAITING since {}: {reason} (the node neither fails nor goes on until the database says whether \
             the COMMIT landed)",
            format_time(since)
        );
    }
    Ok(())
}

/// The saga definitions an engine of this command registers (see [`crate::registry::engine_builder`]).
fn registered(services: &NexusServices) -> Vec<&'static str> {
    let mut names = vec![<ratchet_example_saga::ProvisionWidget as ratchet_engine::SagaDef>::NAME];
    if services.app().is_some() {
        names.extend(NEXUS_SAGAS);
    }
    names
}

/// The history of saga `id`, or the engine's own refusal for an unknown id.
async fn history_of(conn: &mut DbConnection, id: Uuid) -> anyhow::Result<SagaHistory> {
    Ok(saga_history(conn, id)
        .await?
        .ok_or(EngineError::NoSuchSaga(id))?)
}

/// What `sagas retry-unwind --dry-run` finds it would do.
#[derive(serde::Serialize)]
struct RetryUnwindPlan {
    dry_run: bool,
    saga_id: Uuid,
    name: String,
    executor: Uuid,
    /// The generation this executor would take the saga at (fencing out whoever drove it).
    generation: i64,
    previous_executor: Option<Uuid>,
    /// The compensations that failed: they run again first.
    failed_undos: Vec<FailedUndo>,
    uncompensated: Vec<UncompensatedCommit>,
    /// The unfinished sagas this executor owns, which its engine's start recovers first.
    own_unfinished: usize,
}

impl RetryUnwindPlan {
    fn text(&self, executor: &Executor) -> String {
        let mut out = format!(
            "would retry the unwind of saga {} ({}) as executor {} ({}), taking it at generation {}",
            self.saga_id, self.name, self.executor, executor.origin, self.generation
        );
        if let Some(previous) = self.previous_executor {
            out += &format!(" (executor {previous} is fenced out of it)");
        }
        for failed in &self.failed_undos {
            out += &format!(
                "\n  the compensation of {} runs again (it failed at {}: {})",
                failed.node,
                format_time(failed.time),
                failed.error
            );
        }
        out += "\n  then those of the nodes before it that never ran";
        if !self.uncompensated.is_empty() {
            out += "; commits not yet compensated, oldest first:";
            out += &commits_text("    ", &self.uncompensated);
        }
        if self.own_unfinished > 0 {
            out += &format!(
                "\n  first, starting, the executor recovers its own {} unfinished saga(s)",
                self.own_unfinished
            );
        }
        out
    }
}

/// Reads what a retry of saga `args.id`'s unwind would do, refusing as the real one would.
async fn retry_unwind_plan(
    global: &Global,
    args: &RetryUnwindArgs,
    executor: &Executor,
) -> anyhow::Result<RetryUnwindPlan> {
    let id = args.id;
    let (url, mut conn) = setup::read_only(global, "sagas retry-unwind").await?;
    let history = history_of(&mut conn, id).await?;
    let saga = &history.saga;
    if saga.saga_state != "stuck" {
        bail!(EngineError::WrongState {
            id,
            state: saga.saga_state.to_string(),
            wanted: "stuck",
        });
    }
    let services = NexusServices::from_args(&args.services);
    setup::refuse_stranding(
        &mut conn,
        executor.id,
        &services,
        "sagas retry-unwind",
        &AlsoUnstranded::Saga(id),
    )
    .await?;
    if !registered(&services).contains(&saga.name.as_str()) {
        bail!(EngineError::UnknownSaga(saga.name.clone()));
    }
    let diagnosis = history.diagnosis();
    if diagnosis.failed_undos.is_empty() {
        bail!(EngineError::NotRetryable {
            id,
            reason: format!(
                "it is stuck at node {} ({}) without a failed undo in its log: steno never undoes a failed \
                 node; compensate that node by hand, then abandon the saga",
                diagnosis.stuck_node.as_deref().unwrap_or("?"),
                diagnosis
                    .stuck_reason
                    .as_deref()
                    .unwrap_or("no reason recorded"),
            ),
        });
    }
    Ok(RetryUnwindPlan {
        dry_run: args.safety.dry_run,
        saga_id: id,
        name: saga.name.clone(),
        executor: executor.id,
        generation: saga.adopt_generation + 1,
        previous_executor: saga.current_sec.filter(|sec| *sec != executor.id),
        failed_undos: diagnosis.failed_undos,
        uncompensated: diagnosis.uncompensated,
        own_unfinished: setup::unfinished_of(&url, executor.id).await?,
    })
}

/// What `sagas retry-unwind --json` prints.
#[derive(serde::Serialize)]
struct RetryUnwindOutput {
    saga_id: Uuid,
    executor: Uuid,
    /// What the engine's start recovered of this executor's own sagas first.
    recovered_first: RecoveryReport,
    outcome: SagaOutcome,
}

pub async fn retry_unwind(global: &Global, args: &RetryUnwindArgs) -> anyhow::Result<()> {
    const COMMAND: &str = "sagas retry-unwind";
    let id = args.id;
    let json = args.output.json();
    let say = Commentary { json };
    let external = global.database_url.is_some();
    if args.safety.dry_run {
        let executor = setup::executor(global, COMMAND, false)?;
        let plan = retry_unwind_plan(global, args, &executor).await?;
        return print_plan(json, &plan, || plan.text(&executor));
    }
    let executor = setup::executor(global, COMMAND, true)?;
    if output::must_ask(COMMAND, external, args.safety.yes)? {
        let plan = retry_unwind_plan(global, args, &executor).await?;
        output::ask(&plan.text(&executor))?;
    }
    let (engine, recovered) = start_operator_engine(
        global,
        &executor,
        &args.services,
        COMMAND,
        AlsoUnstranded::Saga(id),
        say,
    )
    .await?;
    say.line(format_args!(
        "retrying the unwind of saga {id} as executor {}",
        engine.sec_id()
    ));
    let outcome = engine.retry_unwind(id).await;
    engine.shutdown().await;
    let outcome = outcome?;
    if json {
        print_json(&RetryUnwindOutput {
            saga_id: id,
            executor: executor.id,
            recovered_first: recovered,
            outcome: outcome.clone(),
        })?;
    } else {
        println!("saga {id}: {}", describe(&outcome));
    }
    match outcome {
        SagaOutcome::Unwound { .. } => {
            say.line("the unwind completed: every commit is compensated, and the saga is done");
            Ok(())
        }
        SagaOutcome::Stuck { .. } => {
            bail!("a compensation failed again: saga {id} is stuck (see `ratchet sagas show {id}`)")
        }
        other => bail!("saga {id} did not finish its unwind: {}", describe(&other)),
    }
}

/// What `sagas abandon --dry-run` finds it would do.
#[derive(serde::Serialize)]
struct AbandonPlan {
    dry_run: bool,
    saga_id: Uuid,
    name: String,
    state: String,
    reason: String,
    /// The commits that would stay in effect, nothing compensating them.
    uncompensated: Vec<UncompensatedCommit>,
}

impl AbandonPlan {
    fn text(&self) -> String {
        let mut out = format!(
            "would abandon saga {} ({}), now {}, recording the reason: {}\n\
             its rows would be left as they are: nothing is compensated, and its log, commit records and \
             compensation records are kept",
            self.saga_id, self.name, self.state, self.reason
        );
        if self.uncompensated.is_empty() {
            out += "\nno commit of it is in effect";
        } else {
            out += "\ncommits that would stay in effect (not compensated), oldest first:";
            out += &commits_text("  ", &self.uncompensated);
        }
        out
    }
}

async fn abandon_plan(conn: &mut DbConnection, args: &AbandonArgs) -> anyhow::Result<AbandonPlan> {
    let id = args.id;
    let history = history_of(conn, id).await?;
    let state = history.saga.saga_state.to_string();
    if !matches!(state.as_str(), "running" | "unwinding" | "stuck") {
        bail!(EngineError::WrongState {
            id,
            state,
            wanted: "running, unwinding or stuck",
        });
    }
    Ok(AbandonPlan {
        dry_run: args.safety.dry_run,
        saga_id: id,
        name: history.saga.name.clone(),
        state,
        reason: args.reason.clone(),
        uncompensated: history.diagnosis().uncompensated,
    })
}

pub async fn abandon(global: &Global, args: &AbandonArgs) -> anyhow::Result<()> {
    const COMMAND: &str = "sagas abandon";
    let id = args.id;
    let json = args.output.json();
    let external = global.database_url.is_some();
    if args.reason.trim().is_empty() {
        bail!(EngineError::EmptyReason);
    }
    let (url, mut conn) = setup::read_only(global, COMMAND).await?;
    if args.safety.dry_run {
        let plan = abandon_plan(&mut conn, args).await?;
        return print_plan(json, &plan, || plan.text());
    }
    if output::must_ask(COMMAND, external, args.safety.yes)? {
        output::ask(&abandon_plan(&mut conn, args).await?.text())?;
    }
    drop(conn);
    let pool = connect_pool(&url, &PoolConfig::default()).await?;
    let abandoned = ratchet_engine::abandon(&pool, id, &args.reason).await?;
    if json {
        return print_json(&abandoned);
    }
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
        println!(
            "{}",
            commits_text("  ", &abandoned.uncompensated).trim_start_matches('\n')
        );
    }
    Ok(())
}

/// One saga an adoption would take.
#[derive(serde::Serialize)]
struct WouldAdopt {
    id: Uuid,
    name: String,
    state: String,
    generation: i64,
    /// Whether this binary runs the saga's definition (if not, it is adopted only with --abandon-unknown,
    /// which abandons it, with the reason).
    runnable: bool,
}

/// What `sagas adopt --dry-run` finds it would do.
#[derive(serde::Serialize)]
struct AdoptPlan {
    dry_run: bool,
    from_sec: Uuid,
    to_sec: Uuid,
    abandon_unknown: bool,
    /// The sagas it would take (with --abandon-unknown, those it cannot run too, to abandon them).
    sagas: Vec<WouldAdopt>,
    /// The sagas whose definition this binary lacks, with the reason, left with `from_sec` untouched (none
    /// with --abandon-unknown).
    left_alone: Vec<(Uuid, String)>,
    /// The unfinished sagas this executor owns, which its engine's start recovers first.
    own_unfinished: usize,
}

impl AdoptPlan {
    fn text(&self, executor: &Executor) -> String {
        let mut out = if self.sagas.is_empty() {
            format!(
                "executor {} has no running or unwinding sagas that this binary can run: nothing would be \
                 adopted",
                self.from_sec
            )
        } else {
            format!(
                "executor {} ({}) would adopt {} saga(s) from executor {}, fencing it out of them:",
                self.to_sec,
                executor.origin,
                self.sagas.len(),
                self.from_sec
            )
        };
        for saga in &self.sagas {
            out += &format!(
                "\n  {} ({}, {}) at generation {}",
                saga.id, saga.name, saga.state, saga.generation
            );
            if !saga.runnable {
                out +=
                    ": this binary does not run it, so it would be abandoned (--abandon-unknown)";
            }
        }
        if !self.left_alone.is_empty() {
            out += &format!(
                "\nleft with executor {}, untouched ({} saga(s) this binary cannot run; --abandon-unknown \
                 would abandon them):",
                self.from_sec,
                self.left_alone.len()
            );
            out += &left_alone_text(&self.left_alone);
        }
        if self.own_unfinished > 0 {
            out += &format!(
                "\nfirst, starting, the executor recovers its own {} unfinished saga(s)",
                self.own_unfinished
            );
        }
        out
    }
}

/// One line per saga left alone, each starting on a new line.
fn left_alone_text(left_alone: &[(Uuid, String)]) -> String {
    left_alone
        .iter()
        .map(|(id, reason)| format!("\n  {id}: {reason}"))
        .collect()
}

async fn adopt_plan(
    global: &Global,
    args: &AdoptArgs,
    executor: &Executor,
) -> anyhow::Result<AdoptPlan> {
    let (url, mut conn) = setup::read_only(global, "sagas adopt").await?;
    let services = NexusServices::from_args(&args.services);
    setup::refuse_stranding(
        &mut conn,
        executor.id,
        &services,
        "sagas adopt",
        &AlsoUnstranded::Executor(args.from),
    )
    .await?;
    // The engine the command would start, not started: it says which sagas it could run.
    let engine = setup::engine_builder(&url, executor.id, &services, |_| {});
    let rows = ratchet_store::list_unfinished(&mut conn, args.from, 1000).await?;
    let mut sagas = Vec::new();
    let mut left_alone = Vec::new();
    for row in rows {
        let lacks = engine.lacks_definition(&row);
        match lacks {
            Some(reason) if !args.abandon_unknown => left_alone.push((row.id, reason)),
            _ => sagas.push(WouldAdopt {
                runnable: lacks.is_none(),
                id: row.id,
                name: row.name,
                state: row.saga_state.to_string(),
                generation: row.adopt_generation + 1,
            }),
        }
    }
    Ok(AdoptPlan {
        dry_run: args.safety.dry_run,
        from_sec: args.from,
        to_sec: executor.id,
        abandon_unknown: args.abandon_unknown,
        sagas,
        left_alone,
        own_unfinished: setup::unfinished_of(&url, executor.id).await?,
    })
}

/// What `sagas adopt --json` prints.
#[derive(serde::Serialize)]
struct AdoptOutput<'a> {
    /// What the engine's start recovered of this executor's own sagas first.
    recovered_first: &'a RecoveryReport,
    adoption: &'a AdoptionReport,
    /// How each resumed saga came to rest (`null`: no longer tracked).
    outcomes: BTreeMap<Uuid, Option<SagaOutcome>>,
}

pub async fn adopt(global: &Global, args: &AdoptArgs) -> anyhow::Result<()> {
    const COMMAND: &str = "sagas adopt";
    let from = args.from;
    let json = args.output.json();
    let say = Commentary { json };
    let external = global.database_url.is_some();
    let executor = setup::executor(global, COMMAND, !args.safety.dry_run)?;
    if from == executor.id {
        bail!(EngineError::AdoptFromSelf(from));
    }
    if args.safety.dry_run {
        let plan = adopt_plan(global, args, &executor).await?;
        return print_plan(json, &plan, || plan.text(&executor));
    }
    if output::must_ask(COMMAND, external, args.safety.yes)? {
        output::ask(&adopt_plan(global, args, &executor).await?.text(&executor))?;
    }
    let (engine, recovered) = start_operator_engine(
        global,
        &executor,
        &args.services,
        COMMAND,
        AlsoUnstranded::Executor(from),
        say,
    )
    .await?;
    let options = AdoptOptions {
        abandon_unknown: args.abandon_unknown,
    };
    let report = match engine.adopt_with(from, options).await {
        Ok(report) => report,
        Err(error) => {
            engine.shutdown().await;
            return Err(error.into());
        }
    };
    if report.adopted.is_empty() && report.left_alone.is_empty() {
        say.line(format_args!(
            "executor {from} has no running or unwinding sagas: nothing adopted"
        ));
    } else if report.adopted.is_empty() {
        say.line(format_args!(
            "executor {from} has no running or unwinding sagas that this binary can run: nothing adopted"
        ));
    } else {
        say.line(format_args!(
            "executor {} adopted {} saga(s) from executor {from}, which is fenced out of them:",
            report.to_sec,
            report.adopted.len()
        ));
    }
    for saga in &report.adopted {
        say.line(format_args!(
            "  {} ({}) now at generation {}",
            saga.id, saga.name, saga.generation
        ));
    }
    for (id, reason) in &report.abandoned {
        say.line(format_args!(
            "  {id}: could not be resumed, abandoned: {reason}"
        ));
    }
    if !report.left_alone.is_empty() {
        say.line(format_args!(
            "left with executor {from}, untouched: {} saga(s) this binary cannot run (another binary with \
             their definitions can adopt them; `--abandon-unknown` abandons them):{}",
            report.left_alone.len(),
            left_alone_text(&report.left_alone)
        ));
    }
    let mut outcomes = BTreeMap::new();
    for id in &report.resumed {
        outcomes.insert(*id, wait_outcome(&engine, *id, say).await);
    }
    engine.shutdown().await;
    // As for `recover`, the exit status says whether an operator is needed: a saga stuck or not at rest, one
    // that could not be resumed, or one left with the executor adopted from, which nobody drives now. (With
    // `--abandon-unknown`, the abandonments were asked for.)
    let not_settled = outcomes
        .values()
        .filter(|outcome| {
            !matches!(
                outcome,
                Some(SagaOutcome::Succeeded { .. } | SagaOutcome::Unwound { .. })
            )
        })
        .count();
    let unasked_abandoned = if args.abandon_unknown {
        0
    } else {
        report.abandoned.len()
    };
    let needs_operator = not_settled
        + unasked_abandoned
        + report.left_alone.len()
        + recovered.abandoned.len()
        + recovered.left_alone.len()
        > 0;
    if json {
        print_json(&AdoptOutput {
            recovered_first: &recovered,
            adoption: &report,
            outcomes,
        })?;
    }
    if needs_operator {
        bail!(
            "the adoption needs an operator: {not_settled} adopted saga(s) stuck, abandoned or not at rest, {} \
             could not be resumed, {} left alone (this binary lacks their definitions)",
            unasked_abandoned + recovered.abandoned.len(),
            report.left_alone.len() + recovered.left_alone.len()
        );
    }
    Ok(())
}

/// Prints a dry run's plan: as JSON, or as text followed by a reminder that nothing changed.
fn print_plan<T: serde::Serialize>(
    json: bool,
    plan: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(plan);
    }
    println!("{}", text());
    println!("nothing was changed (--dry-run)");
    Ok(())
}

/// Says what the recovery an engine runs first did (if anything).
/// Starts the engine an operator command drives (retry-unwind, adopt) on the database `global` names, with
/// the services `services` names, through the one engine start of every command ([`setup::start_engine`]),
/// and says what its own recovery did first (and returns its report).
async fn start_operator_engine(
    global: &Global,
    executor: &Executor,
    services: &ServiceArgs,
    command: &str,
    also: AlsoUnstranded,
    say: Commentary,
) -> anyhow::Result<(Engine, RecoveryReport)> {
    let (url, _) = setup::open(global, command).await?;
    let services = NexusServices::from_args(services);
    let (engine, recovered) =
        setup::start_engine(&url, executor, &services, command, also, |_| {}).await?;
    say_recovered_first(&engine, &recovered, say);
    Ok((engine, recovered))
}

fn say_recovered_first(engine: &Engine, recovery: &RecoveryReport, say: Commentary) {
    if !recovery.resumed.is_empty()
        || !recovery.abandoned.is_empty()
        || !recovery.left_alone.is_empty()
    {
        say.line(format_args!(
            "(executor {} first recovered its own unfinished sagas: resumed {}, abandoned {}, left alone {} \
             (no definition here))",
            engine.sec_id(),
            recovery.resumed.len(),
            recovery.abandoned.len(),
            recovery.left_alone.len()
        ));
    }
}

/// Waits for saga `id`, resumed by `engine`, and says its outcome.
pub async fn wait_outcome(engine: &Engine, id: Uuid, say: Commentary) -> Option<SagaOutcome> {
    let outcome = engine.wait(id).await;
    match &outcome {
        Some(outcome) => say.line(format_args!("  {id}: {}", describe(outcome))),
        None => say.line(format_args!("  {id}: no longer tracked")),
    }
    outcome
}
