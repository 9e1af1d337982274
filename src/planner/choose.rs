//! Choosing host nodes for every managed domain, in three phases:
//!
//! 1. keep: a domain already pinned whole onto node(s) with its memory there
//!    stays, if the node still has room (stability: nothing moves for free);
//! 2. place: every other domain goes to the best node by strategy, or when
//!    none has room, to the fewest and closest nodes (cells stay whole);
//! 3. improve: while nodes are unbalanced by more than the threshold, move
//!    the domain whose move helps most, within the per-cycle budget (in the
//!    daemon, once the move has been wanted for `planner.rebalance_wait_secs`).

use std::collections::BTreeMap;

use crate::config::{MemoryTier, Strategy};
use crate::idset::NodeSet;
use crate::topology::HostTopology;

use super::cell_memory::{cells_of, memory_moves, migrate_mib};
use super::domain_info::{CpuPolicy, DomainInfo, Piece};
use super::ledger::{Demand, Ledger, Part};
use super::score::Distances;
use super::split::SplitFailure;
use super::wanted::{MoveConfirmation, WantedMove};

/// The outcome for one managed domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Stays where it is.
    Kept(Vec<Part>),
    /// Gets a (new) placement; `why` explains the choice.
    Placed { parts: Vec<Part>, why: String },
    /// Could go elsewhere but the cycle's budget is spent.
    Deferred(String),
    /// No placement exists; left as is.
    NoFit(String),
}

