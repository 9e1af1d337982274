//! A live host's situation, read for one planning round: topology from
//! libvirt's capabilities, every running domain's XML, and observations
//! from the kernel's files. vCPU load and steal are rates, so they need two
//! readings: the daemon keeps the previous round's, one-shot commands take
//! two readings a short interval apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::PlannerConfig;
use crate::guest::domain_xml;
use crate::host_error::HostError;
use crate::libvirt::{Activity, DomainRef, Libvirt};
use crate::nested::{NestedTracker, VcpuStats, window};
use crate::observations::{DomainObservation, NodeObservation, Observations};
use crate::observe::node_stats::{self, NodeNumaStat};
use crate::observe::pid_file;
use crate::observe::proc_stat::{self, CpuTicks};
use crate::observe::threads::{self, Task};
use crate::planner::DomainInput;
use crate::topology::{HostTopology, capabilities, sysfs};

use super::walks::{MemoryWalks, WALK_REFRESH};

#[derive(Debug, Clone)]
pub struct LiveDomain {
    pub r: DomainRef,
    pub live_xml: String,
    pub persistent_xml: Option<String>,
    pub input: DomainInput,
    pub pid: Option<u32>,
    /// Its state and any libvirt job in progress.
    pub activity: Activity,
}

/// A domain that is running but could not be read; it is left alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct LiveState {
    pub capabilities_xml: String,
    pub topology: HostTopology,
    pub domains: Vec<LiveDomain>,
    pub unreadable: Vec<Unreadable>,
    pub observations: Observations,
    pub node_stats: BTreeMap<u32, NodeNumaStat>,
}

impl LiveState {
    pub fn inputs(&self) -> Vec<DomainInput> {
        self.domains.iter().map(|d| d.input.clone()).collect()
    }

    pub fn refs(&self) -> Vec<DomainRef> {
        self.domains.iter().map(|d| d.r.clone()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Libvirt(#[from] HostError),
    #[error("libvirt's capabilities")]
    Capabilities(#[source] capabilities::CapabilitiesError),
    #[error("reading node memory under {root}")]
    NodeMemory {
        root: PathBuf,
        #[source]
        source: sysfs::SysfsError,
    },
}

/// Highest vCPU id taken from libvirt's stats (QEMU's own limit is lower).
const MAX_VCPU_ID: u32 = 65_535;

/// One reading of the rates.
struct Reading {
    at: Instant,
    cpus: BTreeMap<u32, CpuTicks>,
    /// By domain UUID and run id, so a restarted domain is not compared
    /// with its previous run.
    tasks: BTreeMap<(String, u32), Vec<Task>>,
    /// libvirt's vCPU counters (run-queue wait, nested entries), keyed
    /// the same way.
    vcpu_stats: BTreeMap<(String, u32), VcpuStats>,
    /// Every domain run read, whether or not its threads and counters
    /// could be: a run is measured over a window of its own once only.
    runs: std::collections::BTreeSet<(String, u32)>,
}

fn run_key(d: &LiveDomain) -> (String, u32) {
    (d.r.uuid.clone(), d.r.id)
}

/// The reading a run's rates are measured from: the window of its own
/// (see [`Sampler::read`]) when it had one, else the last reading.
fn earlier<'r>(
    last: Option<&'r Reading>,
    own_window: Option<&'r Reading>,
    key: &(String, u32),
) -> Option<&'r Reading> {
    own_window.filter(|r| r.runs.contains(key)).or(last)
}

/// Reads live states; keeps the last reading so the next one can compute
/// rates without waiting.
pub struct Sampler {
    libvirt: Libvirt,
    root: PathBuf,
    default_vcpu_load: f64,
    last: Option<Reading>,
    /// Domain runs (UUID, id) whose cells' RAM blocks were not found,
    /// already said once in the log.
    no_cell_blocks: std::collections::BTreeSet<(String, u32)>,
    /// Which guests run VMs of their own, judged over readings.
    nested: NestedTracker,
    /// The tracker's clock.
    started: Instant,
    /// Figures from page-table walks and when to walk again.
    walks: MemoryWalks,
}

impl Sampler {
    pub fn new(libvirt: Libvirt, root: PathBuf, default_vcpu_load: f64) -> Self {
        Self {
            libvirt,
            root,
            default_vcpu_load,
            last: None,
            no_cell_blocks: Default::default(),
            nested: NestedTracker::new(1, PlannerConfig::default().nested_quiet_secs),
            started: Instant::now(),
            walks: MemoryWalks::new(WALK_REFRESH),
        }
    }

    /// The domains (by UUID) whose memory a move is planned for or in
    /// flight: their page tables are walked at each reading, every other
    /// guest's only as [`super::walks`] says. Replaces the previous set;
    /// the daemon sets it each cycle.
    pub fn want_memory_walk(&mut self, uuids: std::collections::BTreeSet<String>) {
        self.walks.want(uuids);
    }

    /// How guests are judged to run VMs: after `confirm_windows` sampling
    /// windows in a row with nested entries (the daemon asks for 2; a
    /// one-shot command has one window), until `quiet_secs` without any.
    pub fn with_nested(mut self, confirm_windows: u32, quiet_secs: u64) -> Self {
        self.nested = NestedTracker::new(confirm_windows, quiet_secs);
        self
    }

    pub fn set_nested_quiet_secs(&mut self, quiet_secs: u64) {
        self.nested.set_quiet_secs(quiet_secs);
    }

    pub fn set_default_vcpu_load(&mut self, load: f64) {
        self.default_vcpu_load = load;
    }

    /// Reads the host. Loads are rates over the time since the last
    /// reading. A run with no reading yet (every guest of the first read,
    /// a guest started since the last) is read once more `new_window`
    /// before, so that its first placement goes by its measured load, not
    /// by the configured default: a 2-vCPU guest that keeps one vCPU busy
    /// fits where one of 2 busy vCPUs would not. A zero window leaves such
    /// loads to the default.
    pub fn read(&mut self, new_window: Duration) -> Result<LiveState, LiveError> {
        let capabilities_xml = self.libvirt.capabilities()?;
        let topology = capabilities::parse(&capabilities_xml).map_err(LiveError::Capabilities)?;
        let refs = self.libvirt.running_domains()?;
        let mut domains = Vec::new();
        let mut unreadable = Vec::new();
        for r in refs {
            match self.read_domain(&r) {
                Ok(Some(d)) => domains.push(d),
                Ok(None) => {} // stopped while being read
                Err(reason) => {
                    tracing::warn!(domain = %r.name, reason = %reason, "domain left alone: cannot read it");
                    unreadable.push(Unreadable {
                        name: r.name.clone(),
                        reason,
                    });
                }
            }
        }
        let last = self.last.take();
        let unread: Vec<&LiveDomain> = domains
            .iter()
            .filter(|d| last.as_ref().is_none_or(|l| !l.runs.contains(&run_key(d))))
            .collect();
        let own_window =
            (!new_window.is_zero() && (last.is_none() || !unread.is_empty())).then(|| {
                let r = self.reading(&unread);
                std::thread::sleep(new_window);
                r
            });
        let now = self.reading(&domains.iter().collect::<Vec<_>>());
        let observations = self.observations(&domains, last.as_ref(), own_window.as_ref(), &now);
        self.last = Some(now);
        let observations = observations?;
        let node_stats = node_stats::read(&self.root).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no per-node numastat counters");
            BTreeMap::new()
        });
        Ok(LiveState {
            capabilities_xml,
            topology,
            domains,
            unreadable,
            observations,
            node_stats,
        })
    }

