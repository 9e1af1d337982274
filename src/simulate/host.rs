//! The simulated host: where each domain's vCPUs run and where its memory
//! is, node by node, and the two ways memory gets somewhere: allocation
//! (first touch, or within a binding) and migration toward a target.
//!
//! Nodes are referred to by index; the simulator builds its hosts with
//! node ids 0..n, so an index is also the node id.

use std::collections::BTreeMap;

use crate::idset::NodeSet;
use crate::topology::HostTopology;

use super::trace::GuestSpec;

/// A part of a domain that the guest sees as one NUMA cell (or the whole
/// domain when it has none).
#[derive(Debug, Clone)]
pub struct Piece {
    pub vcpus: u32,
    pub size_mib: u64,
    /// Resident MiB per node.
    pub memory: Vec<u64>,
    /// Share of the piece's vCPU time spent on each node (sums to 1).
    pub weights: Vec<f64>,
    /// Nodes the memory is being moved to, if any.
    pub target: Option<NodeSet>,
}

#[derive(Debug, Clone)]
pub struct SimDomain {
    pub id: usize,
    pub spec: GuestSpec,
    /// Busy fraction of each vCPU now.
    pub load: f64,
    pub pieces: Vec<Piece>,
    /// Nodes a placement bound the domain to; `None` while unplaced.
    pub placed_on: Option<NodeSet>,
}

impl SimDomain {
    pub fn resident_mib(&self) -> u64 {
        self.pieces.iter().flat_map(|p| &p.memory).sum()
    }

    /// Resident MiB per node, all pieces together.
    pub fn memory_by_node(&self, nodes: usize) -> Vec<u64> {
        let mut out = vec![0; nodes];
        for p in &self.pieces {
            for (o, m) in out.iter_mut().zip(&p.memory) {
                *o += m;
            }
        }
        out
    }

    /// vCPU ids of piece `k`: cells split vCPUs as `synth::with_cells` does.
    pub fn piece_vcpus(&self, k: usize) -> std::ops::Range<u32> {
        let cells = self.pieces.len() as u32;
        let per = self.spec.vcpus / cells;
        let k = k as u32;
        let end = if k + 1 == cells {
            self.spec.vcpus
        } else {
            (k + 1) * per
        };
        k * per..end
    }
}

pub struct SimHost {
    pub topo: HostTopology,
    /// Node-to-node distances by index.
    pub distance: Vec<Vec<u32>>,
    /// Hardware threads per node (0 on a memory-only node).
    pub cpus: Vec<f64>,
    /// Cores per node: what runs at full speed before SMT siblings share.
    pub cores: Vec<f64>,
    pub mem_mib: Vec<u64>,
    pub domains: BTreeMap<usize, SimDomain>,
    /// Placements of running domains changed (first placements excluded).
    pub moves: u32,
    pub migrated_mib: u64,
    /// MiB the last call of [`Self::migrate`] moved.
    pub last_migrated_mib: u64,
}

impl SimHost {
    pub fn new(topo: &HostTopology) -> Self {
        assert!(
            topo.nodes.iter().enumerate().all(|(i, n)| n.id == i as u32),
            "the simulator numbers nodes 0..n"
        );
        let ids: Vec<u32> = topo.nodes.iter().map(|n| n.id).collect();
        Self {
            distance: ids
                .iter()
                .map(|&a| ids.iter().map(|&b| topo.distance(a, b)).collect())
                .collect(),
            cpus: topo.nodes.iter().map(|n| n.cpus.len() as f64).collect(),
            cores: topo
                .nodes
                .iter()
                .map(|n| {
                    let cores: std::collections::BTreeSet<u32> = topo
                        .cpus
                        .iter()
                        .filter(|c| c.node == n.id)
                        .map(|c| c.siblings.iter().next().unwrap_or(c.id))
                        .collect();
                    cores.len() as f64
                })
                .collect(),
            mem_mib: topo.nodes.iter().map(|n| n.memory_mib).collect(),
            topo: topo.clone(),
            domains: BTreeMap::new(),
            moves: 0,
            migrated_mib: 0,
            last_migrated_mib: 0,
        }
    }

    pub fn nodes(&self) -> usize {
        self.cpus.len()
    }

