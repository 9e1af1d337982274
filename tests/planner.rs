//! The planner's rules, each on a small synthetic host, and its invariants
//! over random hosts and guests (property tests).

use std::collections::BTreeMap;

use numapin::config::{Config, DomainRule, Strategy as Placement};
use numapin::guest::{Domain, DomainPolicy, MemoryMode};
use numapin::idset::CpuSet;
use numapin::observations::{DomainObservation, Observations};
use numapin::planner::{Action, CpuPolicy, DomainInput, DomainPlan, Plan, PlanInput, Status, plan};
use numapin::synth::{DomainExt, HostShape, domain};
use numapin::topology::HostTopology;
use proptest::prelude::*;

fn inputs(domains: Vec<Domain>) -> Vec<DomainInput> {
    domains
        .into_iter()
        .map(|live| DomainInput::new(live, None))
        .collect()
}

fn run(topo: &HostTopology, domains: Vec<Domain>, obs: &Observations, config: &Config) -> Plan {
    plan(&PlanInput {
        topology: topo,
        domains: &inputs(domains),
        observations: obs,
        config,
        rebalance_all: false,
        confirm: None,
    })
}

fn simple(topo: &HostTopology, domains: Vec<Domain>) -> Plan {
    run(topo, domains, &Observations::default(), &Config::default())
}

fn get<'a>(plan: &'a Plan, name: &str) -> &'a DomainPlan {
    plan.domains
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} not in plan"))
}

/// Two sockets, 16 cores x 2 threads each, 64 GiB per node.
fn two_socket() -> HostTopology {
    HostShape::new(2, 16, 2, 64 * 1024).build()
}

fn observed_memory(entries: &[(&str, &[(u32, u64)])]) -> Observations {
    let mut obs = Observations::default();
    for (name, mem) in entries {
        obs.domains.insert(
            name.to_string(),
            DomainObservation {
                memory_mib: mem.iter().copied().collect(),
                vcpu_load: Vec::new(),
                ..Default::default()
            },
        );
    }
    obs
}

#[test]
fn a_guest_that_fits_one_node_gets_one_node_for_everything() {
    let topo = two_socket();
    let p = simple(&topo, vec![domain("web", 4, 8192).with_iothreads(2)]);
    let d = get(&p, "web");
    assert_eq!(d.status, Status::Placed);
    assert_eq!(d.nodes.len(), 1);
    let node = topo.node(d.nodes.first().unwrap()).unwrap();
    assert_eq!(d.vcpupin.len(), 4);
    for cpus in d
        .vcpupin
        .values()
        .chain([&d.emulatorpin])
        .chain(d.iothreadpin.values())
    {
        assert_eq!(
            cpus, &node.cpus,
            "vCPUs, emulator and iothreads share the node"
        );
    }
    assert_eq!(d.nodeset, d.nodes);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::MigratePages { .. }))
    );
}

#[test]
fn spread_balances_and_pack_consolidates() {
    let topo = two_socket();
    let guests = || {
        (0..4)
            .map(|i| domain(&format!("g{i}"), 4, 8192))
            .collect::<Vec<_>>()
    };
    let p = simple(&topo, guests());
    let per_node = |p: &Plan| {
        let mut count = BTreeMap::new();
        for d in &p.domains {
            *count.entry(d.nodes.to_string()).or_insert(0) += 1;
        }
        count
    };
    assert_eq!(
        per_node(&p),
        BTreeMap::from([("0".to_string(), 2), ("1".to_string(), 2)])
    );
    let mut pack = Config::default();
    pack.planner.strategy = Placement::Pack;
    let p = run(&topo, guests(), &Observations::default(), &pack);
    assert_eq!(per_node(&p), BTreeMap::from([("0".to_string(), 4)]));
}

#[test]
fn a_guest_larger_than_a_node_spans_the_closest_nodes_and_gets_advice() {
    let mut shape = HostShape::new(4, 8, 2, 64 * 1024);
    shape.nodes_per_socket = 2;
    let topo = shape.build();
    let p = simple(&topo, vec![domain("wide", 24, 32 * 1024)]);
    let d = get(&p, "wide");
    assert_eq!(d.nodes.len(), 2, "{d:?}");
    let n: Vec<u32> = d.nodes.iter().collect();
    assert_eq!(
        topo.distance(n[0], n[1]),
        12,
        "same-socket nodes are closest"
    );
    assert!(
        d.advice.iter().any(|a| a.contains("vNUMA cells")),
        "{:?}",
        d.advice
    );
    assert!(d.reason.contains("larger than any node"), "{}", d.reason);
}

#[test]
fn guest_cells_map_whole_onto_distinct_nodes() {
    let topo = two_socket();
    let p = simple(&topo, vec![domain("cells", 8, 16 * 1024).with_cells(2)]);
    let d = get(&p, "cells");
    assert_eq!(d.cells.len(), 2);
    assert_ne!(d.cells[&0], d.cells[&1]);
    for (cell, node) in &d.cells {
        let node_cpus = &topo.node(*node).unwrap().cpus;
        for v in (cell * 4)..(cell * 4 + 4) {
            assert!(
                d.vcpupin[&v].is_subset(node_cpus),
                "cell {cell} vCPU {v} off node {node}"
            );
        }
    }
}

