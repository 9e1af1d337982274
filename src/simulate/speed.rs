//! Modelled guest speed: what a vCPU gets done per unit of time, against
//! the same vCPU alone on an idle node with all its memory local (speed 1).
//!
//! speed = CPU share x memory factor, where
//!
//! - the CPU share is what a node's CPUs give a vCPU running there
//!   against what it asks: a busy vCPU per core runs at full speed, a
//!   second thread on a core adds [`SMT_SIBLING_GAIN`] of a core, and
//!   demand beyond that capacity waits in the run queue. The capacity is
//!   shared max-min fairly, as CFS shares a CPU among threads of equal
//!   weight: a vCPU asking less than the fair level gets all it asks,
//!   the busier ones split the rest equally;
//! - the memory factor is `1 / (1 + m x penalty)`, `m` being how
//!   memory-bound the guest is (0: pure CPU, 1: every instruction waits on
//!   memory) and the penalty the memory-weighted extra latency of the
//!   nodes its memory is on, seen from the nodes its vCPUs run on:
//!   [`LATENCY_PER_SLIT`] x (distance - 10) / 10.
//!
//! docs/SIMULATION.md grounds both constants in published figures.

use crate::topology::LOCAL_DISTANCE;

use super::host::{SimDomain, SimHost};

/// Throughput a second hardware thread adds to a busy core: SMT gives a
/// core 1.15-1.3 times the throughput of one thread on server workloads
/// (Intel's "up to 30%"), so two siblings count as 1.3 CPUs.
pub const SMT_SIBLING_GAIN: f64 = 0.3;

/// Extra memory latency per SLIT step over local, as a multiple of local
/// latency: SLIT 21 (two sockets) gives 1.77x local, within the 1.5-2x
/// measured on two-socket servers; SLIT 24 (a CXL memory node as the
/// synthetic hosts give it) 1.98x, the about 2x of CXL memory; SLIT 32
/// (across sockets on a four-die-per-socket host) 2.54x.
pub const LATENCY_PER_SLIT: f64 = 0.7;

/// The range guests' memory-boundness is drawn from, uniformly: at SLIT
/// 21 a guest with all its memory remote runs 0-32% slower (mean 19%).
pub const MEMORY_BOUND_RANGE: (f64, f64) = (0.0, 0.6);

/// `m` values of the sanity sweep (every guest given the same `m`).
pub const SWEEP: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Extra latency of memory at `distance`, as a multiple of local latency.
pub fn penalty(distance: u32) -> f64 {
    LATENCY_PER_SLIT * distance.saturating_sub(LOCAL_DISTANCE) as f64 / LOCAL_DISTANCE as f64
}

pub fn memory_factor(m: f64, penalty: f64) -> f64 {
    1.0 / (1.0 + m * penalty)
}

/// CPUs' worth a node with `cores` cores and `threads` hardware threads
/// gives a demand of `demand` busy vCPUs.
pub fn capacity(demand: f64, cores: f64, threads: f64) -> f64 {
    let siblings = (threads - cores).max(0.0);
    demand.min(cores) + SMT_SIBLING_GAIN * (demand - cores).clamp(0.0, siblings)
}

/// What a node gives a demand of `demand` busy vCPUs, as a share of it
/// (at most 1), when every vCPU is equally busy.
pub fn cpu_share(demand: f64, cores: f64, threads: f64) -> f64 {
    if demand <= 0.0 {
        return 1.0;
    }
    (capacity(demand, cores, threads) / demand).min(1.0)
}

/// The max-min fair level of a node: every vCPU gets the lesser of its
/// load and this. `threads` holds (vCPUs, load of each); `None` when the
/// capacity covers every demand.
pub fn fair_level(threads: &mut [(f64, f64)], capacity: f64) -> Option<f64> {
    let demand: f64 = threads.iter().map(|(n, l)| n * l).sum();
    if demand <= capacity + 1e-12 {
        return None;
    }
    threads.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (mut left, mut count) = (capacity, threads.iter().map(|t| t.0).sum::<f64>());
    for &(n, l) in threads.iter() {
        // Everyone left asks at least `l`: if an equal split of what is
        // left is below it, that split is the level.
        if left / count <= l {
            return Some(left / count.max(f64::MIN_POSITIVE));
        }
        left -= n * l;
        count -= n;
    }
    None
}

/// Per piece of a domain: its vCPUs, CPU share and memory penalty, with
/// `level` each node's [`fair_level`].
pub fn pieces(host: &SimHost, level: &[Option<f64>], d: &SimDomain) -> Vec<(u32, f64, f64)> {
    let share = |node: usize| match level[node] {
        Some(l) if d.load > l => l / d.load,
        _ => 1.0,
    };
    d.pieces
        .iter()
        .map(|p| {
            let cpu: f64 = p
                .weights
                .iter()
                .enumerate()
                .map(|(c, w)| if *w > 0.0 { w * share(c) } else { 0.0 })
                .sum();
            let total: u64 = p.memory.iter().sum();
            let mut pen = 0.0;
            if total > 0 {
                for (j, &mib) in p.memory.iter().enumerate() {
                    if mib == 0 {
                        continue;
                    }
                    let seen: f64 = p
                        .weights
                        .iter()
                        .enumerate()
                        .map(|(c, w)| w * penalty(host.distance[c][j]))
                        .sum();
                    pen += mib as f64 / total as f64 * seen;
                }
            }
            // A vCPU that runs nowhere yet (weights all zero) is counted
            // as getting a full CPU: it is about to start.
            let placed: f64 = p.weights.iter().sum();
            let cpu = if placed > 0.0 { cpu / placed } else { 1.0 };
            (p.vcpus, cpu, pen)
        })
        .collect()
}

