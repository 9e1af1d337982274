//! The host's NUMA topology: one model, filled either from libvirt's
//! capabilities XML ([`capabilities`]) or from a sysfs tree ([`sysfs`]).
//!
//! The model holds only what placement needs and normalises the input's gaps
//! once, here, so nothing downstream has to: missing distances become 10 local
//! / 20 remote, missing sibling data means no SMT, offline CPUs are absent.

pub mod capabilities;
pub mod host_kind;
pub mod sysfs;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::idset::{CpuSet, NodeSet};

pub use host_kind::HostKind;

/// Distance of a node to itself in the ACPI SLIT convention.
pub const LOCAL_DISTANCE: u32 = 10;
/// Distance assumed between two nodes when the source gives none.
pub const DEFAULT_REMOTE_DISTANCE: u32 = 20;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTopology {
    /// Ascending by id. Ids may be sparse (0 and 2).
    pub nodes: Vec<Node>,
    /// Online CPUs, ascending by id. Ids may be sparse and interleave nodes.
    pub cpus: Vec<Cpu>,
    /// CPUs the source listed as present but offline; never placed on.
    pub offline_cpus: CpuSet,
    /// Bare metal or a virtual machine (then numapin manages nested guests).
    pub kind: HostKind,
    /// Whether the host CPU offers hardware virtualisation (vmx/svm), which
    /// host-passthrough and host-model guests inherit.
    pub virtualization_extensions: bool,
    /// The host CPU's architecture (`x86_64`), when the source gives it:
    /// a guest of another architecture is emulated and left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: u32,
    /// Online CPUs of this node; empty for memory-only nodes (CXL, HBM).
    pub cpus: CpuSet,
    /// Total memory of the node in MiB, hugepage pools included.
    pub memory_mib: u64,
    /// Pools of pages larger than the base page, ascending by size.
    pub hugepages: Vec<PagePool>,
    /// Distance to every node of the host, this one included.
    pub distances: BTreeMap<u32, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PagePool {
    pub size_kib: u64,
    /// Pages reserved in the pool.
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    pub id: u32,
    pub node: u32,
    pub socket: Option<u32>,
    pub die: Option<u32>,
    pub core: Option<u32>,
    /// SMT siblings sharing this CPU's core, this CPU included. Only online
    /// CPUs appear; a lone CPU means no SMT.
    pub siblings: CpuSet,
}

/// What a reader hands over before normalisation.
#[derive(Debug, Clone, Default)]
pub struct RawTopology {
    pub nodes: Vec<RawNode>,
    pub cpus: Vec<Cpu>,
    pub offline_cpus: CpuSet,
    pub kind: HostKind,
    pub virtualization_extensions: bool,
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawNode {
    pub id: u32,
    pub memory_mib: u64,
    pub hugepages: Vec<PagePool>,
    /// Possibly incomplete; gaps are filled with the defaults.
    pub distances: BTreeMap<u32, u32>,
}

/// Inconsistencies a reader's input can have that make it unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("no NUMA node found")]
    NoNodes,
    #[error("node {0} is listed twice")]
    DuplicateNode(u32),
    #[error("CPU {0} is listed twice")]
    DuplicateCpu(u32),
    #[error("CPU {cpu} belongs to node {node}, which does not exist")]
    CpuOnUnknownNode { cpu: u32, node: u32 },
    #[error(
        "node {from} gives distance {value} to node {to}; distances must be 10-254 and 10 only to itself"
    )]
    BadDistance { from: u32, to: u32, value: u32 },
}

