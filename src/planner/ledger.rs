//! Per-node capacity as the plan takes shape: memory, hugepages, shared CPU
//! demand and CPUs promised to dedicated vCPUs. Node-indexed vectors (not
//! maps) because the planner probes every node for every domain.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::idset::CpuSet;
use crate::observations::Observations;
use crate::topology::HostTopology;

use super::domain_info::{CpuPolicy, DomainInfo};

/// Work a second hardware thread adds to a busy core, as a share of the
/// core: SMT gives a core 1.15-1.3 times the throughput of one thread on
/// server workloads (Intel's "up to 30%"). A busy vCPU alone on a core
/// runs at full speed; two on sibling threads get 1.3 cores' work between
/// them, 0.65 each, so the second costs the pair 0.7 of a core. It is the
/// planner's policy for what a node past its cores loses (see
/// [`Ledger::cpu_pressure`]), written down once here; the simulator
/// models the world with a figure of its own
/// (`simulate::speed::SMT_SIBLING_GAIN`), so that changing the model does
/// not change the policy it judges.
pub const SIBLING_THREAD_GAIN: f64 = 0.3;

/// One piece of a domain placed on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub node: u32,
    pub cell: Option<u32>,
    pub vcpus: Vec<u32>,
    /// MiB on `node` itself.
    pub mem_mib: u64,
    pub hugepage_kib: Option<u64>,
    pub load: f64,
    /// Memory that does not fit `node`, on a memory-only node: (node, MiB).
    pub spill: Option<(u32, u64)>,
}

/// What a part asks of a node: all the ledger needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub vcpus: usize,
    pub mem_mib: u64,
    pub hugepage_kib: Option<u64>,
    pub load: f64,
}

