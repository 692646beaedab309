//! How the CLI talks: text or JSON on stdout, the engine's log, progress bars on a terminal, and the question
//! asked before changing sagas on another server.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serializing the output")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// Where a command's running commentary goes: stdout, or stderr when stdout carries JSON.
#[derive(Clone, Copy, Debug)]
pub struct Commentary {
    pub json: bool,
}

impl Commentary {
    pub fn line(&self, text: impl std::fmt::Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Whether a person is watching: stdout and stderr both terminals.
pub fn interactive() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// The bar being drawn, if any: the engine's log lines are written around it (see [`StderrAroundBar`]).
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR.lock().map(|bar| bar.clone()).unwrap_or_default()
}

/// stderr for the engine's log: a line is written with the progress bar (if one is drawn) cleared, then the
/// bar redrawn below it, so that the two do not tear each other.
pub struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Progress through `total` steps: a bar on stderr when a person is watching, plain lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    say: Commentary,
}

impl Progress {
    /// A bar of `total` steps (a spinner when `total` is `None`).
    pub fn new(total: Option<u64>, say: Commentary) -> Progress {
        let bar = interactive().then(|| {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::new(total),
                    "{bar:40.cyan/blue} {pos}/{len} [{elapsed_precise}] {msg}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {msg}",
                ),
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = Some(bar.clone());
            }
            bar
        });
        Progress { bar, say }
    }

    /// One step done; `line` is printed when there is no bar.
    pub fn step(&self, line: impl std::fmt::Display) {
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => self.say.line(line),
        }
    }

    /// One step done, said by [`Progress::note`] already.
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// A line that matters with or without a bar (a failure, a step of the benchmark).
    pub fn note(&self, line: impl std::fmt::Display) {
        match &self.bar {
            Some(bar) => bar.println(line.to_string()),
            None => self.say.line(line),
        }
    }

    /// What is going on now (shown beside the bar).
    pub fn message(&self, message: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = None;
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Where the engine's log went, when not to stderr.
pub struct LogFile {
    pub path: PathBuf,
    /// What the command logs there, for the note that names the file.
    pub holds: &'static str,
}

impl LogFile {
    /// Tells where the log is (if anything was logged), on stderr; removes an empty one.
    pub fn report(&self) {
        let lines = std::fs::read_to_string(&self.path)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if lines == 0 {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        eprintln!(
            "the engine logged {lines} line(s) ({}): {} (set RATCHET_LOG=warn to see them on stderr instead)",
            self.holds,
            self.path.display()
        );
    }
}

/// Sets up the engine's log: `RATCHET_LOG`'s filter (default `warn`) to stderr, in colour only on a terminal.
/// With `to_file` (the command's name, and what its log holds) and no `RATCHET_LOG`, the log goes to a file
/// under the temp directory instead, whose path [`LogFile::report`] prints at the end: for `matrix` and
/// `demo`, whose faults are injected on purpose and every one logs a warning or an error, and for `run` and
/// `bench`, whose sagas' retries (and the bench's injected crashes) log warnings too.
pub fn init_log(to_file: Option<(&str, &'static str)>) -> Option<LogFile> {
    let explicit = std::env::var_os("RATCHET_LOG").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RATCHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some((command, holds)) = to_file.filter(|_| !explicit) {
        let path = std::env::temp_dir().join(format!(
            "ratchet-{command}-{}-{}.log",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            std::process::id()
        ));
        if let Ok(file) = std::fs::File::create(&path) {
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .init();
            return Some(LogFile { path, holds });
        }
    }
    builder
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| StderrAroundBar)
        .init();
    None
}

/// Whether `command`, about to change sagas, must ask first: not with `--yes`, nor on the embedded cluster
/// (the operator's own); on another server, yes when stdin is a terminal, and otherwise it is refused, naming
/// `--yes`, before anything is read or changed.
pub fn must_ask(command: &str, external: bool, yes: bool) -> anyhow::Result<bool> {
    if yes || !external {
        return Ok(false);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "`ratchet {command}` changes sagas on the server of --database-url (or DATABASE_URL) and asks first, \
             but stdin is not a terminal: pass --yes to go ahead (or --dry-run to see what it would do). \
             Nothing was changed"
        );
    }
    Ok(true)
}

/// Shows `plan` (what would be done) on stderr and asks to go ahead; fails unless the answer is yes.
pub fn ask(plan: &str) -> anyhow::Result<()> {
    eprint!("{plan}\nGo ahead? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed: nothing was changed")
    }
}