    /// Adds an arriving domain: pieces with no memory yet, vCPUs nowhere.
    pub fn arrive(&mut self, id: usize, spec: &GuestSpec) {
        let n = self.nodes();
        let cells = spec.cells.max(1);
        let pieces = (0..cells)
            .map(|k| Piece {
                vcpus: spec.vcpus / cells
                    + if k + 1 == cells {
                        spec.vcpus % cells
                    } else {
                        0
                    },
                size_mib: spec.mem_mib / cells as u64
                    + if k + 1 == cells {
                        spec.mem_mib % cells as u64
                    } else {
                        0
                    },
                memory: vec![0; n],
                weights: vec![0.0; n],
                target: None,
            })
            .collect();
        self.domains.insert(
            id,
            SimDomain {
                id,
                spec: spec.clone(),
                load: spec.load,
                pieces,
                placed_on: None,
            },
        );
    }

    pub fn used_mib(&self) -> Vec<u64> {
        let mut used = vec![0; self.nodes()];
        for d in self.domains.values() {
            for (u, m) in used.iter_mut().zip(d.memory_by_node(self.nodes())) {
                *u += m;
            }
        }
        used
    }

    pub fn free_mib(&self) -> Vec<u64> {
        self.mem_mib
            .iter()
            .zip(self.used_mib())
            .map(|(t, u)| t.saturating_sub(u))
            .collect()
    }

    /// CPU demand per node, in CPUs.
    pub fn cpu_load(&self) -> Vec<f64> {
        let mut load = vec![0.0; self.nodes()];
        for d in self.domains.values() {
            for p in &d.pieces {
                for (l, w) in load.iter_mut().zip(&p.weights) {
                    *l += d.load * p.vcpus as f64 * w;
                }
            }
        }
        load
    }

    /// vCPU time spread over `nodes` in proportion to their CPUs.
    pub fn weights_on(&self, nodes: &NodeSet) -> Vec<f64> {
        let total: f64 = nodes.iter().map(|n| self.cpus[n as usize]).sum();
        (0..self.nodes())
            .map(|i| {
                if nodes.contains(i as u32) && total > 0.0 {
                    self.cpus[i] / total
                } else {
                    0.0
                }
            })
            .collect()
    }

    pub fn all_nodes(&self) -> NodeSet {
        (0..self.nodes() as u32).collect()
    }

    /// Nodes with CPUs (not memory-only ones), by index.
    pub fn cpu_nodes(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        (0..self.nodes()).filter(|&i| self.cpus[i] > 0.0)
    }

    /// MiB of a domain's memory not on the nodes it is being moved to.
    pub fn misplaced_mib(&self, d: &SimDomain) -> u64 {
        d.pieces
            .iter()
            .filter_map(|p| {
                let target = p.target.as_ref()?;
                Some(
                    (0..p.memory.len())
                        .filter(|&i| !target.contains(i as u32))
                        .map(|i| p.memory[i])
                        .sum::<u64>(),
                )
            })
            .sum()
    }

