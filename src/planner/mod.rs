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
mod current;
pub mod domain_info;
mod hypervisor;
mod improve;
pub mod ledger;
mod outcome;
pub mod score;
mod split;
mod tier;
pub mod wanted;

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::config::Config;
use crate::guest::{CpuTune, Domain};
use crate::idset::{CpuSet, NodeSet};
use crate::observations::Observations;
use crate::topology::HostTopology;

pub use actions::Action;
pub use domain_info::{CpuPolicy, MemoryHandling};
pub use hypervisor::Hypervisor;
pub use score::Score;
pub use wanted::{MoveConfirmation, WantedMove, WantedMoves};

use choose::{Budget, Chooser, Decision};
use cpus::{CpuAssigner, Pins};
use domain_info::{Analyzer, DomainInfo};
use ledger::{Demand, Ledger};
use score::{Distances, round3};

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

    /// `self` with the pins and nodeset `actions` set: the live XML a
    /// transaction of those actions leaves when nobody else touches it.
    pub fn after(&self, actions: &[Action]) -> Recorded {
        let mut out = self.clone();
        for a in actions {
            match a {
                Action::Vcpupin { vcpu, cpus } => {
                    out.cputune.vcpupin.insert(*vcpu, cpus.clone());
                }
                Action::Emulatorpin { cpus } => out.cputune.emulatorpin = Some(cpus.clone()),
                Action::Iothreadpin { iothread, cpus } => {
                    out.cputune.iothreadpin.insert(*iothread, cpus.clone());
                }
                Action::SetMemoryNodeset { nodeset } => out.nodeset = Some(nodeset.clone()),
                Action::MigratePages { .. } | Action::MoveCellMemory { .. } => {}
            }
        }
        out
    }

    /// Everything that differs between `self` and `now`, pins of any
    /// thread and the memory nodeset: what changed on a domain between
    /// two readings of its live XML.
    pub fn changes_to(&self, now: &Recorded) -> Option<String> {
        let ids = |a: &BTreeMap<u32, CpuSet>, b: &BTreeMap<u32, CpuSet>| {
            a.keys()
                .chain(b.keys())
                .copied()
                .collect::<std::collections::BTreeSet<u32>>()
        };
        let vcpus = ids(&self.cputune.vcpupin, &now.cputune.vcpupin);
        let iothreads = ids(&self.cputune.iothreadpin, &now.cputune.iothreadpin);
        let mut changes = self.pin_changes_of(&now.cputune, vcpus, &iothreads);
        if self.nodeset != now.nodeset {
            changes.push(format!(
                "memory nodeset {} -> {}",
                shown(self.nodeset.as_ref()),
                shown(now.nodeset.as_ref())
            ));
        }
        (!changes.is_empty()).then(|| changes.join(", "))
    }

    fn pin_changes(&self, now: &CpuTune, live: &Domain) -> Vec<String> {
        self.pin_changes_of(now, live.online_vcpus.iter(), &live.iothreads)
    }

    fn pin_changes_of<'a>(
        &self,
        now: &CpuTune,
        vcpus: impl IntoIterator<Item = u32>,
        iothreads: impl IntoIterator<Item = &'a u32>,
    ) -> Vec<String> {
        let mut changes = Vec::new();
        for vcpu in vcpus {
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
        for id in iothreads {
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
    /// When set, rebalancing moves of placed guests wait until they have
    /// been wanted long enough (the daemon); otherwise they are made at
    /// once (one-shot commands, a rebalance asked for).
    pub confirm: Option<MoveConfirmation<'a>>,
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
    /// Why it is or is not taken for a hypervisor of its own.
    #[serde(serialize_with = "displayed")]
    pub hypervisor: Hypervisor,
    pub vcpus: u32,
    /// The vCPU demand the plan counted, in CPUs: the share of time each
    /// online vCPU ran plus the share it waited in the run queue, or
    /// `planner.default_vcpu_load` for a vCPU not measured yet.
    pub load: f64,
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
    /// Memory-only node -> MiB of the guest's memory the plan puts there
    /// (what does not fit its CPU node, or an idle guest's memory).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub memory_only_mib: BTreeMap<u32, u64>,
    pub locality_after: f64,
    pub advice: Vec<String>,
    /// What an operator changed after numapin placed the domain, when
    /// that is why it is left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by_operator: Option<String>,
    /// For a domain numapin leaves alone: the CPUs dedicated to other
    /// guests that its threads may run on (numapin never changes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_dedicated_cpus: Option<CpuSet>,
    /// A rebalancing move the plan wanted and did not make: not wanted
    /// long enough yet, or over the cycle's budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wanted_move: Option<WantedMove>,
    /// The live pins and memory nodeset the plan was made from: a
    /// transaction that finds others has met an operator's change made
    /// since, and leaves the domain to the next plan.
    #[serde(skip)]
    pub planned_from: Recorded,
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

fn displayed<S: Serializer, T: std::fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
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

    let mut round = choose_and_pin(input, &analyzer.distances, &infos);
    // A dedicated guest that finds no exclusive CPUs is placed as a shared
    // guest rather than left floating over everyone's CPUs: once more,
    // with those guests shared.
    let short: Vec<usize> = (0..infos.len())
        .filter(|&i| infos[i].is_dedicated())
        .filter(|&i| matches!(round.decisions[i], Some(Decision::NoFit(_))))
        .collect();
    if !short.is_empty() {
        let share = input.config.planner.max_dedicated_share;
        for &i in &short {
            infos[i].managed = Ok(CpuPolicy::Shared);
            infos[i].shared_instead = Some(format!(
                "no node has room for its {} vCPUs on CPUs of their own within planner.max_dedicated_share = {share}",
                infos[i].vcpu_count()
            ));
        }
        round = choose_and_pin(input, &analyzer.distances, &infos);
        // One that finds no room as a shared guest either is shown as what
        // it is, a dedicated guest with no fit.
        for &i in &short {
            if matches!(round.decisions[i], Some(Decision::NoFit(_))) {
                infos[i].managed = Ok(CpuPolicy::Dedicated);
                infos[i].shared_instead = None;
            }
        }
    }

    let Round {
        before,
        after,
        decisions,
        pins,
        dedicated,
        wanted,
    } = round;
    let at = outcome::Context {
        topo,
        distances: &analyzer.distances,
        dedicated: &dedicated,
        undedicated: topo.online_cpus().difference(&dedicated),
        smt_width: topo.smt_width(),
    };
    let mut domains: Vec<DomainPlan> = infos
        .iter()
        .zip(&decisions)
        .zip(pins)
        .map(|((info, decision), pins)| at.domain_plan(info, decision.as_ref(), pins))
        .collect();
    let known = absent::Known::new(topo);
    for (plan, info) in domains.iter_mut().zip(&infos) {
        absent::report(&known, info.domain, plan);
    }
    for (i, m) in wanted {
        note_wanted(&mut domains[i], m, confirmation(input));
    }
    let nodes = topo
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodePlan {
            id: n.id,
            cpus: n.cpus.clone(),
            dedicated_cpus: n.cpus.intersection(&dedicated),
            pressure_before: round3(before.pressure(i)),
            pressure_after: round3(after.pressure(i)),
            free_mib_after: after.mem_free[i],
        })
        .collect();
    let score = outcome::score_of(&infos, &domains, &before, &after);
    Plan {
        domains,
        nodes,
        score,
    }
}

/// How moves wait to be confirmed: not at all when a rebalance is asked
/// for (an operator's request is made now).
fn confirmation<'a>(input: &PlanInput<'a>) -> Option<MoveConfirmation<'a>> {
    input.confirm.filter(|_| !input.rebalance_all)
}

