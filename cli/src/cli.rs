//! The command line, declared with clap: every command, its options and their help.
//!
//! Exit status: 0 when the command did what it was asked, 1 when it failed or needs an operator, 2 for a usage
//! error (clap's own errors; see [`parse`]).

use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ratchet_fault_injection::Fault;
use ratchet_store::SagaState;
use std::net::SocketAddr;
use std::path::PathBuf;
use uuid::Uuid;

/// Shown at the end of every command's help.
pub const EXIT_STATUS: &str = "\
Exit status:
  0  the command did what it was asked
  1  it failed, or something needs an operator (`recover`: a saga ended stuck, abandoned, left alone for want
     of its definition, or not at rest; `check`: an invariant is broken; `matrix`: a cell failed)
  2  usage error: an unknown command or option, a missing or malformed value

Environment:
  DATABASE_URL     the server to use (as --database-url)
  RATCHET_SEC_ID   this executor's id (as --sec-id)
  RATCHET_LOG      the engine's log filter (e.g. info); `matrix` and `demo` then log to stderr instead of a file";

/// ratchet: a saga engine on steno whose nodes cannot do fallible work after their commit.
///
/// With no --database-url (or DATABASE_URL), every command uses the embedded PostgreSQL whose cluster lives in
/// --data-dir (default ./.ratchet), started on demand and left running (`ratchet db stop` stops it).
#[derive(Parser, Debug)]
#[command(name = "ratchet", version, arg_required_else_help = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// A PostgreSQL server to use instead of the embedded one
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub database_url: Option<String>,
    /// Where the embedded cluster lives, with this executor's default id (DIR/sec-id)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = ".ratchet",
        help_heading = "Global options"
    )]
    pub data_dir: PathBuf,
    /// This executor's id [default: the one kept in DIR/sec-id with the embedded cluster; a command that
    /// drives sagas on a --database-url needs it given]
    #[arg(
        long,
        env = "RATCHET_SEC_ID",
        hide_env_values = true,
        global = true,
        value_name = "UUID",
        help_heading = "Global options"
    )]
    pub sec_id: Option<Uuid>,
    /// Where --sec-id came from (filled in by [`parse`]).
    #[arg(skip)]
    pub sec_id_from_env: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The embedded PostgreSQL: start, stop, status, url
    #[command(subcommand)]
    Db(DbCommand),
    /// Run the example saga and print its node-by-node history
    Demo(DemoArgs),
    /// The fault-injection matrix: every saga x node x fault, each cell on a fresh database, checked at rest
    Matrix(MatrixArgs),
    /// ratchet against plain steno (and the DBOS peer): commits per node, latency, throughput, recovery
    /// (see docs/PERFORMANCE.md)
    Bench(BenchArgs),
    /// Run Nexus-shaped sagas under load, then check that every saga is at rest and nothing leaked
    Run(RunArgs),
    /// Serve the simulated sled agent and pantry until interrupted; prints `services: --sled-agent ADDR
    /// --pantry ADDR`
    Sim,
    /// The invariant check on the database (and the services) at rest; reads only
    Check(CheckArgs),
    /// Resume this executor's unfinished sagas and print what became of them
    Recover(RecoverArgs),
    /// List, show and operate on sagas
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// The child process of `matrix --real-crash`: one crash cell's saga, run until the parent kills it
    #[command(hide = true)]
    MatrixChild {
        /// The cell, as JSON
        spec: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Start the embedded PostgreSQL (creating its cluster if there is none)
    Start,
    /// Stop it
    Stop,
    /// Say where it is and whether it runs
    Status,
    /// Print a URL psql accepts
    Url,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Inject a permanent error right after NODE's COMMIT (the saga must unwind cleanly)
    #[arg(long, value_name = "NODE")]
    pub fail_after_commit: Option<String>,
    /// The widget's name [default: a random one]
    #[arg(long)]
    pub name: Option<String>,
    /// The widget's price, charged to an account holding 100
    #[arg(long, default_value_t = 30)]
    pub price: i64,
    #[command(flatten)]
    pub services: ServiceArgs,
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Only this saga (repeatable) [default: all]
    #[arg(long, value_name = "SAGA", value_parser = clap::builder::PossibleValuesParser::new(
        ratchet_fault_injection::NEXUS_SUITE_NAMES))]
    pub saga: Vec<String>,
    /// Only this fault (repeatable) [default: all]
    #[arg(long, value_name = "FAULT", value_parser = fault_parser())]
    pub fault: Vec<Fault>,
    /// Also a crash in the unwind an after-commit error caused (every node before it)
    #[arg(long)]
    pub pairs: bool,
    /// Crash cells run their saga in a child process killed with SIGKILL at the fault point (at a
    /// database node's COMMIT: in the middle of its round trip), then recovered by this process
    #[arg(long)]
    pub real_crash: bool,
    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Cells run at once
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
}

