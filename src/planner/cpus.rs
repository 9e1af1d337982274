//! Turning chosen nodes into CPU lists: dedicated vCPUs get a CPU of their
//! own (guest SMT threads of one core on the siblings of one host core);
//! shared vCPUs, emulator and iothreads get the node's CPUs that no
//! dedicated vCPU holds.

use std::collections::BTreeMap;

use crate::idset::CpuSet;
use crate::topology::HostTopology;

use super::choose::{Decision, nodes_of};
use super::domain_info::DomainInfo;
use super::ledger::Part;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pins {
    pub vcpupin: BTreeMap<u32, CpuSet>,
    pub emulatorpin: CpuSet,
    pub iothreadpin: BTreeMap<u32, CpuSet>,
    /// Set when guest SMT pairs could not all land on host sibling pairs.
    pub smt_unmatched: bool,
}

pub struct CpuAssigner<'a> {
    pub topo: &'a HostTopology,
    /// Usable CPUs per node id.
    pub usable: BTreeMap<u32, CpuSet>,
    /// CPUs held by dedicated vCPUs so far.
    pub claimed: CpuSet,
}

impl CpuAssigner<'_> {
    /// Serves dedicated domains first (kept ones keep their CPUs when still
    /// exclusive), then derives every domain's pins. Returns pins per
    /// domain index; `None` for domains without a placement.
    pub fn assign(
        &mut self,
        infos: &[DomainInfo],
        order: &[usize],
        decisions: &[Option<Decision>],
    ) -> Vec<Option<Pins>> {
        let placed: Vec<(usize, &[Part])> = order
            .iter()
            .copied()
            .filter(|&i| infos[i].is_dedicated())
            .filter_map(|i| {
                decisions[i]
                    .as_ref()
                    .and_then(|d| d.parts())
                    .map(|p| (i, p))
            })
            .collect();
        let mut dedicated: BTreeMap<usize, (BTreeMap<u32, CpuSet>, bool)> = BTreeMap::new();
        // Every kept domain reclaims its CPUs before anyone allocates, so a
        // domain that must be re-pinned cannot take a kept domain's CPUs.
        for &(i, _) in &placed {
            if matches!(decisions[i], Some(Decision::Kept(_)))
                && let Some(pins) = self.keep_exclusive(&infos[i])
            {
                dedicated.insert(i, (pins, false));
            }
        }
        for (i, parts) in placed {
            dedicated
                .entry(i)
                .or_insert_with(|| self.allocate(&infos[i], parts));
        }
        let pools: BTreeMap<u32, CpuSet> = self
            .usable
            .iter()
            .map(|(&n, cpus)| (n, cpus.difference(&self.claimed)))
            .collect();
        (0..infos.len())
            .map(|i| {
                let parts = decisions[i].as_ref().and_then(|d| d.parts())?;
                Some(self.pins_for(&infos[i], parts, &pools, dedicated.remove(&i)))
            })
            .collect()
    }

    /// A kept dedicated domain's current 1:1 pins, claimed again, if they
    /// are still one distinct usable CPU per vCPU that nobody else holds.
    fn keep_exclusive(&mut self, info: &DomainInfo) -> Option<BTreeMap<u32, CpuSet>> {
        let mut mine = CpuSet::new();
        for set in info.current.vcpu_affinity.values() {
            let cpu = set.first()?;
            let node = self.topo.cpu(cpu)?.node;
            if set.len() != 1
                || mine.contains(cpu)
                || self.claimed.contains(cpu)
                || !self.usable.get(&node)?.contains(cpu)
            {
                return None;
            }
            mine.insert(cpu);
        }
        self.claimed.union_with(&mine);
        Some(info.current.vcpu_affinity.clone())
    }

    /// Claims one CPU per vCPU on each part's node.
    fn allocate(&mut self, info: &DomainInfo, parts: &[Part]) -> (BTreeMap<u32, CpuSet>, bool) {
        let threads = info.domain.threads_per_core().max(1);
        let mut pins = BTreeMap::new();
        let mut unmatched = false;
        for part in parts {
            let free = self
                .usable
                .get(&part.node)
                .cloned()
                .unwrap_or_default()
                .difference(&self.claimed);
            let (assigned, honoured) = self.pick_cpus(&free, &part.vcpus, threads);
            unmatched |= !honoured;
            for (v, cpu) in assigned {
                self.claimed.insert(cpu);
                pins.insert(v, CpuSet::single(cpu));
            }
        }
        (pins, unmatched)
    }

    /// Free CPUs grouped by physical core, cores in ascending order.
    fn free_cores(&self, free: &CpuSet) -> Vec<Vec<u32>> {
        let mut seen = CpuSet::new();
        let mut cores = Vec::new();
        for cpu in free.iter() {
            if seen.contains(cpu) {
                continue;
            }
            let siblings = self
                .topo
                .cpu(cpu)
                .map_or_else(|| CpuSet::single(cpu), |c| c.siblings.clone());
            seen.union_with(&siblings);
            cores.push(siblings.intersection(free).iter().collect());
        }
        cores
    }

    /// Gives each vCPU a CPU. With guest SMT, each guest core's threads
    /// (vCPU ids `k*threads ..`) go on one host core with enough free
    /// siblings; returns whether that held for all of them.
    fn pick_cpus(&self, free: &CpuSet, vcpus: &[u32], threads: u32) -> (Vec<(u32, u32)>, bool) {
        let cores = self.free_cores(free);
        if threads >= 2 && self.topo.smt_width() >= threads as usize {
            let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for &v in vcpus {
                groups.entry(v / threads).or_default().push(v);
            }
            let mut whole = cores.iter().filter(|c| c.len() >= threads as usize);
            let mut out = Vec::new();
            for group in groups.values() {
                match whole.next() {
                    Some(core) => out.extend(group.iter().copied().zip(core.iter().copied())),
                    None => break,
                }
            }
            if out.len() == vcpus.len() {
                return (out, true);
            }
        }
        // Pack siblings together: fewer cores touched, and the guest's
        // consecutive vCPUs share caches as consecutive host threads do.
        let sequential: Vec<u32> = cores.into_iter().flatten().collect();
        let out: Vec<(u32, u32)> = vcpus.iter().copied().zip(sequential).collect();
        let honoured = threads < 2;
        (out, honoured)
    }

    fn pins_for(
        &self,
        info: &DomainInfo,
        parts: &[Part],
        pools: &BTreeMap<u32, CpuSet>,
        dedicated: Option<(BTreeMap<u32, CpuSet>, bool)>,
    ) -> Pins {
        let nodes = nodes_of(parts);
        let mut shared = CpuSet::new();
        for n in nodes.iter() {
            if let Some(pool) = pools.get(&n) {
                shared.union_with(pool);
            }
        }
        let (vcpupin, smt_unmatched) = match dedicated {
            Some((pins, unmatched)) => (pins, unmatched),
            None => {
                // A domain without cells split over nodes floats over all of
                // them: its kernel cannot know which vCPU is where anyway.
                let whole_domain = parts.iter().all(|p| p.cell.is_none());
                let mut pins = BTreeMap::new();
                for part in parts {
                    let set = if whole_domain {
                        shared.clone()
                    } else {
                        pools.get(&part.node).cloned().unwrap_or_default()
                    };
                    for &v in &part.vcpus {
                        pins.insert(v, set.clone());
                    }
                }
                (pins, false)
            }
        };
        // Emulator and iothreads stay on the domain's node(s), off the
        // dedicated CPUs; only when a node has nothing else do they share
        // the domain's own CPUs.
        let emulatorpin = if shared.is_empty() {
            vcpupin.values().fold(CpuSet::new(), |acc, s| acc.union(s))
        } else {
            shared
        };
        let iothreadpin = info
            .domain
            .iothreads
            .iter()
            .map(|&id| (id, emulatorpin.clone()))
            .collect();
        Pins {
            vcpupin,
            emulatorpin,
            iothreadpin,
            smt_unmatched,
        }
    }
}
