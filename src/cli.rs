//! Command line: `numapin plan | topology | check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "numapin",
    version,
    about = "Keeps every VM's vCPUs and memory on the right NUMA nodes of a KVM host"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan placement offline for a snapshot of a host; changes nothing.
    Plan {
        /// Snapshot directory: capabilities.xml, domains/*.xml, optional observations.toml.
        #[arg(long, value_name = "DIR")]
        snapshot: PathBuf,
        /// Config file [default: /etc/numapin/numapin.toml if it exists, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Reconsider domains the move threshold would keep in place.
        #[arg(long)]
        rebalance: bool,
    },
    /// Show the host's NUMA topology (nodes, CPUs, SMT, memory, distances).
    Topology {
        /// Read it from a snapshot's capabilities.xml instead of this host.
        #[arg(long, value_name = "DIR", conflicts_with = "root")]
        snapshot: Option<PathBuf>,
        /// Root of the sysfs/procfs tree to read [default: /].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Validate the config and print the effective settings.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}
