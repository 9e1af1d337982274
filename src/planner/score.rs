//! How good a placement is: distance-weighted memory locality, node
//! imbalance, guests that span nodes needlessly, and what the plan costs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::idset::CpuSet;
use crate::topology::{DEFAULT_REMOTE_DISTANCE, HostTopology, LOCAL_DISTANCE};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    /// Memory-weighted mean over domains of LOCAL_DISTANCE / distance
    /// between a vCPU's node and its memory's node: 1 = all local.
    pub locality_before: f64,
    pub locality_after: f64,
    /// Spread between the most and least loaded node (load is the larger
    /// of CPU pressure, demand and what it loses on shared cores / CPUs,
    /// and memory used / capacity).
    pub imbalance_before: f64,
    pub imbalance_after: f64,
    /// Domains that would fit one node but span several.
    pub spanning_before: u32,
    pub spanning_after: u32,
    /// Domains re-placed (first placements of new domains not counted).
    pub moves: u32,
    pub migrate_mib: u64,
    pub actions: u32,
}

/// Distances between host nodes as a dense matrix: the planner asks for
/// them in its inner loops, where the topology's per-node maps are slow.
#[derive(Debug, Clone)]
pub struct Distances {
    ids: Vec<u32>,
    matrix: Vec<u32>,
}

impl Distances {
    pub fn new(topo: &HostTopology) -> Self {
        let ids: Vec<u32> = topo.nodes.iter().map(|n| n.id).collect();
        let matrix = ids
            .iter()
            .flat_map(|&a| ids.iter().map(move |&b| topo.distance(a, b)))
            .collect();
        Self { ids, matrix }
    }

    fn index(&self, id: u32) -> Option<usize> {
        match self.ids.get(id as usize) {
            Some(&at) if at == id => Some(id as usize),
            _ => self.ids.binary_search(&id).ok(),
        }
    }

    /// As [`HostTopology::distance`]: unknown nodes count as remote.
    pub fn get(&self, from: u32, to: u32) -> u32 {
        match (self.index(from), self.index(to)) {
            (Some(a), Some(b)) => self.matrix[a * self.ids.len() + b],
            _ if from == to => LOCAL_DISTANCE,
            _ => DEFAULT_REMOTE_DISTANCE,
        }
    }
}

/// Share of each node in where the vCPUs may run: each vCPU's affinity
/// counts in proportion to the CPUs it has on each node. Consecutive vCPUs
/// usually share one affinity; its per-node shares are computed once.
pub fn vcpu_node_weights<'a>(
    topo: &HostTopology,
    affinities: impl Iterator<Item = &'a CpuSet>,
) -> BTreeMap<u32, f64> {
    // Per node index: summed share, and whether any vCPU may run there.
    let mut sums: Vec<(f64, bool)> = vec![(0.0, false); topo.nodes.len()];
    let mut shares: Vec<(usize, f64)> = Vec::with_capacity(topo.nodes.len());
    let mut previous: Option<&CpuSet> = None;
    let mut count = 0.0;
    for set in affinities {
        count += 1.0;
        if previous != Some(set) {
            shares.clear();
            let n = set.len().max(1) as f64;
            for (i, node) in topo.nodes.iter().enumerate() {
                let on = node.cpus.intersection_len(set);
                if on > 0 {
                    shares.push((i, on as f64 / n));
                }
            }
            previous = Some(set);
        }
        for &(i, share) in &shares {
            sums[i].0 += share;
            sums[i].1 = true;
        }
    }
    // Inserted in ascending order, straight into the map: collecting
    // would gather and sort the entries in a vector first.
    let mut weights = BTreeMap::new();
    for (node, (sum, seen)) in topo.nodes.iter().zip(sums) {
        if seen {
            weights.insert(node.id, sum / count);
        }
    }
    weights
}

/// Locality (0-1) of memory placed as `memory` for vCPUs weighted as
/// `weights`, and the MiB it covers.
pub fn locality(
    distances: &Distances,
    weights: &BTreeMap<u32, f64>,
    memory: &BTreeMap<u32, u64>,
) -> (f64, u64) {
    let total: u64 = memory.values().sum();
    if total == 0 || weights.is_empty() {
        return (1.0, 0);
    }
    let mut sum = 0.0;
    for (&m, &mib) in memory {
        let closeness: f64 = weights
            .iter()
            .map(|(&c, w)| w * LOCAL_DISTANCE as f64 / distances.get(c, m) as f64)
            .sum();
        sum += mib as f64 * closeness;
    }
    (sum / total as f64, total)
}

/// Rounds for stable, readable output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
