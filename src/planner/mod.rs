//! The placement planner: pure and deterministic. The same input gives a
//! byte-identical plan whatever order the domains come in.
//!
//! Input: host topology, domains (live XML, and persistent XML when known),
//! observations, config. Output: per domain either "left alone, because"
//! or a target (nodes, per-vCPU CPU lists, emulator/iothread lists, memory
//! nodeset and how it moves, guest cell -> host node), the ordered actions
//! apply would take, advice that needs a restart, and a score.

mod absent;
pub mod actions;
pub mod advice;
pub mod cell_memory;
pub mod choose;
pub mod cpus;
pub mod domain_info;
pub mod ledger;
pub mod score;

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::config::Config;
use crate::guest::{CpuTune, Domain};
use crate::idset::{CpuSet, NodeSet};
use crate::observations::Observations;
use crate::topology::HostTopology;

pub use actions::Action;
pub use domain_info::{CpuPolicy, MemoryHandling};
pub use score::Score;

use choose::{Budget, Chooser, Decision, nodes_of};
use cpus::{CpuAssigner, Pins};
use domain_info::{Analyzer, DomainInfo};
use ledger::{Demand, Ledger, Part};
use score::{Distances, locality, round3, vcpu_node_weights};

/// One domain as the planner gets it.
#[derive(Debug, Clone)]
pub struct DomainInput {
    /// Live XML: current pins, sizes, policy.
    pub live: Domain,
    /// Persistent XML, when known: decides what counts as manual pinning.
    pub persistent: Option<Domain>,
    /// What numapin itself left on this run of the domain, if anything:
    /// pins equal to it are numapin's, pins that differ an operator's.
    pub recorded: Option<Recorded>,
    /// Why the domain must not be touched now (paused, a job running).
    pub hold: Option<String>,
}

impl DomainInput {
    pub fn new(live: Domain, persistent: Option<Domain>) -> Self {
        Self {
            live,
            persistent,
            recorded: None,
            hold: None,
        }
    }
}

/// The pins and memory nodeset numapin left on a domain after a verified
/// change.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Recorded {
    pub cputune: CpuTune,
    /// The live `<numatune>` nodeset, when the domain has one.
    pub nodeset: Option<NodeSet>,
}

impl Recorded {
    /// What an operator changed since numapin left `self`, if anything.
    /// Only vCPUs online now count: unplugging a vCPU is not a change of
    /// placement.
    pub fn drift(&self, live: &Domain) -> Option<String> {
        let mut changes = self.pin_changes(&live.cputune, live);
        let nodeset = live.numatune.as_ref().and_then(|n| n.nodeset.clone());
        if self.nodeset.is_some() && self.nodeset != nodeset {
            changes.push(format!(
                "memory nodeset {} -> {}",
                shown(self.nodeset.as_ref()),
                shown(nodeset.as_ref())
            ));
        }
        (!changes.is_empty()).then(|| changes.join(", "))
    }

    /// Whether `cputune` (live, or a persistent definition numapin wrote)
    /// holds exactly the pins numapin left, for the threads `live` has.
    pub fn owns(&self, cputune: &CpuTune, live: &Domain) -> bool {
        self.pin_changes(cputune, live).is_empty()
    }

    fn pin_changes(&self, now: &CpuTune, live: &Domain) -> Vec<String> {
        let mut changes = Vec::new();
        for vcpu in live.online_vcpus.iter() {
            let (was, is) = (self.cputune.vcpupin.get(&vcpu), now.vcpupin.get(&vcpu));
            if was != is {
                changes.push(format!("vCPU {vcpu} {} -> {}", shown(was), shown(is)));
            }
        }
        if self.cputune.emulatorpin != now.emulatorpin {
            changes.push(format!(
                "emulator {} -> {}",
                shown(self.cputune.emulatorpin.as_ref()),
                shown(now.emulatorpin.as_ref())
            ));
        }
        for id in &live.iothreads {
            let (was, is) = (self.cputune.iothreadpin.get(id), now.iothreadpin.get(id));
            if was != is {
                changes.push(format!("iothread {id} {} -> {}", shown(was), shown(is)));
            }
        }
        changes
    }
}

fn shown(set: Option<&CpuSet>) -> String {
    set.map_or_else(|| "unpinned".into(), |s| s.to_string())
}

