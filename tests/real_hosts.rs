//! The planner on hosts shaped like production: virt-install's CPU modes
//! (host-passthrough, host-model rewritten live with vmx), 2.5:1 vCPU
//! overcommit, no measurements yet, guests that really run VMs, memnode
//! bindings, CPU-less memory nodes, many guest cells on few nodes.

use std::collections::BTreeMap;

use numapin::config::{Config, MemoryTier};
use numapin::guest::{Domain, DomainPolicy, MemoryMode};
use numapin::idset::CpuSet;
use numapin::observations::{DomainObservation, NestedActivity, Observations};
use numapin::planner::{CpuPolicy, DomainInput, DomainPlan, Plan, PlanInput, Status, plan};
use numapin::synth::{DomainExt, HostShape, domain};
use numapin::topology::HostTopology;

fn run_inputs(
    topo: &HostTopology,
    domains: &[DomainInput],
    obs: &Observations,
    config: &Config,
) -> Plan {
    plan(&PlanInput {
        topology: topo,
        domains,
        observations: obs,
        config,
        rebalance_all: false,
        confirm: None,
    })
}

fn get<'a>(plan: &'a Plan, name: &str) -> &'a DomainPlan {
    plan.domains
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} not in plan"))
}

/// A guest as libvirt shows it running, with its persistent definition.
fn defined(live: Domain, persistent: Domain) -> DomainInput {
    DomainInput::new(live, Some(persistent))
}

/// virt-install's default: host-passthrough, live and persistent alike.
fn passthrough(name: &str, vcpus: u32, mib: u64) -> DomainInput {
    let mut d = domain(name, vcpus, mib);
    d.cpu.mode = Some(numapin::guest::CpuMode::HostPassthrough);
    defined(d.clone(), d)
}

/// host-model: the persistent definition says host-model; the live one is
/// what libvirt expanded it to, vmx required.
fn host_model(name: &str, vcpus: u32, mib: u64) -> DomainInput {
    let d = domain(name, vcpus, mib);
    defined(d.clone().running_host_model(), d.host_model())
}

/// The two-socket host of the report: 2 x 20 cores x 2 threads, 256 GiB a
/// node, 44 guests with 202 vCPUs, most with virt-install's CPU modes.
fn production_host() -> (HostTopology, Vec<DomainInput>, Observations) {
    let topo = HostShape::new(2, 20, 2, 256 * 1024).build();
    let mut guests = Vec::new();
    let sizes = [(4u32, 20usize), (2, 10), (8, 8), (6, 4)];
    let mut n = 0;
    for (vcpus, count) in sizes {
        for _ in 0..count {
            let name = format!("vm{n:02}");
            let mib = u64::from(vcpus) * 2048;
            guests.push(if n % 7 < 3 {
                host_model(&name, vcpus, mib)
            } else {
                passthrough(&name, vcpus, mib)
            });
            n += 1;
        }
    }
    // One ordinary guest whose memory an operator bound to node 1 years
    // ago: its vCPUs must follow.
    let bound = domain("bound-strict", 4, 8192).with_numatune(MemoryMode::Strict, "1");
    guests[0] = defined(bound.clone(), bound);
    // A hypervisor by declaration: its persistent definition requires vmx.
    let declared = domain("hv-declared", 8, 16 * 1024).with_cells(2).nested();
    guests.push(defined(declared.clone(), declared));
    // A host-passthrough guest seen entering nested guests.
    guests.push(passthrough("hv-seen", 6, 12 * 1024));
    let mut obs = Observations::default();
    obs.domains.insert(
        "hv-seen".into(),
        DomainObservation {
            nested: Some(NestedActivity {
                entries: 51_234,
                running: true,
                last_seen_secs: Some(20),
            }),
            ..Default::default()
        },
    );
    (topo, guests, obs)
}

