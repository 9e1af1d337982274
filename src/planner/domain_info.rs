//! Everything the planner derives from one domain before placing anything:
//! whether it is managed and how, what it needs, and where it is today.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::guest::{Domain, DomainPolicy, MemoryMode};
use crate::idset::{CpuSet, NodeSet};
use crate::observations::Observations;
use crate::topology::HostTopology;

use super::DomainInput;
use super::hypervisor::{Hypervisor, arch_family};
use super::ledger::Demand;
use super::score::Distances;

/// How a managed domain's vCPUs use host CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuPolicy {
    /// 1:1 vCPU -> host CPU, never shared with another dedicated vCPU.
    Dedicated,
    /// vCPUs float over the shared CPUs of their node(s).
    Shared,
}

/// How the domain's memory can follow a new placement while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryHandling {
    /// No binding: numapin moves pages with migrate_pages(2) after pinning.
    Migrate,
    /// `mode='restrictive'`: the nodeset is changed live through libvirt.
    Restrictive,
    /// strict / preferred / interleave: libvirt cannot change the nodeset of
    /// a running domain, so memory stays and vCPUs follow it.
    Fixed(MemoryMode),
    /// No binding, and moving memory is switched off (`apply.migrate_memory
    /// = false`): what is there stays, new allocations follow the vCPUs.
    FirstTouch,
}

impl CpuPolicy {
    /// The name used in config, metadata and output.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuPolicy::Dedicated => "dedicated",
            CpuPolicy::Shared => "shared",
        }
    }
}

/// A unit that must land whole on one node (a guest NUMA cell), or the
/// whole domain when it has no cells (which may then be split).
#[derive(Debug, Clone)]
pub struct Piece {
    pub cell: Option<u32>,
    /// Guest vCPU ids (online ones only).
    pub vcpus: Vec<u32>,
    pub mem_mib: u64,
    /// Hugepage size backing this piece, in KiB.
    pub hugepage_kib: Option<u64>,
    /// Expected CPU demand, in CPUs.
    pub load: f64,
    /// Host nodes a `<memnode>` (strict, preferred or interleave) binds this
    /// cell's memory to: QEMU bound it at start and libvirt cannot change it
    /// on a running domain, so the cell's vCPUs go there.
    pub bound: Option<NodeSet>,
}

impl Piece {
    /// Whether the piece may go to `node` as its binding allows.
    pub fn allows(&self, node: u32) -> bool {
        self.bound.as_ref().is_none_or(|b| b.contains(node))
    }

    pub fn demand(&self) -> Demand {
        Demand {
            vcpus: self.vcpus.len(),
            mem_mib: self.mem_mib,
            hugepage_kib: self.hugepage_kib,
            load: self.load,
        }
    }
}

/// The domain as it is now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// Per online vCPU: the host CPUs it may run on now.
    pub vcpu_affinity: BTreeMap<u32, CpuSet>,
    pub emulator_affinity: CpuSet,
    pub iothread_affinity: BTreeMap<u32, CpuSet>,
    /// Host nodes its vCPUs may run on.
    pub nodes: NodeSet,
    /// Resident MiB per host node (observed, else estimated).
    pub memory_mib: BTreeMap<u32, u64>,
    /// The sum of `memory_mib`.
    pub resident_mib: u64,
    /// Share of each host node in where the vCPUs may run.
    pub vcpu_weights: BTreeMap<u32, f64>,
    /// Distance-weighted locality of the memory to the vCPUs (0-1).
    pub locality: f64,
    /// Whether `memory_mib` was measured.
    pub memory_observed: bool,
    /// Guest cell -> host node -> resident MiB of the cell's RAM block,
    /// when measured for every cell; empty otherwise. Part of `memory_mib`.
    pub cell_memory_mib: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Whether numapin-style pins are in place (every vCPU pinned within
    /// one node), i.e. whether a change would be a move, not a first placement.
    pub pinned: bool,
    /// Whether every vCPU has one and the same affinity spanning several
    /// nodes but not every online CPU: how numapin pins a guest split
    /// over nodes. A change of such a placement is a move too.
    pub pinned_over_nodes: bool,
}