#[test]
fn nested_hypervisors_get_exclusive_cpus_with_smt_pairs_on_siblings() {
    let topo = two_socket();
    let p = simple(
        &topo,
        vec![
            domain("nested-a", 8, 8192).nested().with_threads(2),
            domain("nested-b", 8, 8192).nested().with_threads(2),
            domain("plain", 4, 4096),
        ],
    );
    let mut all = CpuSet::new();
    for name in ["nested-a", "nested-b"] {
        let d = get(&p, name);
        assert_eq!(d.policy, Some(CpuPolicy::Dedicated));
        assert!(d.nested_hypervisor);
        for (v, cpus) in &d.vcpupin {
            assert_eq!(cpus.len(), 1, "{name} vCPU {v} is 1:1");
            let cpu = cpus.first().unwrap();
            assert!(!all.contains(cpu), "CPU {cpu} given twice");
            all.insert(cpu);
        }
        for pair in 0..4 {
            let a = d.vcpupin[&(pair * 2)].first().unwrap();
            let b = d.vcpupin[&(pair * 2 + 1)].first().unwrap();
            assert!(
                topo.cpu(a).unwrap().siblings.contains(b),
                "{name}: guest core {pair} on host siblings"
            );
        }
        assert!(
            !d.emulatorpin.intersects(&all),
            "emulator stays off dedicated CPUs"
        );
    }
    for cpus in get(&p, "plain").vcpupin.values() {
        assert!(!cpus.intersects(&all), "shared vCPUs avoid dedicated CPUs");
    }
}

#[test]
fn excluded_and_hand_pinned_domains_are_left_alone() {
    let topo = two_socket();
    let mut config = Config::default();
    config.domains.push(DomainRule {
        name: "legacy-*".into(),
        policy: DomainPolicy::Exclude,
    });
    let domains = vec![
        domain("meta", 2, 1024).with_policy(DomainPolicy::Exclude),
        domain("legacy-1", 2, 1024),
        domain("hand", 2, 1024).pinned_to("3"),
    ];
    let p = run(&topo, domains.clone(), &Observations::default(), &config);
    for (name, why) in [
        ("meta", "metadata"),
        ("legacy-1", "legacy-*"),
        ("hand", "by hand"),
    ] {
        let d = get(&p, name);
        assert!(!d.managed && d.status == Status::LeftAlone && d.actions.is_empty());
        assert!(d.reason.contains(why), "{name}: {}", d.reason);
    }
    config.planner.manage_pinned = true;
    let p = run(&topo, domains, &Observations::default(), &config);
    assert!(get(&p, "hand").managed);
}

#[test]
fn a_well_placed_domain_stays_unless_the_gain_passes_the_threshold() {
    let topo = two_socket();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    // Node 0 a little busier than node 1 (3 of 32 CPUs): below a
    // 10-point threshold.
    let domains = vec![
        domain("a", 2, 2048).pinned_to(&node0),
        domain("b", 1, 2048).pinned_to(&node0),
    ];
    let obs = observed_memory(&[("a", &[(0, 2048)]), ("b", &[(0, 2048)])]);
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    config.planner.min_gain = 0.1;
    let p = run(&topo, domains.clone(), &obs, &config);
    assert!(
        p.domains
            .iter()
            .all(|d| d.status == Status::Kept && d.actions.is_empty()),
        "{p:#?}"
    );
    // A rebalance request reconsiders them.
    let p = plan(&PlanInput {
        topology: &topo,
        domains: &inputs(domains),
        observations: &obs,
        config: &config,
        rebalance_all: true,
        confirm: None,
    });
    assert_eq!(p.score.moves, 1, "{:#?}", p.domains);
}

#[test]
fn a_gap_above_the_threshold_is_narrowed_by_a_move_smaller_than_the_threshold() {
    let topo = two_socket();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    // Node 0 has 5 of 32 CPUs busy, node 1 none: a 16-point gap. Moving
    // either domain lowers node 0 by under 10 points but leaves a 3-point gap.
    let domains = vec![
        domain("a", 3, 1024).pinned_to(&node0),
        domain("b", 2, 1024).pinned_to(&node0),
    ];
    let obs = observed_memory(&[("a", &[(0, 1024)]), ("b", &[(0, 1024)])]);
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    let p = run(&topo, domains, &obs, &config);
    assert_eq!(p.score.moves, 1, "{p:#?}");
    let moved = p
        .domains
        .iter()
        .find(|d| d.status == Status::Moved)
        .unwrap();
    assert!(
        moved.reason.contains("narrows the gap by 12 points"),
        "{}",
        moved.reason
    );
}

#[test]
fn when_nothing_on_the_busiest_node_can_move_the_next_busiest_is_relieved() {
    let topo = HostShape::new(3, 4, 1, 16 * 1024).build();
    let cpus = |n: u32| topo.node(n).unwrap().cpus.to_string();
    // Node 0 is full with a domain numapin must leave alone; node 1 is
    // three quarters busy with two it manages; node 2 is idle.
    let domains = vec![
        domain("fixed", 4, 1024)
            .pinned_to(&cpus(0))
            .with_policy(DomainPolicy::Exclude),
        domain("a", 2, 1024).pinned_to(&cpus(1)),
        domain("b", 1, 1024).pinned_to(&cpus(1)),
    ];
    let obs = observed_memory(&[("a", &[(1, 1024)]), ("b", &[(1, 1024)])]);
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    let p = run(&topo, domains, &obs, &config);
    assert_eq!(p.score.moves, 1, "{p:#?}");
    let moved = p
        .domains
        .iter()
        .find(|d| d.status == Status::Moved)
        .unwrap();
    assert_eq!(moved.nodes.to_string(), "2");
    assert_eq!(get(&p, "fixed").status, Status::LeftAlone);
}