/// Each node's [`fair_level`] now. A vCPU that runs on several nodes
/// counts on each as that share of a vCPU with its full load: it is a
/// thread as busy as ever, there part of the time.
pub fn node_levels(host: &SimHost) -> Vec<Option<f64>> {
    let mut threads: Vec<Vec<(f64, f64)>> = vec![Vec::new(); host.nodes()];
    for d in host.domains.values() {
        for p in &d.pieces {
            for (c, w) in p.weights.iter().enumerate() {
                if *w > 0.0 && d.load > 0.0 {
                    threads[c].push((p.vcpus as f64 * w, d.load));
                }
            }
        }
    }
    let demand = host.cpu_load();
    threads
        .iter_mut()
        .enumerate()
        .map(|(i, t)| fair_level(t, capacity(demand[i], host.cores[i], host.cpus[i])))
        .collect()
}

/// Mean speed of a domain's vCPUs with memory-boundness `m`.
pub fn domain_speed(host: &SimHost, level: &[Option<f64>], d: &SimDomain, m: f64) -> f64 {
    mean_speed(&pieces(host, level, d), m)
}

/// Mean speed over [`pieces`] with memory-boundness `m`.
pub fn mean_speed(pieces: &[(u32, f64, f64)], m: f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0u32);
    for &(vcpus, cpu, pen) in pieces {
        sum += vcpus as f64 * cpu * memory_factor(m, pen);
        n += vcpus;
    }
    if n == 0 { 1.0 } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idset::NodeSet;
    use crate::simulate::trace::GuestSpec;
    use crate::synth::HostShape;

    fn spec(vcpus: u32, load: f64) -> GuestSpec {
        GuestSpec {
            vcpus,
            mem_mib: 1024,
            load,
            ..GuestSpec::default()
        }
    }

    #[test]
    fn a_vcpu_alone_with_local_memory_runs_at_full_speed() {
        let mut host = SimHost::new(&HostShape::new(2, 4, 2, 8192).build());
        host.arrive(0, &spec(1, 1.0));
        host.bind(0, &NodeSet::single(0));
        host.allocate(0, 0, &[1.0, 0.0]);
        let level = node_levels(&host);
        assert_eq!(domain_speed(&host, &level, &host.domains[&0], 1.0), 1.0);
    }

    #[test]
    fn remote_memory_at_slit_21_costs_the_documented_factor() {
        assert!((penalty(21) - 0.77).abs() < 1e-12);
        assert_eq!(penalty(10), 0.0);
        let mut host = SimHost::new(&HostShape::new(2, 4, 1, 8192).build());
        host.arrive(0, &spec(1, 0.5));
        host.bind(0, &NodeSet::single(0));
        host.allocate(0, 0, &[0.0, 1.0]);
        let level = node_levels(&host);
        let d = &host.domains[&0];
        assert!((domain_speed(&host, &level, d, 1.0) - 1.0 / 1.77).abs() < 1e-12);
        assert_eq!(domain_speed(&host, &level, d, 0.0), 1.0);
        // CXL-like distance: about twice local latency.
        assert!((1.0 + penalty(24) - 1.98).abs() < 1e-12);
    }

    #[test]
    fn smt_siblings_count_as_less_than_two_cpus() {
        // 4 cores, 8 threads: up to 4 busy vCPUs run at full speed.
        assert_eq!(cpu_share(4.0, 4.0, 8.0), 1.0);
        // 8 busy vCPUs on 4 cores get 4 x 1.3 CPUs.
        assert!((cpu_share(8.0, 4.0, 8.0) - 5.2 / 8.0).abs() < 1e-12);
        // Beyond the threads, the rest waits.
        assert!((cpu_share(16.0, 4.0, 8.0) - 5.2 / 16.0).abs() < 1e-12);
        // No SMT: the cores are all there is.
        assert_eq!(cpu_share(8.0, 4.0, 4.0), 0.5);
        assert_eq!(cpu_share(0.0, 4.0, 8.0), 1.0);
    }

    #[test]
    fn an_overloaded_node_slows_its_vcpus_and_not_the_other_nodes() {
        let mut host = SimHost::new(&HostShape::new(2, 2, 1, 8192).build());
        for id in 0..4 {
            host.arrive(id, &spec(1, 1.0));
            host.bind(id, &NodeSet::single(0));
            host.allocate(id, 0, &[1.0, 0.0]);
        }
        host.arrive(9, &spec(1, 1.0));
        host.bind(9, &NodeSet::single(1));
        host.allocate(9, 0, &[0.0, 1.0]);
        let level = node_levels(&host);
        assert_eq!(domain_speed(&host, &level, &host.domains[&0], 0.5), 0.5);
        assert_eq!(domain_speed(&host, &level, &host.domains[&9], 0.5), 1.0);
        // A light vCPU on the crowded node gets all it asks; the busy
        // ones split the rest.
        host.arrive(5, &spec(1, 0.1));
        host.bind(5, &NodeSet::single(0));
        host.allocate(5, 0, &[1.0, 0.0]);
        let level = node_levels(&host);
        assert_eq!(domain_speed(&host, &level, &host.domains[&5], 0.0), 1.0);
        let busy = domain_speed(&host, &level, &host.domains[&0], 0.0);
        assert!((busy - 1.9 / 4.0).abs() < 1e-12, "{busy}");
    }

    #[test]
    fn the_fair_level_splits_what_light_vcpus_leave() {
        assert_eq!(fair_level(&mut [(4.0, 0.5)], 4.0), None);
        assert_eq!(fair_level(&mut [(4.0, 1.0)], 2.0), Some(0.5));
        let l = fair_level(&mut [(2.0, 1.0), (2.0, 0.1)], 1.2).unwrap();
        assert!((l - 0.5).abs() < 1e-12, "{l}");
    }
}
