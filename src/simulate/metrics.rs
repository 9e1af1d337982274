//! What a strategy achieves, sampled over the run: modelled guest speed,
//! memory locality, guests spanning nodes needlessly, node imbalance, and
//! what it cost in moves and migrated memory.

use std::collections::BTreeMap;

use crate::topology::LOCAL_DISTANCE;

use super::host::{SimDomain, SimHost};
use super::speed::{self, SWEEP};

/// One look at the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Distance-weighted locality of all memory (1 = all local).
    pub locality: f64,
    /// Share of the guests that fit one node but span several.
    pub spanning: f64,
    /// Most minus least loaded node, a node's load being the larger of its
    /// CPU and memory use (the planner's pressure).
    pub imbalance: f64,
    /// Most minus least busy node: CPU demand / CPUs.
    pub cpu_imbalance: f64,
    /// Most minus least full node: memory used / memory.
    pub mem_imbalance: f64,
}

/// A strategy's results over a run: samples averaged, costs summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    /// Mean modelled speed over every vCPU and sample (1 = alone on an
    /// idle node, memory local).
    pub speed: f64,
    /// Mean speed of the slowest 5% of guests (each guest's speed being
    /// its mean over its samples).
    pub slowest_5: f64,
    /// Mean speed with every guest's `m` set to each of [`SWEEP`].
    pub sweep: [f64; SWEEP.len()],
    pub locality: f64,
    pub spanning: f64,
    pub imbalance: f64,
    pub cpu_imbalance: f64,
    pub mem_imbalance: f64,
    pub moves: u32,
    pub migrated_gib: f64,
    pub samples: u32,
}

impl Metrics {
    pub fn add(&mut self, s: Sample) {
        let n = self.samples as f64;
        let mean = |old: f64, new: f64| (old * n + new) / (n + 1.0);
        self.locality = mean(self.locality, s.locality);
        self.spanning = mean(self.spanning, s.spanning);
        self.imbalance = mean(self.imbalance, s.imbalance);
        self.cpu_imbalance = mean(self.cpu_imbalance, s.cpu_imbalance);
        self.mem_imbalance = mean(self.mem_imbalance, s.mem_imbalance);
        self.samples += 1;
    }
}

/// Guest speed summed over samples: per vCPU for the mean, per guest for
/// the slowest.
#[derive(Debug, Default)]
pub struct SpeedTracker {
    sum: f64,
    sweep: [f64; SWEEP.len()],
    vcpu_samples: f64,
    /// Per domain: summed speed and samples.
    guests: BTreeMap<usize, (f64, u32)>,
}

impl SpeedTracker {
    /// Adds one sample of every domain; returns its mean vCPU speed.
    pub fn add(&mut self, host: &SimHost) -> f64 {
        let level = speed::node_levels(host);
        let (mut sum, mut vcpus) = (0.0, 0.0);
        for d in host.domains.values() {
            let v = d.spec.vcpus as f64;
            let pieces = speed::pieces(host, &level, d);
            let s = speed::mean_speed(&pieces, d.spec.memory_bound);
            sum += s * v;
            vcpus += v;
            for (acc, &m) in self.sweep.iter_mut().zip(&SWEEP) {
                *acc += speed::mean_speed(&pieces, m) * v;
            }
            let g = self.guests.entry(d.id).or_default();
            g.0 += s;
            g.1 += 1;
        }
        self.sum += sum;
        self.vcpu_samples += vcpus;
        if vcpus > 0.0 { sum / vcpus } else { 1.0 }
    }

    /// Writes the speed figures into `m`.
    pub fn finish(&self, m: &mut Metrics) {
        let n = self.vcpu_samples.max(f64::MIN_POSITIVE);
        m.speed = self.sum / n;
        for (out, acc) in m.sweep.iter_mut().zip(&self.sweep) {
            *out = acc / n;
        }
        let mut guests: Vec<f64> = self.guests.values().map(|(s, k)| s / *k as f64).collect();
        guests.sort_by(f64::total_cmp);
        let k = guests.len().div_ceil(20).max(1).min(guests.len());
        m.slowest_5 = if k == 0 {
            1.0
        } else {
            guests[..k].iter().sum::<f64>() / k as f64
        };
    }
}

/// Locality of one domain's memory to its vCPUs, and the MiB it covers.
pub fn domain_locality(host: &SimHost, d: &SimDomain) -> (f64, u64) {
    let (mut sum, mut total) = (0.0, 0u64);
    for p in &d.pieces {
        for (m, &mib) in p.memory.iter().enumerate() {
            if mib == 0 {
                continue;
            }
            let closeness: f64 = p
                .weights
                .iter()
                .enumerate()
                .map(|(c, w)| w * LOCAL_DISTANCE as f64 / host.distance[c][m] as f64)
                .sum();
            sum += mib as f64 * closeness;
            total += mib;
        }
    }
    if total == 0 {
        (1.0, 0)
    } else {
        (sum / total as f64, total)
    }
}

/// Whether a domain that one node could hold runs or keeps memory on more
/// than one (memory counts on a node from 5% of the domain's).
fn spans_needlessly(host: &SimHost, d: &SimDomain) -> Option<bool> {
    let fits = (0..host.nodes())
        .any(|i| host.cpus[i] >= d.spec.vcpus as f64 && host.mem_mib[i] >= d.spec.mem_mib);
    if !fits {
        return None;
    }
    let resident = d.resident_mib();
    let memory = d.memory_by_node(host.nodes());
    let used = (0..host.nodes())
        .filter(|&i| d.pieces.iter().any(|p| p.weights[i] > 1e-9) || memory[i] * 20 > resident);
    Some(used.count() > 1)
}

fn spread(values: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi < lo { 0.0 } else { hi - lo }
}

pub fn sample(host: &SimHost) -> Sample {
    let (mut sum, mut total) = (0.0, 0u64);
    let (mut fit, mut span) = (0u32, 0u32);
    for d in host.domains.values() {
        let (l, mib) = domain_locality(host, d);
        sum += l * mib as f64;
        total += mib;
        match spans_needlessly(host, d) {
            Some(true) => {
                fit += 1;
                span += 1;
            }
            Some(false) => fit += 1,
            None => {}
        }
    }
    let load = host.cpu_load();
    let used = host.used_mib();
    let cpu = |i: usize| load[i] / host.cpus[i];
    let mem = |i: usize| used[i] as f64 / host.mem_mib[i] as f64;
    // Memory-only nodes are a tier, not a place to balance guests over.
    let nodes = host.cpu_nodes();
    Sample {
        locality: if total == 0 { 1.0 } else { sum / total as f64 },
        spanning: if fit == 0 {
            0.0
        } else {
            span as f64 / fit as f64
        },
        imbalance: spread(nodes.clone().map(|i| cpu(i).max(mem(i)))),
        cpu_imbalance: spread(nodes.clone().map(cpu)),
        mem_imbalance: spread(nodes.map(mem)),
    }
}