pub struct PlanInput<'a> {
    pub topology: &'a HostTopology,
    pub domains: &'a [DomainInput],
    pub observations: &'a Observations,
    pub config: &'a Config,
    /// Reconsider domains held in place by the threshold (rebalance now).
    pub rebalance_all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not managed by numapin.
    LeftAlone,
    /// Managed, placement unchanged (pins may still be refreshed).
    Kept,
    /// Managed, gets a placement it did not have.
    Placed,
    /// Managed, moves from other node(s).
    Moved,
    /// Managed, a move is due but the cycle's budget is spent.
    Deferred,
    /// Managed, but no placement fits.
    NoFit,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurrentView {
    #[serde(serialize_with = "ids")]
    pub nodes: NodeSet,
    pub memory_mib: BTreeMap<u32, u64>,
    pub locality: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainPlan {
    pub name: String,
    pub uuid: String,
    pub managed: bool,
    pub status: Status,
    pub reason: String,
    pub policy: Option<CpuPolicy>,
    pub nested_hypervisor: bool,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub current: CurrentView,
    /// Target host nodes (current ones when the domain is not changed).
    #[serde(serialize_with = "ids")]
    pub nodes: NodeSet,
    pub vcpupin: BTreeMap<u32, CpuSet>,
    pub emulatorpin: CpuSet,
    pub iothreadpin: BTreeMap<u32, CpuSet>,
    pub nodeset: NodeSet,
    #[serde(serialize_with = "memory_text")]
    pub memory: Option<MemoryHandling>,
    /// Guest cell -> host node.
    pub cells: BTreeMap<u32, u32>,
    pub actions: Vec<Action>,
    pub migrate_mib: u64,
    pub locality_after: f64,
    pub advice: Vec<String>,
    /// What an operator changed after numapin placed the domain, when
    /// that is why it is left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by_operator: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    pub id: u32,
    pub cpus: CpuSet,
    /// Usable CPUs held by dedicated vCPUs after the plan.
    pub dedicated_cpus: CpuSet,
    pub pressure_before: f64,
    pub pressure_after: f64,
    pub free_mib_after: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub domains: Vec<DomainPlan>,
    pub nodes: Vec<NodePlan>,
    pub score: Score,
}

fn ids<S: Serializer>(set: &NodeSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(set.iter())
}

fn memory_text<S: Serializer>(m: &Option<MemoryHandling>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        None => s.serialize_none(),
        Some(m) => s.serialize_str(&memory_label(*m)),
    }
}

pub fn memory_label(m: MemoryHandling) -> String {
    match m {
        MemoryHandling::Migrate => "migrate_pages".into(),
        MemoryHandling::Restrictive => "restrictive".into(),
        MemoryHandling::Fixed(mode) => format!("fixed ({})", mode.as_str()),
        MemoryHandling::FirstTouch => "first-touch".into(),
    }
}

/// Plans placement for every domain.
pub fn plan(input: &PlanInput) -> Plan {
    let topo = input.topology;
    let analyzer = Analyzer::new(topo, input.observations, input.config);
    let mut infos: Vec<DomainInfo> = input.domains.iter().map(|d| analyzer.analyze(d)).collect();
    // Output and service order never depend on input order.
    infos.sort_by(|a, b| (&a.domain.name, &a.domain.uuid).cmp(&(&b.domain.name, &b.domain.uuid)));

    let base = Ledger::new(topo, input.observations, input.config, &infos);
    let before = ledger_as_is(base.clone(), &infos);
    let order = service_order(&infos);
    let p = &input.config.planner;
    let mut chooser = Chooser {
        topo,
        distances: &analyzer.distances,
        strategy: p.strategy,
        min_gain: if input.rebalance_all {
            0.01
        } else {
            p.min_gain
        },
        mib_per_cycle: p.max_migrate_mib_per_cycle,
        ledger: base,
        budget: Budget {
            moves_left: p.max_moves_per_cycle,
            mib_left: p.max_migrate_mib_per_cycle,
            spent_any: false,
        },
    };
    let mut decisions = chooser.decide(&infos, &order);
    let mut assigner = CpuAssigner {
        topo,
        usable: chooser
            .ledger
            .ids
            .iter()
            .copied()
            .zip(chooser.ledger.usable.iter().cloned())
            .collect(),
        claimed: CpuSet::new(),
    };
    let mut pins = assigner.assign(&infos, &order, &decisions);
    // The ledger guarantees enough CPUs; should a dedicated domain still
    // come up short, it is not half-pinned but left as it is.
    for i in 0..infos.len() {
        if let Some(p) = &pins[i]
            && p.vcpupin.len() != infos[i].vcpu_count()
        {
            decisions[i] = Some(Decision::NoFit(
                "not enough free CPUs for its dedicated vCPUs".into(),
            ));
            pins[i] = None;
        }
    }

    let mut domains: Vec<DomainPlan> = infos
        .iter()
        .zip(&decisions)
        .zip(pins)
        .map(|((info, decision), pins)| {
            domain_plan(topo, &analyzer.distances, info, decision.as_ref(), pins)
        })
        .collect();
    for (plan, info) in domains.iter_mut().zip(&infos) {
        absent::report(topo, info.domain, plan);
    }
    let after = &chooser.ledger;
    let nodes = topo
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodePlan {
            id: n.id,
            cpus: n.cpus.clone(),
            dedicated_cpus: n.cpus.intersection(&assigner.claimed),
            pressure_before: round3(before.pressure(i)),
            pressure_after: round3(after.pressure(i)),
            free_mib_after: after.mem_free[i],
        })
        .collect();
    let score = score_of(&infos, &domains, &before, after);
    Plan {
        domains,
        nodes,
        score,
    }
}

