use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use numapin::cli::{Cli, Command, Format};
use numapin::config::{self, Config, ConfigError};
use numapin::exit::Exit;
use numapin::planner::{self, PlanInput};
use numapin::report::{plan_table, topology_table};
use numapin::snapshot::{self, SnapshotError};
use numapin::topology::{HostTopology, sysfs};

/// A failure with its exit class; the message chain is printed once.
struct Failure {
    exit: Exit,
    error: Box<dyn Error>,
}

impl Failure {
    fn new(exit: Exit, error: impl Into<Box<dyn Error>>) -> Self {
        Self {
            exit,
            error: error.into(),
        }
    }
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Self {
        let exit = if e.is_missing_file() {
            Exit::NoInput
        } else {
            Exit::DataErr
        };
        Failure::new(exit, e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::new(Exit::Config, e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            eprintln!("numapin: {}", chain(&*f.error));
            f.exit.into()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// "outer: inner: innermost", each cause once.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The config named on the command line (must exist), else the default
/// path when present, else built-in defaults.
fn load_config(path: Option<&Path>) -> Result<(Config, String), Failure> {
    match path {
        Some(p) => Ok((Config::load(p)?, p.display().to_string())),
        None if Path::new(config::DEFAULT_PATH).exists() => Ok((
            Config::load(Path::new(config::DEFAULT_PATH))?,
            config::DEFAULT_PATH.to_string(),
        )),
        None => Ok((Config::default(), "built-in defaults".to_string())),
    }
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
    println!("{text}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            snapshot: dir,
            config,
            format,
            rebalance,
        } => {
            let (config, source) = load_config(config.as_deref())?;
            let snap = snapshot::load(&dir)?;
            config_for_host(&config, &source, &snap.topology)?;
            let plan = planner::plan(&PlanInput {
                topology: &snap.topology,
                domains: &snap.domains,
                observations: &snap.observations,
                config: &config,
                rebalance_all: rebalance,
            });
            match format {
                Format::Json => print_json(&plan)?,
                Format::Table => print!(
                    "{}",
                    plan_table::render(&plan, &snap.topology, &dir.display().to_string())
                ),
            }
        }
        Command::Topology {
            snapshot: dir,
            root,
            format,
        } => {
            let (topo, source) = match (dir, root) {
                (Some(dir), _) => (
                    snapshot::load_topology(&dir)?,
                    dir.join(snapshot::CAPABILITIES).display().to_string(),
                ),
                (None, root) => {
                    let root = root.unwrap_or_else(|| PathBuf::from("/"));
                    let topo = sysfs::read(&root).map_err(|e| Failure::new(Exit::DataErr, e))?;
                    (topo, format!("sysfs under {}", root.display()))
                }
            };
            match format {
                Format::Json => print_json(&topo)?,
                Format::Table => print!("{}", topology_table::render(&topo, &source)),
            }
        }
        Command::CheckConfig { config } => {
            let (config, source) = load_config(config.as_deref())?;
            println!("# effective configuration (from {source})");
            print!("{}", config.to_toml());
        }
    }
    Ok(())
}
