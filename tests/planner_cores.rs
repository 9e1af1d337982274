//! The planner weighs CPU demand against cores: a node whose busy vCPUs
//! outnumber its cores, where they share cores with SMT siblings and slow
//! down, is relieved even where memory is the larger part of every node's
//! pressure; a node just below its cores is not.

use numapin::config::Config;
use numapin::guest::Domain;
use numapin::observations::{DomainObservation, Observations};
use numapin::planner::{DomainInput, Plan, PlanInput, Status, plan};
use numapin::synth::{DomainExt, HostShape, domain};
use numapin::topology::HostTopology;

/// Two nodes of 8 cores x 2 threads, 64 GiB each.
fn host() -> HostTopology {
    HostShape::new(2, 8, 2, 64 * 1024).build()
}

/// Guests pinned where their memory is, each as (name, vCPUs, GiB, node);
/// every vCPU busy (unmeasured: `planner.default_vcpu_load` 1).
fn run(topo: &HostTopology, guests: &[(&str, u32, u64, u32)]) -> Plan {
    let mut obs = Observations::default();
    let domains: Vec<Domain> = guests
        .iter()
        .map(|&(name, vcpus, gib, node)| {
            obs.domains.insert(
                name.to_string(),
                DomainObservation {
                    memory_mib: [(node, gib * 1024)].into_iter().collect(),
                    ..Default::default()
                },
            );
            let cpus = topo.node(node).unwrap().cpus.to_string();
            domain(name, vcpus, gib * 1024).pinned_to(&cpus)
        })
        .collect();
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    let inputs: Vec<DomainInput> = domains
        .into_iter()
        .map(|live| DomainInput::new(live, None))
        .collect();
    plan(&PlanInput {
        topology: topo,
        domains: &inputs,
        observations: &obs,
        config: &config,
        rebalance_all: false,
        confirm: None,
    })
}

#[test]
fn a_node_past_its_cores_is_relieved_though_memory_is_even() {
    let topo = host();
    // 46 GiB of 62 usable on each node (74%); node 0 has 12 busy vCPUs on
    // 8 cores, node 1 has 4. Against threads node 0's CPU was 12 / 16 =
    // 75%, level with memory: no gap, no move. Counting what the 4 vCPUs
    // past the cores lose, it is (12 + 0.7 x 4) / 16 = 92.5%.
    let p = run(
        &topo,
        &[
            ("a", 6, 40, 0),
            ("b", 4, 4, 0),
            ("c", 2, 2, 0),
            ("d", 2, 44, 1),
            ("e", 2, 2, 1),
        ],
    );
    assert_eq!(p.score.moves, 1, "{:#?}", p.domains);
    let moved = p
        .domains
        .iter()
        .find(|d| d.status == Status::Moved)
        .unwrap();
    // The guest that evens the nodes most for the memory it moves.
    assert_eq!(
        (moved.name.as_str(), moved.nodes.to_string()),
        ("c", "1".into())
    );
    assert!(
        moved.reason.contains("node 0 was 92% loaded"),
        "{}",
        moved.reason
    );
}

#[test]
fn a_node_within_its_cores_is_not_relieved_for_cpu_evenness() {
    let topo = host();
    // As above with 8 busy vCPUs on node 0: every one has a core, nothing
    // is lost, and memory decides: the nodes are even.
    let p = run(
        &topo,
        &[
            ("a", 2, 40, 0),
            ("b", 4, 4, 0),
            ("c", 2, 2, 0),
            ("d", 2, 44, 1),
            ("e", 2, 2, 1),
        ],
    );
    assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
    assert!(p.domains.iter().all(|d| d.status == Status::Kept));
}
