//! The `ratchet` command.
//!
//! With no `--database-url` / `DATABASE_URL`, every command uses the embedded PostgreSQL whose cluster lives
//! in `--data-dir` (default `./.ratchet`), started on demand.

mod args;
mod bench;
mod commands;
mod engine_setup;
mod matrix;
mod run;
mod sagas;
mod sim;

use anyhow::Context;
use args::Args;

const USAGE: &str = "\
ratchet: a saga engine on steno whose nodes cannot do fallible work after their commit

USAGE:
    ratchet [--database-url URL] [--data-dir DIR] <COMMAND>

COMMANDS:
    db start|stop|status|url   manage the embedded PostgreSQL (url prints a URL psql accepts)
    demo [--fail-after-commit NODE]
                               run the example saga and print its node-by-node history
    matrix [--saga NAME]... [--fault NAME]... [--pairs] [--json FILE] [--parallel N]
                               the fault-injection matrix: every saga x node x fault, checked at rest
                               (--pairs adds a crash in the unwind an after-commit error caused)
    bench [--quick] [--json FILE] [--with-dbos]
                               ratchet against plain steno (and the DBOS peer): commits per node,
                               latency, throughput, recovery; see docs/PERFORMANCE.md
    run SAGA [OPTIONS]         run Nexus-shaped sagas under load, then check invariants; SAGA is
                               instance-create (--disks N --create-disks N --nics N --external-ip --start
                               --legacy-attach --fail-refetch N), disk-attach, disk-detach or
                               snapshot-create; all take --count K --concurrency C --pool-size P
                               --pool-timeout-ms T --create-first (record every saga before any
                               runs) and --sled-agent ADDR --pantry ADDR (services of `ratchet sim`
                               instead of in-process ones)
    sim                        serve the simulated sled agent and pantry until interrupted; prints
                               `services: --sled-agent ADDR --pantry ADDR`
    check [--sled-agent ADDR --pantry ADDR]
                               the invariant check on the database (and the services) at rest
    recover [--sled-agent ADDR --pantry ADDR]
                               resume this executor's unfinished sagas and print what it did; the
                               Nexus sagas need the services' addresses (without them it refuses)
    sagas list [--state S]     list sagas (running, unwinding, done, stuck, abandoned)
    sagas show ID              a saga's node-by-node timeline (events, timings, commit and
                               compensation records) and, when stuck, its diagnosis
    sagas retry-unwind ID      re-drive a stuck saga's failed compensation (fix the cause first;
                               a Nexus saga needs --sled-agent ADDR --pantry ADDR)
    sagas abandon ID --reason TEXT
                               mark a saga abandoned with a reason, leaving its rows as they are
    sagas adopt --from SEC_ID  take over another executor's unfinished sagas and finish them
                               (Nexus sagas need --sled-agent ADDR --pantry ADDR)

OPTIONS:
    --database-url URL   a PostgreSQL server to use instead of the embedded one (also DATABASE_URL)
    --data-dir DIR       where the embedded cluster lives (default ./.ratchet)
    --sec-id UUID        this executor's id (default: one kept in the data directory)
";

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RATCHET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::from_env();
    if args.flag("--help") || args.positional().is_empty() {
        print!("{USAGE}");
        return if args.flag("--help") {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(2)
        };
    }
    let runtime = match tokio::runtime::Runtime::new().context("starting the async runtime") {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
