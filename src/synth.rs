//! Synthetic hosts and domains built in code, for tests, property tests and
//! benchmarks of the planner at sizes no fixture file covers.

mod fleet;
mod rng;

pub use fleet::{BenchHost, Fleet, bench_hosts, mixed_fleet};
pub use rng::Rng;

use std::collections::BTreeMap;

use crate::guest::{
    CpuFeature, CpuMode, Domain, DomainPolicy, FeaturePolicy, GuestCell, GuestCpu,
    GuestCpuTopology, HugepageBacking, MemNode, MemoryMode, NumaTune,
};
use crate::idset::{CpuSet, IdSet};
use crate::topology::{Cpu, HostKind, HostTopology, PagePool, RawNode, RawTopology};

/// Shape of a synthetic host.
#[derive(Debug, Clone)]
pub struct HostShape {
    pub nodes: u32,
    pub cores_per_node: u32,
    pub threads_per_core: u32,
    pub mem_mib_per_node: u64,
    /// Nodes per socket (distance 12 within a socket, 32 across, as on
    /// EPYC); 1 gives the two-level 10/21 of most Intel hosts.
    pub nodes_per_socket: u32,
    /// 2 MiB pages reserved per node.
    pub hugepages_2m_per_node: u64,
    /// Memory-only nodes (CXL, HBM) after the CPU nodes, each with this
    /// many MiB, at distance 24 from every CPU node.
    pub memory_only_nodes: Vec<u64>,
}

impl HostShape {
    pub fn new(
        nodes: u32,
        cores_per_node: u32,
        threads_per_core: u32,
        mem_mib_per_node: u64,
    ) -> Self {
        Self {
            nodes,
            cores_per_node,
            threads_per_core,
            mem_mib_per_node,
            nodes_per_socket: 1,
            hugepages_2m_per_node: 0,
            memory_only_nodes: Vec::new(),
        }
    }

    /// Builds the topology with Linux's usual numbering: first thread of
    /// every core across all nodes, then the second threads, and so on.
    pub fn build(&self) -> HostTopology {
        let cores_total = self.nodes * self.cores_per_node;
        let mut cpus = Vec::new();
        for node in 0..self.nodes {
            for core in 0..self.cores_per_node {
                let first = node * self.cores_per_node + core;
                let siblings: CpuSet = (0..self.threads_per_core)
                    .map(|t| first + t * cores_total)
                    .collect();
                for t in 0..self.threads_per_core {
                    cpus.push(Cpu {
                        id: first + t * cores_total,
                        node,
                        socket: Some(node / self.nodes_per_socket.max(1)),
                        die: Some(0),
                        core: Some(core),
                        siblings: siblings.clone(),
                    });
                }
            }
        }
        let all = self.nodes + self.memory_only_nodes.len() as u32;
        let mut nodes: Vec<RawNode> = (0..self.nodes)
            .map(|id| RawNode {
                id,
                memory_mib: self.mem_mib_per_node,
                hugepages: if self.hugepages_2m_per_node > 0 {
                    vec![PagePool {
                        size_kib: 2048,
                        total: self.hugepages_2m_per_node,
                    }]
                } else {
                    Vec::new()
                },
                distances: (0..self.nodes)
                    .map(|to| {
                        let per = self.nodes_per_socket.max(1);
                        let d = if to == id {
                            10
                        } else if per > 1 && to / per == id / per {
                            12
                        } else if per > 1 {
                            32
                        } else {
                            21
                        };
                        (to, d)
                    })
                    .chain((self.nodes..all).map(|to| (to, 24)))
                    .collect(),
            })
            .collect();
        for (k, &mib) in self.memory_only_nodes.iter().enumerate() {
            let id = self.nodes + k as u32;
            nodes.push(RawNode {
                id,
                memory_mib: mib,
                hugepages: Vec::new(),
                distances: (0..all)
                    .map(|to| {
                        let d = if to == id {
                            10
                        } else if to < self.nodes {
                            24
                        } else {
                            30
                        };
                        (to, d)
                    })
                    .collect(),
            });
        }
        HostTopology::from_raw(RawTopology {
            nodes,
            cpus,
            offline_cpus: CpuSet::new(),
            kind: HostKind::BareMetal,
            virtualization_extensions: true,
            arch: Some("x86_64".into()),
        })
        .expect("synthetic topologies are consistent")
    }
}

/// A running KVM domain with no tuning, `vcpus` vCPUs and `mem_mib` MiB.
pub fn domain(name: &str, vcpus: u32, mem_mib: u64) -> Domain {
    Domain {
        name: name.to_string(),
        uuid: format!("00000000-0000-4000-8000-{:012x}", fnv(name)),
        virt_type: "kvm".into(),
        arch: Some("x86_64".into()),
        id: Some(1),
        vcpus_max: vcpus,
        vcpus_current: vcpus,
        online_vcpus: IdSet::first_n(vcpus),
        vcpu_placement_auto: false,
        vcpu_cpuset: None,
        memory_kib: mem_mib * 1024,
        current_memory_kib: mem_mib * 1024,
        hugepages: Vec::new(),
        cpu: GuestCpu::default(),
        cputune: Default::default(),
        numatune: None,
        iothreads: Vec::new(),
        policy: None,
        disks: Vec::new(),
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    }) & 0xffff_ffff_ffff
}

