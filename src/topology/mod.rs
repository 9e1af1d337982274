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
/// Largest distance the ACPI SLIT encodes (255 means unreachable).
pub const MAX_DISTANCE: u32 = 254;
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
    #[error("no online CPU: every CPU listed is offline, or none is listed")]
    NoOnlineCpus,
    #[error("node {from} gives a distance to node {to}, which does not exist")]
    DistanceToUnknownNode { from: u32, to: u32 },
    #[error("node {node}: {what} add up to more memory than numapin can count (2^64 KiB)")]
    MemoryOverflow { node: u32, what: &'static str },
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
        // Checked here, not left to config validation: a host with no CPU
        // to place on is the input's fault, whatever the config says.
        if cpus.is_empty() {
            return Err(TopologyError::NoOnlineCpus);
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
        let mut all_kib: u64 = 0;
        for raw in raw_nodes {
            if let Some(&to) = raw.distances.keys().find(|to| !node_ids.contains(**to)) {
                return Err(TopologyError::DistanceToUnknownNode { from: raw.id, to });
            }
            // Every total derived from these (node memory plus pools, the
            // host's total) must be countable, so sums never wrap.
            let overflow = |what| TopologyError::MemoryOverflow { node: raw.id, what };
            let pools_kib = raw.hugepages.iter().try_fold(0u64, |sum, p| {
                p.size_kib
                    .checked_mul(p.total)
                    .and_then(|kib| sum.checked_add(kib))
            });
            let node_kib = pools_kib
                .and_then(|pools| raw.memory_mib.checked_mul(1024)?.checked_add(pools))
                .ok_or(overflow("its memory and hugepage pools"))?;
            all_kib = all_kib
                .checked_add(node_kib)
                .ok_or(overflow("the memory of all nodes up to it"))?;
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
                    (LOCAL_DISTANCE + 1..=MAX_DISTANCE).contains(&value)
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
        // `from_raw` checked that the sum fits.
        self.nodes
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(n.memory_mib))
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
            cpus: vec![cpu(0, 0)],
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

    #[test]
    fn a_host_without_online_cpus_is_rejected_as_input() {
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![raw_node(0)],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err, TopologyError::NoOnlineCpus);
    }

    #[test]
    fn a_distance_to_a_missing_node_is_rejected() {
        let mut node = raw_node(0);
        node.distances.insert(7, 20);
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![node],
            cpus: vec![cpu(0, 0)],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err, TopologyError::DistanceToUnknownNode { from: 0, to: 7 });
    }

    #[test]
    fn memory_totals_that_would_wrap_are_rejected() {
        let mut huge = raw_node(0);
        huge.hugepages = vec![PagePool {
            size_kib: 1 << 20,
            total: 1 << 44,
        }];
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![huge],
            cpus: vec![cpu(0, 0)],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, TopologyError::MemoryOverflow { node: 0, .. }),
            "{err}"
        );
        let mut a = raw_node(0);
        a.memory_mib = u64::MAX / 1024;
        let mut b = raw_node(1);
        b.memory_mib = u64::MAX / 1024;
        let err = HostTopology::from_raw(RawTopology {
            nodes: vec![a, b],
            cpus: vec![cpu(0, 0)],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(err, TopologyError::MemoryOverflow { node: 1, .. }),
            "{err}"
        );
    }
}
