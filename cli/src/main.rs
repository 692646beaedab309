//! The `ratchet` command.
//!
//! With no `--database-url` / `DATABASE_URL`, every command uses the embedded PostgreSQL whose cluster lives
//! in `--data-dir` (default `./.ratchet`), started on demand. `ratchet --help` (and `ratchet COMMAND --help`)
//! lists the commands and their options; the exit status is 0 for success, 1 for a failure or something that
//! needs an operator, 2 for a usage error (see [`cli::EXIT_STATUS`]).

mod bench;
mod cli;
mod commands;
mod dot;
mod engine_setup;
mod matrix;
mod output;
mod run;
mod sagas;
mod sim;

use anyhow::Context;
use std::process::ExitCode;

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
    // The faults `matrix` and `demo` inject are deliberate, and every one logs a warning or an error: those
    // go to a file (unless RATCHET_LOG asks for them on stderr).
    let log_file = match &cli.command {
        cli::Command::Matrix(_) => output::init_log(Some("matrix")),
        cli::Command::Demo(_) => output::init_log(Some("demo")),
        _ => output::init_log(None),
    };
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(commands::dispatch(&cli.global, cli.command)));
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
