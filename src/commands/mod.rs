//! The subcommands. Each returns a [`Failure`] carrying its exit class;
//! `main` prints it once and exits with that code.

mod daemon;
mod live;
mod offline;

use std::error::Error;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::config::{Config, ConfigError};
use crate::exit::Exit;
use crate::snapshot::SnapshotError;
use crate::topology::HostTopology;

/// A failure with its exit class; the message chain is printed once.
pub struct Failure {
    pub exit: Exit,
    pub error: Box<dyn Error>,
}

impl Failure {
    pub fn new(exit: Exit, error: impl Into<Box<dyn Error>>) -> Self {
        Self {
            exit,
            error: error.into(),
        }
    }
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Self {
        Failure::new(e.exit(), e)
    }
}

/// A config file that cannot be opened is an input problem (missing or
/// not a file: 66, unreadable: 74); what it holds, even too much of it or
/// bytes that are not text, is a config error (78).
pub(crate) fn config_exit(e: &ConfigError) -> Exit {
    match e {
        ConfigError::Input(input) if matches!(input.exit(), Exit::NoInput | Exit::IoErr) => {
            input.exit()
        }
        _ => Exit::Config,
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::new(config_exit(&e), e)
    }
}

/// The config named on the command line (must exist), else the default
/// path when present, else built-in defaults.
pub(crate) fn load_config(path: Option<&Path>) -> Result<(Config, String), Failure> {
    Ok(crate::daemon::load_config(path)?)
}

fn config_for_host(config: &Config, source: &str, topo: &HostTopology) -> Result<(), Failure> {
    config.validate_for_host(topo).map_err(|(key, reason)| {
        Failure::new(
            Exit::Config,
            ConfigError::Invalid {
                path: PathBuf::from(source),
                key,
                reason,
            },
        )
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::new(Exit::Software, e))?;
    print_out(&format!("{text}\n"))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
struct StdoutError(#[source] std::io::Error);

/// Writes a command's output. A full disk or another write error is an I/O
/// failure (74), never a panic as `print!` would give; a reader that went
/// away (`| head`, with SIGPIPE ignored) ends the command quietly, as Unix
/// tools do.
pub(crate) fn print_out(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new(Exit::IoErr, StdoutError(e)))
        }
        _ => Ok(()),
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            snapshot,
            config,
            format,
            rebalance,
        } => offline::plan(&snapshot, config.as_deref(), format, rebalance),
        Command::Topology {
            snapshot,
            root,
            format,
        } => offline::topology(snapshot.as_deref(), root, format),
        Command::CheckConfig { config } => offline::check_config(config.as_deref()),
        Command::Snapshot { out, live } => live::snapshot(&out, &live),
        Command::Status { format, live } => live::status(format, &live),
        Command::Apply {
            dry_run,
            rebalance,
            format,
            pause_between_steps_ms,
            live,
        } => live::apply(dry_run, rebalance, format, pause_between_steps_ms, &live),
        Command::Recover { live } => live::recover(&live),
        Command::Manage { domain, live } => live::manage(&domain, &live),
        Command::Run {
            config,
            dry_run,
            root,
        } => daemon::run(config, dry_run, root),
        Command::Rebalance { config } => daemon::rebalance(config.as_deref()),
        Command::GenerateAssets { out } => generate_assets(&out),
    }
}

/// Man pages (one per visible command) and shell completions, from the
/// clap definition itself.
fn generate_assets(out: &Path) -> Result<(), Failure> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| Failure::new(Exit::IoErr, format!("{what}: {e}"))
    };
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).map_err(io(&man))?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "numapin", &completions)
            .map_err(io(&completions))?;
    }
    Ok(())
}
