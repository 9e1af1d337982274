//! Command line: `numapin plan | topology | check-config | snapshot | status | apply`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Capture this host (capabilities, running domains' XML, observations)
    /// into a snapshot directory that `plan --snapshot` reads.
    Snapshot {
        /// New or empty directory to write.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Where every running domain's vCPUs and memory are, and each node's load.
    Status {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Observe, plan and apply once: one verified transaction per domain,
    /// rolled back on failure.
    Apply {
        /// Print the exact actions and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reconsider domains the move threshold would keep in place.
        #[arg(long)]
        rebalance: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Wait this many milliseconds between the steps of a transaction,
        /// to watch a change roll out step by step.
        #[arg(long, value_name = "MS", hide = true)]
        pause_between_steps_ms: Option<u64>,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Run the daemon: observe, plan and apply on an interval and on
    /// libvirt domain events, until SIGTERM.
    Run {
        /// Config file [default: /etc/numapin/numapin.toml if it exists, else built-in defaults]; SIGHUP reloads it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Plan and log what would be applied; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Root of the /proc and /sys trees to read.
        #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Hand a domain back to numapin after changing its pins by hand: its
    /// current pins become numapin's starting point.
    Manage {
        /// Name of the running domain.
        domain: String,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Ask the running daemon to rebalance now (sends it SIGUSR1).
    Rebalance {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Roll back the transactions a killed numapin left unfinished, and
    /// change nothing else. (`apply` and the daemon do this first anyway.)
    Recover {
        #[command(flatten)]
        live: LiveArgs,
    },
}

/// Options of the commands that read the live host.
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Config file [default: /etc/numapin/numapin.toml if it exists, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// libvirt connection URI [default: the config's libvirt.uri].
    #[arg(long, value_name = "URI")]
    pub uri: Option<String>,
    /// Seconds between the two readings that measure vCPU load and steal
    /// time; 0 skips measuring (loads then default to planner.default_vcpu_load).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub sample: f64,
    /// Root of the /proc and /sys trees to read.
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    pub root: PathBuf,
}
