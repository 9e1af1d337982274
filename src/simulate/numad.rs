//! numad 0.5's placement, as its source (numad.c) describes it, on the
//! simulated host: `-w` pre-placement advice at start (libvirt's
//! `placement='auto'`) and the daemon's periodic rebalancing.
//!
//! Nodes are ranked by a magnitude of free resources: memory counts 10 per
//! MiB up to the request and 4 per MiB beyond, CPU 6 per hundredth of a CPU
//! up to the request and 1 beyond, and the magnitude is their product. For
//! each node, the nodes nearest it (ties: larger magnitude first) are
//! summed as magnitude / distance² over as many nodes as the request needs;
//! the best sum picks the home node, and nodes are taken nearest-first from
//! it until memory and CPU are covered. The daemon scans every 5-15 s
//! (5 after a move, 15 otherwise), considers processes using more than half
//! a CPU and 300 MB, unbound ones first, biggest first; it skips a process
//! bound in the last 300 s unless it sits on the busiest node and moving it
//! would even the nodes out, and moves at most one process per scan. A
//! process already on its best nodes with 90% of its memory there stays.

use std::collections::BTreeMap;

use crate::idset::NodeSet;

use super::host::SimHost;

pub const MIN_INTERVAL_S: u64 = 5;
pub const MAX_INTERVAL_S: u64 = 15;
/// Least time between two evaluations of a bound process.
pub const HOLD_S: i64 = 300;
const TARGET_UTILIZATION: i64 = 85;
const TARGET_MEMLOCALITY: i64 = 90;
/// Hundredths of a CPU, and MB, a process must use to be considered.
const CPU_THRESHOLD: i64 = 50;
const MEMORY_THRESHOLD: i64 = 300;
const MBS_MARGIN: i64 = 100;

#[derive(Debug, Clone, Copy)]
struct NodeView {
    /// CPUs in hundredths.
    cpus_total: i64,
    cpus_free: i64,
    mbs_total: i64,
    mbs_free: i64,
    magnitude: i64,
}

/// A process being re-evaluated: what it uses and where.
#[derive(Debug, Clone)]
pub struct Process {
    pub mbs_by_node: Vec<i64>,
    pub mbs_used: i64,
    pub cpus_used: i64,
    /// Nodes it is bound to (all nodes when unbound).
    pub bound: NodeSet,
    /// Set when it was last bound (or found bound).
    pub bind_time: Option<i64>,
}

/// numad's weighted product of free memory and free CPU.
pub fn magnitude(mbs: i64, cpus: i64, mbs_free: i64, cpus_free: i64) -> i64 {
    let (needed_mem, excess_mem) = if mbs_free > mbs {
        (mbs, mbs_free - mbs)
    } else {
        (mbs_free, 0)
    };
    let (needed_cpu, excess_cpu) = if cpus_free > cpus {
        (cpus, cpus_free - cpus)
    } else {
        (cpus_free, 0)
    };
    (needed_mem * 10 + excess_mem * 4) * (needed_cpu * 6 + excess_cpu)
}

fn views(host: &SimHost) -> Vec<NodeView> {
    let load = host.cpu_load();
    let free = host.free_mib();
    (0..host.nodes())
        .map(|i| NodeView {
            cpus_total: (host.cpus[i] * 100.0) as i64,
            cpus_free: (((host.cpus[i] - load[i]) * 100.0) as i64).max(0),
            mbs_total: host.mem_mib[i] as i64,
            mbs_free: free[i] as i64,
            magnitude: 0,
        })
        .collect()
}

/// Node indexes ordered by distance from `from`, ties by larger magnitude,
/// with numad's selection sort (which is not stable).
fn order_from(host: &SimHost, nodes: &[NodeView], from: usize) -> Vec<usize> {
    let mut index: Vec<usize> = (0..nodes.len()).collect();
    for ij in 0..index.len() {
        let mut best = ij;
        for ik in ij + 1..index.len() {
            let (dk, db) = (
                host.distance[index[ik]][from],
                host.distance[index[best]][from],
            );
            if db > dk || (db == dk && nodes[index[best]].magnitude < nodes[index[ik]].magnitude) {
                best = ik;
            }
        }
        index.swap(ij, best);
    }
    index
}