#[test]
fn a_split_guest_goes_to_the_least_loaded_of_equally_close_node_sets() {
    // Four nodes, all equally far apart; nodes 0 and 1 busy with domains
    // numapin leaves alone.
    let topo = HostShape::new(4, 4, 1, 16 * 1024).build();
    let busy = |name: &str, node: u32| {
        domain(name, 4, 2048)
            .pinned_to(&topo.node(node).unwrap().cpus.to_string())
            .with_policy(DomainPolicy::Exclude)
    };
    let domains = vec![
        busy("busy0", 0),
        busy("busy1", 1),
        domain("big", 6, 20 * 1024),
    ];
    let p = simple(&topo, domains);
    let big = get(&p, "big");
    assert_eq!(big.status, Status::Placed, "{}", big.reason);
    assert_eq!(big.nodes.to_string(), "2-3", "{}", big.reason);
}

#[test]
fn moves_per_cycle_are_bounded() {
    let topo = two_socket();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    let names: Vec<String> = (0..6).map(|i| format!("d{i}")).collect();
    let on_node0: &[(u32, u64)] = &[(0, 4096)];
    let entries: Vec<(&str, &[(u32, u64)])> =
        names.iter().map(|n| (n.as_str(), on_node0)).collect();
    let obs = observed_memory(&entries);
    let domains: Vec<Domain> = names
        .iter()
        .map(|n| domain(n, 8, 4096).pinned_to(&node0))
        .collect();
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    config.planner.max_moves_per_cycle = 1;
    let p = run(&topo, domains, &obs, &config);
    assert_eq!(
        p.score.moves,
        1,
        "{:#?}",
        p.domains
            .iter()
            .map(|d| (&d.name, d.status, &d.reason))
            .collect::<Vec<_>>()
    );
}

#[test]
fn reserved_cpus_and_memory_only_nodes_never_get_vcpus() {
    let mut topo = two_socket();
    // Add a memory-only node 2 by rebuilding from raw parts.
    topo.nodes.push(numapin::topology::Node {
        id: 2,
        cpus: CpuSet::new(),
        memory_mib: 512 * 1024,
        hugepages: Vec::new(),
        distances: BTreeMap::from([(0, 24), (1, 24), (2, 10)]),
    });
    let mut config = Config::default();
    config.host.reserved_cpus = "0,32".parse().unwrap();
    let p = run(
        &topo,
        (0..6).map(|i| domain(&format!("g{i}"), 2, 2048)).collect(),
        &Observations::default(),
        &config,
    );
    for d in &p.domains {
        assert!(!d.nodes.contains(2));
        for cpus in d.vcpupin.values().chain([&d.emulatorpin]) {
            assert!(
                !cpus.contains(0) && !cpus.contains(32),
                "{}: {cpus}",
                d.name
            );
        }
    }
}

#[test]
fn hugepage_guests_count_against_their_pool() {
    let mut shape = HostShape::new(2, 8, 1, 64 * 1024);
    shape.hugepages_2m_per_node = 4096; // 8 GiB per node
    let topo = shape.build();
    let p = simple(
        &topo,
        vec![
            domain("hp-a", 2, 6 * 1024).with_hugepages(2048),
            domain("hp-b", 2, 6 * 1024).with_hugepages(2048),
            domain("hp-c", 2, 6 * 1024).with_hugepages(2048),
        ],
    );
    let placed: Vec<_> = p
        .domains
        .iter()
        .filter(|d| d.status == Status::Placed)
        .collect();
    assert_eq!(placed.len(), 2, "two pools of 8 GiB hold two 6 GiB guests");
    assert_ne!(placed[0].nodes, placed[1].nodes);
    assert_eq!(get(&p, "hp-c").status, Status::NoFit);
}

#[test]
fn memory_binding_decides_how_memory_moves() {
    let topo = two_socket();
    let p = simple(
        &topo,
        vec![
            domain("strict", 4, 4096).with_numatune(MemoryMode::Strict, "1"),
            domain("restrictive", 4, 4096).with_numatune(MemoryMode::Restrictive, "1"),
        ],
    );
    let strict = get(&p, "strict");
    assert_eq!(
        strict.nodes.to_string(),
        "1",
        "vCPUs follow memory that cannot move"
    );
    assert!(!strict.actions.iter().any(|a| matches!(
        a,
        Action::SetMemoryNodeset { .. } | Action::MigratePages { .. }
    )));
    assert!(strict.advice.iter().any(|a| a.contains("restrictive")));
    let r = get(&p, "restrictive");
    let wants = r.nodeset.to_string();
    assert!(
        wants == "1"
            || r.actions.contains(&Action::SetMemoryNodeset {
                nodeset: r.nodeset.clone()
            }),
        "{r:?}"
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    let topo = two_socket();
    let domains: Vec<Domain> = vec![
        domain("c", 4, 4096),
        domain("a", 8, 16384).with_cells(2),
        domain("b", 4, 2048).nested(),
        domain("d", 2, 1024),
    ];
    let one = serde_json::to_string(&simple(&topo, domains.clone())).unwrap();
    let mut reversed = domains;
    reversed.reverse();
    let two = serde_json::to_string(&simple(&topo, reversed)).unwrap();
    assert_eq!(one, two);
}

// ---- property tests --------------------------------------------------------

#[derive(Debug, Clone)]
struct GuestSpec {
    vcpus: u32,
    mem_mib: u64,
    cells: u32,
    nested: bool,
    threads: u32,
    dedicated: bool,
    /// Binds each cell's memory with `<memnode>` to CPU node (cell + this)
    /// modulo the host's CPU nodes, when the guest has cells.
    bind_from: Option<u32>,
}

fn guest_spec() -> impl Strategy<Value = GuestSpec> {
    (
        1u32..=12,
        256u64..=24 * 1024,
        0u32..=2,
        any::<bool>(),
        1u32..=2,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, 0u32..4),
    )
        .prop_map(
            |(vcpus, mem_mib, cells, nested, threads, dedicated, bind_from)| {
                let vcpus = if threads == 2 { vcpus * 2 } else { vcpus };
                let cells = if cells > 1 && vcpus >= cells * threads {
                    cells
                } else {
                    0
                };
                GuestSpec {
                    vcpus,
                    mem_mib,
                    cells,
                    nested,
                    threads,
                    dedicated,
                    bind_from,
                }
            },
        )
}

