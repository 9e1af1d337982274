//! Seeded mixed fleets on the benchmark hosts: many small guests, some
//! medium and a few large ones, some with guest NUMA cells, SMT,
//! iothreads or hugepages, a few nested hypervisors, dedicated or excluded
//! guests; about
//! a third already pinned to a node by an earlier cycle, a few bound to a
//! node by a legacy strict numatune, and most with measured memory and
//! vCPU load.

use crate::guest::{Domain, DomainPolicy, MemoryMode};
use crate::observations::{DomainObservation, Observations};
use crate::planner::DomainInput;
use crate::topology::HostTopology;

use super::{DomainExt, HostShape, Rng, domain};

/// One benchmark host: a label for tables and its shape.
#[derive(Debug, Clone)]
pub struct BenchHost {
    pub label: &'static str,
    pub shape: HostShape,
}

/// The three benchmark hosts: a two-socket server, an eight-node EPYC-like
/// host (four nodes per socket) and a sixteen-node one (eight per socket),
/// the larger two with a pool of 2 MiB pages on every node.
pub fn bench_hosts() -> Vec<BenchHost> {
    let mut epyc = HostShape::new(8, 16, 2, 256 * 1024);
    epyc.nodes_per_socket = 4;
    epyc.hugepages_2m_per_node = 16 * 1024;
    let mut big = HostShape::new(16, 16, 2, 768 * 1024);
    big.nodes_per_socket = 8;
    big.hugepages_2m_per_node = 32 * 1024;
    vec![
        BenchHost {
            label: "2 nodes / 80 CPUs",
            shape: HostShape::new(2, 20, 2, 384 * 1024),
        },
        BenchHost {
            label: "8 nodes / 256 CPUs",
            shape: epyc,
        },
        BenchHost {
            label: "16 nodes / 512 CPUs",
            shape: big,
        },
    ]
}

/// Domains as the planner gets them, and what was measured about them.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub domains: Vec<DomainInput>,
    pub observations: Observations,
}

/// A mixed fleet of `count` domains on `topo`, the same for the same seed.
pub fn mixed_fleet(topo: &HostTopology, count: usize, seed: u64) -> Fleet {
    let mut rng = Rng::new(seed);
    let mut fleet = Fleet {
        domains: Vec::with_capacity(count),
        observations: Observations::default(),
    };
    let hugepages = topo.nodes.iter().any(|n| n.pool(2048).is_some());
    let cpu_nodes: Vec<u32> = topo
        .nodes
        .iter()
        .filter(|n| !n.cpus.is_empty())
        .map(|n| n.id)
        .collect();
    for i in 0..count {
        let name = format!("vm-{i:04}");
        let (mut persistent, home) = guest(&mut rng, &name, &cpu_nodes);
        if hugepages && rng.chance(0.05) {
            persistent = persistent.with_hugepages(2048);
        }
        let mut live = persistent.clone();
        if let Some(Home::Pinned(node)) = home {
            let cpus = &topo.node(node).expect("picked from the topology").cpus;
            live = live.pinned_to(&cpus.to_string());
        }
        if rng.chance(0.7) {
            let obs = observe(&mut rng, &live, home, &cpu_nodes);
            fleet.observations.domains.insert(name, obs);
        }
        fleet.domains.push(DomainInput::new(live, Some(persistent)));
    }
    fleet
}

/// Where a guest was before this cycle.
#[derive(Debug, Clone, Copy)]
enum Home {
    /// Pinned to one node by an earlier cycle (live pins, none persistent).
    Pinned(u32),
    /// Memory bound to one node by a strict numatune.
    Bound(u32),
}

impl Home {
    fn node(self) -> u32 {
        match self {
            Home::Pinned(n) | Home::Bound(n) => n,
        }
    }
}

