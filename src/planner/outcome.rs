//! Each domain's part of the plan, from its decision and pins: target,
//! actions, locality, status and reason; and the plan's score.

use std::collections::BTreeMap;

use crate::idset::{CpuSet, NodeSet};
use crate::topology::HostTopology;

use super::choose::{self, Decision, memory_nodes_of, nodes_of};
use super::cpus::Pins;
use super::domain_info::{self, DomainInfo, MemoryHandling, distribute};
use super::ledger::{Ledger, Part};
use super::score::{Distances, Score, locality, round3, vcpu_node_weights};
use super::{Action, CurrentView, DomainPlan, Recorded, Status, actions, advice, cell_memory};

/// What every domain's plan is made against.
pub(super) struct Context<'a> {
    pub topo: &'a HostTopology,
    pub distances: &'a Distances,
    /// Host CPUs dedicated vCPUs hold once the plan is applied.
    pub dedicated: &'a CpuSet,
    /// The host's online CPUs less those.
    pub undedicated: CpuSet,
    /// [`HostTopology::smt_width`], for the advice.
    pub smt_width: usize,
}

impl Context<'_> {
    pub(super) fn domain_plan(
        &self,
        info: &DomainInfo,
        decision: Option<&Decision>,
        pins: Option<Pins>,
    ) -> DomainPlan {
        let (topo, distances) = (self.topo, self.distances);
        let d = info.domain;
        let cur = &info.current;
        let locality_now = cur.locality;
        let current = CurrentView {
            nodes: cur.nodes.clone(),
            memory_mib: cur.memory_mib.clone(),
            locality: round3(locality_now),
        };
        let mut plan = DomainPlan {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            managed: info.is_managed(),
            status: Status::LeftAlone,
            reason: String::new(),
            policy: info.managed.clone().ok(),
            nested_hypervisor: info.is_nested_hypervisor(),
            hypervisor: info.hypervisor,
            vcpus: info.vcpu_count() as u32,
            load: round3(info.load),
            memory_mib: info.mem_mib,
            current,
            // Filled below: the target's, or as they are now.
            nodes: NodeSet::new(),
            vcpupin: BTreeMap::new(),
            emulatorpin: CpuSet::new(),
            iothreadpin: BTreeMap::new(),
            nodeset: d
                .numatune
                .as_ref()
                .and_then(|n| n.nodeset.clone())
                .unwrap_or_default(),
            memory: info.is_managed().then_some(info.memory),
            cells: BTreeMap::new(),
            actions: Vec::new(),
            migrate_mib: 0,
            locality_after: round3(locality_now),
            advice: Vec::new(),
            changed_by_operator: None,
            on_dedicated_cpus: None,
            memory_only_mib: BTreeMap::new(),
            wanted_move: None,
            planned_from: Recorded {
                cputune: d.cputune.clone(),
                nodeset: d.numatune.as_ref().and_then(|n| n.nodeset.clone()),
            },
        };
        let parts = decision.and_then(|x| x.parts());
        plan.advice = advice::advice_for(info, topo, self.smt_width, parts, pins.as_ref());
        if let (Some(decision), Ok(_), Some(parts), Some(pins)) =
            (decision, &info.managed, parts, pins)
        {
            fill_target(topo, distances, info, decision, parts, pins, &mut plan);
            if plan.migrate_mib > 0 && info.memory == MemoryHandling::Migrate {
                plan.reason.push_str(&format!(
                    "; its memory follows ({} MiB to move)",
                    plan.migrate_mib
                ));
            }
            if let Some(why) = &info.shared_instead {
                plan.reason = format!(
                    "shared CPUs instead of dedicated ones ({why}); {}",
                    plan.reason
                );
                plan.advice.push(format!(
                "give it CPUs of its own: free CPUs on one of nodes {}, or raise planner.max_dedicated_share",
                plan.nodes
            ));
            }
            return plan;
        }
        plan.nodes = cur.nodes.clone();
        plan.vcpupin = cur.vcpu_affinity.clone();
        plan.emulatorpin = cur.emulator_affinity.clone();
        plan.iothreadpin = cur.iothread_affinity.clone();
        match (decision, &info.managed) {
            (_, Err(why)) => {
                plan.reason = why.to_string();
                if let domain_info::LeftAlone::ChangedByOperator { what, .. } = why {
                    plan.changed_by_operator = Some(what.clone());
                }
                let mut threads = cur.emulator_affinity.clone();
                for set in cur.vcpu_affinity.values() {
                    threads.union_with(set);
                }
                let shared = threads.intersection(self.dedicated);
                plan.on_dedicated_cpus = (!shared.is_empty()).then_some(shared);
            }
            (None, Ok(_)) => plan.reason = "not planned".into(),
            (Some(Decision::Deferred(why)), _) => {
                plan.status = Status::Deferred;
                plan.reason = why.clone();
                self.off_dedicated_cpus(info, &mut plan);
            }
            (Some(Decision::NoFit(why)), _) => {
                plan.status = Status::NoFit;
                plan.reason = why.clone();
                self.off_dedicated_cpus(info, &mut plan);
            }
            (Some(_), Ok(_)) => unreachable!("placed decisions have parts and pins"),
        }
        plan
    }

    /// A managed domain that keeps its place this cycle still leaves the CPUs
    /// dedicated to others: its threads' affinities lose those CPUs (all the
    /// other usable CPUs, where nothing else would be left), and nothing else
    /// changes.
    fn off_dedicated_cpus(&self, info: &DomainInfo, plan: &mut DomainPlan) {
        let cur = &info.current;
        let on_dedicated = |set: &CpuSet| set.intersects(self.dedicated);
        if !cur.vcpu_affinity.values().any(on_dedicated)
            && !on_dedicated(&cur.emulator_affinity)
            && !cur.iothread_affinity.values().any(on_dedicated)
        {
            return;
        }
        let elsewhere = |set: &CpuSet| {
            let left = set.difference(self.dedicated);
            if left.is_empty() {
                self.undedicated.clone()
            } else {
                left
            }
        };
        let pins = Pins {
            vcpupin: cur
                .vcpu_affinity
                .iter()
                .map(|(v, set)| (*v, elsewhere(set)))
                .collect(),
            emulatorpin: elsewhere(&cur.emulator_affinity),
            iothreadpin: cur
                .iothread_affinity
                .iter()
                .map(|(id, set)| (*id, elsewhere(set)))
                .collect(),
            smt_unmatched: false,
        };
        plan.actions = actions::pin_actions(info, &pins);
        if plan.actions.is_empty() {
            return;
        }
        plan.reason
            .push_str("; meanwhile its threads leave the CPUs dedicated to other guests");
        plan.vcpupin = pins.vcpupin;
        plan.emulatorpin = pins.emulatorpin;
        plan.iothreadpin = pins.iothreadpin;
    }
}