fn host_shape() -> impl Strategy<Value = HostShape> {
    (
        1u32..=4,
        1u32..=8,
        1u32..=2,
        2048u64..=64 * 1024,
        1u32..=2,
        prop::collection::vec(1024u64..=256 * 1024, 0..=2),
    )
        .prop_map(|(nodes, cores, threads, mem, per_socket, memory_only)| {
            let mut s = HostShape::new(nodes, cores, threads, mem);
            s.nodes_per_socket = per_socket;
            s.memory_only_nodes = memory_only;
            s
        })
}

/// Guests with `<memnode>` bindings to CPU nodes of a host with `cpu_nodes`.
fn build_bound_guests(specs: &[GuestSpec], cpu_nodes: u32) -> Vec<Domain> {
    build_guests(specs)
        .into_iter()
        .zip(specs)
        .map(|(d, s)| match s.bind_from {
            Some(from) if s.cells > 1 => {
                let binds: Vec<(u32, String)> = (0..s.cells)
                    .map(|c| (c, ((c + from) % cpu_nodes).to_string()))
                    .collect();
                let binds: Vec<(u32, &str)> = binds.iter().map(|(c, n)| (*c, n.as_str())).collect();
                d.with_memnodes(MemoryMode::Strict, &binds)
            }
            _ => d,
        })
        .collect()
}

fn build_guests(specs: &[GuestSpec]) -> Vec<Domain> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut d = domain(&format!("vm{i:02}"), s.vcpus, s.mem_mib);
            if s.threads == 2 {
                d = d.with_threads(2);
            }
            if s.cells > 1 {
                d = d.with_cells(s.cells);
            }
            if s.nested {
                d = d.nested();
            }
            if s.dedicated {
                d = d.with_policy(DomainPolicy::Dedicated);
            }
            d
        })
        .collect()
}

