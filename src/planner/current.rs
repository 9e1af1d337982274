//! Where a domain is now: its threads' affinities, the nodes they span,
//! its memory per node (measured, else estimated) and its locality.

use std::collections::BTreeMap;

use crate::idset::{CpuSet, NodeSet};

use super::domain_info::{Analyzer, Current, DomainInfo, distribute};
use super::score::{locality, vcpu_node_weights};

impl Analyzer<'_> {
    pub(super) fn current(&self, info: &DomainInfo) -> Current {
        let d = info.domain;
        let all = &self.online_cpus;
        let default_affinity = d.vcpu_cpuset.as_ref().unwrap_or(all);
        let vcpu_affinity: BTreeMap<u32, CpuSet> = info
            .online_vcpus
            .iter()
            .map(|&v| {
                let set = d.cputune.vcpupin.get(&v).unwrap_or(default_affinity);
                (v, set.clone())
            })
            .collect();
        let emulator_affinity = d
            .cputune
            .emulatorpin
            .clone()
            .unwrap_or_else(|| default_affinity.clone());
        let iothread_affinity = d
            .iothreads
            .iter()
            .map(|&id| {
                let set = d.cputune.iothreadpin.get(&id).unwrap_or(&emulator_affinity);
                (id, set.clone())
            })
            .collect();
        // vCPUs mostly share one affinity: each distinct one is looked at once.
        let mut cpus = CpuSet::new();
        let mut pinned = !vcpu_affinity.is_empty();
        let mut distinct = 0;
        let mut previous: Option<&CpuSet> = None;
        for set in vcpu_affinity.values() {
            if previous == Some(set) {
                continue;
            }
            cpus.union_with(set);
            pinned = pinned && set != all && self.topo.nodes_of_cpus(set).len() == 1;
            previous = Some(set);
            distinct += 1;
        }
        let nodes = self.topo.nodes_of_cpus(&cpus);
        let pinned_over_nodes = distinct == 1 && cpus != *all && nodes.len() > 1;
        let (memory_mib, memory_observed) = match self.obs.domains.get(&d.name) {
            Some(o) if !o.memory_mib.is_empty() => (o.memory_mib.clone(), true),
            _ => (self.estimate_memory(info, &nodes), false),
        };
        let cell_memory_mib = match self.obs.domains.get(&d.name) {
            Some(o) if memory_observed && covers_every_cell(info, &o.cell_memory_mib) => {
                o.cell_memory_mib.clone()
            }
            _ => BTreeMap::new(),
        };
        let vcpu_weights = vcpu_node_weights(self.topo, vcpu_affinity.values());
        let locality = if cell_memory_mib.is_empty() {
            locality(&self.distances, &vcpu_weights, &memory_mib).0
        } else {
            self.cell_locality(info, &vcpu_affinity, &memory_mib, &cell_memory_mib)
        };
        Current {
            cell_memory_mib,
            resident_mib: memory_mib.values().sum(),
            vcpu_affinity,
            emulator_affinity,
            iothread_affinity,
            nodes,
            memory_mib,
            memory_observed,
            pinned,
            pinned_over_nodes,
            vcpu_weights,
            locality,
        }
    }

    /// Locality measured cell by cell: each cell's RAM against its own
    /// vCPUs, and the rest of the process (QEMU's own heap, devices)
    /// against all of them.
    fn cell_locality(
        &self,
        info: &DomainInfo,
        affinity: &BTreeMap<u32, CpuSet>,
        memory_mib: &BTreeMap<u32, u64>,
        cells: &BTreeMap<u32, BTreeMap<u32, u64>>,
    ) -> f64 {
        let (mut sum, mut total) = (0.0, 0u64);
        let mut rest = memory_mib.clone();
        for piece in &info.pieces {
            let Some(mem) = piece.cell.and_then(|c| cells.get(&c)) else {
                continue;
            };
            for (node, mib) in mem {
                if let Some(left) = rest.get_mut(node) {
                    *left = left.saturating_sub(*mib);
                }
            }
            let w = vcpu_node_weights(
                self.topo,
                piece.vcpus.iter().filter_map(|v| affinity.get(v)),
            );
            let (l, mib) = locality(&self.distances, &w, mem);
            sum += l * mib as f64;
            total += mib;
        }
        let all = vcpu_node_weights(self.topo, affinity.values());
        let (l, mib) = locality(&self.distances, &all, &rest);
        sum += l * mib as f64;
        total += mib;
        if total == 0 { 1.0 } else { sum / total as f64 }
    }

    /// Where the memory most likely is without a measurement: on the bound
    /// nodes; else where the vCPUs run (first touch follows them); else
    /// spread in proportion to node size.
    fn estimate_memory(&self, info: &DomainInfo, vcpu_nodes: &NodeSet) -> BTreeMap<u32, u64> {
        // Cells bound by `<memnode>` are on their bound nodes.
        if info.pieces.iter().any(|p| p.bound.is_some()) {
            let mut out = BTreeMap::new();
            for piece in &info.pieces {
                let nodes = piece.bound.as_ref().unwrap_or(vcpu_nodes);
                for (n, mib) in self.by_node_size(piece.mem_mib, nodes) {
                    *out.entry(n).or_default() += mib;
                }
            }
            return out;
        }
        let bound = info
            .domain
            .numatune
            .as_ref()
            .and_then(|n| n.nodeset.clone())
            .filter(|s| !s.is_empty());
        let nodes = bound.unwrap_or_else(|| vcpu_nodes.clone());
        self.by_node_size(info.mem_mib, &nodes)
    }

    /// `mib` spread over `nodes` (every node when empty) in proportion to
    /// their size.
    fn by_node_size(&self, mib: u64, nodes: &NodeSet) -> BTreeMap<u32, u64> {
        let all;
        let nodes = if nodes.is_empty() {
            all = self.topo.node_ids();
            &all
        } else {
            nodes
        };
        let weights: Vec<(u32, u64)> = nodes
            .iter()
            .filter_map(|n| self.topo.node(n).map(|node| (n, node.memory_mib.max(1))))
            .collect();
        distribute(mib, &weights)
    }
}

/// Whether `cells` holds a measurement for every guest cell of the domain
/// (and it has more than one: a single cell is the whole guest).
fn covers_every_cell(info: &DomainInfo, cells: &BTreeMap<u32, BTreeMap<u32, u64>>) -> bool {
    let ids: Vec<u32> = info.pieces.iter().filter_map(|p| p.cell).collect();
    ids.len() > 1 && ids.len() == cells.len() && ids.iter().all(|c| cells.contains_key(c))
}