impl Part {
    pub fn demand(&self) -> Demand {
        Demand {
            vcpus: self.vcpus.len(),
            mem_mib: self.mem_mib,
            hugepage_kib: self.hugepage_kib,
            load: self.load,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ledger {
    /// Node ids, ascending; the index into every vector below.
    pub ids: Vec<u32>,
    /// CPUs guests may use (online, not reserved).
    pub usable: Vec<CpuSet>,
    /// How many: asked in the planner's inner loops.
    usable_len: Vec<usize>,
    /// Usable CPUs weighted by the share of time not stolen.
    pub cpu_capacity: Vec<f64>,
    /// The part of `cpu_capacity` on the first usable thread of each core:
    /// the demand the node serves before vCPUs share cores.
    pub core_capacity: Vec<f64>,
    /// MiB of normal memory guests may still take.
    pub mem_free: Vec<i64>,
    /// MiB guests may use on the node in all (for utilisation).
    pub mem_capacity: Vec<u64>,
    /// Page size (KiB) -> pages guests may still take.
    pub pages_free: Vec<BTreeMap<u64, i64>>,
    /// Demand (in CPUs) of shared vCPUs, including unmanaged domains.
    pub shared_load: Vec<f64>,
    /// vCPUs promised a CPU of their own.
    pub dedicated: Vec<u32>,
    /// Most vCPUs the node may dedicate (`planner.max_dedicated_share` of
    /// its usable CPUs), so shared guests always keep CPUs.
    pub max_dedicated: Vec<u32>,
    pub overcommit: f64,
}

/// How a domain's memory on a node corrects the node's free figure. A
/// measured figure already excludes every domain: managed ones get theirs
/// back (it is theirs to move). An estimate from the total includes none:
/// unmanaged ones are taken off.
fn own_memory_sign(measured: bool, managed: bool) -> i64 {
    match (measured, managed) {
        (true, true) => 1,
        (false, false) => -1,
        _ => 0,
    }
}

impl Ledger {
    /// Capacity left for managed domains once unmanaged ones and headroom
    /// are taken off. With measured free memory, managed domains' own
    /// memory is added back (it is theirs to move); without, the node's
    /// total less hugepage pools and unmanaged domains is the estimate.
    pub fn new(
        topo: &HostTopology,
        obs: &Observations,
        config: &Config,
        domains: &[DomainInfo],
    ) -> Self {
        let ids: Vec<u32> = topo.nodes.iter().map(|n| n.id).collect();
        let headroom = config.host.memory_headroom_mib as i64;
        let mut ledger = Ledger {
            usable: topo
                .nodes
                .iter()
                .map(|n| n.cpus.difference(&config.host.reserved_cpus))
                .collect(),
            usable_len: Vec::new(),
            cpu_capacity: Vec::new(),
            core_capacity: Vec::new(),
            mem_free: Vec::new(),
            mem_capacity: Vec::new(),
            pages_free: Vec::new(),
            shared_load: vec![0.0; ids.len()],
            dedicated: vec![0; ids.len()],
            max_dedicated: Vec::new(),
            overcommit: config.planner.cpu_overcommit,
            ids,
        };
        ledger.usable_len = ledger.usable.iter().map(CpuSet::len).collect();
        let share = config.planner.max_dedicated_share;
        ledger.max_dedicated = ledger
            .usable
            .iter()
            .map(|cpus| (cpus.len() as f64 * share + 1e-9).floor() as u32)
            .collect();
        let unstolen = |c: u32| 1.0 - obs.cpu_steal.get(&c).copied().unwrap_or(0.0);
        ledger.cpu_capacity = ledger
            .usable
            .iter()
            .map(|cpus| cpus.iter().map(unstolen).sum())
            .collect();
        // A CPU is its core's first usable thread when no usable sibling has
        // a lower id. A CPU whose siblings are unknown is a core of its own.
        ledger.core_capacity = ledger
            .usable
            .iter()
            .map(|cpus| {
                cpus.iter()
                    .filter(|&c| {
                        topo.cpu(c).is_none_or(|cpu| {
                            cpu.siblings.iter().all(|s| s >= c || !cpus.contains(s))
                        })
                    })
                    .map(unstolen)
                    .sum()
            })
            .collect();
        // Each domain's memory by node index, in one pass over the domains.
        let mut on_node: Vec<Vec<(&DomainInfo, i64)>> = vec![Vec::new(); topo.nodes.len()];
        for d in domains {
            for (&node, &mib) in &d.current.memory_mib {
                if let Ok(i) = topo.nodes.binary_search_by_key(&node, |n| n.id) {
                    on_node[i].push((d, mib as i64));
                }
            }
        }
        let mut page_sizes: Vec<u64> = domains.iter().filter_map(|d| d.hugepage_kib).collect();
        page_sizes.sort_unstable();
        page_sizes.dedup();
        for (node, here) in topo.nodes.iter().zip(&on_node) {
            let seen = obs.nodes.get(&node.id);
            let pool_mib: u64 = node
                .hugepages
                .iter()
                .map(|p| p.total * p.size_kib / 1024)
                .sum();
            let mut free = match seen.and_then(|o| o.free_mib) {
                Some(free) => free as i64,
                None => node.memory_mib.saturating_sub(pool_mib) as i64,
            };
            let mut pages: BTreeMap<u64, i64> = node
                .hugepages
                .iter()
                .map(|p| {
                    let observed = seen.and_then(|o| o.free_hugepages.get(&p.size_kib));
                    (p.size_kib, observed.map_or(p.total, |f| *f) as i64)
                })
                .collect();
            let free_measured = seen.and_then(|o| o.free_mib).is_some();
            // Every page size a domain uses has an entry, if only of zero.
            for &size in &page_sizes {
                pages.entry(size).or_insert(0);
            }
            for &(d, mib) in here {
                match d.hugepage_kib {
                    Some(size) => {
                        let measured = seen.is_some_and(|o| o.free_hugepages.contains_key(&size));
                        let sign = own_memory_sign(measured, d.is_managed());
                        *pages.entry(size).or_insert(0) += sign * (mib * 1024 / size as i64);
                    }
                    None => free += own_memory_sign(free_measured, d.is_managed()) * mib,
                }
            }
            let usable = (free - headroom).max(0);
            ledger.mem_free.push(usable);
            ledger.mem_capacity.push(usable as u64);
            ledger.pages_free.push(pages);
        }
        for d in domains.iter().filter(|d| !d.is_managed()) {
            ledger.add_unmanaged_load(topo, d);
        }
        ledger
    }

    /// Spreads an unmanaged domain's CPU demand over the nodes its vCPUs may
    /// use, in proportion to their CPUs.
    fn add_unmanaged_load(&mut self, topo: &HostTopology, d: &DomainInfo) {
        for (v, affinity) in &d.current.vcpu_affinity {
            let load = d
                .pieces
                .iter()
                .find(|p| p.vcpus.contains(v))
                .map_or(1.0, |p| p.load / p.vcpus.len().max(1) as f64);
            let total = affinity.len().max(1) as f64;
            for (i, &id) in self.ids.iter().enumerate() {
                let node = topo.node(id).expect("ledger ids come from the topology");
                let share = node.cpus.intersection_len(affinity) as f64 / total;
                self.shared_load[i] += load * share;
            }
        }
    }

    /// Takes (`sign` 1) or gives back (-1) the MiB a part puts on a
    /// memory-only node.
    pub fn spill(&mut self, spill: Option<(u32, u64)>, sign: i64) {
        if let Some((node, mib)) = spill
            && let Some(t) = self.index(node)
        {
            self.mem_free[t] -= sign * mib as i64;
        }
    }

    pub fn index(&self, node: u32) -> Option<usize> {
        self.ids.binary_search(&node).ok()
    }

    /// How many CPUs guests may use on the node: `usable[i].len()`,
    /// counted once rather than in the split search's inner loop.
    pub fn usable_cpus(&self, i: usize) -> usize {
        self.usable_len[i]
    }

    pub fn has_cpus(&self, i: usize) -> bool {
        self.usable_len[i] > 0
    }

    /// CPUs left for shared vCPUs once dedicated ones are served.
    pub fn shared_cpus(&self, i: usize) -> usize {
        self.usable_len[i].saturating_sub(self.dedicated[i] as usize)
    }

    /// Whether the node can take the part under the given CPU policy.
    pub fn fits(&self, i: usize, part: &Demand, policy: CpuPolicy) -> bool {
        if part.vcpus > 0 && !self.has_cpus(i) {
            return false;
        }
        let memory_ok = match part.hugepage_kib {
            Some(size) => {
                let pages = (part.mem_mib * 1024).div_ceil(size) as i64;
                self.pages_free[i].get(&size).is_some_and(|&f| f >= pages)
            }
            None => self.mem_free[i] >= part.mem_mib as i64,
        };
        memory_ok && self.cpu_fits(i, part, policy)
    }

    /// Shared vCPU demand the node takes in all: its CPUs left to shared
    /// vCPUs, weighted by time not stolen, times the overcommit.
    pub fn shared_capacity(&self, i: usize) -> f64 {
        self.cpu_capacity[i] * self.shared_cpus(i) as f64 / self.usable_len[i].max(1) as f64
            * self.overcommit
    }

    /// Whether the node's CPUs can take the part (memory aside).
    pub fn cpu_fits(&self, i: usize, part: &Demand, policy: CpuPolicy) -> bool {
        let n = part.vcpus;
        match policy {
            CpuPolicy::Dedicated => self.dedicated_room(i) >= n as i64,
            CpuPolicy::Shared => {
                n <= self.shared_cpus(i)
                    && self.shared_load[i] + part.load <= self.shared_capacity(i) + 1e-9
            }
        }
    }

    /// Dedicated vCPUs the node can still take: within its share for
    /// dedicated CPUs, and leaving the shared vCPUs already there enough
    /// CPUs at the overcommit.
    pub fn dedicated_room(&self, i: usize) -> i64 {
        let needed = if self.shared_load[i] > 0.0 {
            ((self.shared_load[i] / self.overcommit).ceil() as i64).max(1)
        } else {
            0
        };
        let by_share = self.max_dedicated[i] as i64 - self.dedicated[i] as i64;
        let by_shared = self.usable_len[i] as i64 - self.dedicated[i] as i64 - needed;
        by_share.min(by_shared)
    }

    pub fn reserve(&mut self, i: usize, part: &Demand, policy: CpuPolicy) {
        self.apply(i, part, policy, 1);
    }

    pub fn release(&mut self, i: usize, part: &Demand, policy: CpuPolicy) {
        self.apply(i, part, policy, -1);
    }

    fn apply(&mut self, i: usize, part: &Demand, policy: CpuPolicy, sign: i64) {
        match part.hugepage_kib {
            Some(size) => {
                let pages = (part.mem_mib * 1024).div_ceil(size) as i64;
                *self.pages_free[i].entry(size).or_insert(0) -= sign * pages;
            }
            None => self.mem_free[i] -= sign * part.mem_mib as i64,
        }
        match policy {
            CpuPolicy::Dedicated => {
                self.dedicated[i] = (self.dedicated[i] as i64 + sign * part.vcpus as i64) as u32
            }
            CpuPolicy::Shared => self.shared_load[i] += sign as f64 * part.load,
        }
    }

    /// How full a node is (0 = empty, 1 = full): the larger of its CPU
    /// pressure ([`Self::cpu_pressure`]) and its memory used / memory. The
    /// figure spread minimises and pack maximises.
    pub fn pressure(&self, i: usize) -> f64 {
        let mem = if self.mem_capacity[i] > 0 {
            1.0 - self.mem_free[i] as f64 / self.mem_capacity[i] as f64
        } else {
            1.0
        };
        self.cpu_pressure(i).max(mem)
    }

    /// CPU demand (shared and dedicated vCPUs) plus the work it loses on
    /// shared cores, over the node's CPUs (hardware threads), all weighted
    /// by time not stolen.
    ///
    /// Up to the node's cores every busy vCPU has a core of its own and
    /// loses nothing: the figure is demand / CPUs. Past the cores a busy
    /// vCPU shares a core with a sibling, which adds only
    /// [`SIBLING_THREAD_GAIN`] of a core: the 0.7 of a core the pair loses
    /// counts as demand too, so each vCPU there counts 1.7. Measured load
    /// cannot show that loss (a vCPU on a sibling thread runs all the time,
    /// at 0.65 of a core); past every thread a vCPU waits in the run queue,
    /// which its demand (load plus run-queue wait) already holds, so each
    /// counts 1 again. So a node past its cores, where vCPUs slow down, is
    /// seen as worse than one below them by what its vCPUs lose; against
    /// threads alone it was not, and where memory was the larger part it
    /// decided nothing. 1 is still a full node: demand and its loss fill
    /// every thread.
    ///
    /// Not demand / cores: that counts a node full at half its threads and
    /// one below its cores, where nothing is lost, twice as pressed, and
    /// the planner moves guests and their memory for CPU evenness that
    /// gains no speed (in the simulator it nearly doubled the GiB migrated
    /// on four and eight nodes).
    ///
    /// A CPU whose siblings are unknown counts as a core of its own: without
    /// SMT, or without the topology saying so, this is demand / CPUs.
    pub fn cpu_pressure(&self, i: usize) -> f64 {
        let threads = self.cpu_capacity[i];
        let cores = self.core_capacity[i];
        if threads <= 0.0 || cores <= 0.0 {
            return 0.0;
        }
        let demand = self.shared_load[i] + self.dedicated[i] as f64;
        let on_siblings = (demand - cores).clamp(0.0, (threads - cores).max(0.0));
        (demand + (1.0 - SIBLING_THREAD_GAIN) * on_siblings) / threads
    }

    /// Pressure the node would have with the part added.
    pub fn pressure_with(&mut self, i: usize, part: &Demand, policy: CpuPolicy) -> f64 {
        self.reserve(i, part, policy);
        let p = self.pressure(i);
        self.release(i, part, policy);
        p
    }

    /// Spread between the most and least pressed nodes that have CPUs.
    pub fn imbalance(&self) -> f64 {
        let pressures: Vec<f64> = (0..self.ids.len())
            .filter(|&i| self.has_cpus(i))
            .map(|i| self.pressure(i))
            .collect();
        let max = pressures.iter().copied().fold(f64::MIN, f64::max);
        let min = pressures.iter().copied().fold(f64::MAX, f64::min);
        if pressures.is_empty() { 0.0 } else { max - min }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::HostShape;

    /// Two nodes of 8 cores; `threads` hardware threads per core.
    fn ledger(threads: u32, config: &Config, obs: &Observations) -> Ledger {
        let topo = HostShape::new(2, 8, threads, 64 * 1024).build();
        Ledger::new(&topo, obs, config, &[])
    }

    fn with_demand(l: &mut Ledger, i: usize, demand: f64) -> f64 {
        l.shared_load[i] = demand;
        l.cpu_pressure(i)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn within_its_cores_a_node_counts_demand_over_its_threads() {
        let mut l = ledger(2, &Config::default(), &Observations::default());
        assert_eq!((l.cpu_capacity[0], l.core_capacity[0]), (16.0, 8.0));
        for d in [0.0, 3.0, 8.0] {
            assert!(close(with_demand(&mut l, 0, d), d / 16.0), "{d}");
        }
    }

    #[test]
    fn a_node_past_its_cores_is_worse_than_one_below_them() {
        let mut l = ledger(2, &Config::default(), &Observations::default());
        let below = with_demand(&mut l, 0, 7.0);
        let past = with_demand(&mut l, 1, 9.0);
        // Against threads alone they were 2 / 16 apart; the vCPU past the
        // cores adds what it and its sibling lose, 0.7 of a core.
        assert!(close(past - below, (2.0 + 0.7) / 16.0), "{below} {past}");
        // Each vCPU past the cores counts 1.7, each past every thread 1.
        assert!(close(
            with_demand(&mut l, 0, 16.0),
            (16.0 + 0.7 * 8.0) / 16.0
        ));
        // Past the threads the wait is in the measured demand already.
        assert!(close(
            with_demand(&mut l, 0, 20.0),
            (20.0 + 0.7 * 8.0) / 16.0
        ));
        // Rising, without a step at the cores or the threads.
        let mut last = 0.0;
        for k in 1..=400 {
            let p = with_demand(&mut l, 0, k as f64 * 0.05);
            assert!(p > last && p - last <= 1.7 * 0.05 / 16.0 + 1e-12, "{k}");
            last = p;
        }
    }

    #[test]
    fn pressure_is_full_where_demand_and_its_loss_fill_the_threads() {
        let mut l = ledger(2, &Config::default(), &Observations::default());
        // 8 + 1.7 x (d - 8) = 16
        let full = 8.0 + 8.0 / 1.7;
        assert!(close(with_demand(&mut l, 0, full), 1.0));
        // Memory still counts when it is the larger part.
        l.mem_free[0] = l.mem_capacity[0] as i64 / 5;
        l.shared_load[0] = 9.0;
        assert!((l.pressure(0) - 0.8).abs() < 1e-4, "{}", l.pressure(0));
        l.shared_load[0] = 12.0;
        assert!(close(l.pressure(0), l.cpu_pressure(0)) && l.pressure(0) > 0.8);
    }

    #[test]
    fn without_smt_every_cpu_is_a_core() {
        let mut l = ledger(1, &Config::default(), &Observations::default());
        assert_eq!((l.cpu_capacity[0], l.core_capacity[0]), (8.0, 8.0));
        assert!(close(with_demand(&mut l, 0, 6.0), 6.0 / 8.0));
        assert!(close(with_demand(&mut l, 0, 8.0), 1.0));
        assert!(close(with_demand(&mut l, 0, 10.0), 10.0 / 8.0));
    }

    #[test]
    fn dedicated_vcpus_count_as_demand() {
        let mut l = ledger(2, &Config::default(), &Observations::default());
        l.dedicated[0] = 4;
        let dedicated = with_demand(&mut l, 0, 6.0);
        l.dedicated[0] = 0;
        assert!(close(dedicated, with_demand(&mut l, 0, 10.0)));
    }

    #[test]
    fn a_reserved_sibling_leaves_its_core_to_the_other_thread() {
        // Node 0: cores 0-7, siblings 16-23. Reserving 0 leaves 16 a core
        // of its own; reserving 1 and 17 takes the core.
        let mut config = Config::default();
        config.host.reserved_cpus = [0, 1, 17].into_iter().collect();
        let l = ledger(2, &config, &Observations::default());
        assert_eq!((l.cpu_capacity[0], l.core_capacity[0]), (13.0, 7.0));
        assert_eq!((l.cpu_capacity[1], l.core_capacity[1]), (16.0, 8.0));
    }

    #[test]
    fn stolen_time_weighs_cores_and_siblings() {
        let mut obs = Observations::default();
        obs.cpu_steal.insert(0, 0.5);
        obs.cpu_steal.insert(16, 0.25);
        let l = ledger(2, &Config::default(), &obs);
        assert!(close(l.cpu_capacity[0], 16.0 - 0.75));
        assert!(close(l.core_capacity[0], 8.0 - 0.5));
    }
}