/// Why the planner will not touch a domain.
#[derive(Debug, Clone)]
pub enum LeftAlone {
    ExcludedByMetadata,
    ExcludedByConfig(String),
    /// Pinned by hand: in its persistent config, or (for a domain without
    /// one) live pins that are not the ones numapin left.
    ManualPinning {
        persistent: bool,
    },
    NoVcpus,
    /// Not a KVM/QEMU domain.
    NotKvm(String),
    /// A guest of another architecture, emulated.
    ForeignArch {
        guest: String,
        host: String,
    },
    /// Not running, or a libvirt job is in progress; why.
    Held(String),
    /// Someone changed its pins or nodeset after numapin placed it.
    ChangedByOperator {
        domain: String,
        what: String,
    },
}

impl std::fmt::Display for LeftAlone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftAlone::ExcludedByMetadata => {
                f.write_str("excluded by its numapin metadata (policy exclude)")
            }
            LeftAlone::ExcludedByConfig(rule) => {
                write!(f, "excluded by config rule [[domain]] name = {rule:?}")
            }
            LeftAlone::ManualPinning { persistent: true } => f.write_str(
                "its persistent config pins it by hand (set planner.manage_pinned = true to manage it)",
            ),
            LeftAlone::ManualPinning { persistent: false } => f.write_str(
                "its live pins were set by hand, not by numapin (set planner.manage_pinned = true to manage it)",
            ),
            LeftAlone::NoVcpus => f.write_str("it has no online vCPU"),
            LeftAlone::NotKvm(kind) => write!(
                f,
                "domain type {kind:?} is not KVM or QEMU: numapin places only QEMU guests"
            ),
            LeftAlone::ForeignArch { guest, host } => write!(
                f,
                "a {guest} guest on a {host} host is emulated instruction by instruction; NUMA placement gains it little"
            ),
            LeftAlone::Held(why) => f.write_str(why),
            LeftAlone::ChangedByOperator { domain, what } => write!(
                f,
                "changed by hand after numapin placed it ({what}); left alone until `numapin manage {domain}`"
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DomainInfo<'a> {
    pub domain: &'a Domain,
    /// `Err` when the domain is left alone.
    pub managed: Result<CpuPolicy, LeftAlone>,
    pub hypervisor: Hypervisor,
    pub memory: MemoryHandling,
    pub pieces: Vec<Piece>,
    pub mem_mib: u64,
    pub hugepage_kib: Option<u64>,
    pub load: f64,
    pub online_vcpus: Vec<u32>,
    pub current: Current,
    /// Share of memory on its target that counts as in place
    /// (`apply.memory_on_target_share`): a guest cell with at least this
    /// much on its node is not moved again.
    pub settled_share: f64,
    /// Nodes the memory is bound to and cannot leave while running.
    fixed: Option<NodeSet>,
    /// numapin recorded leaving its current pins (and nobody changed them
    /// since): its placement is numapin's, its memory may still be on the
    /// way.
    pub placed_by_numapin: bool,
    /// Measured, and its vCPUs busy less than a tenth of the time on
    /// average: a guest whose memory may live on a memory-only node under
    /// `planner.memory_tier = "prefer-for-idle"`.
    pub idle: bool,
    /// Why a guest whose policy is dedicated is placed with shared CPUs:
    /// no node had room for its vCPUs on CPUs of their own.
    pub shared_instead: Option<String>,
}

