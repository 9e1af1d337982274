//! A seeded placement-quality simulator: replays one trace of domain
//! arrivals, load changes and departures on a host, once per strategy (no
//! pinning, numad's advice at start, numad's periodic rebalancing, numapin),
//! and measures the guests' modelled speed, memory locality, guests
//! spanning nodes needlessly, node imbalance, moves and migrated memory.
//!
//! The model is coarse by design: vCPUs run on their bound nodes in
//! proportion to the nodes' CPUs (on all nodes when unbound); memory is
//! touched when a domain starts, within its binding or where its vCPUs
//! first run, spilling to the nearest node with room; a binding that
//! changes moves memory at a bounded, host-wide rate. A vCPU's speed is
//! its CPU share where it runs times a memory factor from the distance to
//! its memory (`speed.rs`).

pub mod converge;
pub mod fleet;
pub mod host;
pub mod metrics;
pub mod numad;
pub mod numapin;
pub mod plot;
pub mod report;
pub mod speed;
pub mod stats;
pub mod strategy;
pub mod trace;

use crate::config::Config;
use crate::topology::HostTopology;

pub use metrics::Metrics;
pub use strategy::Strategy;
pub use trace::{Trace, TraceShape};

use host::SimHost;
use strategy::Placer;
use trace::Event;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulation step.
    pub tick_s: u64,
    /// Metrics are sampled every tick from this time on (the first
    /// arrivals are over by then).
    pub warm_up_s: u64,
    /// Host-wide page migration rate of numad and of a binding libvirt
    /// changes (migrate_pages(2) moves about a GiB a second).
    pub migrate_mib_per_s: u64,
    /// numapin's background memory mover: MiB per second for the whole
    /// host, the guests with the most memory away from their nodes first.
    /// Cycles do not wait for it. The daemon's default
    /// (`apply.migrate_rate_mib_s`).
    pub numapin_migrate_mib_per_s: u64,
    /// numapin's cycle.
    pub numapin_interval_s: u64,
    /// numapin's config.
    pub planner: Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tick_s: 5,
            warm_up_s: 600,
            migrate_mib_per_s: 1024,
            numapin_migrate_mib_per_s: Config::default().apply.migrate_rate_mib_s,
            numapin_interval_s: 30,
            planner: Config::default(),
        }
    }
}

/// Replays `trace` on `topo` under one strategy.
pub fn simulate(
    topo: &HostTopology,
    trace: &Trace,
    strategy: Strategy,
    config: &SimConfig,
) -> Metrics {
    run(topo, trace, strategy, config).0
}

/// As [`simulate`], with the mean vCPU speed of every sample after the
/// warm-up: (seconds from the start, speed).
pub fn run(
    topo: &HostTopology,
    trace: &Trace,
    strategy: Strategy,
    config: &SimConfig,
) -> (Metrics, Vec<(u64, f64)>) {
    let mut host = SimHost::new(topo);
    let mut placer = Placer::new(strategy, &config.planner, config.numapin_interval_s);
    let mut metrics = Metrics::default();
    let mut speed = metrics::SpeedTracker::default();
    let mut series = Vec::new();
    let mut events = trace.events.iter().peekable();
    let mut now = 0;
    while now <= trace.duration_s {
        while let Some(e) = events.next_if(|e| e.at <= now) {
            match &e.event {
                Event::Arrive { id, spec } => {
                    host.arrive(*id, spec);
                    placer.arrive(&mut host, *id, now);
                }
                Event::Load { id, load } => {
                    if let Some(d) = host.domains.get_mut(id) {
                        d.load = *load;
                    }
                }
                Event::Depart { id } => {
                    host.domains.remove(id);
                }
            }
        }
        placer.tick(&mut host, now);
        placer.migrate(&mut host, config);
        if now >= config.warm_up_s {
            metrics.add(metrics::sample(&host));
            series.push((now, speed.add(&host)));
        }
        now += config.tick_s;
    }
    metrics.moves = host.moves;
    metrics.migrated_gib = host.migrated_mib as f64 / 1024.0;
    speed.finish(&mut metrics);
    (metrics, series)
}

/// Every strategy on the same trace, in `Strategy::ALL` order.
pub fn compare(topo: &HostTopology, trace: &Trace, config: &SimConfig) -> Vec<(Strategy, Metrics)> {
    Strategy::ALL
        .iter()
        .map(|&s| (s, simulate(topo, trace, s, config)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::HostShape;

    fn short() -> TraceShape {
        TraceShape {
            duration_s: 1800,
            mean_lifetime_s: 900,
            ..TraceShape::default()
        }
    }

    #[test]
    fn on_a_one_node_host_everything_is_local() {
        let topo = HostShape::new(1, 16, 2, 128 * 1024).build();
        let trace = trace::generate(&topo, &short(), 3);
        for (s, m) in compare(&topo, &trace, &SimConfig::default()) {
            assert_eq!(m.locality, 1.0, "{s:?}");
            assert_eq!(m.spanning, 0.0, "{s:?}");
            assert_eq!(m.cpu_imbalance, 0.0, "{s:?}");
            assert_eq!(m.migrated_gib, 0.0, "{s:?}");
            assert!(m.samples > 0);
        }
    }

    #[test]
    fn a_run_is_reproducible_and_pinning_beats_no_pinning_on_locality() {
        let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
        let trace = trace::generate(&topo, &short(), 11);
        let config = SimConfig::default();
        let a = compare(&topo, &trace, &config);
        assert_eq!(a, compare(&topo, &trace, &config));
        let locality = |s: Strategy| a.iter().find(|(x, _)| *x == s).unwrap().1.locality;
        assert!(locality(Strategy::NoPinning) < locality(Strategy::NumadAtStart));
        assert!(locality(Strategy::NoPinning) < locality(Strategy::Numapin));
        for (s, m) in &a {
            assert!((0.0..=1.0).contains(&m.locality), "{s:?} {m:?}");
        }
    }
}