/// Managed domains in the order they are served: the most constrained
/// first (dedicated, then those with cells or bound memory), then larger
/// before smaller, then by name.
fn service_order(infos: &[DomainInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..infos.len())
        .filter(|&i| infos[i].is_managed())
        .collect();
    order.sort_by_key(|&i| {
        let d = &infos[i];
        (
            !d.is_dedicated(),
            d.pieces.len() == 1,
            d.fixed_nodes().is_none(),
            std::cmp::Reverse(d.mem_mib),
            std::cmp::Reverse(d.vcpu_count()),
            i,
        )
    });
    order
}

/// The ledger with managed domains where they are now, for "before" figures.
fn ledger_as_is(mut ledger: Ledger, infos: &[DomainInfo]) -> Ledger {
    for d in infos.iter().filter(|d| d.is_managed()) {
        for (&node, &mib) in &d.current.memory_mib {
            if let Some(i) = ledger.index(node) {
                let part = Demand {
                    vcpus: 0,
                    mem_mib: mib,
                    hugepage_kib: d.hugepage_kib,
                    load: 0.0,
                };
                ledger.reserve(i, &part, CpuPolicy::Shared);
            }
        }
        let per_vcpu = d.load / d.vcpu_count().max(1) as f64;
        for (&node, &w) in &d.current.vcpu_weights {
            if let Some(i) = ledger.index(node) {
                ledger.shared_load[i] += per_vcpu * d.vcpu_count() as f64 * w;
            }
        }
    }
    ledger
}

fn domain_plan(
    topo: &HostTopology,
    distances: &Distances,
    info: &DomainInfo,
    decision: Option<&Decision>,
    pins: Option<Pins>,
) -> DomainPlan {
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
        nested_hypervisor: info.nested,
        vcpus: info.vcpu_count() as u32,
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
    };
    let parts = decision.and_then(|x| x.parts());
    plan.advice = advice::advice_for(info, topo, parts, pins.as_ref());
    if let (Some(decision), Ok(_), Some(parts), Some(pins)) = (decision, &info.managed, parts, pins)
    {
        fill_target(topo, distances, info, decision, parts, pins, &mut plan);
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
        }
        (None, Ok(_)) => plan.reason = "not planned".into(),
        (Some(Decision::Deferred(why)), _) => {
            plan.status = Status::Deferred;
            plan.reason = why.clone();
        }
        (Some(Decision::NoFit(why)), _) => {
            plan.status = Status::NoFit;
            plan.reason = why.clone();
        }
        (Some(_), Ok(_)) => unreachable!("placed decisions have parts and pins"),
    }
    plan
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
        None => nodes.clone(),
    };
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
        Decision::Placed { why, .. } if plan.actions.is_empty() => (Status::Kept, why.clone()),
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
    if matches!(
        info.memory,
        MemoryHandling::Fixed(_) | MemoryHandling::FirstTouch
    ) {
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
        let (l, mib) = locality(distances, &w, &BTreeMap::from([(part.node, part.mem_mib)]));
        sum += l * mib as f64;
        total += mib;
    }
    if total == 0 { 1.0 } else { sum / total as f64 }
}

fn score_of(infos: &[DomainInfo], plans: &[DomainPlan], before: &Ledger, after: &Ledger) -> Score {
    let fits_one = |info: &DomainInfo| {
        (0..after.ids.len()).any(|i| {
            after.usable[i].len() >= info.vcpu_count() && after.mem_capacity[i] >= info.mem_mib
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