impl DomainInfo<'_> {
    pub fn name(&self) -> &str {
        &self.domain.name
    }

    pub fn vcpu_count(&self) -> usize {
        self.online_vcpus.len()
    }

    pub fn is_managed(&self) -> bool {
        self.managed.is_ok()
    }

    pub fn is_nested_hypervisor(&self) -> bool {
        self.hypervisor.is_hypervisor()
    }

    pub fn is_dedicated(&self) -> bool {
        matches!(self.managed, Ok(CpuPolicy::Dedicated))
    }

    /// Nodes the memory is bound to and cannot leave while running.
    pub fn fixed_nodes(&self) -> Option<&NodeSet> {
        self.fixed.as_ref()
    }

    /// Share (0-1) of the domain's memory already on `nodes`.
    pub fn memory_share_on(&self, nodes: &NodeSet) -> f64 {
        let total = self.current.resident_mib;
        if total == 0 {
            return 0.0;
        }
        let on: u64 = self
            .current
            .memory_mib
            .iter()
            .filter(|(n, _)| nodes.contains(**n))
            .map(|(_, m)| m)
            .sum();
        on as f64 / total as f64
    }

    /// Share (0-1) of the domain's memory already on one node.
    pub fn memory_share_on_node(&self, node: u32) -> f64 {
        let total = self.current.resident_mib;
        if total == 0 {
            return 0.0;
        }
        let on = self.current.memory_mib.get(&node).copied().unwrap_or(0);
        on as f64 / total as f64
    }

    /// Share (0-1) of a guest cell's RAM on `node`, when measured per cell.
    pub fn cell_share_on_node(&self, cell: u32, node: u32) -> Option<f64> {
        let mem = self.current.cell_memory_mib.get(&cell)?;
        let total: u64 = mem.values().sum();
        if total == 0 {
            return None;
        }
        Some(mem.get(&node).copied().unwrap_or(0) as f64 / total as f64)
    }

    /// MiB of the domain's memory outside `nodes`.
    pub fn mib_outside(&self, nodes: &NodeSet) -> u64 {
        self.current
            .memory_mib
            .iter()
            .filter(|(n, _)| !nodes.contains(**n))
            .map(|(_, m)| m)
            .sum()
    }

    /// MiB that would move if the memory went to `nodes`.
    pub fn migrate_mib_to(&self, nodes: &NodeSet) -> u64 {
        if matches!(
            self.memory,
            MemoryHandling::Fixed(_) | MemoryHandling::FirstTouch
        ) {
            return 0;
        }
        self.mib_outside(nodes)
    }
}

pub struct Analyzer<'a> {
    pub topo: &'a HostTopology,
    pub obs: &'a Observations,
    pub config: &'a Config,
    /// Size used for `<hugepages/>` without an explicit page size.
    pub default_hugepage_kib: u64,
    /// The host's online CPUs: every unpinned vCPU's affinity, built once.
    pub(super) online_cpus: CpuSet,
    pub distances: Distances,
}

impl<'a> Analyzer<'a> {
    pub fn new(topo: &'a HostTopology, obs: &'a Observations, config: &'a Config) -> Self {
        let default_hugepage_kib = topo
            .nodes
            .iter()
            .flat_map(|n| n.hugepages.first())
            .map(|p| p.size_kib)
            .min()
            .unwrap_or(2048);
        Self {
            topo,
            obs,
            config,
            default_hugepage_kib,
            online_cpus: topo.online_cpus(),
            distances: Distances::new(topo),
        }
    }