/// numad's `pick_numa_nodes`: the nodes for a request of `cpus` (hundredths)
/// and `mbs`; for an existing process, `None` when it is already where it
/// should be.
pub fn pick_nodes(
    host: &SimHost,
    process: Option<&Process>,
    mut cpus: i64,
    mut mbs: i64,
    mut assume_enough_cpus: bool,
) -> Option<NodeSet> {
    let n = host.nodes();
    let mut tmp = views(host);
    let mut sum_cpus_free = 0;
    let avg_cpus_free = process.map(|p| {
        let on: i64 = p.bound.iter().map(|i| tmp[i as usize].cpus_free).sum();
        (p.cpus_used + on) / p.bound.len().max(1) as i64
    });
    for (ix, node) in tmp.iter_mut().enumerate() {
        if let Some(p) = process {
            if p.bound.len() >= n {
                node.mbs_free += p.mbs_by_node[ix] * 17 / 16;
                node.cpus_free += p.cpus_used * p.mbs_by_node[ix] / p.mbs_used.max(1);
            } else {
                node.mbs_free += p.mbs_by_node[ix] * 5 / 4;
                if p.bound.contains(ix as u32) {
                    node.cpus_free = avg_cpus_free.unwrap_or(0);
                }
            }
            sum_cpus_free += node.cpus_free;
            node.cpus_free = node.cpus_free.min(node.cpus_total);
            node.mbs_free = node.mbs_free.min(node.mbs_total);
        }
        node.cpus_free = node.cpus_free.max(1);
        node.magnitude = magnitude(mbs, cpus, node.mbs_free, node.cpus_free);
    }
    if process.is_some() && cpus > sum_cpus_free {
        assume_enough_cpus = true;
    }
    let cpu_flex = if process.is_some() {
        (100 - TARGET_UTILIZATION) * tmp[0].cpus_total / 200
    } else {
        0
    };
    let mem_req = (mbs as f64 / tmp[0].mbs_total as f64).ceil() as i64;
    let cpu_req = ((cpus - cpu_flex) as f64 / tmp[0].cpus_total as f64).ceil() as i64;
    let mut min_req = mem_req.max(cpu_req).min(n as i64);
    let totmag: Vec<i64> = (0..n)
        .map(|ix| {
            order_from(host, &tmp, ix)
                .iter()
                .take(min_req.max(0) as usize)
                .map(|&j| {
                    let d = host.distance[j][ix] as i64;
                    tmp[j].magnitude / (d * d)
                })
                .sum()
        })
        .collect();
    let mut best = 0;
    for ix in 0..n {
        if totmag[best] < totmag[ix] {
            best = ix;
        }
    }
    let index = order_from(host, &tmp, best);
    let mut target = NodeSet::new();
    let mut k = 0;
    while k < n && (min_req > 0 || mbs > 0 || (cpus > cpu_flex && !assume_enough_cpus)) {
        let node = &mut tmp[index[k]];
        target.insert(index[k] as u32);
        min_req -= 1;
        if target.len() == n {
            break;
        }
        if node.mbs_free >= mbs + MBS_MARGIN {
            node.mbs_free -= mbs;
            mbs = 0;
        } else {
            mbs -= node.mbs_free - MBS_MARGIN;
            node.mbs_free = MBS_MARGIN;
        }
        if node.cpus_free >= cpus {
            node.cpus_free -= cpus;
            cpus = 0;
        } else {
            cpus -= node.cpus_free;
            node.cpus_free = 0;
        }
        k += 1;
    }
    if let Some(p) = process {
        let nonlocal: i64 = (0..n)
            .filter(|&i| !target.contains(i as u32))
            .map(|i| p.mbs_by_node[i])
            .sum();
        let displaced = 100 * nonlocal / p.mbs_used.max(1);
        if displaced <= 100 - TARGET_MEMLOCALITY && p.bind_time.is_some() && target == p.bound {
            return None;
        }
    }
    if target.is_empty() {
        target.insert(0);
    }
    Some(target)
}

/// `numad -w CPUS:MB`: where libvirt starts a `placement='auto'` domain.
pub fn advise(host: &SimHost, vcpus: u32, mem_mib: u64) -> NodeSet {
    pick_nodes(host, None, vcpus as i64 * 100, mem_mib as i64, false)
        .expect("advice always names nodes")
}