    /// Ok(None): the domain stopped meanwhile. Err: it runs but cannot be
    /// understood (its XML does not parse).
    fn read_domain(&self, r: &DomainRef) -> Result<Option<LiveDomain>, String> {
        // The live XML is parsed on the connection's thread, where its disk
        // targets are needed for the block-job query of the same call.
        let reading = match self.libvirt.read_running(r, |xml| {
            let live = domain_xml::parse(xml).map_err(|e| format!("live XML: {e}"));
            let disks = live.as_ref().map(|l| l.disks.clone()).unwrap_or_default();
            (live, disks)
        }) {
            Ok(x) => x,
            Err(e) if e.is_gone() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let live = reading.parsed?;
        let (live_xml, persistent_xml, activity) =
            (reading.live_xml, reading.persistent_xml, reading.activity);
        let persistent = match &persistent_xml {
            Some(x) => Some(domain_xml::parse(x).map_err(|e| format!("persistent XML: {e}"))?),
            None => None,
        };
        let pid = match pid_file::read(&self.root, &r.name) {
            Ok(pid) => Some(pid),
            Err(e) => {
                tracing::debug!(domain = %r.name, error = %e, "no QEMU pid");
                None
            }
        };
        Ok(Some(LiveDomain {
            r: r.clone(),
            live_xml,
            persistent_xml,
            input: DomainInput::new(live, persistent),
            pid,
            activity,
        }))
    }

    fn reading(&self, domains: &[&LiveDomain]) -> Reading {
        let cpus = proc_stat::read(&self.root).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no per-CPU times");
            BTreeMap::new()
        });
        let tasks = domains
            .iter()
            .filter_map(|d| {
                let tasks = threads::read(&self.root, d.pid?).ok()?;
                Some((run_key(d), tasks))
            })
            .collect();
        let mut stats = self.libvirt.vcpu_stats().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no vCPU stats from libvirt");
            BTreeMap::new()
        });
        let vcpu_stats = domains
            .iter()
            .filter_map(|d| {
                let s = stats.remove(&d.r.uuid)?;
                Some((run_key(d), s))
            })
            .collect();
        Reading {
            at: Instant::now(),
            cpus,
            tasks,
            vcpu_stats,
            runs: domains.iter().map(|d| run_key(d)).collect(),
        }
    }

    /// What `now` shows against `last` (or, for a run not in it, against
    /// its `own_window`).
    fn observations(
        &mut self,
        domains: &[LiveDomain],
        last: Option<&Reading>,
        own_window: Option<&Reading>,
        now: &Reading,
    ) -> Result<Observations, LiveError> {
        let mut obs = Observations::default();
        let nodes =
            sysfs::read_node_memory(&self.root).map_err(|source| LiveError::NodeMemory {
                root: self.root.clone(),
                source,
            })?;
        for n in nodes {
            obs.nodes.insert(
                n.node,
                NodeObservation {
                    free_mib: Some(n.free_mib),
                    free_hugepages: n.hugepages.iter().map(|h| (h.size_kib, h.free)).collect(),
                },
            );
        }
        // Domains that stopped need no note any more.
        self.no_cell_blocks
            .retain(|(uuid, id)| domains.iter().any(|d| d.r.uuid == *uuid && d.r.id == *id));
        if let Some(before) = last.or(own_window) {
            obs.cpu_steal = proc_stat::steal_fractions(&before.cpus, &now.cpus);
        }
        for d in domains {
            let Some(pid) = d.pid else { continue };
            let mut o = DomainObservation::default();
            let key = run_key(d);
            let cells = &d.input.live.cpu.cells;
            match self.walks.read(&self.root, &key, pid, cells, now.at) {
                Ok(m) => {
                    o.memory_mib = m.memory_mib;
                    o.cell_memory_mib = m.cell_memory_mib;
                    if m.no_cell_blocks && self.no_cell_blocks.insert(key.clone()) {
                        tracing::info!(domain = %d.r.name, cells = cells.len(), "guest cells' RAM blocks not found; its memory moves as a whole");
                    }
                }
                Err(e) => {
                    tracing::debug!(domain = %d.r.name, error = %e, "memory per node unknown")
                }
            }
            let before = earlier(last, own_window, &key);
            if let (Some(before), Some(after)) = (
                before.and_then(|l| l.tasks.get(&key).map(|t| (t, l.at))),
                now.tasks.get(&key),
            ) {
                let (tasks_before, at) = before;
                o.vcpu_load = threads::vcpu_loads(tasks_before, after, now.at - at)
                    .into_iter()
                    .map(|l| l.unwrap_or(self.default_vcpu_load))
                    .collect();
            }
            self.observe_vcpu_stats(d, &key, before, now, &mut o);
            obs.domains.insert(d.r.name.clone(), o);
        }
        let running = domains.iter().map(|d| d.r.uuid.clone()).collect();
        self.nested.retain(&running);
        let runs = domains.iter().map(run_key).collect();
        self.walks.retain(&runs);
        Ok(obs)
    }

    /// Run-queue wait per vCPU and the nested-guest judgement, from
    /// libvirt's vCPU counters over the window since the last reading.
    fn observe_vcpu_stats(
        &mut self,
        d: &LiveDomain,
        key: &(String, u32),
        before: Option<&Reading>,
        now: &Reading,
        o: &mut DomainObservation,
    ) {
        let Some((before, at)) = before.and_then(|l| l.vcpu_stats.get(key).map(|s| (s, l.at)))
        else {
            return;
        };
        let Some(after) = now.vcpu_stats.get(key) else {
            return;
        };
        let w = window(before, after, (now.at - at).as_secs_f64());
        // By vCPU index, as the loads are.
        if let Some(&last) = w.wait.keys().next_back().filter(|l| **l <= MAX_VCPU_ID) {
            o.vcpu_wait = (0..=last)
                .map(|v| w.wait.get(&v).copied().unwrap_or(0.0))
                .collect();
        }
        let Some(entries) = w.nested_entries else {
            return;
        };
        let clock = (now.at - self.started).as_secs_f64();
        let (activity, change) = self.nested.observe(&d.r.uuid, entries, clock);
        if let Some(change) = change {
            let (from, to) = if change.running {
                ("ordinary guest", "hypervisor")
            } else {
                ("hypervisor", "ordinary guest")
            };
            tracing::info!(domain = %d.r.name, action = "judge", from, to, reason = %change.reason, "nested guests");
        }
        o.nested = Some(activity);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