fn fill_target(
    topo: &HostTopology,
    distances: &Distances,
    info: &DomainInfo,
    decision: &Decision,
    parts: &[Part],
    pins: Pins,
    plan: &mut DomainPlan,
) {
    let nodes = nodes_of(parts);
    plan.nodeset = match info.fixed_nodes() {
        Some(fixed) => fixed.clone(),
        None => memory_nodes_of(parts),
    };
    for (tier, mib) in parts.iter().filter_map(|p| p.spill) {
        *plan.memory_only_mib.entry(tier).or_default() += mib;
    }
    plan.cells = parts
        .iter()
        .filter_map(|p| p.cell.map(|c| (c, p.node)))
        .collect();
    plan.actions = actions::actions_for(info, &pins, &plan.nodeset, &plan.cells);
    plan.migrate_mib = cell_memory::migrate_mib(info, &plan.cells, &plan.nodeset);
    plan.locality_after = round3(planned_locality(topo, distances, info, parts, &pins));
    plan.vcpupin = pins.vcpupin;
    plan.emulatorpin = pins.emulatorpin;
    plan.iothreadpin = pins.iothreadpin;
    let moved = choose::is_move(info, &nodes);
    let (status, reason) = match decision {
        Decision::Kept(_) if plan.actions.is_empty() => (
            Status::Kept,
            format!("stays on node(s) {nodes}: already placed"),
        ),
        Decision::Kept(_) => (
            Status::Kept,
            format!("stays on node(s) {nodes}; pins refreshed"),
        ),
        Decision::Placed { why, .. } if moved => (
            Status::Moved,
            format!("{} -> {nodes}: {why}", info.current.nodes),
        ),
        // Only memory to move: the placement is the one it has.
        Decision::Placed { why, .. } if plan.actions.iter().all(Action::is_page_move) => {
            (Status::Kept, why.clone())
        }
        Decision::Placed { why, .. } => (Status::Placed, why.clone()),
        _ => unreachable!("only placed decisions reach here"),
    };
    plan.status = status;
    plan.reason = reason;
    plan.nodes = nodes;
}