/// Guests in the plan's order (by name).
fn sorted(guests: &[Domain]) -> Vec<&Domain> {
    let mut out: Vec<&Domain> = guests.iter().collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn check_invariants(topo: &HostTopology, config: &Config, p: &Plan) -> Result<(), TestCaseError> {
    let usable = topo.online_cpus().difference(&config.host.reserved_cpus);
    let mut dedicated = CpuSet::new();
    for d in &p.domains {
        if !matches!(d.status, Status::Placed | Status::Moved | Status::Kept) {
            continue;
        }
        prop_assert_eq!(
            d.vcpupin.len() as u32,
            d.vcpus,
            "{} has a pin per vCPU",
            &d.name
        );
        for (v, cpus) in d
            .vcpupin
            .iter()
            .map(|(v, c)| (Some(*v), c))
            .chain([(None, &d.emulatorpin)])
        {
            prop_assert!(!cpus.is_empty(), "{} {:?}: empty pin", &d.name, v);
            prop_assert!(
                cpus.is_subset(&usable),
                "{} {:?}: {} not usable",
                &d.name,
                v,
                cpus
            );
            prop_assert!(
                topo.nodes_of_cpus(cpus).is_subset(&d.nodes),
                "{} {:?}: pin off its nodes",
                &d.name,
                v
            );
        }
        if d.policy == Some(CpuPolicy::Dedicated) {
            for cpus in d.vcpupin.values() {
                prop_assert_eq!(cpus.len(), 1);
                let cpu = cpus.first().unwrap();
                prop_assert!(!dedicated.contains(cpu), "CPU {} dedicated twice", cpu);
                dedicated.insert(cpu);
            }
        }
        for node in d.cells.values() {
            prop_assert!(topo.node(*node).is_some_and(|n| !n.cpus.is_empty()));
        }
        // Memory goes with the vCPUs, and only beyond them to memory-only
        // nodes, for what the plan says it puts there.
        let far: CpuSet = d.memory_only_mib.keys().copied().collect();
        for n in far.iter() {
            prop_assert!(
                topo.node(n).is_some_and(|n| n.cpus.is_empty()),
                "{}: node {} has CPUs",
                &d.name,
                n
            );
        }
        if d.nodes.len() == 1 {
            prop_assert_eq!(
                &d.nodeset,
                &d.nodes.union(&far),
                "{}: memory with its vCPUs",
                &d.name
            );
        }
    }
    for d in p
        .domains
        .iter()
        .filter(|d| d.policy != Some(CpuPolicy::Dedicated))
    {
        if matches!(d.status, Status::Placed | Status::Moved | Status::Kept) {
            for cpus in d.vcpupin.values() {
                prop_assert!(
                    !cpus.intersects(&dedicated),
                    "{} shares a dedicated CPU",
                    &d.name
                );
            }
        }
    }
    for n in &p.nodes {
        prop_assert!(
            n.free_mib_after >= 0,
            "node {} over-committed: {}",
            n.id,
            n.free_mib_after
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn plans_respect_capacity_exclusivity_and_topology(
        shape in host_shape(),
        specs in prop::collection::vec(guest_spec(), 0..14),
        reserve_first in any::<bool>(),
        pack in any::<bool>(),
    ) {
        let topo = shape.build();
        let mut config = Config::default();
        config.host.memory_headroom_mib = 512;
        if reserve_first && topo.cpus.len() > 1 {
            config.host.reserved_cpus = CpuSet::single(0);
        }
        if pack {
            config.planner.strategy = Placement::Pack;
        }
        let guests = build_bound_guests(&specs, shape.nodes);
        let p = run(&topo, guests.clone(), &Observations::default(), &config);
        check_invariants(&topo, &config, &p)?;
        for (d, g) in p.domains.iter().zip(sorted(&guests)) {
            // A fresh host: every guest is confined or has no fit at all;
            // none waits on a budget.
            prop_assert!(d.status != Status::Deferred, "{}: {}", &d.name, &d.reason);
            // Cells bound by <memnode> sit on their bound node.
            if let Some(tune) = &g.numatune {
                for m in &tune.memnodes {
                    if let Some(node) = d.cells.get(&m.cellid) {
                        prop_assert!(m.nodeset.contains(*node), "{}: cell {} on {} bound to {}", &d.name, m.cellid, node, &m.nodeset);
                    }
                }
            }
        }
        // Deterministic and independent of input order.
        let again = run(&topo, guests.iter().rev().cloned().collect(), &Observations::default(), &config);
        prop_assert_eq!(serde_json::to_string(&p).unwrap(), serde_json::to_string(&again).unwrap());
    }

    #[test]
    fn cells_land_whole_on_one_node_or_the_guest_splits_as_a_whole(shape in host_shape(), spec in guest_spec()) {
        let topo = shape.build();
        prop_assume!(spec.vcpus >= 2);
        let guests = build_guests(&[GuestSpec { cells: 2, ..spec }]);
        let p = simple(&topo, guests);
        let d = &p.domains[0];
        // Only a guest that found room has a placement to check.
        prop_assume!(matches!(d.status, Status::Placed | Status::Kept));
        if d.cells.is_empty() {
            // No node had room for a whole cell: split as a whole over
            // fewer nodes than the host has, every vCPU within them.
            prop_assert!(d.reason.contains("cells not mapped"), "{}", d.reason);
            prop_assert!(d.nodes.len() > 1 && d.nodes.len() < topo.nodes.len());
            let on: CpuSet = d.nodes.iter().fold(CpuSet::new(), |all, n| all.union(&topo.node(n).unwrap().cpus));
            for cpus in d.vcpupin.values() {
                prop_assert!(cpus.is_subset(&on));
            }
            return Ok(());
        }
        let cells = &d.cells;
        prop_assert_eq!(cells.len(), 2, "a placed two-cell guest maps both cells");
        let per = d.vcpus / 2;
        for (v, cpus) in &d.vcpupin {
            let cell = (*v / per).min(1);
            let node = cells[&cell];
            prop_assert!(cpus.is_subset(&topo.node(node).unwrap().cpus), "vCPU {} of cell {} off node {}", v, cell, node);
        }
    }

    #[test]
    fn a_lone_guest_that_fits_a_node_uses_one_node(shape in host_shape(), vcpus in 1u32..8, mem in 256u64..4096) {
        let topo = shape.build();
        let cpus_per_node = topo.nodes[0].cpus.len() as u32;
        let config = Config::default();
        prop_assume!(vcpus <= cpus_per_node && mem + config.host.memory_headroom_mib <= shape.mem_mib_per_node);
        let p = simple(&topo, vec![domain("solo", vcpus, mem)]);
        let d = &p.domains[0];
        // On a one-node host nothing needs changing: kept as it is.
        prop_assert!(matches!(d.status, Status::Placed | Status::Kept), "{:?}", d.status);
        prop_assert_eq!(d.nodes.len(), 1);
        prop_assert_eq!(&d.nodeset, &d.nodes);
    }
}

#[test]
fn the_documented_example_config_is_the_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/numapin.toml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

#[test]
fn kept_dedicated_domains_reclaim_their_cpus_before_anyone_allocates() {
    // One node, 8 CPUs, no SMT. a and b both claim CPU 1 (b must be re-pinned);
    // c holds CPUs 2-3 and must keep them, though b is served first.
    let topo = HostShape::new(1, 8, 1, 64 * 1024).build();
    let pinned = |name: &str, mem: u64, cpus: [u32; 2]| {
        let mut d = domain(name, 2, mem).with_policy(DomainPolicy::Dedicated);
        for (v, cpu) in cpus.into_iter().enumerate() {
            d.cputune.vcpupin.insert(v as u32, CpuSet::single(cpu));
        }
        d
    };
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    // Six dedicated vCPUs on eight CPUs: past the default share.
    config.planner.max_dedicated_share = 1.0;
    let p = run(
        &topo,
        vec![
            pinned("a", 4096, [0, 1]),
            pinned("b", 3072, [1, 4]),
            pinned("c", 2048, [2, 3]),
        ],
        &Observations::default(),
        &config,
    );
    for name in ["a", "c"] {
        let d = get(&p, name);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Vcpupin { .. })),
            "{name} keeps its CPUs: {:?}",
            d.actions
        );
    }
    let b: CpuSet = get(&p, "b")
        .vcpupin
        .values()
        .fold(CpuSet::new(), |acc, s| acc.union(s));
    assert!(
        !b.intersects(&"0-3".parse().unwrap()),
        "b re-pinned off a's and c's CPUs: {b}"
    );
}