impl HostTopology {
    /// Builds the model from reader output: sorts, fills defaults, checks.
    pub fn from_raw(raw: RawTopology) -> Result<Self, TopologyError> {
        let RawTopology {
            nodes: mut raw_nodes,
            mut cpus,
            offline_cpus,
            kind,
            virtualization_extensions,
            arch,
        } = raw;
        if raw_nodes.is_empty() {
            return Err(TopologyError::NoNodes);
        }
        raw_nodes.sort_by_key(|n| n.id);
        if let Some(w) = raw_nodes.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(TopologyError::DuplicateNode(w[0].id));
        }
        cpus.sort_by_key(|c| c.id);
        if let Some(w) = cpus.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(TopologyError::DuplicateCpu(w[0].id));
        }
        let node_ids: NodeSet = raw_nodes.iter().map(|n| n.id).collect();
        let online: CpuSet = cpus.iter().map(|c| c.id).collect();
        for cpu in &mut cpus {
            if !node_ids.contains(cpu.node) {
                return Err(TopologyError::CpuOnUnknownNode {
                    cpu: cpu.id,
                    node: cpu.node,
                });
            }
            // Siblings name only online CPUs and always the CPU itself, so
            // `siblings.len() == 1` reliably means "no SMT partner".
            cpu.siblings = cpu.siblings.intersection(&online);
            cpu.siblings.insert(cpu.id);
        }
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        for raw in raw_nodes {
            let mut distances = BTreeMap::new();
            for to in node_ids.iter() {
                let value = match raw.distances.get(&to) {
                    Some(&v) => v,
                    None if to == raw.id => LOCAL_DISTANCE,
                    None => DEFAULT_REMOTE_DISTANCE,
                };
                let plausible = if to == raw.id {
                    value == LOCAL_DISTANCE
                } else {
                    (LOCAL_DISTANCE + 1..=254).contains(&value)
                };
                if !plausible {
                    return Err(TopologyError::BadDistance {
                        from: raw.id,
                        to,
                        value,
                    });
                }
                distances.insert(to, value);
            }
            let mut hugepages = raw.hugepages;
            hugepages.sort_by_key(|p| p.size_kib);
            nodes.push(Node {
                id: raw.id,
                cpus: cpus
                    .iter()
                    .filter(|c| c.node == raw.id)
                    .map(|c| c.id)
                    .collect(),
                memory_mib: raw.memory_mib,
                hugepages,
                distances,
            });
        }
        Ok(Self {
            nodes,
            cpus,
            offline_cpus: offline_cpus.difference(&online),
            kind,
            virtualization_extensions,
            arch,
        })
    }

    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.cpus[i])
    }

    pub fn node_ids(&self) -> NodeSet {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn online_cpus(&self) -> CpuSet {
        self.cpus.iter().map(|c| c.id).collect()
    }

    /// Distance between two nodes; unknown nodes count as remote.
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        self.node(from)
            .and_then(|n| n.distances.get(&to).copied())
            .unwrap_or(if from == to {
                LOCAL_DISTANCE
            } else {
                DEFAULT_REMOTE_DISTANCE
            })
    }

    /// Nodes the given CPUs live on. Word-wise against each node's CPU set:
    /// the planner asks this for every vCPU's affinity, often all CPUs.
    pub fn nodes_of_cpus(&self, cpus: &CpuSet) -> NodeSet {
        self.nodes
            .iter()
            .filter(|n| n.cpus.intersects(cpus))
            .map(|n| n.id)
            .collect()
    }

    /// CPUs of the given nodes.
    pub fn cpus_of_nodes(&self, nodes: &NodeSet) -> CpuSet {
        let mut out = CpuSet::new();
        for id in nodes.iter() {
            if let Some(n) = self.node(id) {
                out.union_with(&n.cpus);
            }
        }
        out
    }

    /// Most SMT threads any core has (1 when there is no SMT).
    pub fn smt_width(&self) -> usize {
        self.cpus
            .iter()
            .map(|c| c.siblings.len())
            .max()
            .unwrap_or(1)
    }

    pub fn total_memory_mib(&self) -> u64 {
        self.nodes.iter().map(|n| n.memory_mib).sum()
    }
}

impl Node {
    /// A node with memory but no CPUs (CXL or HBM expander, offlined CPUs).
    pub fn is_memory_only(&self) -> bool {
        self.cpus.is_empty()
    }

    pub fn pool(&self, size_kib: u64) -> Option<&PagePool> {
        self.hugepages.iter().find(|p| p.size_kib == size_kib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(id: u32, node: u32) -> Cpu {
        Cpu {
            id,
            node,
            socket: None,
            die: None,
            core: None,
            siblings: CpuSet::new(),
        }
    }

    fn raw_node(id: u32) -> RawNode {
        RawNode {
            id,
            memory_mib: 1024,
            ..Default::default()
        }
    }

    #[test]
    fn fills_missing_distances_and_siblings() {
        let topo = HostTopology::from_raw(RawTopology {
            nodes: vec![raw_node(2), raw_node(0)],
            cpus: vec![cpu(1, 2), cpu(0, 0)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(topo.node_ids().to_string(), "0,2");
        assert_eq!(topo.distance(0, 2), DEFAULT_REMOTE_DISTANCE);
        assert_eq!(topo.distance(2, 2), LOCAL_DISTANCE);
        assert_eq!(topo.cpu(1).unwrap().siblings.to_string(), "1");
        assert_eq!(topo.node(2).unwrap().cpus.to_string(), "1");
        assert_eq!(topo.smt_width(), 1);
    }

    #[test]
    fn rejects_inconsistent_input() {
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![raw_node(0)],
            cpus: vec![cpu(0, 1)],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err, TopologyError::CpuOnUnknownNode { cpu: 0, node: 1 });
        let mut bad = raw_node(0);
        bad.distances.insert(1, 5);
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![bad, raw_node(1)],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err,
            TopologyError::BadDistance {
                from: 0,
                to: 1,
                value: 5
            }
        );
        assert_eq!(
            HostTopology::from_raw(RawTopology::default()).unwrap_err(),
            TopologyError::NoNodes
        );
    }
}
