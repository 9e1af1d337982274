//! Rebalancing moves of placed guests wait until every cycle over
//! `planner.rebalance_wait_secs` has wanted them (the daemon's plans);
//! one-shot plans and a rebalance asked for make them at once.

use numapin::config::Config;
use numapin::guest::Domain;
use numapin::observations::{DomainObservation, Observations};
use numapin::planner::{
    DomainInput, MoveConfirmation, Plan, PlanInput, Status, WantedMove, WantedMoves, plan,
};
use numapin::synth::{DomainExt, HostShape, domain};
use numapin::topology::HostTopology;

/// `planner.rebalance_wait_secs`, the default.
const WAIT: f64 = 30.0;

/// The daemon's view of one cycle: `wanted` as the cycles before left it,
/// at time `now`.
fn cycle(
    topo: &HostTopology,
    domains: &[Domain],
    obs: &Observations,
    config: &Config,
    wanted: &WantedMoves,
    now: f64,
) -> Plan {
    let inputs: Vec<DomainInput> = domains
        .iter()
        .map(|d| DomainInput::new(d.clone(), None))
        .collect();
    plan(&PlanInput {
        topology: topo,
        domains: &inputs,
        observations: obs,
        config,
        rebalance_all: false,
        confirm: Some(MoveConfirmation {
            wanted,
            now,
            after_secs: WAIT,
        }),
    })
}

fn status_of(p: &Plan, name: &str) -> Status {
    p.domains.iter().find(|d| d.name == name).unwrap().status
}

/// Two guests pinned to node 0 of a two-socket host, memory there; node 1
/// idle. Node 0 is 5 of 32 CPUs busy, node 1 none: a 16-point gap, and
/// moving one of them narrows it (as in tests/planner.rs).
fn unbalanced() -> (HostTopology, Vec<Domain>, Observations, Config) {
    let topo = HostShape::new(2, 16, 2, 64 * 1024).build();
    let node0 = topo.node(0).unwrap().cpus.to_string();
    let domains = vec![
        domain("a", 3, 1024).pinned_to(&node0),
        domain("b", 2, 1024).pinned_to(&node0),
    ];
    let mut obs = Observations::default();
    for d in &domains {
        obs.domains.insert(
            d.name.clone(),
            DomainObservation {
                memory_mib: [(0, 1024)].into(),
                ..Default::default()
            },
        );
    }
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    (topo, domains, obs, config)
}

#[test]
fn a_move_is_made_once_every_cycle_over_the_wait_wanted_it() {
    let (topo, domains, obs, config) = unbalanced();
    let mut wanted = WantedMoves::default();

    let p = cycle(&topo, &domains, &obs, &config, &wanted, 0.0);
    assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
    let want: Vec<_> = p.domains.iter().filter_map(|d| d.wanted_move).collect();
    assert!(!want.is_empty(), "{:#?}", p.domains);
    assert!(want.iter().all(|m| *m == WantedMove { cell: None, to: 1 }));
    for d in p.domains.iter().filter(|d| d.wanted_move.is_some()) {
        assert_eq!(d.status, Status::Kept);
        assert!(
            d.reason.contains("rebalancing wants it on node 1") && d.reason.contains("for 30 s"),
            "{}",
            d.reason
        );
    }
    let newly = wanted.update(&p, 0.0);
    assert_eq!(newly.len(), want.len());

    // An event cycle 5 s later still wants it: not yet waited long enough.
    let p = cycle(&topo, &domains, &obs, &config, &wanted, 5.0);
    assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
    assert!(wanted.update(&p, 5.0).is_empty(), "still wanted since 0 s");

    // The next regular cycle, the wait after the first: made.
    let p = cycle(&topo, &domains, &obs, &config, &wanted, WAIT);
    assert_eq!(p.score.moves, 1, "{:#?}", p.domains);
    let moved: Vec<_> = p
        .domains
        .iter()
        .filter(|d| d.status == Status::Moved)
        .collect();
    assert!(moved[0].reason.contains("rebalance"), "{}", moved[0].reason);
    assert!(moved[0].wanted_move.is_none());
    wanted.update(&p, WAIT);
    assert!(
        wanted.since(&moved[0].uuid).is_none(),
        "a move made is forgotten"
    );
}