impl Decision {
    pub fn parts(&self) -> Option<&[Part]> {
        match self {
            Decision::Kept(p) | Decision::Placed { parts: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// The nodes the parts' memory goes to: their own, and the memory-only
/// nodes that take what does not fit them.
pub fn memory_nodes_of(parts: &[Part]) -> NodeSet {
    let mut nodes = nodes_of(parts);
    for (node, _) in parts.iter().filter_map(|p| p.spill) {
        nodes.insert(node);
    }
    nodes
}

pub fn nodes_of(parts: &[Part]) -> NodeSet {
    parts.iter().map(|p| p.node).collect()
}

/// What one cycle may still spend on moves.
#[derive(Debug, Clone)]
pub struct Budget {
    pub moves_left: u32,
    pub mib_left: u64,
    pub spent_any: bool,
}

impl Budget {
    /// A move counts against the move budget; migration against the MiB
    /// budget, except that the first migration of a cycle may exceed it
    /// (otherwise a domain larger than the budget could never move).
    pub fn affords(&self, is_move: bool, mib: u64) -> bool {
        (!is_move || self.moves_left > 0) && (mib <= self.mib_left || !self.spent_any)
    }

    pub fn spend(&mut self, is_move: bool, mib: u64) {
        if is_move {
            self.moves_left = self.moves_left.saturating_sub(1);
        }
        if mib > 0 || is_move {
            self.spent_any = true;
        }
        self.mib_left = self.mib_left.saturating_sub(mib);
    }
}

pub struct Chooser<'a> {
    pub topo: &'a HostTopology,
    /// What memory-only nodes take.
    pub tier: MemoryTier,
    pub distances: &'a Distances,
    pub strategy: Strategy,
    /// Least gain in node pressure worth a move.
    pub min_gain: f64,
    /// The per-cycle migration budget: a rebalancing move that migrates
    /// this much must gain twice `min_gain` (see `evaluate_move`).
    pub mib_per_cycle: u64,
    pub ledger: Ledger,
    pub budget: Budget,
    /// Pieces no split could hold while guests were being placed (see
    /// [`super::split`]).
    pub split_failures: Vec<SplitFailure>,
    /// When set, a rebalancing move of a placed guest is made only once
    /// it has been wanted long enough (see [`super::wanted`]).
    pub confirm: Option<MoveConfirmation<'a>>,
    /// Rebalancing moves wanted and not made, by domain index.
    pub wanted: BTreeMap<usize, WantedMove>,
}

/// Resident memory from which a guest counts as settled where it is (see
/// [`has_settled_memory`]), MiB.
const SETTLED_MIB: u64 = 1024;

/// Whether a guest has touched enough memory that where it is matters
/// more than where balance would put it: half its RAM, or a GiB. A guest
/// just started has touched far less (a Linux boot touches a few hundred
/// MiB), and moving that is cheap.
pub(super) fn has_settled_memory(info: &DomainInfo) -> bool {
    let resident = info.current.resident_mib;
    resident >= SETTLED_MIB.min(info.mem_mib / 2).max(1)
}

pub(super) fn policy(info: &DomainInfo) -> CpuPolicy {
    match info.managed {
        Ok(policy) => policy,
        Err(_) => CpuPolicy::Shared,
    }
}

/// A change of placement counts as a move (against the move budget) only
/// when the domain had numapin-style pins elsewhere (within one node per
/// vCPU, or one affinity over the nodes of a split); placing a new or
/// unpinned domain is not a move.
pub fn is_move(info: &DomainInfo, target: &NodeSet) -> bool {
    (info.current.pinned || info.current.pinned_over_nodes) && *target != info.current.nodes
}

/// Why a guest's cells go where they go, as a first placement says it.
pub(super) fn cells_why(info: &DomainInfo, parts: &[Part]) -> String {
    let map: Vec<String> = parts
        .iter()
        .map(|p| format!("{}->{}", p.cell.unwrap_or(0), p.node))
        .collect();
    let bound = if info.pieces.iter().any(|p| p.bound.is_some()) {
        " (cells bound by <memnode> stay with their memory)"
    } else {
        ""
    };
    format!("guest cells on host nodes {}{bound}", map.join(", "))
}

pub(super) fn part_of(piece: &Piece, node: u32) -> Part {
    Part {
        node,
        cell: piece.cell,
        vcpus: piece.vcpus.clone(),
        mem_mib: piece.mem_mib,
        hugepage_kib: piece.hugepage_kib,
        load: piece.load,
        spill: None,
    }
}

impl Chooser<'_> {
    /// Runs the three phases; `order` lists managed domains by index into
    /// `infos` in the order they are served.
    pub fn decide(&mut self, infos: &[DomainInfo], order: &[usize]) -> Vec<Option<Decision>> {
        let mut decisions: Vec<Option<Decision>> = vec![None; infos.len()];
        for &i in order {
            if let Some(parts) = self.settled_parts(&infos[i])
                && self.try_reserve(&parts, policy(&infos[i]))
            {
                // Memory still on its way to a kept placement keeps
                // moving in the background at the configured rate. It is
                // counted against the cycle's budget all the same, so that
                // moves of placed guests wait while much is still moving.
                let mib = migrate_mib(&infos[i], &cells_of(&parts), &memory_nodes_of(&parts));
                self.budget.spend(false, mib);
                decisions[i] = Some(Decision::Kept(parts));
            }
        }
        for &i in order {
            if decisions[i].is_none() {
                let decision = self.place(&infos[i]);
                if matches!(decision, Decision::Deferred(_) | Decision::NoFit(_)) {
                    self.hold_where_it_is(&infos[i]);
                }
                decisions[i] = Some(decision);
            }
        }
        self.improve(infos, order, &mut decisions);
        decisions
    }

    /// A managed domain that stays unplaced (deferred, or no fit) keeps its
    /// memory and CPU demand where they are now. The ledger started with
    /// every managed domain's memory counted as free (it is theirs to
    /// move); the unplaced one's is taken again, with its load, so that
    /// domains served after it do not over-commit its nodes.
    ///
    /// Only a measured domain is held. Without a measurement the ledger
    /// starts from each node's total and assumes every managed domain gets
    /// placed; an unplaced domain's memory is then a guess spread by node
    /// size and its load the default per vCPU, and taking those off again
    /// turns a snapshot that lists more guests than the host holds into
    /// one where nothing fits.
    pub(super) fn hold_where_it_is(&mut self, info: &DomainInfo) {
        if !info.current.memory_observed {
            return;
        }
        for (&node, &mib) in &info.current.memory_mib {
            if let Some(i) = self.ledger.index(node) {
                let demand = Demand {
                    vcpus: 0,
                    mem_mib: mib,
                    hugepage_kib: info.hugepage_kib,
                    load: 0.0,
                };
                self.ledger.reserve(i, &demand, CpuPolicy::Shared);
            }
        }
        for (&node, &w) in &info.current.vcpu_weights {
            if let Some(i) = self.ledger.index(node) {
                self.ledger.shared_load[i] += info.load * w;
            }
        }
    }

    pub(super) fn try_reserve(&mut self, parts: &[Part], policy: CpuPolicy) -> bool {
        let mut done = Vec::new();
        for part in parts {
            let spill_fits = part.spill.is_none_or(|(node, mib)| {
                self.ledger
                    .index(node)
                    .is_some_and(|t| self.ledger.mem_free[t] >= mib as i64)
            });
            match self.ledger.index(part.node) {
                Some(i) if spill_fits && self.ledger.fits(i, &part.demand(), policy) => {
                    self.ledger.reserve(i, &part.demand(), policy);
                    self.ledger.spill(part.spill, 1);
                    done.push((i, part));
                }
                _ => {
                    for (i, p) in done {
                        self.ledger.release(i, &p.demand(), policy);
                        self.ledger.spill(p.spill, -1);
                    }
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn release_all(&mut self, parts: &[Part], policy: CpuPolicy) {
        for part in parts {
            if let Some(i) = self.ledger.index(part.node) {
                self.ledger.release(i, &part.demand(), policy);
                self.ledger.spill(part.spill, -1);
            }
        }
    }

    /// The domain's current placement as parts, if it is one numapin would
    /// keep: every piece pinned within a single node of usable CPUs, and
    /// the memory (when measured) at least 90% on those nodes.
    pub(super) fn settled_parts(&self, info: &DomainInfo) -> Option<Vec<Part>> {
        if info.current.pinned_over_nodes {
            return self.settled_split(info);
        }
        if !info.current.pinned {
            return None;
        }
        let mut parts = Vec::new();
        for piece in &info.pieces {
            let mut node = None;
            let mut previous = None;
            for v in &piece.vcpus {
                let affinity = info.current.vcpu_affinity.get(v)?;
                // The same affinity as the vCPU before passed already.
                if previous == Some(affinity) {
                    continue;
                }
                let nodes = self.topo.nodes_of_cpus(affinity);
                let n = nodes.first()?;
                let i = self.ledger.index(n)?;
                if nodes.len() != 1 || !affinity.is_subset(&self.ledger.usable[i]) {
                    return None;
                }
                if *node.get_or_insert(n) != n {
                    return None;
                }
                previous = Some(affinity);
            }
            let node = node?;
            if !piece.allows(node) {
                return None;
            }
            parts.push(part_of(piece, node));
        }
        let nodes = nodes_of(&parts);
        // numapin's own placement whose memory is still on its way stays:
        // the memory follows it (as the budget allows), rather than the
        // placement following the memory back.
        if !info.placed_by_numapin {
            if info.current.memory_observed && info.memory_share_on(&nodes) < 0.9 {
                return None;
            }
            // Measured cell by cell, a cell whose RAM is not on its node is
            // not in place, even within the guest's nodes.
            if memory_moves(info, &cells_of(&parts), &nodes).is_some_and(|m| !m.cells.is_empty()) {
                return None;
            }
        }
        if let Some(fixed) = info.fixed_nodes()
            && !nodes.is_subset(fixed)
        {
            return None;
        }
        Some(parts)
    }

    /// Node indexes a domain may use: nodes with CPUs, within the bound
    /// nodeset when its memory cannot move.
    pub(super) fn candidates(&self, info: &DomainInfo) -> Vec<usize> {
        (0..self.ledger.ids.len())
            .filter(|&i| self.is_candidate(info, i))
            .collect()
    }

    pub(super) fn is_candidate(&self, info: &DomainInfo, i: usize) -> bool {
        self.ledger.has_cpus(i)
            && info
                .fixed_nodes()
                .is_none_or(|f| f.contains(self.ledger.ids[i]))
    }

    /// Lower is better. `cell`: the guest cell placed, whose own RAM
    /// counts when it was measured.
    pub(super) fn cost(
        &mut self,
        info: &DomainInfo,
        i: usize,
        part: &Demand,
        cell: Option<u32>,
    ) -> f64 {
        let p = self.ledger.pressure_with(i, part, policy(info));
        let by_strategy = match self.strategy {
            Strategy::Spread => p,
            Strategy::Pack => 1.0 - p,
        };
        // Staying where the memory is costs nothing; moving all of it costs
        // the threshold, so a move must win by more than that.
        let node = self.ledger.ids[i];
        let here = cell
            .and_then(|c| info.cell_share_on_node(c, node))
            .unwrap_or_else(|| info.memory_share_on_node(node));
        let away = 1.0 - here;
        by_strategy + self.min_gain * away
    }

    pub(super) fn best_node(
        &mut self,
        info: &DomainInfo,
        piece: &Piece,
        avoid: &NodeSet,
    ) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        let demand = piece.demand();
        for i in 0..self.ledger.ids.len() {
            if !self.is_candidate(info, i) || !self.ledger.fits(i, &demand, policy(info)) {
                continue;
            }
            let mut cost = self.cost(info, i, &demand, piece.cell);
            if avoid.contains(self.ledger.ids[i]) {
                cost += 10.0;
            }
            if best.is_none_or(|(c, _)| cost < c - 1e-12) {
                best = Some((cost, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// A new placement for the domain, and the MiB whose move waits for a
    /// later cycle, if any.
    pub(super) fn place(&mut self, info: &DomainInfo) -> Decision {
        let pol = policy(info);
        let result = if info.pieces.iter().any(|p| p.cell.is_some()) {
            self.place_cells(info)
                .or_else(|reason| self.place_cells_split(info, reason))
        } else {
            let piece = &info.pieces[0];
            if let Some(part) = self.idle_part(info, piece) {
                let why = self.tier_why("idle: its memory", &part);
                Ok((vec![part], why))
            } else {
                match self.best_node(info, piece, &NodeSet::new()) {
                    Some(i) => {
                        let node = self.ledger.ids[i];
                        Ok((vec![part_of(piece, node)], self.single_node_why(info, node)))
                    }
                    None => self.place_split(info, piece).or_else(|reason| {
                        let part = self.overflow_part(info, piece).ok_or(reason)?;
                        let why = self.tier_why("what does not fit its node", &part);
                        Ok((vec![part], why))
                    }),
                }
            }
        };
        let (mut parts, mut why) = match result {
            Ok(found) => found,
            Err(reason) => return Decision::NoFit(reason),
        };
        let mut nodes = nodes_of(&parts);
        let is_move = is_move(info, &nodes);
        let mut mib = migrate_mib(info, &cells_of(&parts), &memory_nodes_of(&parts));
        // A running guest whose memory has settled somewhere is confined
        // where most of it is: its locality rises at once with nothing
        // migrated, and balance comes later from moves that pay for what
        // they migrate. A guest that touched little memory yet goes where
        // balance says.
        if !is_move
            && mib > 0
            && has_settled_memory(info)
            && let Some((home, share)) = self.home(info)
        {
            let home_mib = migrate_mib(info, &cells_of(&home), &memory_nodes_of(&home));
            // Going home must not be a move of a pinned guest either.
            if home_mib < mib && !self::is_move(info, &nodes_of(&home)) {
                why = format!(
                    "confined to node {} where {:.0}% of its memory is",
                    home[0].node,
                    share * 100.0
                );
                parts = home;
                nodes = nodes_of(&parts);
                mib = home_mib;
            }
        }
        // A first confinement never waits for a budget: its vCPUs go now,
        // its memory follows in the background at the configured rate.
        // Only moves of placed domains are held back by the budgets.
        if is_move && !self.budget.affords(is_move, mib) {
            let spent = if self.budget.moves_left == 0 {
                "move budget (planner.max_moves_per_cycle)".to_string()
            } else {
                format!(
                    "migration budget ({} MiB left after the memory still moving; planner.max_migrate_mib_per_cycle)",
                    self.budget.mib_left
                )
            };
            return Decision::Deferred(format!(
                "would go to node(s) {nodes} ({mib} MiB to migrate) but this cycle's {spent} is spent"
            ));
        }
        if !self.try_reserve(&parts, pol) {
            return Decision::NoFit("no room once its pieces are combined".into());
        }
        // A first confinement's memory is spent even past the budget: it
        // moves anyway, and moves of placed guests wait for it.
        self.budget.spend(is_move, mib);
        Decision::Placed { parts, why }
    }

    /// A guest without cells, whole on the CPU node that holds most of its
    /// measured memory, if that node can take it without overload; with
    /// that node's share of the memory.
    fn home(&mut self, info: &DomainInfo) -> Option<(Vec<Part>, f64)> {
        let [piece] = info.pieces.as_slice() else {
            return None;
        };
        if piece.cell.is_some() || !info.current.memory_observed {
            return None;
        }
        let pol = policy(info);
        let demand = piece.demand();
        // The largest share, the lowest node on a tie. Capacity allows a
        // node only as long as it is not overloaded: its pressure within 1
        // (demand and what it loses to shared cores within its CPUs, memory
        // within its memory), not just the overcommit.
        let mut best: Option<(f64, usize)> = None;
        for i in 0..self.ledger.ids.len() {
            if !self.is_candidate(info, i)
                || !self.ledger.fits(i, &demand, pol)
                || self.ledger.pressure_with(i, &demand, pol) > 1.0
            {
                continue;
            }
            let share = info.memory_share_on_node(self.ledger.ids[i]);
            if best.is_none_or(|(b, _)| share > b) {
                best = Some((share, i));
            }
        }
        let (share, i) = best?;
        Some((vec![part_of(piece, self.ledger.ids[i])], share))
    }

    /// Why part of the memory goes to a memory-only node.
    fn tier_why(&self, what: &str, part: &Part) -> String {
        let Some((tier, mib)) = part.spill else {
            return String::new();
        };
        format!(
            "vCPUs on node {}; {what} ({mib} MiB) on memory-only node {tier} (distance {})",
            part.node,
            self.distances.get(part.node, tier)
        )
    }

    pub(super) fn single_node_why(&self, info: &DomainInfo, node: u32) -> String {
        let now = &info.current.nodes;
        let target = NodeSet::single(node);
        if info.current.pinned && *now == target {
            format!("re-pinned on node {node}")
        } else if let Some(fixed) = info.fixed_nodes() {
            format!("vCPUs follow its memory, bound to node(s) {fixed}")
        } else {
            let mode = match self.strategy {
                Strategy::Spread => "least loaded node that fits",
                Strategy::Pack => "fullest node that still fits",
            };
            format!("fits one node: node {node} ({mode})")
        }
    }

    /// Maps each guest cell, whole, onto one node: distinct nodes where
    /// possible (the guest was told its cells are apart), closest to the
    /// cells already mapped.
    pub(super) fn place_cells(&mut self, info: &DomainInfo) -> Result<(Vec<Part>, String), String> {
        let pol = policy(info);
        let mut parts: Vec<Part> = Vec::new();
        for piece in &info.pieces {
            let demand = piece.demand();
            let mut best: Option<(f64, usize)> = None;
            for i in 0..self.ledger.ids.len() {
                let node = self.ledger.ids[i];
                if !self.is_candidate(info, i)
                    || !piece.allows(node)
                    || !self.ledger.fits(i, &demand, pol)
                {
                    continue;
                }
                let mut cost = self.cost(info, i, &demand, piece.cell);
                // Cells spread evenly: each cell of the guest already on a
                // node weighs against it, so k cells on n nodes take
                // ceil(k/n) a node unless capacity forces more.
                let here = parts.iter().filter(|p| p.node == node).count();
                cost += 10.0 * here as f64;
                let far: u32 = parts.iter().map(|p| self.distances.get(p.node, node)).sum();
                cost += far as f64 / 100.0;
                if best.is_none_or(|(c, _)| cost < c - 1e-12) {
                    best = Some((cost, i));
                }
            }
            let tiered = match best {
                Some(_) => None,
                None => self.overflow_part(info, piece),
            };
            if let Some(part) = tiered {
                let i = self
                    .ledger
                    .index(part.node)
                    .expect("parts are on host nodes");
                self.ledger.reserve(i, &part.demand(), pol);
                self.ledger.spill(part.spill, 1);
                parts.push(part);
                continue;
            }
            let Some((_, i)) = best else {
                self.release_all(&parts, pol);
                let cell = piece.cell.unwrap_or(0);
                let (vcpus, mib) = (piece.vcpus.len(), piece.mem_mib);
                return Err(match &piece.bound {
                    Some(bound) => format!(
                        "guest cell {cell} ({vcpus} vCPUs, {mib} MiB) is bound to host node(s) {bound} by <memnode>, and none of them has room for it"
                    ),
                    None => {
                        format!("guest cell {cell} ({vcpus} vCPUs, {mib} MiB) fits no host node")
                    }
                });
            };
            let part = part_of(piece, self.ledger.ids[i]);
            self.ledger.reserve(i, &demand, pol);
            parts.push(part);
        }
        // Reserved again by the caller once the budget allows.
        self.release_all(&parts, pol);
        let why = cells_why(info, &parts);
        Ok((parts, why))
    }
}