    /// Nodes by distance from `from`, nearest first, then by index.
    fn nearest(&self, from: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes()).collect();
        order.sort_by_key(|&i| (self.distance[from][i], i));
        order
    }

    /// Allocates a piece's memory in proportion to `share` (per node); what
    /// a node has no room for goes to the nearest node with room, as the
    /// kernel's fallback does; with no room anywhere it stays on the node.
    pub fn allocate(&mut self, id: usize, k: usize, share: &[f64]) {
        let mut free = self.free_mib();
        let n = self.nodes();
        let size = self.domains[&id].pieces[k].size_mib;
        let total: f64 = share.iter().sum();
        let mut wanted: Vec<u64> = share
            .iter()
            .map(|s| (size as f64 * s / total.max(f64::MIN_POSITIVE)) as u64)
            .collect();
        // Rounding remainder to the largest share.
        let given: u64 = wanted.iter().sum();
        if let Some(top) = (0..n).max_by(|&a, &b| share[a].total_cmp(&share[b]).then(b.cmp(&a))) {
            wanted[top] += size - given;
        }
        let mut memory = vec![0; n];
        for from in 0..n {
            let mut left = wanted[from];
            for to in self.nearest(from) {
                let take = left.min(free[to]);
                memory[to] += take;
                free[to] -= take;
                left -= take;
            }
            memory[from] += left;
        }
        self.domains.get_mut(&id).expect("live domain").pieces[k].memory = memory;
    }

    /// Moves memory of pieces toward their targets, up to `budget_mib` in
    /// all, domain by domain in id order, into the target node with the
    /// most room; returns MiB moved.
    pub fn migrate(&mut self, budget_mib: u64) -> u64 {
        let ids: Vec<usize> = self.domains.keys().copied().collect();
        self.migrate_in(&ids, budget_mib)
    }

    /// As [`Self::migrate`], the domains with the most memory away from
    /// their targets first (numapin's background mover).
    pub fn migrate_most_misplaced_first(&mut self, budget_mib: u64) -> u64 {
        let mut ids: Vec<(u64, usize)> = self
            .domains
            .values()
            .map(|d| (self.misplaced_mib(d), d.id))
            .filter(|(m, _)| *m > 0)
            .collect();
        ids.sort_by_key(|&(m, id)| (std::cmp::Reverse(m), id));
        let ids: Vec<usize> = ids.into_iter().map(|(_, id)| id).collect();
        self.migrate_in(&ids, budget_mib)
    }

    fn migrate_in(&mut self, ids: &[usize], budget_mib: u64) -> u64 {
        let mut free = self.free_mib();
        let mut left = budget_mib;
        for &id in ids {
            let d = self.domains.get_mut(&id).expect("listed above");
            for p in &mut d.pieces {
                let Some(target) = &p.target else { continue };
                for from in 0..p.memory.len() {
                    while p.memory[from] > 0 && left > 0 && !target.contains(from as u32) {
                        let Some(to) = target
                            .iter()
                            .map(|t| t as usize)
                            .filter(|&t| free[t] > 0)
                            .max_by_key(|&t| (free[t], std::cmp::Reverse(t)))
                        else {
                            break;
                        };
                        let amount = p.memory[from].min(left).min(free[to]);
                        p.memory[from] -= amount;
                        p.memory[to] += amount;
                        free[to] -= amount;
                        free[from] += amount;
                        left -= amount;
                    }
                }
            }
        }
        let moved = budget_mib - left;
        self.migrated_mib += moved;
        self.last_migrated_mib = moved;
        moved
    }

    /// Whether memory is still on its way to a target: the last
    /// migration step moved some (memory with no room at its target
    /// waits, but nothing waits for it).
    pub fn migrating(&self) -> bool {
        self.last_migrated_mib > 0
    }

    /// Binds a domain to `nodes`: its vCPUs run there and its memory is
    /// moved there. A change of an earlier placement counts as a move.
    pub fn bind(&mut self, id: usize, nodes: &NodeSet) {
        let weights = self.weights_on(nodes);
        let d = self.domains.get_mut(&id).expect("live domain");
        if d.placed_on.as_ref().is_some_and(|p| p != nodes) {
            self.moves += 1;
        }
        d.placed_on = Some(nodes.clone());
        for p in &mut d.pieces {
            p.weights = weights.clone();
            p.target = Some(nodes.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::HostShape;

    fn spec(vcpus: u32, mem_mib: u64) -> GuestSpec {
        GuestSpec {
            vcpus,
            mem_mib,
            load: 0.5,
            ..GuestSpec::default()
        }
    }

    #[test]
    fn allocation_spills_to_the_nearest_node_and_migration_is_bounded() {
        let mut shape = HostShape::new(4, 2, 1, 1000);
        shape.nodes_per_socket = 2;
        let mut host = SimHost::new(&shape.build());
        host.arrive(0, &spec(2, 1500));
        host.allocate(0, 0, &[1.0, 0.0, 0.0, 0.0]);
        // Node 1 shares node 0's socket: the spill goes there.
        assert_eq!(host.domains[&0].pieces[0].memory, [1000, 500, 0, 0]);
        host.arrive(1, &spec(1, 400));
        host.allocate(1, 0, &[0.0, 1.0, 0.0, 0.0]);
        assert_eq!(host.domains[&1].pieces[0].memory, [0, 400, 0, 0]);
        host.bind(1, &NodeSet::single(3));
        assert_eq!(host.moves, 0, "a first placement is not a move");
        assert_eq!(host.migrate(150), 150);
        assert_eq!(host.domains[&1].pieces[0].memory, [0, 250, 0, 150]);
        assert_eq!(host.migrate(1000), 250);
        assert_eq!(host.migrated_mib, 400);
        host.bind(1, &NodeSet::single(2));
        assert_eq!(host.moves, 1);
        let load = host.cpu_load();
        assert_eq!(load, [0.0, 0.0, 0.5, 0.0]);
    }
}
