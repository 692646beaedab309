//! The `ratchet` command.
//!
//! With no `--database-url` / `DATABASE_URL`, every command uses the embedded PostgreSQL whose cluster lives
//! in `--data-dir` (default `./.ratchet`), started on demand. `ratchet --help` (and `ratchet COMMAND --help`)
//! lists the commands and their options; the exit status is 0 for success, 1 for a failure or something that
//! needs an operator, 2 for a usage error (see [`cli::EXIT_STATUS`]).
//!
//! The layout: `main` parses the command line ([`cli`]) and dispatches; each command lives in a module of its
//! own ([`db`], [`demo`], [`recover`], [`sagas`], [`run`], [`sim`], [`check`], [`matrix`], [`bench`]), and
//! they share [`setup`] (the database, the executor, and the one way to start an engine), [`registry`] (the
//! sagas the CLI registers), [`output`] (how the CLI talks) and, for showing sagas, [`history`] and [`dot`].
//! No module imports `main`.

mod bench;
mod check;
mod cli;
mod db;
mod demo;
mod dot;
mod history;
mod matrix;
mod output;
mod recover;
mod registry;
mod run;
mod sagas;
mod setup;
mod sim;

use anyhow::Context;
use cli::{Command, Global, SagasCommand};
use std::process::ExitCode;

/// What the log of `matrix` and `demo` holds.
const INJECTED: &str = "the deliberately injected faults' warnings and errors";

fn main() -> ExitCode {
    // `ratchet sagas list | head -1` ends quietly, as Unix tools do, when the reader closes the pipe: Rust's
    // runtime ignores SIGPIPE, which turns the next print into a panic (exit 101).
    //
    // SAFETY: `signal` only restores SIGPIPE's default disposition, at the top of `main`, before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::parse();
    // The faults `matrix` and `demo` inject are deliberate, and every one logs a warning or an error; `run` and
    // `bench` drive many sagas at once, whose serialization retries (and the bench's injected crashes) log
    // warnings too. Their log goes to a file (unless RATCHET_LOG asks for it on stderr), so that their output
    // is their results.
    let log_file = match &cli.command {
        Command::Matrix(_) => output::init_log(Some(("matrix", INJECTED))),
        Command::Demo(_) => output::init_log(Some(("demo", INJECTED))),
        Command::Run(_) => output::init_log(Some(("run", "its sagas' retries and warnings"))),
        Command::Bench(_) => output::init_log(Some((
            "bench",
            "its sagas' retries, and the warnings of the crashes it injects",
        ))),
        _ => output::init_log(None),
    };
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(dispatch(&cli.global, cli.command)));
    if let Some(log_file) = log_file {
        log_file.report();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`: each command's module does the work.
async fn dispatch(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Db(db) => db::db(global, db).await,
        Command::Demo(args) => demo::demo(global, &args).await,
        Command::Recover(args) => recover::recover(global, &args).await,
        Command::Sagas(SagasCommand::List(args)) => sagas::list(global, &args).await,
        Command::Sagas(SagasCommand::Show(args)) => sagas::show(global, &args).await,
        Command::Sagas(SagasCommand::RetryUnwind(args)) => sagas::retry_unwind(global, &args).await,
        Command::Sagas(SagasCommand::Abandon(args)) => sagas::abandon(global, &args).await,
        Command::Sagas(SagasCommand::Adopt(args)) => sagas::adopt(global, &args).await,
        Command::Run(args) => run::run(global, &args.saga).await,
        Command::Sim => sim::sim().await,
        Command::Check(args) => check::check(global, &args).await,
        Command::Matrix(args) => matrix::matrix(global, &args).await,
        Command::MatrixChild { spec } => matrix::child(&spec).await,
        Command::Bench(args) => bench::bench(global, &args).await,
    }
}