mod coexistence {
    use super::*;
    use numapin::planner::Recorded;

    fn recorded_pins(d: &Domain) -> Recorded {
        Recorded {
            cputune: d.cputune.clone(),
            nodeset: d.numatune.as_ref().and_then(|n| n.nodeset.clone()),
        }
    }

    fn plan_one(input: DomainInput) -> numapin::planner::DomainPlan {
        let topo = two_socket();
        let config = Config::default();
        let obs = Observations::default();
        let domains = vec![input];
        plan(&PlanInput {
            topology: &topo,
            domains: &domains,
            observations: &obs,
            config: &config,
            rebalance_all: false,
            confirm: None,
        })
        .domains
        .remove(0)
    }

    #[test]
    fn numapins_own_pins_on_a_transient_domain_are_not_manual() {
        let d = domain("t", 2, 1024).pinned_to("0-3");
        let mut input = DomainInput::new(d.clone(), None);
        assert!(
            !plan_one(input.clone()).managed,
            "unknown live pins are the operator's"
        );
        input.recorded = Some(recorded_pins(&d));
        assert!(plan_one(input).managed, "recorded pins are numapin's");
    }

    #[test]
    fn an_operators_change_after_placement_is_noticed_and_not_fought() {
        let placed = domain("op", 2, 1024).pinned_to("0-3");
        let mut changed = placed.clone();
        changed.cputune.vcpupin.insert(1, "8".parse().unwrap());
        let mut input = DomainInput::new(changed, None);
        input.recorded = Some(recorded_pins(&placed));
        let p = plan_one(input);
        assert!(!p.managed);
        assert!(p.actions.is_empty());
        assert!(
            p.reason.contains("changed by hand")
                && p.reason.contains("vCPU 1 0-3 -> 8")
                && p.reason.contains("numapin manage op"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn an_unplugged_vcpu_is_not_an_operators_change() {
        let placed = domain("hot", 4, 1024).pinned_to("0-3");
        let mut now = placed.clone();
        now.online_vcpus = "0-1".parse().unwrap();
        now.vcpus_current = 2;
        now.cputune.vcpupin.remove(&3);
        let mut input = DomainInput::new(now, None);
        input.recorded = Some(recorded_pins(&placed));
        let p = plan_one(input);
        assert!(p.managed, "{}", p.reason);
        assert!(
            p.vcpupin.keys().all(|&v| v < 2),
            "only online vCPUs get pins: {:?}",
            p.vcpupin
        );
    }

    #[test]
    fn a_held_domain_is_left_alone_with_the_reason() {
        let mut input = DomainInput::new(domain("busy", 2, 1024), None);
        input.hold = Some("busy: outgoing migration in progress; retried when it ends".into());
        let p = plan_one(input);
        assert!(!p.managed);
        assert!(p.reason.contains("outgoing migration"), "{}", p.reason);
    }
}

#[test]
fn an_unplaced_domains_memory_is_not_given_to_another() {
    // 80 dedicated vCPUs on 64 CPUs: no fit. Its 50 GiB stay on node 0,
    // where nothing else has room for 30 GiB any more.
    let topo = two_socket();
    let obs = observed_memory(&[("huge", &[(0, 50 * 1024)]), ("other", &[])]);
    let domains = vec![
        domain("huge", 80, 50 * 1024).with_policy(DomainPolicy::Dedicated),
        domain("other", 4, 30 * 1024),
    ];
    let p = run(&topo, domains, &obs, &Config::default());
    assert_eq!(get(&p, "huge").status, Status::NoFit);
    assert_eq!(get(&p, "other").nodes.iter().collect::<Vec<_>>(), [1]);
    for n in &p.nodes {
        assert!(n.free_mib_after >= 0, "node {} over-committed: {n:?}", n.id);
    }
}

#[test]
fn a_waiting_domains_memory_is_planned_on_its_target() {
    // Both are pinned to node 0 with their memory on node 1. The budget
    // allows one move: a goes to node 1; b stays on node 0 and its memory
    // follows in the background. The ledger plans the end state: b's 25
    // GiB on node 0, a's on node 1, each counted once.
    let topo = two_socket();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    let obs = observed_memory(&[("a", &[(1, 25 * 1024)]), ("b", &[(1, 25 * 1024)])]);
    let domains = vec![
        domain("a", 4, 25 * 1024).pinned_to(&node0),
        domain("b", 4, 25 * 1024).pinned_to(&node0),
    ];
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    config.planner.max_moves_per_cycle = 1;
    let p = run(&topo, domains, &obs, &config);
    let statuses: Vec<Status> = p.domains.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Status::Moved, Status::Kept], "{:#?}", p.domains);
    let b = get(&p, "b");
    assert!(
        b.reason.contains("its memory follows (25600 MiB to move)"),
        "{}",
        b.reason
    );
    assert_eq!(b.migrate_mib, 25 * 1024);
    for n in &p.nodes {
        assert_eq!(n.free_mib_after, (62 - 25) * 1024, "node {}", n.id);
    }
}

#[test]
fn a_split_never_puts_a_part_on_nodes_with_no_memory_free() {
    // Nothing free beyond the headroom but the 1 GiB the guest already
    // has on node 0: a 4 GiB guest fits no node and no split.
    let topo = HostShape::new(4, 2, 1, 8 * 1024).build();
    let mut obs = observed_memory(&[("g", &[(0, 1024)])]);
    for id in 0..4 {
        obs.nodes.insert(
            id,
            numapin::observations::NodeObservation {
                free_mib: Some(2048),
                free_hugepages: BTreeMap::new(),
            },
        );
    }
    let p = run(&topo, vec![domain("g", 2, 4096)], &obs, &Config::default());
    let g = get(&p, "g");
    assert_eq!(g.status, Status::NoFit, "{}", g.reason);
}

proptest! {
    #[test]
    fn split_parts_hold_the_whole_guest(shape in host_shape(), specs in proptest::collection::vec(guest_spec(), 1..12)) {
        let topo = shape.build();
        let p = simple(&topo, build_guests(&specs));
        // Memory handed to nodes never exceeds what they had.
        for n in &p.nodes {
            prop_assert!(n.free_mib_after >= 0, "node {} over-committed", n.id);
        }
        for d in &p.domains {
            if matches!(d.status, Status::Placed | Status::Moved) && d.reason.contains("split") {
                prop_assert!(d.nodes.len() > 1 || d.nodes.len() == topo.nodes.len() || d.memory_mib == 0, "{}", d.reason);
            }
        }
    }
}

#[test]
fn a_guest_cell_on_the_busiest_node_is_rebalanced_alone() {
    // Node 0 is saturated by a domain numapin leaves alone; of the
    // two-cell guest only cell 0 (on node 0) moves, to a node without its
    // other cell.
    let topo = HostShape::new(4, 8, 2, 64 * 1024).build();
    let busy = domain("busy", 16, 1024)
        .with_policy(DomainPolicy::Exclude)
        .pinned_to(&topo.node(0).unwrap().cpus.to_string());
    let mut obs = observed_memory(&[("busy", &[(0, 1024)])]);
    let cells = pinned_cells(&topo, "cells", &[(0, 2048), (1, 2048)], &[], &mut obs);
    let p = run(&topo, vec![busy, cells], &obs, &manage_pinned());
    let d = get(&p, "cells");
    assert_eq!(d.status, Status::Moved, "{}", d.reason);
    assert!(d.reason.contains("guest cell 0"), "{}", d.reason);
    assert_eq!(d.cells[&1], 1, "cell 1 stays");
    assert!([2, 3].contains(&d.cells[&0]), "{:?}", d.cells);
    assert_eq!(d.migrate_mib, 2048);
}

#[test]
fn on_two_nodes_a_guest_cell_joins_its_other_cell_to_rebalance() {
    // Both nodes hold a cell of the guest, so no node is free of its
    // cells: rather than never moving, the cell on the saturated node 1
    // joins cell 0 on node 0.
    let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
    let busy = domain("busy", 16, 1024)
        .with_policy(DomainPolicy::Exclude)
        .pinned_to(&topo.node(1).unwrap().cpus.to_string());
    let mut obs = observed_memory(&[("busy", &[(1, 1024)])]);
    let cells = pinned_cells(&topo, "cells", &[(0, 2048), (1, 2048)], &[], &mut obs);
    let p = run(&topo, vec![busy, cells], &obs, &manage_pinned());
    let d = get(&p, "cells");
    assert_eq!(d.status, Status::Moved, "{}", d.reason);
    assert!(d.reason.contains("guest cell 1"), "{}", d.reason);
    assert_eq!(d.cells, [(0, 0), (1, 0)].into(), "{}", d.reason);
    assert_eq!(d.migrate_mib, 2048);
}

#[test]
fn rebalancing_prefers_the_moves_that_migrate_least_for_their_gain() {
    // Node 0 holds 20 of 62 GiB, node 1 nothing. Moving the 16 GiB guest
    // narrows the gap most (19 points) but moving a 2 GiB one gains 9.5
    // points for an eighth of the memory: both small ones move instead.
    let topo = two_socket();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    let domains = || {
        vec![
            domain("big", 2, 16 * 1024).pinned_to(&node0),
            domain("s", 2, 2048).pinned_to(&node0),
            domain("t", 2, 2048).pinned_to(&node0),
        ]
    };
    let obs = observed_memory(&[
        ("big", &[(0, 16 * 1024)]),
        ("s", &[(0, 2048)]),
        ("t", &[(0, 2048)]),
    ]);
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    let p = run(&topo, domains(), &obs, &config);
    let statuses: Vec<Status> = p.domains.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        [Status::Kept, Status::Moved, Status::Moved],
        "{:#?}",
        p.domains
    );
    assert_eq!(p.score.migrate_mib, 4096);
    // A move must gain min_gain x (1 + MiB / the per-cycle budget): with
    // a 512 MiB budget, 0.05 x 5 = 0.25 for a small one; none qualifies.
    config.planner.max_migrate_mib_per_cycle = 512;
    let p = run(&topo, domains(), &obs, &config);
    assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
}

