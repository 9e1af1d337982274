//! Command line: `numapin plan | topology | check-config | snapshot | status | apply | run | ...`.
//!
//! The man pages and shell completions are generated from this definition
//! (`numapin generate-assets`, hidden), so they cannot drift from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "numapin",
    version,
    about = "Keeps every VM's vCPUs and memory on the right NUMA nodes of a KVM host",
    long_about = "Keeps every VM's vCPUs and memory on the right NUMA nodes of a KVM host.\n\n\
numapin plans placement for all libvirt domains at once, aligned to the host \
topology and to each guest's own topology, applies it as verified transactions \
that roll back on failure, and keeps it as VMs come, go and change. \
`numapin run` is the daemon (numapin.service); the other commands inspect, \
plan or act once.",
    after_help = EXAMPLES,
    after_long_help = LONG_EXAMPLES
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  numapin plan --snapshot examples/demo   plan a saved host offline
  numapin status                          where each running VM is now
  numapin apply --dry-run                 what one cycle would change
  systemctl enable --now numapin          run the daemon under systemd
  numapin rebalance                       ask the daemon to rebalance now
  numapin manage DOMAIN                   hand a guest back after pinning it by hand

See 'numapin help COMMAND' for more, 'man numapin' for all.";

const LONG_EXAMPLES: &str = "\
Examples:
  numapin plan --snapshot examples/demo
      Plan the bundled demo host offline: where each VM is, where it should
      go and why, and the steps apply would take.
  numapin snapshot --out snap && numapin plan --snapshot snap
      Capture this host and plan it offline (e.g. for a bug report).
  numapin check-config --config /etc/numapin/numapin.toml
      Validate a config before 'systemctl reload numapin'.
  numapin status
      Where every running domain's vCPUs and memory are, and why numapin
      manages it or not.
  numapin apply --dry-run
      Print the exact actions one cycle would take; change nothing.
  systemctl enable --now numapin
      Run the daemon (numapin run) under systemd; 'systemctl reload numapin'
      re-reads its config.
  numapin rebalance
      Ask the running daemon to rebalance now (SIGUSR1).
  numapin manage DOMAIN
      Hand a guest back to numapin after an operator changed its pins.
  numapin recover
      Roll back the changes a killed numapin left unfinished.

Files:
  /etc/numapin/numapin.toml   the config; every key is optional
  /var/lib/numapin            transaction journal, placements and lock
  /run/numapin/numapin.pid    the daemon's pid, for 'numapin rebalance'

Exit status:
  0 success; 64 bad command line; 65 malformed input; 66 missing input;
  69 libvirt or the host unreachable; 70 internal error; 74 I/O error;
  75 changes failed and were rolled back, or another numapin holds the
  state dir (retry later); 78 invalid configuration.

Environment:
  RUST_LOG    log filter (overrides -v), e.g. RUST_LOG=numapin=debug
  NO_COLOR    no colours in the log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan placement offline for a snapshot of a host; changes nothing.
    #[command(after_help = "\
Examples:
  numapin plan --snapshot examples/demo
  numapin plan --snapshot snap --config /etc/numapin/numapin.toml --format json
  numapin plan --snapshot snap --rebalance")]
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
    #[command(after_help = "\
Examples:
  numapin topology
  numapin topology --snapshot examples/demo --format json")]
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
    #[command(after_help = "\
Examples:
  numapin check-config --config /etc/numapin/numapin.toml && systemctl reload numapin")]
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Capture this host (capabilities, running domains' XML, observations)
    /// into a snapshot directory that `plan --snapshot` reads.
    #[command(after_help = "\
Examples:
  numapin snapshot --out snap && numapin plan --snapshot snap")]
    Snapshot {
        /// New or empty directory to write.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Where every running domain's vCPUs and memory are, and each node's load.
    #[command(after_help = "\
Examples:
  numapin status
  numapin status --format json --sample 0")]
    Status {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Observe, plan and apply once: one verified transaction per domain,
    /// rolled back on failure.
    #[command(after_help = "\
Examples:
  numapin apply --dry-run
  numapin apply --rebalance")]
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
    #[command(after_help = "\
Examples:
  systemctl enable --now numapin        (runs numapin run --config /etc/numapin/numapin.toml)
  numapin run --config ./numapin.toml --dry-run

Signals: SIGHUP reloads the config, SIGUSR1 rebalances now, SIGTERM stops
after the change in flight.")]
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
    #[command(after_help = "\
Examples:
  numapin manage web01")]
    Manage {
        /// Name of the running domain.
        domain: String,
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Ask the running daemon to rebalance now (sends it SIGUSR1).
    #[command(after_help = "\
Examples:
  numapin rebalance
  systemctl kill -s USR1 numapin        (the same, through systemd)")]
    Rebalance {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Roll back the transactions a killed numapin left unfinished, and
    /// change nothing else. (`apply` and the daemon do this first anyway.)
    #[command(after_help = "\
Examples:
  systemctl stop numapin && numapin recover")]
    Recover {
        #[command(flatten)]
        live: LiveArgs,
    },
    /// Write the man pages (OUT/man) and the bash, zsh and fish completions
    /// (OUT/completions) generated from this command line definition; the
    /// package build runs it.
    #[command(hide = true)]
    GenerateAssets {
        /// Directory to write into (created if needed).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks of the definition (names, conflicts,
    /// defaults), which otherwise only run when a command line hits them.
    #[test]
    fn the_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