#[test]
fn the_production_host_dedicates_only_hypervisors_and_confines_every_guest() {
    let (topo, guests, obs) = production_host();
    assert_eq!(guests.len(), 44);
    let vcpus: u32 = guests.iter().map(|g| g.live.vcpus_current).sum();
    assert_eq!(vcpus, 202);
    let config = Config::default();
    let p = run_inputs(&topo, &guests, &obs, &config);

    let hypervisors = ["hv-declared", "hv-seen"];
    for d in &p.domains {
        // No ordinary guest is dedicated, however its CPU looks live.
        if hypervisors.contains(&d.name.as_str()) {
            assert!(d.nested_hypervisor, "{}: {}", d.name, d.hypervisor);
            assert_eq!(d.policy, Some(CpuPolicy::Dedicated), "{}", d.name);
        } else {
            assert!(!d.nested_hypervisor, "{}: {}", d.name, d.hypervisor);
            assert_eq!(d.policy, Some(CpuPolicy::Shared), "{}", d.name);
        }
        // Every guest is confined in this first cycle, with a nodeset.
        assert!(
            matches!(d.status, Status::Placed | Status::Kept | Status::Moved),
            "{}: {:?} {}",
            d.name,
            d.status,
            d.reason
        );
        assert!(!d.nodeset.is_empty(), "{} has no memory nodeset", d.name);
        let on: CpuSet = d.nodes.iter().fold(CpuSet::new(), |all, n| {
            all.union(&topo.node(n).unwrap().cpus)
        });
        for cpus in d.vcpupin.values() {
            assert!(!cpus.is_empty() && cpus.is_subset(&on), "{}", d.name);
            assert!(cpus.len() < topo.cpus.len(), "{} still floats", d.name);
        }
    }
    assert_eq!(
        get(&p, "hv-declared").hypervisor.to_string(),
        "requires vmx/svm in its definition"
    );
    assert_eq!(
        get(&p, "hv-seen").hypervisor.to_string(),
        "ran nested guests in the last 20 s"
    );
    assert!(
        get(&p, "vm01")
            .hypervisor
            .to_string()
            .starts_with("can run nested guests"),
        "a host-model guest can, and is not taken for one"
    );

    // Dedicated CPUs are exclusive: no shared vCPU, emulator or other
    // dedicated vCPU on them.
    let mut dedicated = CpuSet::new();
    for d in p
        .domains
        .iter()
        .filter(|d| d.policy == Some(CpuPolicy::Dedicated))
    {
        for cpus in d.vcpupin.values() {
            assert_eq!(cpus.len(), 1);
            assert!(
                !cpus.intersects(&dedicated),
                "{} shares a dedicated CPU",
                d.name
            );
            dedicated.union_with(cpus);
        }
    }
    assert_eq!(dedicated.len(), 14);
    for d in p
        .domains
        .iter()
        .filter(|d| d.policy == Some(CpuPolicy::Shared))
    {
        for cpus in d.vcpupin.values().chain([&d.emulatorpin]) {
            assert!(
                !cpus.intersects(&dedicated),
                "{} runs on dedicated CPUs",
                d.name
            );
        }
    }

    // Shared vCPUs within the overcommit of each node's shared CPUs (no
    // measurement yet: every vCPU counts as busy).
    let mut shared_vcpus: BTreeMap<u32, u32> = BTreeMap::new();
    for d in p
        .domains
        .iter()
        .filter(|d| d.policy == Some(CpuPolicy::Shared))
    {
        assert_eq!(d.nodes.len(), 1, "{} fits one node", d.name);
        *shared_vcpus.entry(d.nodes.first().unwrap()).or_default() += d.vcpus;
    }
    for n in &p.nodes {
        let shared_cpus = n.cpus.len() - n.dedicated_cpus.len();
        let vcpus = shared_vcpus.get(&n.id).copied().unwrap_or(0);
        assert!(
            f64::from(vcpus) <= config.planner.cpu_overcommit * shared_cpus as f64,
            "node {}: {vcpus} shared vCPUs on {shared_cpus} CPUs",
            n.id
        );
    }

    // Bound memory and vCPUs together.
    let bound = get(&p, "bound-strict");
    assert_eq!(bound.nodes.to_string(), "1", "{}", bound.reason);
    assert_eq!(bound.nodeset.to_string(), "1");
}

