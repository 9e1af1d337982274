//! Pins, bindings and hugepage nodesets that name CPUs, nodes or guest
//! cells that do not exist. libvirt refuses such a definition on a host it
//! checks, but a snapshot may come from another host or be edited by hand:
//! the plan says so instead of scoring a pin to no CPU as local.

use super::{DomainPlan, Status};
use crate::guest::Domain;
use std::collections::BTreeMap;

use crate::idset::{IdSet, NodeSet};
use crate::topology::HostTopology;

/// The CPUs and nodes a host has, online or not: what a pin or binding may
/// name. Built once per plan.
pub struct Known {
    cpus: IdSet,
    nodes: NodeSet,
}

impl Known {
    pub fn new(topo: &HostTopology) -> Self {
        Self {
            cpus: topo.online_cpus().union(&topo.offline_cpus),
            nodes: topo.node_ids(),
        }
    }
}

/// Puts what `d` names but nobody has into its plan: first in its advice,
/// in its reason when it found no fit (a binding to a missing node is then
/// why), and its current locality is not counted as local: threads pinned
/// to no CPU, or memory bound to no node, are local to nothing.
pub fn report(known: &Known, d: &Domain, plan: &mut DomainPlan) {
    let (host, guest) = absent(known, d);
    if !host.is_empty() {
        plan.current.locality = 0.0;
        if plan.status == Status::NoFit {
            plan.reason = format!("{}; {}", host.join("; "), plan.reason);
        }
    }
    if !host.is_empty() || !guest.is_empty() {
        plan.advice.splice(0..0, host.into_iter().chain(guest));
    }
}

/// One sentence per pin or binding that names what this host lacks (the
/// first list) or the guest lacks (the second), e.g. "vCPUs 0-1 are pinned
/// to CPUs 200-201, which this host lacks". vCPUs or IOThreads missing the
/// same CPUs share a sentence, so a large guest gives a short list.
pub fn absent(known: &Known, d: &Domain) -> (Vec<String>, Vec<String>) {
    let (cpus, nodes) = (&known.cpus, &known.nodes);
    let mut host = Vec::new();
    let lacks = |what: &str, verb: &str, kind: &str, missing: &IdSet| {
        format!(
            "{what} {verb} to {}, which this host lacks",
            ids(kind, missing)
        )
    };
    if let Some(set) = d.vcpu_cpuset.as_ref().filter(|_| !d.vcpu_placement_auto) {
        let missing = set.difference(cpus);
        if !missing.is_empty() {
            host.push(lacks("<vcpu cpuset> is", "pinned", "CPU", &missing));
        }
    }
    for (kind, pins) in [
        ("vCPU", &d.cputune.vcpupin),
        ("IOThread", &d.cputune.iothreadpin),
    ] {
        let mut by_missing: BTreeMap<IdSet, IdSet> = BTreeMap::new();
        for (&id, set) in pins {
            let missing = set.difference(cpus);
            if !missing.is_empty() {
                by_missing.entry(missing).or_default().insert(id);
            }
        }
        for (missing, threads) in by_missing {
            let verb = if threads.len() == 1 {
                "is pinned"
            } else {
                "are pinned"
            };
            host.push(lacks(&ids(kind, &threads), verb, "CPU", &missing));
        }
    }
    if let Some(set) = &d.cputune.emulatorpin {
        let missing = set.difference(cpus);
        if !missing.is_empty() {
            host.push(lacks("its emulator is", "pinned", "CPU", &missing));
        }
    }
    if let Some(tune) = &d.numatune {
        if let Some(set) = tune.nodeset.as_ref().filter(|_| !tune.placement_auto) {
            let missing = set.difference(nodes);
            if !missing.is_empty() {
                host.push(lacks("its memory is", "bound", "node", &missing));
            }
        }
        for m in &tune.memnodes {
            let missing = m.nodeset.difference(nodes);
            if !missing.is_empty() {
                let what = format!("guest cell {}'s memory is", m.cellid);
                host.push(lacks(&what, "bound", "node", &missing));
            }
        }
    }
    let cells: NodeSet = d.cpu.cells.iter().map(|c| c.id).collect();
    let mut guest = Vec::new();
    for h in &d.hugepages {
        if let Some(set) = &h.nodeset {
            let missing = set.difference(&cells);
            if !missing.is_empty() {
                guest.push(format!(
                    "its hugepages back {}, which the guest lacks",
                    ids("guest cell", &missing)
                ));
            }
        }
    }
    (host, guest)
}

/// "CPU 4" or "CPUs 200-201".
fn ids(kind: &str, set: &IdSet) -> String {
    let s = if set.len() == 1 { "" } else { "s" };
    format!("{kind}{s} {set}")
}
