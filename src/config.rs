//! numapin's configuration: `/etc/numapin/numapin.toml`.
//!
//! Parsed with unknown keys rejected (a mistyped key in a pinning daemon would
//! otherwise silently pin wrong), then validated; every error names the file,
//! the key and the reason. `config/numapin.toml` documents every key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::guest::DomainPolicy;
use crate::idset::CpuSet;
use crate::topology::HostTopology;

pub const DEFAULT_PATH: &str = "/etc/numapin/numapin.toml";

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub host: HostConfig,
    pub planner: PlannerConfig,
    pub libvirt: LibvirtConfig,
    pub apply: ApplyConfig,
    pub daemon: DaemonConfig,
    pub metrics: MetricsConfig,
    /// Per-domain policy rules, first match wins; the domain's own numapin
    /// `<metadata>` overrides them.
    #[serde(rename = "domain")]
    pub domains: Vec<DomainRule>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Host CPUs never given to guests (housekeeping, host services).
    pub reserved_cpus: CpuSet,
    /// Memory kept free on every node, in MiB, for the host and page cache.
    pub memory_headroom_mib: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            reserved_cpus: CpuSet::new(),
            memory_headroom_mib: 2048,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Balance CPU demand and memory across nodes.
    #[default]
    Spread,
    /// Fill nodes one after another, leaving whole nodes free.
    Pack,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Spread => "spread",
            Strategy::Pack => "pack",
        })
    }
}

/// What memory-only nodes (CXL expanders, HBM: nodes without CPUs) hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryTier {
    /// A guest's memory that does not fit its CPU node(s), nearest first.
    #[default]
    Overflow,
    /// Nothing: guests live on CPU nodes only.
    Never,
    /// Idle guests' memory first (as providers do with pooled memory), and
    /// any guest's overflow.
    PreferForIdle,
}