#[test]
fn a_guest_seen_quiet_or_never_measured_is_ordinary() {
    let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
    let guests = vec![passthrough("quiet", 4, 4096), host_model("fresh", 4, 4096)];
    let mut obs = Observations::default();
    obs.domains.insert(
        "quiet".into(),
        DomainObservation {
            nested: Some(NestedActivity {
                entries: 0,
                running: false,
                last_seen_secs: Some(7200),
            }),
            ..Default::default()
        },
    );
    let p = run_inputs(&topo, &guests, &obs, &Config::default());
    let quiet = get(&p, "quiet");
    assert!(!quiet.nested_hypervisor);
    assert_eq!(
        quiet.hypervisor.to_string(),
        "can run nested guests; none seen"
    );
    let fresh = get(&p, "fresh");
    assert!(!fresh.nested_hypervisor);
    assert!(
        fresh.hypervisor.to_string().contains("not measured"),
        "{}",
        fresh.hypervisor
    );
    // A transient guest has only its live definition: a vmx it requires
    // there is taken at its word.
    let transient = DomainInput::new(domain("transient", 2, 2048).nested(), None);
    let p = run_inputs(
        &topo,
        &[transient],
        &Observations::default(),
        &Config::default(),
    );
    assert!(get(&p, "transient").nested_hypervisor);
}

#[test]
fn cells_bound_by_memnode_keep_their_vcpus_with_their_memory() {
    // Cell 0's memory is bound to node 1 and cell 1's to node 0: the
    // mapping numapin would pick by itself is the other way round.
    let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
    let g = domain("swapped", 8, 8192)
        .with_cells(2)
        .with_memnodes(MemoryMode::Strict, &[(0, "1"), (1, "0")]);
    let p = run_inputs(
        &topo,
        &[DomainInput::new(g, None)],
        &Observations::default(),
        &Config::default(),
    );
    let d = get(&p, "swapped");
    assert_eq!(d.status, Status::Placed, "{}", d.reason);
    assert_eq!(d.cells, BTreeMap::from([(0, 1), (1, 0)]));
    for (v, cpus) in &d.vcpupin {
        let node = if *v < 4 { 1 } else { 0 };
        assert!(
            cpus.is_subset(&topo.node(node).unwrap().cpus),
            "vCPU {v} off its cell's memory"
        );
    }
    assert_eq!(
        d.locality_after, 1.0,
        "every cell's vCPUs next to its memory"
    );
    assert!(d.actions.iter().all(|a| !a.to_string().contains("migrate")));
}

#[test]
fn a_memnode_binding_to_nodes_the_host_lacks_is_no_fit_naming_the_binding() {
    let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
    let g = domain("ghost", 4, 4096)
        .with_cells(2)
        .with_memnodes(MemoryMode::Strict, &[(0, "0"), (1, "7")]);
    let p = run_inputs(
        &topo,
        &[DomainInput::new(g, None)],
        &Observations::default(),
        &Config::default(),
    );
    let d = get(&p, "ghost");
    assert_eq!(d.status, Status::NoFit);
    assert!(
        d.reason.contains("guest cell 1") && d.reason.contains("<memnode>"),
        "{}",
        d.reason
    );
}

/// Two CPU nodes of 32 GiB and a 256 GiB memory-only node (CXL).
fn cxl_host() -> HostTopology {
    let mut shape = HostShape::new(2, 8, 2, 32 * 1024);
    shape.memory_only_nodes = vec![256 * 1024];
    shape.build()
}