/// Builder-style tweaks for synthetic domains.
pub trait DomainExt: Sized {
    /// Splits vCPUs and memory evenly into `cells` guest NUMA cells.
    fn with_cells(self, cells: u32) -> Self;
    /// Requires vmx: a nested hypervisor.
    fn nested(self) -> Self;
    fn with_policy(self, policy: DomainPolicy) -> Self;
    fn with_threads(self, threads: u32) -> Self;
    fn with_hugepages(self, size_kib: u64) -> Self;
    fn with_numatune(self, mode: MemoryMode, nodeset: &str) -> Self;
    fn with_iothreads(self, n: u32) -> Self;
    /// Pins every vCPU and the emulator to `cpus`.
    fn pinned_to(self, cpus: &str) -> Self;
    /// Binds guest cells' memory with `<memnode>`: (cell, host nodeset).
    fn with_memnodes(self, mode: MemoryMode, binds: &[(u32, &str)]) -> Self;
    /// `<cpu mode='host-model'>`, as virt-install writes it.
    fn host_model(self) -> Self;
    /// The live definition libvirt shows for a running host-model guest:
    /// `mode='custom'` with every host feature required, `vmx` included.
    fn running_host_model(self) -> Self;
}

impl DomainExt for Domain {
    fn with_cells(mut self, cells: u32) -> Self {
        let per = self.vcpus_max / cells;
        self.cpu.cells = (0..cells)
            .map(|c| GuestCell {
                id: c,
                cpus: CpuSet::from_range(
                    c * per,
                    if c == cells - 1 {
                        self.vcpus_max
                    } else {
                        (c + 1) * per
                    },
                ),
                memory_kib: self.memory_kib / cells as u64,
                distances: (0..cells)
                    .map(|o| (o, if o == c { 10 } else { 20 }))
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect();
        self
    }

    fn nested(mut self) -> Self {
        self.cpu.mode = Some(CpuMode::HostPassthrough);
        self.cpu.features.push(CpuFeature {
            name: "vmx".into(),
            policy: FeaturePolicy::Require,
        });
        self
    }

    fn with_policy(mut self, policy: DomainPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    fn with_threads(mut self, threads: u32) -> Self {
        self.cpu.topology = Some(GuestCpuTopology {
            sockets: 1,
            dies: 1,
            cores: self.vcpus_max / threads,
            threads,
        });
        self
    }

    fn with_hugepages(mut self, size_kib: u64) -> Self {
        self.hugepages.push(HugepageBacking {
            size_kib: Some(size_kib),
            nodeset: None,
        });
        self
    }

    fn with_numatune(mut self, mode: MemoryMode, nodeset: &str) -> Self {
        self.numatune = Some(NumaTune {
            mode,
            nodeset: Some(nodeset.parse().expect("valid nodeset")),
            placement_auto: false,
            memnodes: Vec::new(),
        });
        self
    }

    fn with_iothreads(mut self, n: u32) -> Self {
        self.iothreads = (1..=n).collect();
        self
    }

    fn with_memnodes(mut self, mode: MemoryMode, binds: &[(u32, &str)]) -> Self {
        let tune = self.numatune.get_or_insert(NumaTune {
            mode,
            nodeset: None,
            placement_auto: false,
            memnodes: Vec::new(),
        });
        tune.memnodes = binds
            .iter()
            .map(|(cell, nodes)| MemNode {
                cellid: *cell,
                mode,
                nodeset: nodes.parse().expect("valid nodeset"),
            })
            .collect();
        self
    }

    fn host_model(mut self) -> Self {
        self.cpu.mode = Some(CpuMode::HostModel);
        self.cpu.model = None;
        self.cpu.features.clear();
        self
    }

    fn running_host_model(mut self) -> Self {
        self.cpu.mode = Some(CpuMode::Custom);
        self.cpu.model = Some("Skylake-Client-IBRS".into());
        self.cpu.features = ["ss", "vmx", "pdcm", "hypervisor", "tsc_adjust", "md-clear"]
            .into_iter()
            .map(|name| CpuFeature {
                name: name.into(),
                policy: FeaturePolicy::Require,
            })
            .collect();
        self
    }

    fn pinned_to(mut self, cpus: &str) -> Self {
        let set: CpuSet = cpus.parse().expect("valid cpulist");
        for v in 0..self.vcpus_current {
            self.cputune.vcpupin.insert(v, set.clone());
        }
        self.cputune.emulatorpin = Some(set);
        self
    }
}