#[test]
fn one_shot_plans_and_a_rebalance_asked_for_move_at_once() {
    let (topo, domains, obs, config) = unbalanced();
    let inputs: Vec<DomainInput> = domains
        .iter()
        .map(|d| DomainInput::new(d.clone(), None))
        .collect();
    let wanted = WantedMoves::default();
    for (rebalance_all, confirm) in [
        (false, None),
        (
            true,
            Some(MoveConfirmation {
                wanted: &wanted,
                now: 0.0,
                after_secs: WAIT,
            }),
        ),
    ] {
        let p = plan(&PlanInput {
            topology: &topo,
            domains: &inputs,
            observations: &obs,
            config: &config,
            rebalance_all,
            confirm,
        });
        assert_eq!(p.score.moves, 1, "rebalance_all {rebalance_all}");
    }
}

#[test]
fn a_move_to_another_node_or_no_longer_wanted_starts_over() {
    let (topo, domains, obs, config) = unbalanced();
    let mut wanted = WantedMoves::default();
    let p = cycle(&topo, &domains, &obs, &config, &wanted, 0.0);
    wanted.update(&p, 0.0);
    let uuid = p
        .domains
        .iter()
        .find(|d| d.wanted_move.is_some())
        .unwrap()
        .uuid
        .clone();

    // A cycle whose plan wants nothing (the load is gone) forgets it.
    let idle = Plan {
        domains: p
            .domains
            .iter()
            .cloned()
            .map(|mut d| {
                d.wanted_move = None;
                d
            })
            .collect(),
        ..p.clone()
    };
    wanted.update(&idle, 10.0);
    assert!(wanted.is_empty());
    let p = cycle(&topo, &domains, &obs, &config, &wanted, WAIT);
    assert_eq!(p.score.moves, 0, "wanted again from {WAIT} s only");
    wanted.update(&p, WAIT);
    assert_eq!(wanted.since(&uuid), Some(WAIT));

    // A move to another node than the one wanted before starts over.
    let mut elsewhere = p.clone();
    for d in &mut elsewhere.domains {
        if let Some(m) = &mut d.wanted_move {
            m.to = 7;
        }
    }
    let newly = wanted.update(&elsewhere, 40.0);
    assert!(!newly.is_empty());
    assert_eq!(wanted.since(&uuid), Some(40.0));
}

/// Four idle one-vCPU guests, two per node of a host with two CPUs per
/// node, as the multi-node lab's `spread` leaves them. One has just
/// booted: its first window shows 0.31 CPU. On the next window it is as
/// idle as the rest.
#[test]
fn a_boot_transient_moves_nothing() {
    let topo = HostShape::new(2, 2, 1, 2048).build();
    let cpus = |n: u32| topo.node(n).unwrap().cpus.to_string();
    let on = [0, 1, 1, 0];
    let domains: Vec<Domain> = (0..4)
        .map(|i| domain(&format!("spread{i}"), 1, 96).pinned_to(&cpus(on[i])))
        .collect();
    let observe = |boot: f64| {
        let mut obs = Observations::default();
        for (i, d) in domains.iter().enumerate() {
            let load = match i {
                3 => boot,
                0 => 0.38,
                _ => 0.15,
            };
            obs.domains.insert(
                d.name.clone(),
                DomainObservation {
                    memory_mib: [(on[i], 108)].into(),
                    vcpu_load: vec![load],
                    ..Default::default()
                },
            );
        }
        obs
    };
    let mut config = Config::default();
    config.planner.manage_pinned = true;
    config.host.memory_headroom_mib = 32; // as in the lab
    let (booting, booted) = (observe(0.312), observe(0.01));

    // Without waiting, the boot's window moves guests.
    let inputs: Vec<DomainInput> = domains
        .iter()
        .map(|d| DomainInput::new(d.clone(), None))
        .collect();
    let at_once = plan(&PlanInput {
        topology: &topo,
        domains: &inputs,
        observations: &booting,
        config: &config,
        rebalance_all: false,
        confirm: None,
    });
    // spread3 to node 1, and then spread1 back to node 0 to even that out:
    // the swap the lab saw over two cycles, 216 MiB to move for nothing.
    assert_eq!(status_of(&at_once, "spread3"), Status::Moved);
    assert_eq!(at_once.score.moves, 2, "{:#?}", at_once.domains);

    // The daemon wants it, then sees the load gone: nothing moves.
    let mut wanted = WantedMoves::default();
    let p = cycle(&topo, &domains, &booting, &config, &wanted, 0.0);
    assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
    assert_eq!(status_of(&p, "spread3"), Status::Kept);
    assert!(!wanted.update(&p, 0.0).is_empty());
    for now in [WAIT, 2.0 * WAIT] {
        let p = cycle(&topo, &domains, &booted, &config, &wanted, now);
        assert_eq!(p.score.moves, 0, "{:#?}", p.domains);
        wanted.update(&p, now);
        assert!(wanted.is_empty(), "{:#?}", p.domains);
    }
}