/// The persistent definition of one guest and where it runs now.
fn guest(rng: &mut Rng, name: &str, cpu_nodes: &[u32]) -> (Domain, Option<Home>) {
    let class = rng.unit();
    let (vcpus, mem_gib, cells) = if class < 0.75 {
        (*rng.pick(&[1, 1, 2, 2, 4]), *rng.pick(&[1, 2, 4, 8]), 0)
    } else if class < 0.95 {
        let cells = if rng.chance(0.15) { 2 } else { 0 };
        (*rng.pick(&[4, 6, 8]), *rng.pick(&[8, 16, 32]), cells)
    } else {
        let cells = if rng.chance(0.5) { 2 } else { 0 };
        (*rng.pick(&[16, 24, 32]), *rng.pick(&[48, 64, 128]), cells)
    };
    let mut d = domain(name, vcpus, mem_gib * 1024);
    if vcpus % 2 == 0 && rng.chance(0.3) {
        d = d.with_threads(2);
    }
    if cells > 1 {
        d = d.with_cells(cells);
    }
    let kind = rng.unit();
    if kind < 0.02 {
        d = d.nested();
    } else if kind < 0.04 {
        d = d.with_policy(DomainPolicy::Dedicated);
    } else if kind < 0.06 {
        d = d.with_policy(DomainPolicy::Exclude);
    }
    if rng.chance(0.2) {
        d = d.with_iothreads(rng.between(1, 2) as u32);
    }
    let state = rng.unit();
    let node = *rng.pick(cpu_nodes);
    let home = if cells > 1 {
        None
    } else if state < 0.35 {
        Some(Home::Pinned(node))
    } else if state < 0.40 {
        d = d.with_numatune(MemoryMode::Strict, &node.to_string());
        Some(Home::Bound(node))
    } else {
        None
    };
    (d, home)
}

/// Measured memory per node and vCPU load: a placed guest's memory mostly
/// on its node, sometimes partly elsewhere; an unplaced one's over one to
/// three nodes.
fn observe(rng: &mut Rng, d: &Domain, home: Option<Home>, cpu_nodes: &[u32]) -> DomainObservation {
    let mib = d.memory_mib();
    let mut memory_mib = std::collections::BTreeMap::new();
    match home {
        Some(h) if rng.chance(0.85) => {
            memory_mib.insert(h.node(), mib);
        }
        Some(h) => {
            let here = mib * 6 / 10;
            memory_mib.insert(h.node(), here);
            *memory_mib.entry(*rng.pick(cpu_nodes)).or_insert(0) += mib - here;
        }
        None => {
            let spans = rng.between(1, 3.min(cpu_nodes.len() as u64));
            let mut left = mib;
            for k in 0..spans {
                let share = if k + 1 == spans { left } else { left / 2 };
                *memory_mib.entry(*rng.pick(cpu_nodes)).or_insert(0) += share;
                left -= share;
            }
        }
    }
    let vcpu_load = (0..d.vcpus_current)
        .map(|_| (5.0 + rng.below(56) as f64) / 100.0)
        .collect();
    DomainObservation {
        memory_mib,
        vcpu_load,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::planner::{PlanInput, plan};

    #[test]
    fn a_fleet_is_reproducible_from_its_seed_and_plans() {
        let topo = bench_hosts()[1].shape.build();
        let a = mixed_fleet(&topo, 60, 42);
        let b = mixed_fleet(&topo, 60, 42);
        let live = |f: &Fleet| f.domains.iter().map(|d| d.live.clone()).collect::<Vec<_>>();
        assert_eq!(live(&a), live(&b));
        assert_eq!(a.observations, b.observations);
        assert_ne!(live(&a), live(&mixed_fleet(&topo, 60, 43)));
        let config = Config::default();
        let p = plan(&PlanInput {
            topology: &topo,
            domains: &a.domains,
            observations: &a.observations,
            config: &config,
            rebalance_all: false,
            confirm: None,
        });
        assert_eq!(p.domains.len(), 60);
    }
}