impl fmt::Display for MemoryTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryTier::Overflow => "overflow",
            MemoryTier::Never => "never",
            MemoryTier::PreferForIdle => "prefer-for-idle",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    pub strategy: Strategy,
    /// Guests that are hypervisors themselves get dedicated 1:1 pins.
    pub dedicate_nested: bool,
    /// Also manage domains whose persistent config carries manual pinning.
    pub manage_pinned: bool,
    /// Smallest narrowing of the gap between the busiest and the idlest
    /// node's load (0-1) worth moving a running domain for; below it the
    /// domain stays where it is. A move that migrates memory must gain
    /// more: this times (1 + MiB migrated / `max_migrate_mib_per_cycle`).
    pub min_gain: f64,
    /// Seconds every cycle of the daemon must have wanted a rebalancing
    /// move of a placed domain before it is made: loads are measured over
    /// one window, and a load that lasts one (a boot, a burst) would move
    /// a guest and its memory for nothing (see [`crate::planner::wanted`]).
    pub rebalance_wait_secs: u64,
    /// Most domains moved (re-placed, not first placed) in one cycle.
    pub max_moves_per_cycle: u32,
    /// Most memory, in MiB, migrated between nodes in one cycle.
    pub max_migrate_mib_per_cycle: u64,
    /// Shared vCPU demand allowed per host CPU of a node.
    pub cpu_overcommit: f64,
    /// Load assumed for a vCPU with no observation (fraction of one CPU).
    pub default_vcpu_load: f64,
    /// Seconds a guest judged to run VMs must show no nested guest entry
    /// before it counts as an ordinary guest again.
    pub nested_quiet_secs: u64,
    /// Largest share (0-1) of a node's usable CPUs given to dedicated
    /// vCPUs; the rest stays for shared guests.
    pub max_dedicated_share: f64,
    /// What memory-only nodes hold.
    pub memory_tier: MemoryTier,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Spread,
            dedicate_nested: true,
            manage_pinned: false,
            min_gain: 0.05,
            rebalance_wait_secs: 30,
            max_moves_per_cycle: 4,
            max_migrate_mib_per_cycle: 16 * 1024,
            cpu_overcommit: 4.0,
            default_vcpu_load: 1.0,
            nested_quiet_secs: 3600,
            max_dedicated_share: 0.5,
            memory_tier: MemoryTier::Overflow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtConfig {
    /// Connection URI.
    pub uri: String,
    /// Longest wait for one libvirt call before the connection is given up
    /// and reopened, in seconds.
    pub call_timeout_secs: u64,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            call_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// Also write pins and nodesets to the domain's persistent definition
    /// once they are applied and verified live.
    pub persist: bool,
    /// Move the memory of domains without a memory binding with
    /// migrate_pages(2) after their vCPUs are pinned. Off: their memory
    /// stays, and only new allocations follow the vCPUs.
    pub migrate_memory: bool,
    /// Host-wide rate, in MiB/s, at which the daemon moves guests' memory
    /// to where they were confined, in the background. A restrictive
    /// nodeset change (libvirt migrates it in one call) counts against it.
    /// The default, 512, is the pace the default per-cycle budget allowed
    /// before memory moved in the background (16 GiB per 30 s cycle), made
    /// steady instead of a burst per cycle.
    pub migrate_rate_mib_s: u64,
    /// Share of a domain's resident memory that must be on its target nodes
    /// for a memory move to count as done (0-1).
    pub memory_on_target_share: f64,
    /// Longest wait, in seconds, for memory to reach its target nodes.
    pub memory_verify_timeout_secs: u64,
    /// Where the transaction journal and the lock live.
    pub state_dir: PathBuf,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            persist: false,
            migrate_memory: true,
            migrate_rate_mib_s: 512,
            memory_on_target_share: 0.9,
            memory_verify_timeout_secs: 60,
            state_dir: PathBuf::from("/var/lib/numapin"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Seconds between cycles when nothing happens. Domain events start a
    /// cycle at once; the interval catches what events do not announce
    /// (load shifting, memory growing, a node filling up).
    pub interval_secs: u64,
    /// Milliseconds to wait after an event for more, so a burst (many
    /// domains starting together) is handled in one cycle.
    pub event_delay_ms: u64,
    /// Where `numapin run` writes its pid, for `numapin rebalance`.
    pub pid_file: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            event_delay_ms: 200,
            pid_file: PathBuf::from("/run/numapin/numapin.pid"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Loopback address to serve Prometheus metrics on, e.g.
    /// "127.0.0.1:9877"; empty: off.
    pub listen: String,
    /// node_exporter textfile to write after every cycle, e.g.
    /// "/var/lib/prometheus/node-exporter/numapin.prom"; empty: off.
    pub textfile: String,
}

impl MetricsConfig {
    /// The listen address, when metrics are served.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = self
            .listen
            .trim()
            .parse()
            .map_err(|e| format!("{:?} is not an address:port: {e}", self.listen))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address; metrics are served on loopback only"
            ));
        }
        Ok(Some(addr))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRule {
    /// Domain name or shell-style pattern (`db-*`).
    pub name: String,
    pub policy: DomainPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file")]
    Input(#[from] crate::input::InputError),
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// toml's message already carries line, column, the key and a caret
/// excerpt; indented so it reads as one error in the journal.
pub(crate) fn toml_error_message(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n  ")
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::input::read_text(path, crate::input::CONFIG)?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_error_message(&e),
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; returns (key, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.planner;
        let bad = |key: &str, reason: String| Err((key.to_string(), reason));
        if !(0.0..=1.0).contains(&p.min_gain) {
            return bad(
                "planner.min_gain",
                format!("{} is not between 0 and 1", p.min_gain),
            );
        }
        if !(1.0..=64.0).contains(&p.cpu_overcommit) {
            return bad(
                "planner.cpu_overcommit",
                format!("{} is not between 1 and 64", p.cpu_overcommit),
            );
        }
        if !(p.default_vcpu_load > 0.0 && p.default_vcpu_load <= 1.0) {
            return bad(
                "planner.default_vcpu_load",
                format!("{} is not above 0 and at most 1", p.default_vcpu_load),
            );
        }
        if !(0.0..=1.0).contains(&p.max_dedicated_share) {
            return bad(
                "planner.max_dedicated_share",
                format!("{} is not between 0 and 1", p.max_dedicated_share),
            );
        }
        if !(0.0..=1.0).contains(&self.apply.memory_on_target_share) {
            return bad(
                "apply.memory_on_target_share",
                format!(
                    "{} is not between 0 and 1",
                    self.apply.memory_on_target_share
                ),
            );
        }
        if !(1..=1024 * 1024).contains(&self.apply.migrate_rate_mib_s) {
            return bad(
                "apply.migrate_rate_mib_s",
                format!(
                    "{} is not between 1 and 1048576",
                    self.apply.migrate_rate_mib_s
                ),
            );
        }
        if self.libvirt.call_timeout_secs == 0 {
            return bad("libvirt.call_timeout_secs", "must be at least 1".into());
        }
        if self.libvirt.uri.trim().is_empty() {
            return bad("libvirt.uri", "is empty".into());
        }
        if !self.apply.state_dir.is_absolute() {
            return bad(
                "apply.state_dir",
                format!("{} is not an absolute path", self.apply.state_dir.display()),
            );
        }
        if !(1..=86_400).contains(&self.daemon.interval_secs) {
            return bad(
                "daemon.interval_secs",
                format!("{} is not between 1 and 86400", self.daemon.interval_secs),
            );
        }
        if self.daemon.event_delay_ms > 10_000 {
            return bad(
                "daemon.event_delay_ms",
                format!("{} is above 10000", self.daemon.event_delay_ms),
            );
        }
        if let Err(reason) = self.metrics.listen_addr() {
            return bad("metrics.listen", reason);
        }
        if !self.metrics.textfile.is_empty() && !Path::new(&self.metrics.textfile).is_absolute() {
            return bad(
                "metrics.textfile",
                format!("{} is not an absolute path", self.metrics.textfile),
            );
        }
        for (i, rule) in self.domains.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(&rule.name) {
                return bad(
                    &format!("domain[{i}].name"),
                    format!("{:?} is not a valid pattern: {e}", rule.name),
                );
            }
        }
        Ok(())
    }

    /// Checks the config against the host it will run on.
    pub fn validate_for_host(&self, topo: &HostTopology) -> Result<(), (String, String)> {
        let key = "host.reserved_cpus".to_string();
        let known = topo.online_cpus().union(&topo.offline_cpus);
        if let Some(cpu) = self.host.reserved_cpus.difference(&known).first() {
            return Err((key, format!("CPU {cpu} does not exist on this host")));
        }
        if topo.online_cpus().is_subset(&self.host.reserved_cpus) {
            return Err((
                key,
                format!(
                    "reserves every online CPU ({}), leaving none for guests",
                    topo.online_cpus()
                ),
            ));
        }
        Ok(())
    }

    /// The policy the config assigns to a domain name, if a rule matches.
    pub fn rule_for(&self, name: &str) -> Option<(usize, &DomainRule)> {
        self.domains
            .iter()
            .enumerate()
            .find(|(_, r)| glob::Pattern::new(&r.name).is_ok_and(|p| p.matches(name)))
    }

    /// The effective config as TOML, every key with its value.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/numapin/numapin.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load("").unwrap(), Config::default());
    }

    #[test]
    fn reads_every_section() {
        let c = load(
            r#"
            [host]
            reserved_cpus = "0-1,^1,32"
            memory_headroom_mib = 4096
            [planner]
            strategy = "pack"
            min_gain = 0.2
            [[domain]]
            name = "db-*"
            policy = "dedicated"
            "#,
        )
        .unwrap();
        assert_eq!(c.host.reserved_cpus.to_string(), "0,32");
        assert_eq!(c.planner.strategy, Strategy::Pack);
        assert_eq!(
            c.rule_for("db-01").unwrap().1.policy,
            DomainPolicy::Dedicated
        );
        assert!(c.rule_for("web").is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[planner]\nstrategy = \"spread\"\nmin_gian = 0.1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/numapin/numapin.toml"), "{text}");
        assert!(text.contains("min_gian"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn bad_values_name_key_and_reason() {
        let err = load("[planner]\nmin_gain = 1.5\n").unwrap_err().to_string();
        assert!(
            err.contains("planner.min_gain: 1.5 is not between 0 and 1"),
            "{err}"
        );
        let err = load("[host]\nreserved_cpus = \"0-x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reserved_cpus") && err.contains("\"x\" is not a number"),
            "{err}"
        );
        let err = load("[planner]\nstrategy = \"random\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("strategy") && err.contains("random"), "{err}");
        let err = load("[[domain]]\nname = \"[\"\npolicy = \"exclude\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("domain[0].name"), "{err}");
        let err = load("[[domain]]\nname = \"a\"\npolicy = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fast"), "{err}");
    }

    #[test]
    fn printed_config_loads_back() {
        let mut c = Config::default();
        c.host.reserved_cpus = "0,8".parse().unwrap();
        c.domains.push(DomainRule {
            name: "x*".into(),
            policy: DomainPolicy::Exclude,
        });
        assert_eq!(load(&c.to_toml()).unwrap(), c);
    }
}