#[test]
fn memory_that_fits_no_cpu_node_overflows_to_the_nearest_memory_only_node() {
    let topo = cxl_host();
    let big = DomainInput::new(domain("big", 8, 96 * 1024), None);
    let p = run_inputs(
        &topo,
        std::slice::from_ref(&big),
        &Observations::default(),
        &Config::default(),
    );
    let d = get(&p, "big");
    assert_eq!(d.status, Status::Placed, "{}", d.reason);
    assert_eq!(d.nodes.len(), 1, "vCPUs on one CPU node");
    assert!(!d.nodes.contains(2));
    // 30 GiB fit its node (32 less the 2 GiB headroom); 66 GiB go far.
    assert_eq!(d.memory_only_mib, BTreeMap::from([(2, 66 * 1024)]));
    assert!(d.nodeset.contains(2) && d.nodes.is_subset(&d.nodeset));
    // The far share counts at its distance (24): 30/96 local, 66/96 at 10/24.
    let expected = (30.0 + 66.0 * 10.0 / 24.0) / 96.0;
    assert!(
        (d.locality_after - expected).abs() < 0.002,
        "{}",
        d.locality_after
    );
    assert!(d.reason.contains("memory-only node 2"), "{}", d.reason);

    let mut never = Config::default();
    never.planner.memory_tier = MemoryTier::Never;
    let p = run_inputs(&topo, &[big], &Observations::default(), &never);
    assert_eq!(get(&p, "big").status, Status::NoFit);
}

#[test]
fn memory_that_fits_the_cpu_nodes_stays_off_the_memory_only_node() {
    let topo = cxl_host();
    // Too big for one node, not for two: split over the CPU nodes.
    let g = DomainInput::new(domain("wide", 8, 50 * 1024), None);
    let p = run_inputs(&topo, &[g], &Observations::default(), &Config::default());
    let d = get(&p, "wide");
    // Split over both CPU nodes, which is every CPU it has now: kept.
    assert!(
        matches!(d.status, Status::Placed | Status::Kept),
        "{}",
        d.reason
    );
    assert_eq!(d.nodes.to_string(), "0-1");
    assert!(d.memory_only_mib.is_empty(), "{:?}", d.memory_only_mib);
    assert!(!d.nodeset.contains(2));
}

#[test]
fn prefer_for_idle_puts_idle_guests_memory_on_the_memory_only_node() {
    let topo = cxl_host();
    let guests = [
        DomainInput::new(domain("idle", 4, 8192), None),
        DomainInput::new(domain("busy", 4, 8192), None),
    ];
    let mut obs = Observations::default();
    for (name, load) in [("idle", 0.01), ("busy", 0.9)] {
        obs.domains.insert(
            name.into(),
            DomainObservation {
                vcpu_load: vec![load; 4],
                ..Default::default()
            },
        );
    }
    let mut config = Config::default();
    config.planner.memory_tier = MemoryTier::PreferForIdle;
    let p = run_inputs(&topo, &guests, &obs, &config);
    assert_eq!(
        get(&p, "idle").memory_only_mib,
        BTreeMap::from([(2, 8192)]),
        "{}",
        get(&p, "idle").reason
    );
    assert!(get(&p, "busy").memory_only_mib.is_empty());
    // The default keeps both local.
    let p = run_inputs(&topo, &guests, &obs, &Config::default());
    assert!(get(&p, "idle").memory_only_mib.is_empty());
}

#[test]
fn six_equal_cells_on_two_nodes_go_three_and_three_as_a_placement() {
    let topo = HostShape::new(2, 16, 2, 64 * 1024).build();
    let g = DomainInput::new(domain("six", 12, 12 * 1024).with_cells(6), None);
    let p = run_inputs(&topo, &[g], &Observations::default(), &Config::default());
    let d = get(&p, "six");
    assert_eq!(d.status, Status::Placed, "{}", d.reason);
    let mut per_node: BTreeMap<u32, usize> = BTreeMap::new();
    for node in d.cells.values() {
        *per_node.entry(*node).or_default() += 1;
    }
    assert_eq!(per_node, BTreeMap::from([(0, 3), (1, 3)]), "{:?}", d.cells);
    assert!(
        d.reason.starts_with("guest cells on host nodes") && !d.reason.contains("rebalance"),
        "{}",
        d.reason
    );
}