    pub fn analyze(&self, input: &'a DomainInput) -> DomainInfo<'a> {
        let d = &input.live;
        let hypervisor = self.hypervisor(input);
        let online_vcpus: Vec<u32> = d.online_vcpus.iter().collect();
        let loads = self.vcpu_loads(d, &online_vcpus);
        let hugepage_kib = d.hugepage_size_for_cell(None, self.default_hugepage_kib);
        let mem_mib = d.memory_kib.div_ceil(1024);
        let pieces = self.pieces(d, &online_vcpus, &loads, mem_mib);
        let memory = match memory_handling(d) {
            MemoryHandling::Migrate if !self.config.apply.migrate_memory => {
                MemoryHandling::FirstTouch
            }
            m => m,
        };
        let fixed = match memory {
            MemoryHandling::Fixed(_) => d
                .numatune
                .as_ref()
                .and_then(|n| n.nodeset.clone())
                .filter(|s| !s.is_empty()),
            _ => None,
        };
        let mut info = DomainInfo {
            domain: d,
            managed: self.management(input, hypervisor.is_hypervisor(), &online_vcpus),
            hypervisor,
            memory,
            pieces,
            mem_mib,
            hugepage_kib,
            load: loads.iter().sum(),
            online_vcpus,
            current: Current::default(),
            settled_share: self.config.apply.memory_on_target_share,
            fixed,
            placed_by_numapin: input.recorded.is_some(),
            idle: self.obs.domains.get(&d.name).is_some_and(|o| {
                !o.vcpu_load.is_empty()
                    && o.vcpu_load.iter().sum::<f64>() < IDLE_LOAD * o.vcpu_load.len() as f64
            }),
            shared_instead: None,
        };
        info.current = self.current(&info);
        info
    }

    fn management(
        &self,
        input: &DomainInput,
        nested: bool,
        online: &[u32],
    ) -> Result<CpuPolicy, LeftAlone> {
        let d = &input.live;
        let (policy, from_rule) = match (d.policy, self.config.rule_for(&d.name)) {
            (Some(p), _) => (p, None),
            (None, Some((_, rule))) => (rule.policy, Some(rule.name.clone())),
            (None, None) => (DomainPolicy::Auto, None),
        };
        match (policy, from_rule) {
            (DomainPolicy::Exclude, Some(rule)) => return Err(LeftAlone::ExcludedByConfig(rule)),
            (DomainPolicy::Exclude, None) => return Err(LeftAlone::ExcludedByMetadata),
            _ => {}
        }
        if !matches!(d.virt_type.as_str(), "kvm" | "qemu") {
            return Err(LeftAlone::NotKvm(d.virt_type.clone()));
        }
        if let (Some(guest), Some(host)) = (&d.arch, &self.topo.arch)
            && arch_family(guest) != arch_family(host)
        {
            return Err(LeftAlone::ForeignArch {
                guest: guest.clone(),
                host: host.clone(),
            });
        }
        if let Some(hold) = &input.hold {
            return Err(LeftAlone::Held(hold.clone()));
        }
        if let Some(change) = input.recorded.as_ref().and_then(|r| r.drift(&input.live)) {
            return Err(LeftAlone::ChangedByOperator {
                domain: d.name.clone(),
                what: change,
            });
        }
        // Without the persistent config, live pins may be numapin's own or
        // the operator's: they are numapin's only when they are exactly
        // what numapin recorded leaving; otherwise the operator's, the
        // safe side.
        let persistent = input.persistent.as_ref().unwrap_or(&input.live);
        let numapins = input
            .recorded
            .as_ref()
            .is_some_and(|r| r.owns(&persistent.cputune, &input.live))
            && persistent.vcpu_cpuset.is_none();
        if persistent.has_manual_pinning() && !numapins && !self.config.planner.manage_pinned {
            return Err(LeftAlone::ManualPinning {
                persistent: input.persistent.is_some(),
            });
        }
        if online.is_empty() {
            return Err(LeftAlone::NoVcpus);
        }
        Ok(match policy {
            DomainPolicy::Dedicated => CpuPolicy::Dedicated,
            DomainPolicy::Shared => CpuPolicy::Shared,
            _ if nested && self.config.planner.dedicate_nested => CpuPolicy::Dedicated,
            _ => CpuPolicy::Shared,
        })
    }

    /// Demand per online vCPU, in the order of `online`: the share of
    /// time it ran plus the share it waited in the run queue (what it
    /// would have run on an idle host), at most one CPU.
    fn vcpu_loads(&self, d: &Domain, online: &[u32]) -> Vec<f64> {
        let observed = self.obs.domains.get(&d.name);
        online
            .iter()
            .map(|&v| {
                let ran = observed.and_then(|o| o.vcpu_load.get(v as usize).copied());
                let waited = observed
                    .and_then(|o| o.vcpu_wait.get(v as usize).copied())
                    .unwrap_or(0.0);
                match ran {
                    Some(ran) => (ran + waited).min(1.0),
                    None => self.config.planner.default_vcpu_load,
                }
            })
            .collect()
    }

    fn pieces(&self, d: &Domain, online: &[u32], loads: &[f64], mem_mib: u64) -> Vec<Piece> {
        if d.cpu.cells.is_empty() {
            return vec![Piece {
                cell: None,
                vcpus: online.to_vec(),
                mem_mib,
                hugepage_kib: d.hugepage_size_for_cell(None, self.default_hugepage_kib),
                load: loads.iter().sum(),
                bound: None,
            }];
        }
        d.cpu
            .cells
            .iter()
            .map(|cell| {
                let (vcpus, cell_loads): (Vec<u32>, Vec<f64>) = cell
                    .cpus
                    .iter()
                    .filter_map(|v| online.binary_search(&v).ok().map(|i| (v, loads[i])))
                    .unzip();
                Piece {
                    cell: Some(cell.id),
                    load: cell_loads.iter().sum(),
                    vcpus,
                    mem_mib: cell.memory_kib.div_ceil(1024),
                    hugepage_kib: d
                        .hugepage_size_for_cell(Some(cell.id), self.default_hugepage_kib),
                    // A restrictive memnode is enforced only through the
                    // domain's cgroup, whose nodeset changes live: not a
                    // binding. strict, preferred and interleave are, in QEMU.
                    bound: d.numatune.as_ref().and_then(|n| {
                        n.memnodes
                            .iter()
                            .find(|m| m.cellid == cell.id && m.mode != MemoryMode::Restrictive)
                            .map(|m| m.nodeset.clone())
                            .filter(|s| !s.is_empty())
                    }),
                }
            })
            .collect()
    }
}

/// Mean vCPU load below which a measured guest counts as idle.
const IDLE_LOAD: f64 = 0.1;

/// Splits `total` over keys in proportion to weights, exactly (the remainder
/// goes to the first keys), so estimates always add up.
pub fn distribute(total: u64, weights: &[(u32, u64)]) -> BTreeMap<u32, u64> {
    if weights.iter().all(|(_, w)| *w == 0) {
        return BTreeMap::new();
    }
    let mut shares = Vec::new();
    let only: Vec<u64> = weights.iter().map(|(_, w)| *w).collect();
    distribute_shares(total, &only, &mut shares);
    weights.iter().map(|(k, _)| *k).zip(shares).collect()
}

/// [`distribute`] by position: `out[i]` is the share of `weights[i]`; all
/// zero when the weights add up to zero.
pub fn distribute_shares(total: u64, weights: &[u64], out: &mut Vec<u64>) {
    out.clear();
    let sum: u128 = weights.iter().map(|w| *w as u128).sum();
    if sum == 0 {
        out.resize(weights.len(), 0);
        return;
    }
    // The same shares in 64-bit arithmetic where no product overflows (the
    // planner's inner loops split vCPUs and MiB: they always fit).
    let narrow = u64::try_from(sum).ok().filter(|_| {
        let largest = weights.iter().copied().max().unwrap_or(0);
        total.checked_mul(largest).is_some()
    });
    let mut given = 0;
    for w in weights {
        let share = match narrow {
            Some(sum) => total * *w / sum,
            None => (total as u128 * *w as u128 / sum) as u64,
        };
        out.push(share);
        given += share;
    }
    for share in out.iter_mut().take((total - given) as usize) {
        *share += 1;
    }
}

fn memory_handling(d: &Domain) -> MemoryHandling {
    match &d.numatune {
        None => MemoryHandling::Migrate,
        Some(n) if n.nodeset.is_none() && !n.placement_auto && n.memnodes.is_empty() => {
            MemoryHandling::Migrate
        }
        Some(n) => match n.mode {
            MemoryMode::Restrictive => MemoryHandling::Restrictive,
            mode => MemoryHandling::Fixed(mode),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribute_adds_up() {
        let d = distribute(10, &[(0, 1), (1, 1), (2, 1)]);
        assert_eq!(d.values().sum::<u64>(), 10);
        assert_eq!(d[&0], 4);
        assert!(distribute(5, &[]).is_empty());
    }
}