/// A two-cell guest (4 vCPUs, 2 x 2048 MiB) pinned cell 0 on node 0 and
/// cell 1 on node 1 of `topo`, with its memory per node and per cell as
/// given; `cells` empty: not measured per cell.
fn pinned_cells(
    topo: &HostTopology,
    name: &str,
    memory: &[(u32, u64)],
    cells: &[(u32, &[(u32, u64)])],
    obs: &mut Observations,
) -> Domain {
    let mut d = domain(name, 4, 4096).with_cells(2);
    for v in 0..4 {
        d.cputune
            .vcpupin
            .insert(v, topo.node(v / 2).unwrap().cpus.clone());
    }
    obs.domains.insert(
        name.to_string(),
        DomainObservation {
            memory_mib: memory.iter().copied().collect(),
            cell_memory_mib: cells
                .iter()
                .map(|(c, m)| (*c, m.iter().copied().collect()))
                .collect(),
            ..Default::default()
        },
    );
    d
}

fn manage_pinned() -> Config {
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    config
}

#[test]
fn a_cells_memory_on_another_cells_node_moves_to_its_own() {
    // Whole-process migration left cell 1's RAM on cell 0's node: within
    // the guest's nodes, but not on its own.
    let topo = two_socket();
    let mut obs = Observations::default();
    let d = pinned_cells(
        &topo,
        "cells",
        &[(0, 3968), (1, 148)],
        &[(0, &[(0, 2048)]), (1, &[(0, 1900), (1, 148)])],
        &mut obs,
    );
    let p = run(&topo, vec![d], &obs, &manage_pinned());
    let d = get(&p, "cells");
    assert_eq!(d.cells, BTreeMap::from([(0, 0), (1, 1)]), "{}", d.reason);
    let memory: Vec<&Action> = d
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::MoveCellMemory { .. } | Action::MigratePages { .. }
            )
        })
        .collect();
    assert_eq!(
        memory,
        [&Action::MoveCellMemory {
            cell: 1,
            to: "1".parse().unwrap(),
            mib: 1900
        }],
        "the rest of the process is within the guest's nodes already"
    );
    assert_eq!(memory[0].to_string(), "move cell 1 memory -> 1 (~1900 MiB)");
    assert_eq!(d.migrate_mib, 1900);
    assert_eq!(p.score.migrate_mib, 1900);
    assert!(
        d.current.locality < 0.9,
        "measured cell by cell, half the guest is remote: {}",
        d.current.locality
    );
}