/// The daemon: when it scans next and when it bound each process.
#[derive(Debug, Default)]
pub struct Daemon {
    pub next_scan: u64,
    pub bind_time: BTreeMap<usize, i64>,
}

impl Daemon {
    /// A domain started bound to a subset of nodes is found as bound half
    /// an hour ago, as numad does on discovering one.
    pub fn found_bound(&mut self, id: usize, now: u64) {
        self.bind_time.insert(id, now as i64 - 1800);
    }

    fn process(host: &SimHost, id: usize, bind_time: Option<i64>) -> Process {
        let d = &host.domains[&id];
        let mbs_by_node: Vec<i64> = d
            .memory_by_node(host.nodes())
            .into_iter()
            .map(|m| m as i64)
            .collect();
        Process {
            mbs_used: mbs_by_node.iter().sum(),
            mbs_by_node,
            cpus_used: (d.load * d.spec.vcpus as f64 * 100.0) as i64,
            bound: d.placed_on.clone().unwrap_or_else(|| host.all_nodes()),
            bind_time,
        }
    }

    /// One scan (`manage_loads`): binds at most one process; returns the
    /// seconds until the next scan.
    pub fn scan(&mut self, host: &mut SimHost, now: u64) -> u64 {
        self.bind_time.retain(|id, _| host.domains.contains_key(id));
        let now_i = now as i64;
        let mut procs: Vec<(usize, Process)> = host
            .domains
            .keys()
            .map(|&id| {
                (
                    id,
                    Self::process(host, id, self.bind_time.get(&id).copied()),
                )
            })
            .filter(|(_, p)| p.cpus_used > CPU_THRESHOLD && p.mbs_used > MEMORY_THRESHOLD)
            .collect();
        order_candidates(&mut procs);
        let views = views(host);
        let n = views.len() as i64;
        let sum_used: i64 = procs.iter().map(|(_, p)| p.cpus_used).sum();
        let sum_total: i64 = views.iter().map(|v| v.cpus_total).sum();
        let (min_cpu_ix, max_cpu_ix) = extremes(views.iter().map(|v| v.cpus_free));
        let (min_mb_ix, max_mb_ix) = extremes(views.iter().map(|v| v.mbs_free));
        let avg_cpu = views.iter().map(|v| v.cpus_free).sum::<i64>() / n;
        let avg_mb = views.iter().map(|v| v.mbs_free).sum::<i64>() / n;
        let (min_cpu, max_cpu) = (views[min_cpu_ix].cpus_free, views[max_cpu_ix].cpus_free);
        let (min_mb, max_mb) = (views[min_mb_ix].mbs_free, views[max_mb_ix].mbs_free);
        for (id, p) in procs {
            let vcpus = host.domains[&id].spec.vcpus as i64;
            let mb_request = p.mbs_used * 100 / TARGET_UTILIZATION;
            let cpu_request = (p.cpus_used * 100 / TARGET_UTILIZATION).min(vcpus * 100);
            if p.bind_time.is_some_and(|t| t + HOLD_S > now_i) {
                let on_busiest =
                    p.bound.contains(min_cpu_ix as u32) || p.bound.contains(min_mb_ix as u32);
                let evens_out = cpu_request < views[0].cpus_total
                    && mb_request < views[0].mbs_total
                    && (min_cpu + p.cpus_used - avg_cpu).abs()
                        + (max_cpu - p.cpus_used - avg_cpu).abs()
                        < (max_cpu - min_cpu) - CPU_THRESHOLD
                    && (min_mb + p.mbs_used - avg_mb).abs() + (max_mb - p.mbs_used - avg_mb).abs()
                        < (max_mb - min_mb);
                if !(on_busiest && evens_out) {
                    continue;
                }
            }
            match pick_nodes(
                host,
                Some(&p),
                cpu_request,
                mb_request,
                sum_used <= sum_total,
            ) {
                Some(nodes) => {
                    host.bind(id, &nodes);
                    self.bind_time.insert(id, now_i);
                    return MIN_INTERVAL_S;
                }
                None => {
                    // Already in place: numad stamps it as just evaluated.
                    self.bind_time.insert(id, now_i);
                }
            }
        }
        MAX_INTERVAL_S
    }
}

