//! A busy-host start: the guests of a trace's first population already
//! run unpinned (memory first-touched where their vCPUs first ran, vCPUs
//! spread over every node), then a strategy starts managing the host and
//! the simulator times how long until every guest is confined and until
//! 95% of the memory is local, and what it migrated on the way. No guest
//! comes, goes or changes load meanwhile.

use super::SimConfig;
use super::host::SimHost;
use super::strategy::{Placer, Strategy, first_touch};
use super::trace::{Event, Trace};
use crate::topology::HostTopology;

/// Share of the memory that must be local for [`Convergence::local_s`].
pub const LOCAL_TARGET: f64 = 0.95;

#[derive(Debug, Clone, PartialEq)]
pub struct Convergence {
    pub guests: usize,
    /// Seconds until every guest was confined; `None` if not within the
    /// horizon.
    pub confined_s: Option<u64>,
    /// Guests confined at the end.
    pub confined_at_end: usize,
    /// Seconds until [`LOCAL_TARGET`] of the memory was local.
    pub local_s: Option<u64>,
    /// Share of the memory local at the start and at the end.
    pub local_at_start: f64,
    pub local_at_end: f64,
    pub migrated_gib: f64,
    pub moves: u32,
    /// (seconds, share of memory local) per tick.
    pub series: Vec<(u64, f64)>,
}

/// Share of all guest memory that is local: on the nodes where its own
/// guest cell's vCPUs run, counting only confined guests (the memory of a
/// guest whose vCPUs run on every node is near none of them for long).
pub fn local_share(host: &SimHost) -> f64 {
    let (mut local, mut total) = (0u64, 0u64);
    for d in host.domains.values() {
        for p in &d.pieces {
            let mib: u64 = p.memory.iter().sum();
            total += mib;
            if d.placed_on.is_none() {
                continue;
            }
            local += p
                .memory
                .iter()
                .zip(&p.weights)
                .filter(|(_, w)| **w > 1e-9)
                .map(|(m, _)| m)
                .sum::<u64>();
        }
    }
    if total == 0 {
        1.0
    } else {
        local as f64 / total as f64
    }
}

/// Starts the trace's first population (arrivals in its first
/// `start_s`) unpinned, then runs `strategy` for `horizon_s`.
pub fn busy_start(
    topo: &HostTopology,
    trace: &Trace,
    strategy: Strategy,
    config: &SimConfig,
    start_s: u64,
    horizon_s: u64,
) -> Convergence {
    let mut host = SimHost::new(topo);
    for e in trace.events.iter().take_while(|e| e.at <= start_s) {
        match &e.event {
            Event::Arrive { id, spec } => {
                host.arrive(*id, spec);
                first_touch(&mut host, *id);
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
    let guests = host.domains.len();
    let mut placer = Placer::new(strategy, &config.planner, config.numapin_interval_s);
    let local_at_start = local_share(&host);
    let (mut confined_s, mut local_s) = (None, None);
    let mut series = Vec::new();
    let mut now = 0;
    while now <= horizon_s {
        placer.tick(&mut host, now);
        placer.migrate(&mut host, config);
        let confined = host
            .domains
            .values()
            .filter(|d| d.placed_on.is_some())
            .count();
        if confined == guests {
            confined_s.get_or_insert(now);
        }
        let local = local_share(&host);
        if local >= LOCAL_TARGET {
            local_s.get_or_insert(now);
        }
        series.push((now, local));
        now += config.tick_s;
    }
    Convergence {
        guests,
        confined_s,
        confined_at_end: host
            .domains
            .values()
            .filter(|d| d.placed_on.is_some())
            .count(),
        local_s,
        local_at_start,
        local_at_end: local_share(&host),
        migrated_gib: host.migrated_mib as f64 / 1024.0,
        moves: host.moves,
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::trace::{self, Fleet, TraceShape};
    use crate::synth::HostShape;

    #[test]
    fn numapin_confines_every_guest_of_a_busy_host_in_its_first_cycle() {
        let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
        let shape = TraceShape {
            duration_s: 600,
            fleet: Fleet::Production,
            ..TraceShape::default()
        };
        let t = trace::generate(&topo, &shape, 5);
        let c = busy_start(
            &topo,
            &t,
            Strategy::Numapin,
            &SimConfig::default(),
            300,
            600,
        );
        assert!(c.guests > 5);
        assert_eq!(c.confined_s, Some(0), "{c:?}");
        assert!(c.local_at_start < 0.1);
        assert!(c.local_at_end > c.local_at_start);
    }
}
