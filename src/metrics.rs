//! Prometheus metrics of the daemon: what its cycles did and where the
//! domains and nodes stand.
//!
//! [`Metrics`] holds the registry; the daemon updates it after each cycle and
//! after each reload. [`serve`] exposes it over HTTP on a loopback address,
//! [`write_textfile`] writes it for node_exporter's textfile collector.
//!
//! [`Metrics::render`] gives the Prometheus text format (0.0.4), which every
//! scraper and node_exporter's textfile collector read; the HTTP endpoint
//! gives OpenMetrics instead to a scraper that asks for it (its `# EOF` shows
//! a truncated scrape).

use std::sync::atomic::AtomicU64;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the cycle duration buckets, in seconds: a quiet cycle
/// takes milliseconds; one that migrates memory or waits on a slow libvirt
/// call takes up to a minute.
pub const CYCLE_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `Content-Type` of [`Metrics::render_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of [`Metrics::render`].
pub const TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One running domain, as the last cycle saw it.
#[derive(Debug, Clone)]
pub struct DomainGauge {
    pub name: String,
    pub managed: bool,
    /// Distance-weighted memory locality (1 = all local); `None` when the
    /// domain's memory was not measured.
    pub locality: Option<f64>,
    pub nodes_spanned: usize,
    pub memory_mib: u64,
    /// An operator changed its pins after numapin placed it, so numapin
    /// stopped managing it.
    pub changed_by_operator: bool,
    /// Taken for a hypervisor of its own (declared or seen running VMs).
    pub nested_hypervisor: bool,
    /// Mean share of time its vCPUs waited for a host CPU; `None` when
    /// not measured.
    pub vcpu_wait: Option<f64>,
    /// Its threads may run on CPUs dedicated to other guests (a domain
    /// numapin leaves alone).
    pub on_dedicated_cpus: bool,
    /// MiB of its memory still to move to its placement; `None` when
    /// nothing is moving.
    pub memory_to_move_mib: Option<u64>,
    /// Seconds since numapin confined it where it is; `None` when numapin
    /// did not place it.
    pub confined_secs: Option<f64>,
}

/// One host NUMA node, as the last cycle saw it.
#[derive(Debug, Clone)]
pub struct NodeGauge {
    pub id: u32,
    /// `None` when free memory was not measured.
    pub free_mib: Option<u64>,
    pub vcpu_demand: f64,
    pub cpus: usize,
    /// CPUs held by dedicated vCPUs.
    pub dedicated_cpus: usize,
    /// vCPUs' run-queue wait on the node, in CPUs; `None` when not measured.
    pub vcpu_wait: Option<f64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

const OK: ResultLabel = ResultLabel { result: "ok" };
const ERROR: ResultLabel = ResultLabel { result: "error" };

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type UintGauge = Gauge<u64, AtomicU64>;

/// The daemon's metrics. Shared between the work loop and the HTTP thread:
/// every update takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cycles: Family<ResultLabel, Counter>,
    cycle_duration: Histogram,
    last_cycle: FloatGauge,
    last_successful_cycle: FloatGauge,
    actions_applied: Counter,
    transactions_failed: Counter,
    rollbacks: Counter,
    domains_skipped: Counter,
    config_reloads: Family<ResultLabel, Counter>,
    config_last_reload_successful: UintGauge,
    domain_managed: Family<DomainLabel, UintGauge>,
    domain_locality: Family<DomainLabel, FloatGauge>,
    domain_nodes_spanned: Family<DomainLabel, UintGauge>,
    domain_changed_by_operator: Family<DomainLabel, UintGauge>,
    domain_memory: Family<DomainLabel, UintGauge>,
    domain_nested_hypervisor: Family<DomainLabel, UintGauge>,
    domain_vcpu_wait: Family<DomainLabel, FloatGauge>,
    domain_on_dedicated_cpus: Family<DomainLabel, UintGauge>,
    domain_memory_to_move: Family<DomainLabel, UintGauge>,
    domain_confined: Family<DomainLabel, FloatGauge>,
    memory_moved: Counter,
    memory_move_rate_limit: FloatGauge,
    node_dedicated_cpus: Family<NodeLabel, UintGauge>,
    node_vcpu_wait: Family<NodeLabel, FloatGauge>,
    node_free_memory: Family<NodeLabel, UintGauge>,
    node_vcpu_demand: Family<NodeLabel, FloatGauge>,
    node_cpus: Family<NodeLabel, UintGauge>,
    /// Held for writing while the per-domain or per-node series are
    /// replaced, for reading while rendering, so a scrape never sees half a
    /// replacement.
    series: RwLock<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("numapin");
        let mib = || Unit::Other("mib".into());

        let build_info = Family::<VersionLabel, UintGauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register(
            "build_info",
            "The running numapin's version, as a label; always 1",
            build_info,
        );

        let cycles = Family::<ResultLabel, Counter>::default();
        let cycle_duration = Histogram::new(CYCLE_BUCKETS);
        let last_cycle = FloatGauge::default();
        let last_successful_cycle = FloatGauge::default();
        r.register(
            "cycles",
            "Placement cycles finished, by result (error: the cycle stopped on an error)",
            cycles.clone(),
        );
        r.register_with_unit(
            "cycle_duration",
            "Wall time of one placement cycle, ok or not",
            Unit::Seconds,
            cycle_duration.clone(),
        );
        r.register_with_unit(
            "last_cycle_timestamp",
            "Unix time the last cycle finished; 0 before the first",
            Unit::Seconds,
            last_cycle.clone(),
        );
        r.register_with_unit(
            "last_successful_cycle_timestamp",
            "Unix time the last cycle without error finished; 0 before the first",
            Unit::Seconds,
            last_successful_cycle.clone(),
        );

        let actions_applied = Counter::default();
        let transactions_failed = Counter::default();
        let rollbacks = Counter::default();
        let domains_skipped = Counter::default();
        r.register(
            "actions_applied",
            "Placement steps applied: emulator, iothread and vCPU pins, nodesets, memory moves",
            actions_applied.clone(),
        );
        r.register(
            "transactions_failed",
            "Domain transactions that failed at a step",
            transactions_failed.clone(),
        );
        r.register(
            "rollbacks",
            "Transactions rolled back, after a failed step or left unfinished by a killed numapin",
            rollbacks.clone(),
        );
        r.register(
            "domains_skipped",
            "Domains left out of a cycle because they vanished or were busy",
            domains_skipped.clone(),
        );

        let config_reloads = Family::<ResultLabel, Counter>::default();
        let config_last_reload_successful = UintGauge::default();
        r.register(
            "config_reloads",
            "Config reloads, by result (error: the previous config stays in use)",
            config_reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "Whether the last config reload succeeded (1) or was refused (0); 1 before any reload",
            config_last_reload_successful.clone(),
        );

        let domain_managed = Family::default();
        let domain_locality = Family::default();
        let domain_nodes_spanned = Family::default();
        let domain_changed_by_operator = Family::default();
        let domain_memory = Family::default();
        r.register(
            "domain_managed",
            "Whether numapin manages the running domain (1) or leaves it alone (0)",
            domain_managed.clone(),
        );
        r.register_with_unit(
            "domain_memory_locality",
            "Distance-weighted share of the domain's memory local to its vCPUs (1 = all local); absent when not measured",
            Unit::Other("ratio".into()),
            domain_locality.clone(),
        );
        r.register(
            "domain_nodes_spanned",
            "Host NUMA nodes the domain spans",
            domain_nodes_spanned.clone(),
        );
        r.register(
            "domain_changed_by_operator",
            "1 when an operator changed the domain's pins after numapin placed it, so numapin stopped managing it",
            domain_changed_by_operator.clone(),
        );
        r.register_with_unit(
            "domain_memory",
            "Resident memory of the domain",
            mib(),
            domain_memory.clone(),
        );

        let domain_nested_hypervisor = Family::default();
        let domain_vcpu_wait = Family::default();
        let domain_on_dedicated_cpus = Family::default();
        r.register(
            "domain_nested_hypervisor",
            "1 when the domain is taken for a hypervisor of its own (its definition requires vmx/svm, or KVM saw it entering nested guests)",
            domain_nested_hypervisor.clone(),
        );
        r.register_with_unit(
            "domain_vcpu_wait",
            "Mean share of time the domain's vCPUs waited in the host run queue over the last window (libvirt vcpu.N.delay); absent when not measured",
            Unit::Other("ratio".into()),
            domain_vcpu_wait.clone(),
        );
        r.register(
            "domain_on_dedicated_cpus",
            "1 when a domain numapin leaves alone may run on host CPUs dedicated to another guest",
            domain_on_dedicated_cpus.clone(),
        );

        let domain_memory_to_move = Family::default();
        let domain_confined = Family::default();
        let memory_moved = Counter::default();
        let memory_move_rate_limit = FloatGauge::default();
        r.register_with_unit(
            "domain_memory_to_move",
            "Memory of the domain still to move to where it is confined, in the background; absent when none is moving",
            mib(),
            domain_memory_to_move.clone(),
        );
        r.register_with_unit(
            "domain_confined",
            "Time since numapin confined the domain where it is; absent for domains numapin did not place",
            Unit::Seconds,
            domain_confined.clone(),
        );
        r.register_with_unit(
            "memory_moved",
            "Guest memory the background mover moved between nodes since the daemon started (rate() gives MiB/s)",
            mib(),
            memory_moved.clone(),
        );
        r.register_with_unit(
            "memory_move_rate_limit",
            "Host-wide rate the background mover may move memory at (apply.migrate_rate_mib_s)",
            Unit::Other("mib_per_second".into()),
            memory_move_rate_limit.clone(),
        );

        let node_free_memory = Family::default();
        let node_vcpu_demand = Family::default();
        let node_cpus = Family::default();
        let node_dedicated_cpus = Family::default();
        let node_vcpu_wait = Family::default();
        r.register_with_unit(
            "node_free_memory",
            "Free memory of the host NUMA node; absent when not measured",
            mib(),
            node_free_memory.clone(),
        );
        r.register(
            "node_vcpu_demand",
            "Busy vCPUs expected on the node's CPUs (measured vCPU loads, each shared over the nodes its affinity allows)",
            node_vcpu_demand.clone(),
        );
        r.register("node_cpus", "Host CPUs of the NUMA node", node_cpus.clone());
        r.register(
            "node_dedicated_cpus",
            "Host CPUs of the node held by dedicated vCPUs",
            node_dedicated_cpus.clone(),
        );
        r.register(
            "node_vcpu_wait",
            "vCPUs waiting in the run queue on the node's CPUs, in CPUs (sum of wait shares); absent when not measured",
            node_vcpu_wait.clone(),
        );

        // Both results show from the start, so a rate over them is defined
        // before the first error.
        for label in [OK, ERROR] {
            let _ = cycles.get_or_create(&label);
            let _ = config_reloads.get_or_create(&label);
        }
        // The daemon only starts with a config that loaded.
        config_last_reload_successful.set(1);

        Metrics {
            registry: r,
            cycles,
            cycle_duration,
            last_cycle,
            last_successful_cycle,
            actions_applied,
            transactions_failed,
            rollbacks,
            domains_skipped,
            config_reloads,
            config_last_reload_successful,
            domain_managed,
            domain_locality,
            domain_nodes_spanned,
            domain_changed_by_operator,
            domain_memory,
            domain_nested_hypervisor,
            domain_vcpu_wait,
            domain_on_dedicated_cpus,
            domain_memory_to_move,
            domain_confined,
            memory_moved,
            memory_move_rate_limit,
            node_dedicated_cpus,
            node_vcpu_wait,
            node_free_memory,
            node_vcpu_demand,
            node_cpus,
            series: RwLock::new(()),
        }
    }

    /// One finished cycle: its wall time and whether it completed without error.
    pub fn cycle_done(&self, duration: Duration, ok: bool) {
        let now = unix_now();
        self.cycle_duration.observe(duration.as_secs_f64());
        self.cycles
            .get_or_create(if ok { &OK } else { &ERROR })
            .inc();
        self.last_cycle.set(now);
        if ok {
            self.last_successful_cycle.set(now);
        }
    }

    pub fn actions_applied(&self, n: u64) {
        self.actions_applied.inc_by(n);
    }

    pub fn transactions_failed(&self, n: u64) {
        self.transactions_failed.inc_by(n);
    }

    pub fn rollbacks(&self, n: u64) {
        self.rollbacks.inc_by(n);
    }

    /// Domains left out of a cycle: vanished or busy.
    pub fn domains_skipped(&self, n: u64) {
        self.domains_skipped.inc_by(n);
    }

    /// Replaces every per-domain series: domains that are gone disappear
    /// from the output. A locality that is not a finite number counts as not
    /// measured.
    pub fn set_domains(&self, domains: &[DomainGauge]) {
        let _replacing = self.series.write().unwrap_or_else(PoisonError::into_inner);
        self.domain_managed.clear();
        self.domain_locality.clear();
        self.domain_nodes_spanned.clear();
        self.domain_changed_by_operator.clear();
        self.domain_memory.clear();
        self.domain_nested_hypervisor.clear();
        self.domain_vcpu_wait.clear();
        self.domain_on_dedicated_cpus.clear();
        self.domain_memory_to_move.clear();
        self.domain_confined.clear();
        for d in domains {
            let label = DomainLabel {
                domain: d.name.clone(),
            };
            self.domain_managed
                .get_or_create(&label)
                .set(u64::from(d.managed));
            if let Some(locality) = d.locality.filter(|l| l.is_finite()) {
                self.domain_locality.get_or_create(&label).set(locality);
            }
            self.domain_nodes_spanned
                .get_or_create(&label)
                .set(d.nodes_spanned as u64);
            self.domain_changed_by_operator
                .get_or_create(&label)
                .set(u64::from(d.changed_by_operator));
            self.domain_memory.get_or_create(&label).set(d.memory_mib);
            self.domain_nested_hypervisor
                .get_or_create(&label)
                .set(u64::from(d.nested_hypervisor));
            if let Some(wait) = d.vcpu_wait.filter(|w| w.is_finite()) {
                self.domain_vcpu_wait.get_or_create(&label).set(wait);
            }
            self.domain_on_dedicated_cpus
                .get_or_create(&label)
                .set(u64::from(d.on_dedicated_cpus));
            if let Some(mib) = d.memory_to_move_mib {
                self.domain_memory_to_move.get_or_create(&label).set(mib);
            }
            if let Some(secs) = d.confined_secs.filter(|s| s.is_finite()) {
                self.domain_confined.get_or_create(&label).set(secs);
            }
        }
    }

    /// The mover's total so far (MiB since the daemon started) and its
    /// configured rate.
    pub fn set_memory_moved(&self, total_mib: u64, rate_mib_s: f64) {
        let before = self.memory_moved.get();
        self.memory_moved.inc_by(total_mib.saturating_sub(before));
        self.memory_move_rate_limit.set(rate_mib_s);
    }

    /// Replaces every per-node series, as [`Metrics::set_domains`] does.
    pub fn set_nodes(&self, nodes: &[NodeGauge]) {
        let _replacing = self.series.write().unwrap_or_else(PoisonError::into_inner);
        self.node_free_memory.clear();
        self.node_vcpu_demand.clear();
        self.node_cpus.clear();
        self.node_dedicated_cpus.clear();
        self.node_vcpu_wait.clear();
        for n in nodes {
            let label = NodeLabel { node: n.id };
            if let Some(free) = n.free_mib {
                self.node_free_memory.get_or_create(&label).set(free);
            }
            if n.vcpu_demand.is_finite() {
                self.node_vcpu_demand
                    .get_or_create(&label)
                    .set(n.vcpu_demand);
            }
            self.node_cpus.get_or_create(&label).set(n.cpus as u64);
            self.node_dedicated_cpus
                .get_or_create(&label)
                .set(n.dedicated_cpus as u64);
            if let Some(wait) = n.vcpu_wait.filter(|w| w.is_finite()) {
                self.node_vcpu_wait.get_or_create(&label).set(wait);
            }
        }
    }

    /// Counts a config reload and records its result.
    pub fn set_config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(if ok { &OK } else { &ERROR })
            .inc();
        self.config_last_reload_successful.set(u64::from(ok));
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let _reading = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The metrics in the OpenMetrics text format, ending in `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        let _reading = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

mod serve;

pub use serve::{MetricsServer, serve, write_textfile};

#[cfg(test)]
mod tests;
