//! numapin on the simulated host: each cycle it gets what a real host
//! would show it (domains with the pins it gave them, memory per node per
//! domain, vCPU load, free memory per node), plans with `planner::plan`,
//! and its placements are applied: pins decide where vCPUs run, memory
//! moves to the planned nodes at the host's migration rate.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::guest::{CpuMode, Domain};
use crate::idset::{CpuSet, NodeSet};
use crate::observations::{DomainObservation, NestedActivity, NodeObservation, Observations};
use crate::planner::{
    self, DomainInput, DomainPlan, MoveConfirmation, PlanInput, Status, WantedMoves,
};
use crate::synth::{DomainExt, domain};

use super::host::SimHost;
use super::trace::{CpuKind, GuestSpec, HypervisorKind};

pub struct Numapin {
    pub config: Config,
    /// Pins numapin last gave each domain.
    pins: BTreeMap<usize, BTreeMap<u32, CpuSet>>,
    /// Rebalancing moves wanted and not yet made, as the daemon keeps them.
    wanted: WantedMoves,
}

fn name(id: usize) -> String {
    format!("vm-{id:05}")
}

/// The persistent and live definitions libvirt would show for a guest.
fn definitions(id: usize, spec: &GuestSpec) -> (Domain, Domain) {
    let mut defined = domain(&name(id), spec.vcpus, spec.mem_mib);
    if spec.cells > 1 {
        defined = defined.with_cells(spec.cells);
    }
    if spec.hypervisor == Some(HypervisorKind::Declared) {
        return (defined.clone().nested(), defined.nested());
    }
    match spec.cpu {
        CpuKind::Named => (defined.clone(), defined),
        CpuKind::HostPassthrough => {
            defined.cpu.mode = Some(CpuMode::HostPassthrough);
            (defined.clone(), defined)
        }
        // The live definition of a running host-model guest lists every
        // host feature, vmx included.
        CpuKind::HostModel => (
            defined.clone().host_model(),
            defined.host_model().running_host_model(),
        ),
    }
}

/// What KVM's nested counters show for a guest that can run VMs: an
/// observed hypervisor enters nested guests, the others do not. A named
/// CPU model without vmx (every guest of the mixed fleet) shows nothing.
fn nested_activity(spec: &GuestSpec) -> Option<NestedActivity> {
    match (spec.hypervisor, spec.cpu) {
        (Some(HypervisorKind::Observed), _) => Some(NestedActivity {
            entries: 10_000,
            running: true,
            last_seen_secs: Some(1),
        }),
        (None, CpuKind::Named) => None,
        _ => Some(NestedActivity::default()),
    }
}

impl Numapin {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            pins: BTreeMap::new(),
            wanted: WantedMoves::default(),
        }
    }

    fn inputs(&self, host: &SimHost) -> (Vec<DomainInput>, Observations) {
        let mut obs = Observations::default();
        for (i, free) in host.free_mib().into_iter().enumerate() {
            obs.nodes.insert(
                i as u32,
                NodeObservation {
                    free_mib: Some(free),
                    free_hugepages: BTreeMap::new(),
                },
            );
        }
        let mut inputs = Vec::new();
        for (&id, d) in &host.domains {
            let (defined, mut live) = definitions(id, &d.spec);
            if let Some(pins) = self.pins.get(&id) {
                live.cputune.vcpupin = pins.clone();
                live.cputune.emulatorpin =
                    Some(pins.values().fold(CpuSet::new(), |all, s| all.union(s)));
            }
            // A domain that touched no memory yet is measured as having none.
            let mut memory_mib: BTreeMap<u32, u64> = d
                .memory_by_node(host.nodes())
                .into_iter()
                .enumerate()
                .filter(|(_, m)| *m > 0)
                .map(|(i, m)| (i as u32, m))
                .collect();
            if memory_mib.is_empty() {
                memory_mib.insert(0, 0);
            }
            obs.domains.insert(
                name(id),
                DomainObservation {
                    memory_mib,
                    vcpu_load: vec![d.load; d.spec.vcpus as usize],
                    nested: nested_activity(&d.spec),
                    ..Default::default()
                },
            );
            inputs.push(DomainInput::new(live, Some(defined)));
        }
        (inputs, obs)
    }

    /// One cycle at `now` (seconds): plans and applies, as the daemon does
    /// (a rebalancing move is made once wanted for
    /// `planner.rebalance_wait_secs`).
    /// `arriving` has just started and touched no memory yet; returns
    /// whether it was placed (its memory then lands on its nodes).
    pub fn cycle(&mut self, host: &mut SimHost, arriving: Option<usize>, now: u64) -> bool {
        self.pins.retain(|id, _| host.domains.contains_key(id));
        let (inputs, obs) = self.inputs(host);
        let plan = planner::plan(&PlanInput {
            topology: &host.topo,
            domains: &inputs,
            observations: &obs,
            config: &self.config,
            rebalance_all: false,
            confirm: Some(MoveConfirmation {
                wanted: &self.wanted,
                now: now as f64,
                after_secs: self.config.planner.rebalance_wait_secs as f64,
            }),
        });
        self.wanted.update(&plan, now as f64);
        let mut placed_arrival = false;
        for dp in &plan.domains {
            if !matches!(dp.status, Status::Placed | Status::Moved | Status::Kept) {
                continue;
            }
            let id: usize = dp.name[3..].parse().expect("names made above");
            let fresh = arriving == Some(id);
            self.apply(host, id, dp, fresh);
            placed_arrival |= fresh;
        }
        placed_arrival
    }

    fn apply(&mut self, host: &mut SimHost, id: usize, dp: &DomainPlan, fresh: bool) {
        let n = host.nodes();
        let cpus_of: Vec<CpuSet> = host.topo.nodes.iter().map(|n| n.cpus.clone()).collect();
        let d = host.domains.get_mut(&id).expect("planned domains are live");
        if d.placed_on.as_ref().is_some_and(|p| *p != dp.nodes) {
            host.moves += 1;
        }
        d.placed_on = Some(dp.nodes.clone());
        let mut fresh_shares = Vec::new();
        for k in 0..d.pieces.len() {
            let vcpus = d.piece_vcpus(k);
            let count = vcpus.len().max(1) as f64;
            let mut weights = vec![0.0; n];
            for v in vcpus {
                let Some(set) = dp.vcpupin.get(&v) else {
                    continue;
                };
                let len = set.len().max(1) as f64;
                for (w, cpus) in weights.iter_mut().zip(&cpus_of) {
                    *w += cpus.intersection_len(set) as f64 / len / count;
                }
            }
            let target = match dp.cells.get(&(k as u32)) {
                Some(&node) => NodeSet::single(node),
                None => dp.nodeset.clone(),
            };
            let piece = &mut d.pieces[k];
            piece.weights = weights;
            if fresh {
                fresh_shares.push((k, target.clone()));
            }
            piece.target = Some(target);
        }
        for (k, target) in fresh_shares {
            let share = host.weights_on(&target);
            host.allocate(id, k, &share);
        }
        self.pins.insert(id, dp.vcpupin.clone());
    }
}