fn fault_parser() -> impl clap::builder::TypedValueParser<Value = Fault> {
    clap::builder::PossibleValuesParser::new(Fault::ALL.map(Fault::name))
        .try_map(|name| name.parse::<Fault>())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The smoke run: fewer sagas per cell, recovery of 100 and 1,000 only
    #[arg(long)]
    pub quick: bool,
    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also run the DBOS peer (peers/dbos, built separately)
    #[arg(long)]
    pub with_dbos: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(subcommand)]
    pub saga: RunSaga,
}

/// The saga `ratchet run` runs.
#[derive(Subcommand, Debug)]
pub enum RunSaga {
    /// Create instances (the Omicron 10695 load with --create-disks and --legacy-attach)
    InstanceCreate(InstanceCreateArgs),
    /// Attach a disk to a stopped instance
    DiskAttach(RunCommon),
    /// Detach a disk from a stopped instance
    DiskDetach(RunCommon),
    /// Snapshot a detached disk through the pantry
    SnapshotCreate(RunCommon),
}

impl RunSaga {
    pub fn name(&self) -> &'static str {
        match self {
            RunSaga::InstanceCreate(_) => "instance-create",
            RunSaga::DiskAttach(_) => "disk-attach",
            RunSaga::DiskDetach(_) => "disk-detach",
            RunSaga::SnapshotCreate(_) => "snapshot-create",
        }
    }

    pub fn common(&self) -> &RunCommon {
        match self {
            RunSaga::InstanceCreate(args) => &args.common,
            RunSaga::DiskAttach(common)
            | RunSaga::DiskDetach(common)
            | RunSaga::SnapshotCreate(common) => common,
        }
    }
}

#[derive(Args, Debug)]
pub struct InstanceCreateArgs {
    /// Existing disks to attach to each instance
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub disks: usize,
    /// Disks each instance creates and attaches
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub create_disks: usize,
    /// Network interfaces per instance
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nics: usize,
    /// Give each instance an external IP
    #[arg(long)]
    pub external_ip: bool,
    /// Start each instance once created (a VMM on the sled agent)
    #[arg(long)]
    pub start: bool,
    /// The pre-fix attach of Omicron 10695 (a re-fetch after the commit)
    #[arg(long)]
    pub legacy_attach: bool,
    /// Make the legacy attach's re-fetch fail N times
    #[arg(long, value_name = "N")]
    pub fail_refetch: Option<u64>,
    #[command(flatten)]
    pub common: RunCommon,
}