#[test]
fn a_cell_mostly_on_its_node_is_settled() {
    let topo = two_socket();
    let mut obs = Observations::default();
    // Cell 1 has 95% on its node (apply.memory_on_target_share is 90%).
    let d = pinned_cells(
        &topo,
        "cells",
        &[(0, 2148), (1, 1948)],
        &[(0, &[(0, 2048)]), (1, &[(0, 100), (1, 1948)])],
        &mut obs,
    );
    let config = manage_pinned();
    let p = run(&topo, vec![d], &obs, &config);
    let d = get(&p, "cells");
    assert_eq!(d.status, Status::Kept, "{}", d.reason);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.migrate_mib, 0);
}

#[test]
fn memory_of_no_cell_outside_the_guests_nodes_follows_after_the_cells() {
    let topo = HostShape::new(4, 8, 2, 64 * 1024).build();
    let mut obs = Observations::default();
    let d = pinned_cells(
        &topo,
        "cells",
        &[(0, 3948), (1, 148), (3, 50)],
        &[(0, &[(0, 2048)]), (1, &[(0, 1900), (1, 148)])],
        &mut obs,
    );
    let p = run(&topo, vec![d], &obs, &manage_pinned());
    let d = get(&p, "cells");
    let tail: Vec<String> = d
        .actions
        .iter()
        .rev()
        .take(2)
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        tail,
        [
            "migrate_pages 3 -> 0-1 (~50 MiB)",
            "move cell 1 memory -> 1 (~1900 MiB)"
        ],
        "{:?}",
        d.actions
    );
    assert_eq!(d.migrate_mib, 1950);
}

#[test]
fn without_per_cell_memory_a_guest_moves_as_a_whole() {
    let topo = HostShape::new(4, 8, 2, 64 * 1024).build();
    let mut obs = Observations::default();
    let d = pinned_cells(
        &topo,
        "cells",
        &[(0, 3948), (1, 148), (3, 50)],
        &[],
        &mut obs,
    );
    let p = run(&topo, vec![d], &obs, &manage_pinned());
    let d = get(&p, "cells");
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::MoveCellMemory { .. })),
        "{:?}",
        d.actions
    );
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::MigratePages { mib: 50, .. })),
        "{:?}",
        d.actions
    );
}

#[test]
fn cell_memory_of_kept_guests_follows_in_the_background_past_the_budget() {
    // Both keep their pins; each has a cell's 1900 MiB to move. A kept
    // placement's memory is never held back by the cycle's budget (the
    // background mover paces it), so both move, though 3800 MiB is more
    // than the 2000 MiB budget.
    let topo = two_socket();
    let mut obs = Observations::default();
    let cells: &[(u32, &[(u32, u64)])] = &[(0, &[(0, 2048)]), (1, &[(0, 1900), (1, 148)])];
    let a = pinned_cells(&topo, "a", &[(0, 3948), (1, 148)], cells, &mut obs);
    let b = pinned_cells(&topo, "b", &[(0, 3948), (1, 148)], cells, &mut obs);
    let mut config = manage_pinned();
    config.planner.max_migrate_mib_per_cycle = 2000;
    let p = run(&topo, vec![a, b], &obs, &config);
    for d in &p.domains {
        assert_eq!(d.status, Status::Kept, "{d:?}");
        assert!(
            d.actions
                .iter()
                .any(|a| matches!(a, Action::MoveCellMemory { mib: 1900, .. })),
            "{:?}",
            d.actions
        );
        assert!(
            d.reason.contains("its memory follows (1900 MiB to move)"),
            "{}",
            d.reason
        );
    }
    assert_eq!(p.score.migrate_mib, 3800);
}
