//! A seeded trace of what happens on a host: domains arrive, change load
//! and leave. The same seed gives the same trace, so every strategy is
//! compared on exactly the same events.

use crate::synth::Rng;
use crate::topology::HostTopology;

use super::fleet;

/// What an arriving domain asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuestSpec {
    pub vcpus: u32,
    pub mem_mib: u64,
    /// Guest NUMA cells (0: none).
    pub cells: u32,
    /// Busy fraction of each vCPU (0-1).
    pub load: f64,
    /// How memory-bound the guest is (`m` of the speed model, 0-1).
    pub memory_bound: f64,
    /// The guest's CPU model, as its definition gives it.
    pub cpu: CpuKind,
    /// Whether it runs VMs of its own, and what shows it.
    pub hypervisor: Option<HypervisorKind>,
    /// Mostly idle: its load changes stay low.
    pub idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKind {
    /// A named model without vmx: cannot run VMs.
    #[default]
    Named,
    HostPassthrough,
    HostModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervisorKind {
    /// Requires vmx in its definition.
    Declared,
    /// host-passthrough, seen entering nested guests by KVM's counters.
    Observed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Arrive {
        id: usize,
        spec: GuestSpec,
    },
    /// Every vCPU of the domain is now busy this fraction of the time.
    Load {
        id: usize,
        load: f64,
    },
    Depart {
        id: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// Seconds from the start.
    pub at: u64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Ascending by time; events at the same second in generation order.
    pub events: Vec<Timed>,
    pub duration_s: u64,
}

/// How busy a trace keeps the host.
#[derive(Debug, Clone)]
pub struct TraceShape {
    pub duration_s: u64,
    /// Share of the host's memory that live domains ask for on average.
    pub memory_fill: f64,
    /// Most of the host's memory live domains may ask for: an arrival
    /// beyond it is turned away, as a cloud scheduler would.
    pub memory_limit: f64,
    /// Mean lifetime of a domain; arrivals keep the population steady.
    pub mean_lifetime_s: u64,
    /// Mean time between two load changes of one domain.
    pub mean_load_change_s: u64,
    pub fleet: Fleet,
}

/// What kind of guests a trace has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fleet {
    /// Sized against a node: mostly small guests, some a quarter to half a
    /// node, a few larger than a node; the population fills memory.
    #[default]
    Mixed,
    /// Shaped like a production host (`fleet.rs`): small host-passthrough
    /// and host-model guests, 70% mostly idle, a few nested hypervisors
    /// with cells; the population fills the CPUs 2.5:1.
    Production,
}

impl Default for TraceShape {
    fn default() -> Self {
        Self {
            duration_s: 4 * 3600,
            memory_fill: 0.6,
            memory_limit: 0.85,
            mean_lifetime_s: 3600,
            mean_load_change_s: 900,
            fleet: Fleet::Mixed,
        }
    }
}

/// Exponentially distributed, with the given mean (at least one second).
fn exponential(rng: &mut Rng, mean: u64) -> u64 {
    let u = 1.0 - rng.unit();
    ((-u.ln() * mean as f64) as u64).max(1)
}

/// A guest sized against the host's first node: mostly small ones, some a
/// quarter to half a node, a few larger than a node (half of those with
/// two guest NUMA cells).
fn guest(rng: &mut Rng, node_cpus: u32, node_mib: u64) -> GuestSpec {
    let class = rng.unit();
    let (vcpus, mem_mib, cells) = if class < 0.7 {
        let vcpus = *rng.pick(&[1, 2, 2, 4]);
        (vcpus, *rng.pick(&[2048, 4096, 8192]), 0)
    } else if class < 0.95 {
        let vcpus = (node_cpus / 4).max(1) + rng.below((node_cpus / 4).max(1) as u64) as u32;
        let mem = node_mib / 8 + rng.below(node_mib / 8) / 1024 * 1024;
        let cells = if vcpus >= 4 && rng.chance(0.3) { 2 } else { 0 };
        (vcpus, mem, cells)
    } else {
        let vcpus = (node_cpus * 5 / 4).max(2);
        let cells = if rng.chance(0.5) { 2 } else { 0 };
        (vcpus, node_mib * 5 / 4 / 1024 * 1024, cells)
    };
    GuestSpec {
        vcpus,
        mem_mib,
        cells,
        load: load(rng),
        ..GuestSpec::default()
    }
}

/// Most guests idle along, some are busy.
pub(super) fn load(rng: &mut Rng) -> f64 {
    let busy = if rng.chance(0.25) { 0.6 } else { 0.05 };
    ((busy + rng.unit() * 0.35) * 100.0).round() / 100.0
}

/// A trace for `topo`, reproducible from `seed`.
pub fn generate(topo: &HostTopology, shape: &TraceShape, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let node_cpus = topo.nodes[0].cpus.len() as u32;
    let node_mib = topo.nodes[0].memory_mib;
    let host_mib: u64 = topo.nodes.iter().map(|n| n.memory_mib).sum();
    let host_cpus = topo.cpus.len() as f64;
    // Mean memory of a guest from the size classes above.
    let mean_mib =
        0.7 * 4779.0 + 0.25 * (node_mib as f64 * 3.0 / 16.0) + 0.05 * node_mib as f64 * 1.25;
    let population = match shape.fleet {
        Fleet::Mixed => host_mib as f64 * shape.memory_fill / mean_mib,
        Fleet::Production => host_cpus * fleet::OVERCOMMIT / fleet::MEAN_VCPUS,
    };
    let population = (population.round() as usize).max(1);
    // m is drawn apart from the trace, so that the same seed gives the
    // same arrivals and loads with or without it.
    let mut bound_rng = Rng::new(seed ^ 0x6d65_6d6f_7279);
    let (lo, hi) = super::speed::MEMORY_BOUND_RANGE;
    let limit = (host_mib as f64 * shape.memory_limit) as u64;
    let mut events: Vec<(u64, usize, Event)> = Vec::new();
    // Admitted domains: memory, arrival and end.
    let mut admitted: Vec<(u64, u64, u64)> = Vec::new();
    let mut next_id = 0;
    let mut arrive = |rng: &mut Rng, at: u64, events: &mut Vec<(u64, usize, Event)>| {
        let mut spec = match shape.fleet {
            Fleet::Mixed => guest(rng, node_cpus, node_mib),
            Fleet::Production => fleet::guest(rng, node_cpus),
        };
        spec.memory_bound = ((lo + (hi - lo) * bound_rng.unit()) * 100.0).round() / 100.0;
        let end = at + exponential(rng, shape.mean_lifetime_s);
        let live: u64 = admitted
            .iter()
            .filter(|(_, from, to)| *from <= at && at < *to)
            .map(|(mib, _, _)| mib)
            .sum();
        if live + spec.mem_mib > limit {
            return;
        }
        admitted.push((spec.mem_mib, at, end));
        let id = next_id;
        next_id += 1;
        let seq = events.len();
        let idle = spec.idle;
        events.push((at, seq, Event::Arrive { id, spec }));
        let mut t = at;
        loop {
            t += exponential(rng, shape.mean_load_change_s);
            if t >= end.min(shape.duration_s) {
                break;
            }
            let seq = events.len();
            events.push((
                t,
                seq,
                Event::Load {
                    id,
                    load: match shape.fleet {
                        Fleet::Mixed => load(rng),
                        Fleet::Production => fleet::load(rng, idle),
                    },
                },
            ));
        }
        if end < shape.duration_s {
            let seq = events.len();
            events.push((end, seq, Event::Depart { id }));
        }
    };
    // The first population arrives over the first minutes, then arrivals
    // come at the rate that keeps it steady.
    for k in 0..population {
        let at = (k as u64 * 300) / population as u64;
        arrive(&mut rng, at, &mut events);
    }
    let mean_gap = (shape.mean_lifetime_s / population as u64).max(1);
    let mut t = 300;
    loop {
        t += exponential(&mut rng, mean_gap);
        if t >= shape.duration_s {
            break;
        }
        arrive(&mut rng, t, &mut events);
    }
    events.sort_by_key(|(at, seq, _)| (*at, *seq));
    Trace {
        events: events
            .into_iter()
            .map(|(at, _, event)| Timed { at, event })
            .collect(),
        duration_s: shape.duration_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::HostShape;

    #[test]
    fn a_trace_is_reproducible_from_its_seed() {
        let topo = HostShape::new(2, 8, 2, 64 * 1024).build();
        let shape = TraceShape {
            duration_s: 3600,
            ..TraceShape::default()
        };
        let a = generate(&topo, &shape, 7);
        assert_eq!(a, generate(&topo, &shape, 7));
        assert_ne!(a, generate(&topo, &shape, 8));
        assert!(a.events.windows(2).all(|w| w[0].at <= w[1].at));
        // Every departure and load change follows its domain's arrival.
        let mut live = std::collections::BTreeSet::new();
        for e in &a.events {
            match &e.event {
                Event::Arrive { id, spec } => {
                    assert!(spec.vcpus > 0 && spec.mem_mib > 0);
                    assert!(live.insert(*id));
                }
                Event::Load { id, load } => {
                    assert!(live.contains(id) && (0.0..=1.0).contains(load))
                }
                Event::Depart { id } => assert!(live.remove(id)),
            }
        }
    }
}