#[derive(Args, Debug)]
pub struct RunCommon {
    /// Sagas to run
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub count: usize,
    /// Sagas running at once
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Connections in the engine's pool
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,
    /// How long a node waits for a pooled connection
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    pub pool_timeout_ms: u64,
    /// Record every saga durably before any runs (so that a crash leaves them all for `recover`)
    #[arg(long)]
    pub create_first: bool,
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum SagasCommand {
    /// List sagas, newest first
    List(ListArgs),
    /// A saga's node-by-node timeline (events, timings, commit and compensation records) and, when stuck, its
    /// diagnosis
    Show(ShowArgs),
    /// Re-drive a stuck saga's failed compensation (fix the cause first)
    RetryUnwind(RetryUnwindArgs),
    /// Mark a saga abandoned with a reason, leaving its rows as they are
    Abandon(AbandonArgs),
    /// Take over another executor's unfinished sagas and finish them (those this binary has the definition
    /// of: the others stay with their executor, untouched, unless --abandon-unknown)
    Adopt(AdoptArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only sagas in this state
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only sagas of this definition (e.g. instance-create)
    #[arg(long)]
    pub name: Option<String>,
    /// Only sagas driven by this executor
    #[arg(long, value_name = "SEC_ID")]
    pub executor: Option<Uuid>,
    /// Only sagas created at or after TIME: RFC 3339 (2026-11-30T06:00:00Z), a date (2026-11-30, UTC), or an
    /// age (90s, 15m, 2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many (the newest); the list says when more matched
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--state`'s values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    Running,
    Unwinding,
    Done,
    Stuck,
    Abandoned,
}

impl From<StateArg> for SagaState {
    fn from(state: StateArg) -> SagaState {
        match state {
            StateArg::Running => SagaState::Running,
            StateArg::Unwinding => SagaState::Unwinding,
            StateArg::Done => SagaState::Done,
            StateArg::Stuck => SagaState::Stuck,
            StateArg::Abandoned => SagaState::Abandoned,
        }
    }
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The saga's id
    #[arg(value_parser = parse_saga_id)]
    pub id: Uuid,
    /// Print receipts and event data whole (by default they are cut at 100 characters)
    #[arg(long)]
    pub full: bool,
    /// Print the saga's DAG for Graphviz (`| dot -Tsvg`), each node coloured by its state
    #[arg(long, conflicts_with_all = ["json", "output"])]
    pub dot: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RetryUnwindArgs {
    /// The stuck saga's id
    #[arg(value_parser = parse_saga_id)]
    pub id: Uuid,
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct AbandonArgs {
    /// The saga's id
    #[arg(value_parser = parse_saga_id)]
    pub id: Uuid,
    /// Why (recorded with the saga for whoever finds it)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub safety: SafetyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct AdoptArgs {
    /// The executor whose unfinished sagas to take over (a dead or expunged one)
    #[arg(long, value_name = "SEC_ID")]
    pub from: Uuid,
    /// Also take the sagas whose definition (at their version) this binary lacks, and mark them abandoned
    /// with the reason, their commits left in effect. Without it they stay with --from's executor, untouched
    /// (another binary sharing the database may run them); use it only when no binary will ever run them
    #[arg(long)]
    pub abandon_unknown: bool,
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The services the Nexus sagas call: both, or neither.
#[derive(Args, Debug, Clone, Copy)]
pub struct ServiceArgs {
    /// The sled agent the Nexus sagas call (what `ratchet sim` prints)
    #[arg(
        long,
        value_name = "ADDR",
        requires = "pantry",
        help_heading = "Services"
    )]
    pub sled_agent: Option<SocketAddr>,
    /// The pantry the Nexus sagas call (what `ratchet sim` prints)
    #[arg(
        long,
        value_name = "ADDR",
        requires = "sled_agent",
        help_heading = "Services"
    )]
    pub pantry: Option<SocketAddr>,
}

/// How a command that changes sagas is kept from doing so by mistake.
#[derive(Args, Debug, Clone, Copy)]
pub struct SafetyArgs {
    /// Print what would be done, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (needed on a --database-url when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Text or JSON.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Print JSON (the library's own report types) instead of text (same as -o json)
    #[arg(long)]
    pub json: bool,
    /// The output format
    #[arg(
        short = 'o',
        long,
        value_enum,
        value_name = "FORMAT",
        conflicts_with = "json"
    )]
    pub output: Option<Format>,
}

impl OutputArgs {
    pub fn json(&self) -> bool {
        self.json || matches!(self.output, Some(Format::Json))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn parse_saga_id(id: &str) -> Result<Uuid, String> {
    id.parse()
        .map_err(|_| format!("{id:?} is not a saga id (a UUID)"))
}

/// `--since`: RFC 3339, a date (midnight UTC), or an age (`15m`: fifteen minutes ago).
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{DateTime, NaiveDate, Utc};
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let age = number
        .parse::<i64>()
        .ok()
        .filter(|_| seconds > 0)
        .and_then(|n| n.checked_mul(seconds))
        .and_then(chrono::TimeDelta::try_seconds);
    match age {
        Some(age) => Ok(Utc::now() - age),
        None => Err(format!(
            "{text:?} is not a time: give RFC 3339 (2026-11-30T06:00:00Z), a date (2026-11-30) or an age \
             (90s, 15m, 2h, 7d)"
        )),
    }
}

/// Parses the command line. On a usage error, `--help` or `--version`, clap prints what it has to say and
/// exits: 2 for a usage error, 0 for help and the version.
pub fn parse() -> Cli {
    let matches = with_exit_status(Cli::command()).get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    cli.global.sec_id_from_env = sec_id_source(&matches) == Some(ValueSource::EnvVariable);
    cli
}

/// Where `--sec-id`'s value came from, looking into the subcommand that was run (a global option's value is
/// kept there when it was given after the subcommand's name).
fn sec_id_source(matches: &clap::ArgMatches) -> Option<ValueSource> {
    let mut found = matches.value_source("sec_id");
    let mut current = matches;
    while let Some((_, sub)) = current.subcommand() {
        if let Some(source) = sub.value_source("sec_id") {
            found = Some(source);
        }
        current = sub;
    }
    found
}

/// Every command's help ends with the exit status.
fn with_exit_status(command: clap::Command) -> clap::Command {
    command
        .after_help(EXIT_STATUS)
        .mut_subcommands(with_exit_status)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        with_exit_status(Cli::command()).debug_assert();
    }

    #[test]
    fn since_takes_times_dates_and_ages() {
        assert_eq!(
            parse_since("2026-11-30T07:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-30T06:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-30").unwrap().to_rfc3339(),
            "2026-11-30T00:00:00+00:00"
        );
        let age = chrono::Utc::now() - parse_since("15m").unwrap();
        assert!((899..=901).contains(&age.num_seconds()), "{age}");
        assert!(parse_since("15 weeks").is_err());
        assert!(parse_since("m").is_err());
    }
}
