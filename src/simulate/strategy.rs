//! The four ways of placing domains the simulator compares, each reacting
//! to arrivals and to the passing of time.

use crate::config::Config;

use super::host::SimHost;
use super::numad::{self, Daemon};
use super::numapin::Numapin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No pinning: memory first-touched where the vCPUs first run, then the
    /// scheduler spreads vCPUs over all nodes.
    NoPinning,
    /// libvirt `placement='auto'`: numad's advice once, at start.
    NumadAtStart,
    /// Advice at start, then numad's daemon rebalancing.
    NumadPeriodic,
    /// numapin: plans every cycle and at each arrival.
    Numapin,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::NoPinning,
        Strategy::NumadAtStart,
        Strategy::NumadPeriodic,
        Strategy::Numapin,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Strategy::NoPinning => "no pinning",
            Strategy::NumadAtStart => "numad -w at start",
            Strategy::NumadPeriodic => "numad periodic",
            Strategy::Numapin => "numapin",
        }
    }
}

/// A strategy with its state.
pub enum Placer {
    NoPinning,
    NumadAtStart,
    NumadPeriodic(Daemon),
    Numapin {
        // Boxed: the planner's config makes it far larger than the others.
        numapin: Box<Numapin>,
        interval_s: u64,
        next_s: u64,
    },
}

impl Placer {
    pub fn new(strategy: Strategy, planner: &Config, interval_s: u64) -> Self {
        match strategy {
            Strategy::NoPinning => Placer::NoPinning,
            Strategy::NumadAtStart => Placer::NumadAtStart,
            Strategy::NumadPeriodic => Placer::NumadPeriodic(Daemon::default()),
            Strategy::Numapin => Placer::Numapin {
                numapin: Box::new(Numapin::new(planner.clone())),
                interval_s,
                next_s: 0,
            },
        }
    }

    /// A domain has just been added to `host` with no memory touched.
    pub fn arrive(&mut self, host: &mut SimHost, id: usize, now: u64) {
        match self {
            Placer::NoPinning => first_touch(host, id),
            Placer::NumadAtStart => numad_start(host, id),
            Placer::NumadPeriodic(daemon) => {
                numad_start(host, id);
                daemon.found_bound(id, now);
            }
            Placer::Numapin { numapin, .. } => {
                if !numapin.cycle(host, Some(id), now) {
                    first_touch(host, id);
                }
            }
        }
    }

    /// Periodic work due at `now`.
    pub fn tick(&mut self, host: &mut SimHost, now: u64) {
        match self {
            Placer::NoPinning | Placer::NumadAtStart => {}
            Placer::NumadPeriodic(daemon) => {
                if now >= daemon.next_scan {
                    daemon.next_scan = now + daemon.scan(host, now);
                }
            }
            Placer::Numapin {
                numapin,
                interval_s,
                next_s,
            } => {
                // The daemon pins in its cycle and moves memory in the
                // background: cycles do not wait for the mover.
                if now >= *next_s {
                    numapin.cycle(host, None, now);
                    *next_s = now + *interval_s;
                }
            }
        }
    }
}

impl Placer {
    /// Memory movement over one tick: numapin's background mover at its
    /// rate, most misplaced guests first; a changed binding elsewhere at
    /// the host's rate, in the order the kernel happens to get to them.
    pub fn migrate(&self, host: &mut SimHost, config: &super::SimConfig) {
        match self {
            Placer::Numapin { .. } => {
                host.migrate_most_misplaced_first(config.numapin_migrate_mib_per_s * config.tick_s)
            }
            _ => host.migrate(config.migrate_mib_per_s * config.tick_s),
        };
    }
}

/// An unpinned start: each vCPU first runs on the node with the most idle
/// CPU, its share of memory is touched there, then the scheduler spreads
/// the vCPUs over every node.
pub fn first_touch(host: &mut SimHost, id: usize) {
    let mut load = host.cpu_load();
    let pieces = host.domains[&id].pieces.len();
    let per_vcpu = host.domains[&id].load;
    let everywhere = host.weights_on(&host.all_nodes());
    for k in 0..pieces {
        let mut share = vec![0.0; host.nodes()];
        for _ in host.domains[&id].piece_vcpus(k) {
            let idle = |i: usize| host.cpus[i] - load[i];
            let node = host
                .cpu_nodes()
                .max_by(|&a, &b| idle(a).total_cmp(&idle(b)).then(b.cmp(&a)))
                .expect("hosts have nodes");
            share[node] += 1.0;
            load[node] += per_vcpu;
        }
        host.allocate(id, k, &share);
        host.domains.get_mut(&id).expect("live").pieces[k].weights = everywhere.clone();
    }
}

/// libvirt asks `numad -w` and binds vCPUs and memory to the advice; the
/// memory is then touched within those nodes.
fn numad_start(host: &mut SimHost, id: usize) {
    let spec = host.domains[&id].spec.clone();
    let nodes = numad::advise(host, spec.vcpus, spec.mem_mib);
    host.bind(id, &nodes);
    let share = host.weights_on(&nodes);
    for k in 0..host.domains[&id].pieces.len() {
        host.allocate(id, k, &share);
    }
}