/// Says in a domain's plan the rebalancing move it waits for: one not
/// wanted long enough yet, or one the cycle's budget cannot pay for.
fn note_wanted(plan: &mut DomainPlan, m: WantedMove, confirm: Option<MoveConfirmation>) {
    plan.wanted_move = Some(m);
    let waits = match confirm {
        Some(c) if !c.confirms(&plan.uuid, m) => format!(
            "made once every cycle for {:.0} s has wanted it",
            c.after_secs
        ),
        _ => "the cycle's budget is spent".to_string(),
    };
    plan.reason = format!("{}; rebalancing wants it on {m}: {waits}", plan.reason);
}

/// One pass of choosing nodes and CPUs for every managed domain.
struct Round {
    /// Node pressures with managed domains where they are now.
    before: Ledger,
    /// And once the plan is applied.
    after: Ledger,
    decisions: Vec<Option<Decision>>,
    pins: Vec<Option<Pins>>,
    /// Host CPUs dedicated vCPUs hold after the plan.
    dedicated: CpuSet,
    /// Rebalancing moves wanted and not made, by domain index.
    wanted: BTreeMap<usize, WantedMove>,
}

fn choose_and_pin(input: &PlanInput, distances: &Distances, infos: &[DomainInfo]) -> Round {
    let topo = input.topology;
    let base = Ledger::new(topo, input.observations, input.config, infos);
    let before = ledger_as_is(base.clone(), infos);
    let order = service_order(infos);
    let p = &input.config.planner;
    let mut chooser = Chooser {
        topo,
        tier: p.memory_tier,
        distances,
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
        split_failures: Vec::new(),
        confirm: confirmation(input),
        wanted: BTreeMap::new(),
    };
    let mut decisions = chooser.decide(infos, &order);
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
    let mut pins = assigner.assign(infos, &order, &decisions);
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
    Round {
        before,
        after: chooser.ledger,
        decisions,
        pins,
        dedicated: assigner.claimed,
        wanted: chooser.wanted,
    }
}

/// Managed domains in the order they are served: the most constrained
/// first (dedicated, then those with cells or bound memory), then larger
/// before smaller, then those whose node decides the most memory, then by
/// name.
fn service_order(infos: &[DomainInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..infos.len())
        .filter(|&i| infos[i].is_managed())
        .collect();
    // Cached: a key walks the guest's memory per node.
    order.sort_by_cached_key(|&i| {
        let d = &infos[i];
        (
            !d.is_dedicated(),
            d.pieces.len() == 1,
            d.fixed_nodes().is_none(),
            Reverse(d.mem_mib),
            Reverse(d.vcpu_count()),
            Reverse(memory_at_stake(d)),
            i,
        )
    });
    order
}

/// MiB that a first confinement at home saves over the next best node: what
/// the guest holds on its fullest node beyond its next fullest. Zero for a
/// guest that is pinned, or has touched too little memory to be confined
/// where it is (see [`choose::has_settled_memory`]).
///
/// Among alike guests, the one split evenly is indifferent and should not
/// take, by its name alone, the home of one whose memory is all on that
/// node: that would send the second away with everything to move, where
/// serving it first moves nothing.
fn memory_at_stake(d: &DomainInfo) -> u64 {
    if d.current.pinned || !d.current.memory_observed || !choose::has_settled_memory(d) {
        return 0;
    }
    let mut on_nodes: Vec<u64> = d.current.memory_mib.values().copied().collect();
    on_nodes.sort_unstable_by(|a, b| b.cmp(a));
    let fullest = on_nodes.first().copied().unwrap_or(0);
    let next = on_nodes.get(1).copied().unwrap_or(0);
    fullest - next
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
