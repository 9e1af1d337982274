//! A daemon's first cycle on a host whose guests already run, unpinned,
//! with their memory where it landed.

use super::*;

#[test]
fn a_busy_host_is_confined_in_one_cycle_where_the_memory_is() {
    // Forty unpinned guests already running, memory mostly on one node or
    // the other, and a small budget: every guest is confined now, home
    // where most of its memory is, and no guest's locality drops. Only
    // the remote quarter is left to move, in the background: the budget
    // holds back moves of placed guests, never a first confinement.
    let topo = HostShape::new(2, 20, 2, 256 * 1024).build();
    let mut guests = Vec::new();
    let mut obs = Observations::default();
    for n in 0..40u32 {
        let name = format!("vm{n:02}");
        let home = n % 2;
        guests.push(passthrough(&name, 4, 8192));
        obs.domains.insert(
            name,
            DomainObservation {
                memory_mib: BTreeMap::from([(home, 6144), (1 - home, 2048)]),
                vcpu_load: vec![0.3; 4],
                ..Default::default()
            },
        );
    }
    let mut config = Config::default();
    config.planner.max_migrate_mib_per_cycle = 4096;
    let p = run_inputs(&topo, &guests, &obs, &config);
    let mut migrated = 0;
    for (n, d) in p.domains.iter().enumerate() {
        assert!(
            matches!(d.status, Status::Placed | Status::Kept),
            "{}: {:?} {}",
            d.name,
            d.status,
            d.reason
        );
        assert_eq!(d.nodes.len(), 1, "{} confined to one node", d.name);
        assert_eq!(
            d.nodes.first(),
            Some(n as u32 % 2),
            "{}: {}",
            d.name,
            d.reason
        );
        assert!(d.locality_after >= d.current.locality, "{}", d.name);
        assert_eq!(d.migrate_mib, 2048, "{}: {}", d.name, d.reason);
        assert!(
            d.actions.iter().all(|a| !a.is_page_move()) || d.reason.contains("its memory follows"),
            "{}: {}",
            d.name,
            d.reason
        );
        migrated += d.migrate_mib;
    }
    assert_eq!(migrated, 40 * 2048);
}

/// Two busy guests pinned to node 0, an idle one to node 1; another,
/// unpinned, runs with `resident` MiB of its 8 GiB on node `on`. Evening out
/// the loads would gain less than moving 6 GiB is worth
/// (`planner.min_gain`).
fn third_guest_with(resident: u64, on: u32) -> DomainPlan {
    let topo = HostShape::new(2, 8, 1, 256 * 1024).build();
    let mut obs = Observations::default();
    let mut guests = Vec::new();
    for (name, node, load) in [("busy-a", 0, 0.6), ("busy-b", 0, 0.6), ("busy-c", 1, 0.1)] {
        let cpus = topo.node(node).unwrap().cpus.to_string();
        guests.push(DomainInput::new(
            domain(name, 4, 4096).pinned_to(&cpus),
            None,
        ));
        obs.domains.insert(
            name.into(),
            DomainObservation {
                memory_mib: BTreeMap::from([(node, 4096)]),
                vcpu_load: vec![load; 4],
                ..Default::default()
            },
        );
    }
    guests.push(passthrough("third", 2, 8192));
    obs.domains.insert(
        "third".into(),
        DomainObservation {
            memory_mib: BTreeMap::from([(on, resident)]),
            vcpu_load: vec![0.1; 2],
            ..Default::default()
        },
    );
    let p = run_inputs(&topo, &guests, &obs, &Config::default());
    get(&p, "third").clone()
}

#[test]
fn a_guest_with_settled_memory_is_confined_where_it_is_a_new_one_where_balance_says() {
    // 6 GiB touched, on node 0: home, nothing to move, though node 1 is
    // far less busy (as in a later cycle, a move to even the loads must
    // pay for the memory it migrates).
    let settled = third_guest_with(6 * 1024, 0);
    assert_eq!(settled.nodes.first(), Some(0), "{}", settled.reason);
    assert_eq!(settled.migrate_mib, 0, "{}", settled.reason);
    assert!(
        settled.reason.contains("where 100% of its memory is"),
        "{}",
        settled.reason
    );
    // 300 MiB touched (a guest just booted): balance wins, and the little
    // it has follows in the background.
    let fresh = third_guest_with(300, 0);
    assert_eq!(fresh.nodes.first(), Some(1), "{}", fresh.reason);
    assert_eq!(fresh.migrate_mib, 300);
    assert!(
        fresh
            .reason
            .contains("its memory follows (300 MiB to move)"),
        "{}",
        fresh.reason
    );
}

#[test]
fn guests_whose_node_matters_most_choose_first() {
    // The lab's 2x2 host at the daemon's start: three alike guests, all
    // their RAM touched. vm0's is split evenly, vm1's is on node 0, vm2's on
    // node 1; each node has room for the vCPUs of two at most before its
    // pressure passes 1. Were vm0 served first, by its name, it would take
    // node 0 and push vm1 (then vm2) away from all its memory. Served by
    // what is at stake, vm1 and vm2 go home with nothing to move, and vm0,
    // indifferent, moves only its half.
    let topo = HostShape::new(2, 2, 1, 1536).build();
    let mut guests = Vec::new();
    let mut obs = Observations::default();
    for (name, on_0, on_1) in [("vm0", 160, 160), ("vm1", 296, 24), ("vm2", 20, 300)] {
        guests.push(passthrough(name, 2, 320));
        obs.domains.insert(
            name.into(),
            DomainObservation {
                memory_mib: BTreeMap::from([(0, on_0), (1, on_1)]),
                ..Default::default()
            },
        );
    }
    let mut config = Config::default();
    config.host.memory_headroom_mib = 32;
    let p = run_inputs(&topo, &guests, &obs, &config);
    for (name, home, mib) in [("vm1", 0, 24), ("vm2", 1, 20)] {
        let d = get(&p, name);
        assert!(matches!(d.status, Status::Placed), "{name}: {:?}", d.status);
        assert_eq!(d.nodes.first(), Some(home), "{name}: {}", d.reason);
        assert_eq!(d.migrate_mib, mib, "{name}: {}", d.reason);
    }
    let vm0 = get(&p, "vm0");
    assert_eq!(vm0.nodes.len(), 1, "vm0: {}", vm0.reason);
    assert_eq!(vm0.migrate_mib, 160, "vm0: {}", vm0.reason);
}