/// Locality once the plan is applied: per part, its vCPUs' pins against its
/// memory (which stays put when the binding cannot change live).
fn planned_locality(
    topo: &HostTopology,
    distances: &Distances,
    info: &DomainInfo,
    parts: &[Part],
    pins: &Pins,
) -> f64 {
    let fixed = matches!(
        info.memory,
        MemoryHandling::Fixed(_) | MemoryHandling::FirstTouch
    );
    let bound_cells = info.pieces.iter().any(|p| p.bound.is_some());
    if fixed && !bound_cells {
        let w = vcpu_node_weights(topo, pins.vcpupin.values());
        return locality(distances, &w, &info.current.memory_mib).0;
    }
    let (mut sum, mut total) = (0.0, 0u64);
    for part in parts {
        let w = vcpu_node_weights(topo, part.vcpus.iter().filter_map(|v| pins.vcpupin.get(v)));
        let w = if w.is_empty() {
            vcpu_node_weights(topo, pins.vcpupin.values())
        } else {
            w
        };
        let memory = if fixed {
            // Memory that stays: a cell's where it was measured, else
            // spread over the nodes its <memnode> binds it to.
            let piece = info.pieces.iter().find(|p| p.cell == part.cell);
            let measured = part.cell.and_then(|c| info.current.cell_memory_mib.get(&c));
            match (measured, piece.and_then(|p| p.bound.as_ref())) {
                (Some(m), _) => m.clone(),
                (None, Some(bound)) => {
                    let even: Vec<(u32, u64)> = bound.iter().map(|n| (n, 1)).collect();
                    distribute(part.mem_mib, &even)
                }
                (None, None) => BTreeMap::from([(part.node, part.mem_mib)]),
            }
        } else {
            let mut m = BTreeMap::from([(part.node, part.mem_mib)]);
            if let Some((tier, mib)) = part.spill {
                *m.entry(tier).or_default() += mib;
            }
            m
        };
        let (l, mib) = locality(distances, &w, &memory);
        sum += l * mib as f64;
        total += mib;
    }
    if total == 0 { 1.0 } else { sum / total as f64 }
}

pub(super) fn score_of(
    infos: &[DomainInfo],
    plans: &[DomainPlan],
    before: &Ledger,
    after: &Ledger,
) -> Score {
    let fits_one = |info: &DomainInfo| {
        (0..after.ids.len()).any(|i| {
            after.usable_cpus(i) >= info.vcpu_count() && after.mem_capacity[i] >= info.mem_mib
        })
    };
    let mut score = Score::default();
    let (mut lb, mut la, mut weight) = (0.0, 0.0, 0.0);
    for (info, plan) in infos.iter().zip(plans) {
        let mib = info.mem_mib as f64;
        lb += plan.current.locality * mib;
        la += plan.locality_after * mib;
        weight += mib;
        let mem_nodes: NodeSet = info
            .current
            .memory_mib
            .iter()
            .filter(|(_, m)| **m * 20 > info.mem_mib)
            .map(|(n, _)| *n)
            .collect();
        if fits_one(info) {
            if info.current.nodes.union(&mem_nodes).len() > 1 {
                score.spanning_before += 1;
            }
            let after_nodes = if plan.status == Status::LeftAlone
                || plan.status == Status::Deferred
                || plan.status == Status::NoFit
            {
                info.current.nodes.union(&mem_nodes)
            } else {
                plan.nodes.union(&plan.nodeset)
            };
            if after_nodes.len() > 1 {
                score.spanning_after += 1;
            }
        }
        if plan.status == Status::Moved {
            score.moves += 1;
        }
        score.migrate_mib += plan.migrate_mib;
        score.actions += plan.actions.len() as u32;
    }
    if weight > 0.0 {
        score.locality_before = round3(lb / weight);
        score.locality_after = round3(la / weight);
    } else {
        score.locality_before = 1.0;
        score.locality_after = 1.0;
    }
    score.imbalance_before = round3(before.imbalance());
    score.imbalance_after = round3(after.imbalance());
    score
}