#[test]
fn a_dedicated_guest_without_room_is_placed_shared_never_floating() {
    // 8 CPUs a node, at most half dedicated: the third 4-vCPU dedicated
    // guest on this one-node host gets shared CPUs, cell-aligned, with a
    // reason and advice.
    let topo = HostShape::new(1, 8, 1, 64 * 1024).build();
    let guests: Vec<DomainInput> = ["a", "b"]
        .iter()
        .map(|n| {
            let d = domain(n, 4, 4096).with_policy(DomainPolicy::Dedicated);
            DomainInput::new(d, None)
        })
        .collect();
    let p = run_inputs(&topo, &guests, &Observations::default(), &Config::default());
    let shared: Vec<&DomainPlan> = p
        .domains
        .iter()
        .filter(|d| d.policy == Some(CpuPolicy::Shared))
        .collect();
    assert_eq!(shared.len(), 1, "{:#?}", p.domains);
    let d = shared[0];
    assert_eq!(d.status, Status::Placed);
    assert!(
        d.reason.contains("shared CPUs instead of dedicated"),
        "{}",
        d.reason
    );
    assert!(
        d.advice.iter().any(|a| a.contains("max_dedicated_share")),
        "{:?}",
        d.advice
    );
    assert_eq!(p.nodes[0].dedicated_cpus.len(), 4);
    for cpus in d.vcpupin.values() {
        assert_eq!(cpus.len(), 4, "the node's four shared CPUs");
        assert!(!cpus.intersects(&p.nodes[0].dedicated_cpus));
    }
}

#[test]
fn guests_numapin_leaves_alone_on_dedicated_cpus_are_reported_not_touched() {
    let topo = HostShape::new(1, 8, 1, 64 * 1024).build();
    let guests = vec![
        DomainInput::new(domain("hv", 2, 2048).nested(), None),
        DomainInput::new(
            domain("excluded", 2, 2048).with_policy(DomainPolicy::Exclude),
            None,
        ),
    ];
    let p = run_inputs(&topo, &guests, &Observations::default(), &Config::default());
    let hv_cpus: CpuSet = get(&p, "hv")
        .vcpupin
        .values()
        .fold(CpuSet::new(), |all, c| all.union(c));
    let e = get(&p, "excluded");
    assert_eq!(e.status, Status::LeftAlone);
    assert!(e.actions.is_empty());
    assert_eq!(e.on_dedicated_cpus.as_ref(), Some(&hv_cpus));
}

#[test]
fn guests_of_other_kinds_and_architectures_are_left_alone() {
    let topo = HostShape::new(1, 8, 1, 64 * 1024).build();
    let mut xen = domain("xen", 2, 2048);
    xen.virt_type = "xen".into();
    let mut arm = domain("arm", 2, 2048);
    arm.arch = Some("aarch64".into());
    let mut i686 = domain("i686", 2, 2048);
    i686.arch = Some("i686".into());
    let guests: Vec<DomainInput> = [xen, arm, i686]
        .into_iter()
        .map(|d| DomainInput::new(d, None))
        .collect();
    let p = run_inputs(&topo, &guests, &Observations::default(), &Config::default());
    let xen = get(&p, "xen");
    assert_eq!(xen.status, Status::LeftAlone);
    assert!(
        xen.reason.contains("\"xen\" is not KVM or QEMU"),
        "{}",
        xen.reason
    );
    let arm = get(&p, "arm");
    assert_eq!(arm.status, Status::LeftAlone);
    assert!(
        arm.reason.contains("aarch64 guest on a x86_64 host"),
        "{}",
        arm.reason
    );
    assert!(get(&p, "i686").managed, "i686 runs natively on x86_64");
}

#[path = "real_hosts/busy_start.rs"]
mod busy_start;
