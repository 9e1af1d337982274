//! How good a placement is: distance-weighted memory locality, node
//! imbalance, guests that span nodes needlessly, and what the plan costs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::idset::CpuSet;
use crate::topology::{HostTopology, LOCAL_DISTANCE};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    /// Memory-weighted mean over domains of LOCAL_DISTANCE / distance
    /// between a vCPU's node and its memory's node: 1 = all local.
    pub locality_before: f64,
    pub locality_after: f64,
    /// Spread between the most and least loaded node (load is the larger
    /// of CPU demand / capacity and memory used / capacity).
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

/// Share of each node in where the vCPUs may run: each vCPU's affinity
/// counts in proportion to the CPUs it has on each node.
pub fn vcpu_node_weights<'a>(
    topo: &HostTopology,
    affinities: impl Iterator<Item = &'a CpuSet>,
) -> BTreeMap<u32, f64> {
    let mut weights = BTreeMap::new();
    let mut count = 0.0;
    for set in affinities {
        count += 1.0;
        let n = set.len().max(1) as f64;
        for node in &topo.nodes {
            let on = node.cpus.intersection_len(set);
            if on > 0 {
                *weights.entry(node.id).or_insert(0.0) += on as f64 / n;
            }
        }
    }
    if count > 0.0 {
        for w in weights.values_mut() {
            *w /= count;
        }
    }
    weights
}

/// Locality (0-1) of memory placed as `memory` for vCPUs weighted as
/// `weights`, and the MiB it covers.
pub fn locality(
    topo: &HostTopology,
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
            .map(|(&c, w)| w * LOCAL_DISTANCE as f64 / topo.distance(c, m) as f64)
            .sum();
        sum += mib as f64 * closeness;
    }
    (sum / total as f64, total)
}

/// Rounds for stable, readable output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