/// Indexes of the smallest and largest value (first of equals).
fn extremes(values: impl Iterator<Item = i64>) -> (usize, usize) {
    let values: Vec<i64> = values.collect();
    let mut lo = 0;
    let mut hi = 0;
    for (i, &v) in values.iter().enumerate() {
        if v < values[lo] {
            lo = i;
        }
        if v > values[hi] {
            hi = i;
        }
    }
    (lo, hi)
}

/// numad's candidate order: never-bound processes first, biggest
/// (CPU x memory) first; then bound ones in bins of increasing magnitude
/// (within 20% counts as equal), the longest-bound first within a bin.
fn order_candidates(procs: &mut [(usize, Process)]) {
    let mag = |p: &Process| p.cpus_used * p.mbs_used;
    let mut unbound = 0;
    for ij in 0..procs.len() {
        if procs[ij].1.bind_time.is_none() {
            procs.swap(unbound, ij);
            unbound += 1;
        }
    }
    for ij in 0..unbound {
        let mut best = ij;
        for ik in ij + 1..unbound {
            if mag(&procs[ik].1) > mag(&procs[best].1) {
                best = ik;
            }
        }
        procs.swap(ij, best);
    }
    for ij in unbound..procs.len() {
        let mut best = ij;
        for ik in ij + 1..procs.len() {
            let (mk, mb) = (mag(&procs[ik].1), mag(&procs[best].1));
            // As numad's unsigned arithmetic has it: a larger magnitude
            // always wins; a smaller one loses unless within 20%, where
            // the earlier bind wins.
            let better = if mk > mb {
                true
            } else if mb > mk && mk / (mb - mk) < 5 {
                false
            } else {
                procs[ik].1.bind_time <= procs[best].1.bind_time
            };
            if better {
                best = ik;
            }
        }
        procs.swap(ij, best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::trace::GuestSpec;
    use crate::synth::HostShape;

    #[test]
    fn magnitude_weighs_what_is_needed_above_the_excess() {
        assert_eq!(magnitude(100, 100, 300, 200), (1000 + 800) * (600 + 100));
        assert_eq!(magnitude(500, 400, 300, 200), 3000 * 1200);
    }

    #[test]
    fn the_daemon_moves_one_process_per_scan_and_holds_it_afterwards() {
        let mut host = SimHost::new(&HostShape::new(2, 8, 1, 32 * 1024).build());
        let spec = GuestSpec {
            vcpus: 4,
            mem_mib: 4096,
            load: 0.9,
            ..GuestSpec::default()
        };
        let mut daemon = Daemon::default();
        for id in 0..3 {
            host.arrive(id, &spec);
            host.bind(id, &NodeSet::single(0));
            host.allocate(id, 0, &[1.0, 0.0]);
            daemon.found_bound(id, 0);
        }
        assert_eq!(daemon.scan(&mut host, 1000), MIN_INTERVAL_S);
        assert_eq!(host.moves, 1);
        let moved: Vec<usize> = (0..3)
            .filter(|id| host.domains[id].placed_on == Some(NodeSet::single(1)))
            .collect();
        assert_eq!(moved.len(), 1);
        // Within the hold, the moved process is not looked at again.
        daemon.scan(&mut host, 1005);
        assert_eq!(host.domains[&moved[0]].placed_on, Some(NodeSet::single(1)));
        assert!(host.moves <= 2);
    }

    #[test]
    fn advice_prefers_the_emptier_node_and_spans_for_a_large_request() {
        let mut host = SimHost::new(&HostShape::new(2, 4, 1, 8000).build());
        let spec = GuestSpec {
            vcpus: 2,
            mem_mib: 6000,
            load: 0.5,
            ..GuestSpec::default()
        };
        host.arrive(0, &spec);
        host.allocate(0, 0, &[1.0, 0.0]);
        host.bind(0, &NodeSet::single(0));
        assert_eq!(advise(&host, 2, 1000), NodeSet::single(1));
        assert_eq!(advise(&host, 2, 12000).len(), 2);
    }
}
