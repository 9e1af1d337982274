//! Choosing host nodes for every managed domain, in three phases:
//!
//! 1. keep: a domain already pinned whole onto node(s) with its memory there
//!    stays, if the node still has room (stability: nothing moves for free);
//! 2. place: every other domain goes to the best node by strategy, or when
//!    none has room, to the fewest and closest nodes (cells stay whole);
//! 3. improve: while nodes are unbalanced by more than the threshold, move
//!    the domain whose move helps most, within the per-cycle budget.

use crate::config::Strategy;
use crate::idset::NodeSet;
use crate::topology::HostTopology;

use super::cell_memory::{cells_of, memory_moves, migrate_mib};
use super::domain_info::{CpuPolicy, DomainInfo, Piece, distribute_shares};
use super::ledger::{Demand, Ledger, Part};
use super::score::Distances;

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
    pub distances: &'a Distances,
    pub strategy: Strategy,
    /// Least gain in node pressure worth a move.
    pub min_gain: f64,
    /// The per-cycle migration budget: a rebalancing move that migrates
    /// this much must gain twice `min_gain` (see `evaluate_move`).
    pub mib_per_cycle: u64,
    pub ledger: Ledger,
    pub budget: Budget,
}

fn policy(info: &DomainInfo) -> CpuPolicy {
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

/// A rebalancing move considered by `improve`.
struct Candidate {
    domain: usize,
    /// Which of the domain's parts moves (a guest cell, or the only part).
    part: usize,
    from: Part,
    to: Part,
    gain: f64,
    mib: u64,
    is_move: bool,
}

impl Candidate {
    /// Gain per GiB migrated (a move of less than a GiB counts as one):
    /// the move that evens the nodes out most for the memory it moves;
    /// then the larger gain, then the smaller migration.
    fn is_better_than(&self, other: &Candidate) -> bool {
        let per_gib = |c: &Candidate| c.gain / c.mib.max(1024) as f64;
        let (a, b) = (per_gib(self), per_gib(other));
        a > b * (1.0 + 1e-9)
            || (a > b * (1.0 - 1e-9)
                && (self.gain > other.gain + 1e-12
                    || (self.gain > other.gain - 1e-12 && self.mib < other.mib)))
    }
}

/// Scratch space for trying splits: weights and the shares they give.
#[derive(Default)]
struct SplitShares {
    weights: Vec<u64>,
    vcpus: Vec<u64>,
    mem: Vec<u64>,
}

fn part_of(piece: &Piece, node: u32) -> Part {
    Part {
        node,
        cell: piece.cell,
        vcpus: piece.vcpus.clone(),
        mem_mib: piece.mem_mib,
        hugepage_kib: piece.hugepage_kib,
        load: piece.load,
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
    fn hold_where_it_is(&mut self, info: &DomainInfo) {
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

    fn try_reserve(&mut self, parts: &[Part], policy: CpuPolicy) -> bool {
        let mut done = Vec::new();
        for part in parts {
            match self.ledger.index(part.node) {
                Some(i) if self.ledger.fits(i, &part.demand(), policy) => {
                    self.ledger.reserve(i, &part.demand(), policy);
                    done.push((i, part));
                }
                _ => {
                    for (i, p) in done {
                        self.ledger.release(i, &p.demand(), policy);
                    }
                    return false;
                }
            }
        }
        true
    }

    fn release_all(&mut self, parts: &[Part], policy: CpuPolicy) {
        for part in parts {
            if let Some(i) = self.ledger.index(part.node) {
                self.ledger.release(i, &part.demand(), policy);
            }
        }
    }

    /// The domain's current placement as parts, if it is one numapin would
    /// keep: every piece pinned within a single node of usable CPUs, and
    /// the memory (when measured) at least 90% on those nodes.
    fn settled_parts(&self, info: &DomainInfo) -> Option<Vec<Part>> {
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
            parts.push(part_of(piece, node?));
        }
        let nodes = nodes_of(&parts);
        if info.current.memory_observed && info.memory_share_on(&nodes) < 0.9 {
            return None;
        }
        // Measured cell by cell, a cell whose RAM is not on its node is not
        // in place, even within the guest's nodes.
        if memory_moves(info, &cells_of(&parts), &nodes).is_some_and(|m| !m.cells.is_empty()) {
            return None;
        }
        if let Some(fixed) = info.fixed_nodes()
            && !nodes.is_subset(fixed)
        {
            return None;
        }
        Some(parts)
    }

    /// A guest without cells split over nodes, as numapin left it: one
    /// affinity within the usable CPUs of its nodes, at least 90% of the
    /// memory there, and too large for any node (one that could fit a
    /// node is placed again, to go back to one node once there is room).
    /// Its parts hold the memory where it is and vCPUs in proportion to
    /// the nodes' CPUs.
    fn settled_split(&self, info: &DomainInfo) -> Option<Vec<Part>> {
        let [piece] = info.pieces.as_slice() else {
            return None;
        };
        if piece.cell.is_some() || self.fits_an_empty_node(info, piece) {
            return None;
        }
        let nodes = &info.current.nodes;
        let at: Vec<usize> = nodes
            .iter()
            .map(|n| self.ledger.index(n))
            .collect::<Option<_>>()?;
        let affinity = info.current.vcpu_affinity.values().next()?;
        let usable = at.iter().fold(crate::idset::CpuSet::new(), |all, &i| {
            all.union(&self.ledger.usable[i])
        });
        if !affinity.is_subset(&usable)
            || at.iter().any(|&i| !self.is_candidate(info, i))
            || at.len() > self.fewest_nodes_for(info, piece)
        {
            return None;
        }
        if info.current.memory_observed && info.memory_share_on(nodes) < 0.9 {
            return None;
        }
        let mut shares = SplitShares::default();
        shares
            .weights
            .extend(at.iter().map(|&i| self.ledger.usable[i].len() as u64));
        distribute_shares(piece.vcpus.len() as u64, &shares.weights, &mut shares.vcpus);
        shares.weights.clear();
        shares.weights.extend(
            nodes
                .iter()
                .map(|n| info.current.memory_mib.get(&n).copied().unwrap_or(0)),
        );
        if shares.weights.iter().all(|&w| w == 0) {
            shares.weights.clear();
            shares
                .weights
                .extend(at.iter().map(|&i| self.ledger.usable[i].len() as u64));
        }
        distribute_shares(piece.mem_mib, &shares.weights, &mut shares.mem);
        Some(self.split_parts(piece, &at, &shares))
    }

    /// The fewest candidate nodes whose capacity (CPUs and memory, empty)
    /// could hold the piece: a split over more is placed again, to gather
    /// onto fewer nodes once they have room.
    fn fewest_nodes_for(&self, info: &DomainInfo, piece: &Piece) -> usize {
        let candidates = self.candidates(info);
        let fewest = |mut sizes: Vec<u64>, need: u64| {
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let mut sum = 0;
            sizes
                .iter()
                .position(|&s| {
                    sum += s;
                    sum >= need
                })
                .map_or(usize::MAX, |k| k + 1)
        };
        let mem = fewest(
            candidates
                .iter()
                .map(|&i| self.ledger.mem_capacity[i])
                .collect(),
            piece.mem_mib,
        );
        let cpus = fewest(
            candidates
                .iter()
                .map(|&i| self.ledger.usable[i].len() as u64)
                .collect(),
            piece.vcpus.len() as u64,
        );
        mem.max(cpus)
    }

    /// Node indexes a domain may use: nodes with CPUs, within the bound
    /// nodeset when its memory cannot move.
    fn candidates(&self, info: &DomainInfo) -> Vec<usize> {
        (0..self.ledger.ids.len())
            .filter(|&i| self.is_candidate(info, i))
            .collect()
    }

    fn is_candidate(&self, info: &DomainInfo, i: usize) -> bool {
        self.ledger.has_cpus(i)
            && info
                .fixed_nodes()
                .is_none_or(|f| f.contains(self.ledger.ids[i]))
    }

    /// Lower is better. `cell`: the guest cell placed, whose own RAM
    /// counts when it was measured.
    fn cost(&mut self, info: &DomainInfo, i: usize, part: &Demand, cell: Option<u32>) -> f64 {
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

    fn best_node(&mut self, info: &DomainInfo, piece: &Piece, avoid: &NodeSet) -> Option<usize> {
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

    fn place(&mut self, info: &DomainInfo) -> Decision {
        let pol = policy(info);
        let result = if info.pieces.iter().any(|p| p.cell.is_some()) {
            self.place_cells(info)
                .or_else(|reason| self.place_cells_split(info, reason))
        } else {
            let piece = &info.pieces[0];
            match self.best_node(info, piece, &NodeSet::new()) {
                Some(i) => {
                    let node = self.ledger.ids[i];
                    Ok((vec![part_of(piece, node)], self.single_node_why(info, node)))
                }
                None => self.place_split(info, piece),
            }
        };
        let (parts, why) = match result {
            Ok(found) => found,
            Err(reason) => return Decision::NoFit(reason),
        };
        let nodes = nodes_of(&parts);
        let is_move = is_move(info, &nodes);
        let mib = migrate_mib(info, &cells_of(&parts), &nodes);
        if !self.budget.affords(is_move, mib) {
            let spent = if is_move && self.budget.moves_left == 0 {
                "move budget (planner.max_moves_per_cycle)".to_string()
            } else {
                format!(
                    "migration budget ({} MiB left; planner.max_migrate_mib_per_cycle)",
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
        self.budget.spend(is_move, mib);
        Decision::Placed { parts, why }
    }

    fn single_node_why(&self, info: &DomainInfo, node: u32) -> String {
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
    fn place_cells(&mut self, info: &DomainInfo) -> Result<(Vec<Part>, String), String> {
        let pol = policy(info);
        let mut parts: Vec<Part> = Vec::new();
        for piece in &info.pieces {
            let used = nodes_of(&parts);
            let demand = piece.demand();
            let mut best: Option<(f64, usize)> = None;
            for i in 0..self.ledger.ids.len() {
                let node = self.ledger.ids[i];
                if !self.is_candidate(info, i) || !self.ledger.fits(i, &demand, pol) {
                    continue;
                }
                let mut cost = self.cost(info, i, &demand, piece.cell);
                if used.contains(node) {
                    cost += 10.0;
                }
                let far: u32 = parts.iter().map(|p| self.distances.get(p.node, node)).sum();
                cost += far as f64 / 100.0;
                if best.is_none_or(|(c, _)| cost < c - 1e-12) {
                    best = Some((cost, i));
                }
            }
            let Some((_, i)) = best else {
                self.release_all(&parts, pol);
                return Err(format!(
                    "guest cell {} ({} vCPUs, {} MiB) fits no host node",
                    piece.cell.unwrap_or(0),
                    piece.vcpus.len(),
                    piece.mem_mib
                ));
            };
            let part = part_of(piece, self.ledger.ids[i]);
            self.ledger.reserve(i, &demand, pol);
            parts.push(part);
        }
        // Reserved again by the caller once the budget allows.
        self.release_all(&parts, pol);
        let map: Vec<String> = parts
            .iter()
            .map(|p| format!("{}->{}", p.cell.unwrap_or(0), p.node))
            .collect();
        Ok((
            parts,
            format!("guest cells on host nodes {}", map.join(", ")),
        ))
    }

    /// A guest whose cells no node can take one by one is split as a whole
    /// over the fewest, closest nodes, as a guest without cells would be,
    /// rather than left floating over every node. Its cells are then not
    /// mapped (the advice says so); as soon as nodes have room for its
    /// cells, it is placed cell by cell again. A split over every node it
    /// may use gains nothing over floating and is not made.
    fn place_cells_split(
        &mut self,
        info: &DomainInfo,
        reason: String,
    ) -> Result<(Vec<Part>, String), String> {
        let hugepage_kib = info.pieces[0].hugepage_kib;
        if info.pieces.iter().any(|p| p.hugepage_kib != hugepage_kib) {
            return Err(reason);
        }
        let whole = Piece {
            cell: None,
            vcpus: info.pieces.iter().flat_map(|p| p.vcpus.clone()).collect(),
            mem_mib: info.pieces.iter().map(|p| p.mem_mib).sum(),
            hugepage_kib,
            load: info.pieces.iter().map(|p| p.load).sum(),
        };
        let (parts, _) = self.place_split(info, &whole).map_err(|_| reason.clone())?;
        let nodes = nodes_of(&parts);
        // Over every node it may use, the split is what floating already is.
        if nodes.len() >= self.candidates(info).len() {
            return Err(reason);
        }
        Ok((
            parts,
            format!("{reason}: split as a whole over nodes {nodes}, cells not mapped"),
        ))
    }

    /// Splits a domain no single node can take over the fewest, closest
    /// nodes: grow a set from each seed by nearest node until it has room,
    /// keep the smallest set, then the one with the least total distance,
    /// then the one the strategy prefers (as for one node, staying where
    /// the memory is counts for the threshold).
    fn place_split(
        &mut self,
        info: &DomainInfo,
        piece: &Piece,
    ) -> Result<(Vec<Part>, String), String> {
        let candidates = self.candidates(info);
        let pol = policy(info);
        if self.cpus_too_few(piece, &candidates, pol) {
            return Err(self.no_split_reason(piece));
        }
        let free: u128 = candidates
            .iter()
            .map(|&i| self.split_free_mib(piece, i) as u128)
            .sum();
        // More memory than all candidates have free: no split can hold it.
        if piece.mem_mib as u128 > free {
            return Err(self.no_split_reason(piece));
        }
        let ids: Vec<u32> = candidates.iter().map(|&i| self.ledger.ids[i]).collect();
        let pressure: Vec<f64> = candidates
            .iter()
            .map(|&i| self.ledger.pressure(i))
            .collect();
        let mut shares = SplitShares::default();
        let mut best: Option<(usize, u32, f64, Vec<Part>)> = None;
        // Per candidate (by position): whether it is in the set, and its
        // largest distance from the set's members.
        let mut in_set = vec![false; candidates.len()];
        let mut far = vec![0u32; candidates.len()];
        for (k, &seed) in candidates.iter().enumerate() {
            let mut set = vec![seed];
            in_set.fill(false);
            in_set[k] = true;
            for (c, f) in far.iter_mut().enumerate() {
                *f = self.distances.get(ids[k], ids[c]);
            }
            loop {
                // A larger set than the best so far cannot win.
                if best.as_ref().is_some_and(|(n, _, _, _)| set.len() > *n) {
                    break;
                }
                if self.split_fits(piece, &set, pol, &mut shares) {
                    let spread: u32 = set
                        .iter()
                        .flat_map(|&a| set.iter().map(move |&b| (a, b)))
                        .map(|(a, b)| self.distances.get(self.ledger.ids[a], self.ledger.ids[b]))
                        .sum();
                    let closer = |n: usize, d: u32| (set.len(), spread).cmp(&(n, d));
                    if best
                        .as_ref()
                        .is_none_or(|(n, d, _, _)| closer(*n, *d).is_le())
                    {
                        let parts = self.split_parts(piece, &set, &shares);
                        let cost = self.split_cost(info, &parts, pol);
                        // The same nodes in another order are no other choice.
                        if best.as_ref().is_none_or(|(n, d, c, p)| {
                            closer(*n, *d).is_lt()
                                || (cost < c - 1e-12 && nodes_of(p) != nodes_of(&parts))
                        }) {
                            best = Some((set.len(), spread, cost, parts));
                        }
                    }
                    break;
                }
                // The nearest node; among equally near ones the least
                // pressed, then the lowest id.
                let next = (0..candidates.len())
                    .filter(|&c| !in_set[c])
                    .min_by(|&a, &b| {
                        far[a]
                            .cmp(&far[b])
                            .then(pressure[a].total_cmp(&pressure[b]))
                            .then(ids[a].cmp(&ids[b]))
                    });
                let Some(next) = next else {
                    break;
                };
                set.push(candidates[next]);
                in_set[next] = true;
                for (c, f) in far.iter_mut().enumerate() {
                    *f = (*f).max(self.distances.get(ids[next], ids[c]));
                }
            }
        }
        match best {
            Some((_, _, _, parts)) => {
                let nodes = nodes_of(&parts);
                let why = if self.fits_an_empty_node(info, piece) {
                    format!("fits one node but none has room now: split over nodes {nodes}")
                } else {
                    format!(
                        "larger than any node ({} vCPUs, {} MiB): split over the {} closest nodes {nodes}",
                        piece.vcpus.len(),
                        piece.mem_mib,
                        nodes.len()
                    )
                };
                Ok((parts, why))
            }
            None => Err(self.no_split_reason(piece)),
        }
    }

    /// Lower is better: the busiest of the split's nodes once it is there,
    /// by strategy, plus the threshold for the share of memory elsewhere.
    fn split_cost(&mut self, info: &DomainInfo, parts: &[Part], pol: CpuPolicy) -> f64 {
        let at: Vec<usize> = parts
            .iter()
            .filter_map(|p| self.ledger.index(p.node))
            .collect();
        for (&i, p) in at.iter().zip(parts) {
            self.ledger.reserve(i, &p.demand(), pol);
        }
        let peak = at
            .iter()
            .map(|&i| self.ledger.pressure(i))
            .fold(0.0, f64::max);
        for (&i, p) in at.iter().zip(parts) {
            self.ledger.release(i, &p.demand(), pol);
        }
        let by_strategy = match self.strategy {
            Strategy::Spread => peak,
            Strategy::Pack => 1.0 - peak,
        };
        by_strategy + self.min_gain * (1.0 - info.memory_share_on(&nodes_of(parts)))
    }

    fn no_split_reason(&self, piece: &Piece) -> String {
        format!(
            "does not fit: needs {} vCPUs and {} MiB{}, more than the free capacity of all its candidate nodes",
            piece.vcpus.len(),
            piece.mem_mib,
            piece
                .hugepage_kib
                .map(|k| format!(" of {k} KiB pages"))
                .unwrap_or_default()
        )
    }

    /// Whether the candidates together lack the CPUs for the piece, so that
    /// no split over any of them can fit (see `split_fits`: every node's
    /// vCPU share and load must fit it, and the shares add up to the piece).
    fn cpus_too_few(&self, piece: &Piece, candidates: &[usize], pol: CpuPolicy) -> bool {
        let l = &self.ledger;
        let vcpus = piece.vcpus.len() as i64;
        match pol {
            CpuPolicy::Dedicated => {
                let room: i64 = candidates.iter().map(|&i| l.dedicated_room(i).max(0)).sum();
                vcpus > room
            }
            CpuPolicy::Shared => {
                let pool: i64 = candidates.iter().map(|&i| l.shared_cpus(i) as i64).sum();
                let room: f64 = candidates
                    .iter()
                    .map(|&i| (l.shared_capacity(i) + 1e-9 - l.shared_load[i]).max(0.0))
                    .sum();
                // The margin covers rounding in the per-node loads.
                vcpus > pool || piece.load > room + 1e-6
            }
        }
    }

    /// Free memory (MiB) of the piece's kind on node index `i`, as a split
    /// weighs it.
    fn split_free_mib(&self, piece: &Piece, i: usize) -> u64 {
        let free = match piece.hugepage_kib {
            Some(size) => {
                self.ledger.pages_free[i].get(&size).copied().unwrap_or(0) * size as i64 / 1024
            }
            None => self.ledger.mem_free[i],
        };
        free.max(0) as u64
    }

    fn fits_an_empty_node(&self, info: &DomainInfo, piece: &Piece) -> bool {
        self.candidates(info).into_iter().any(|i| {
            self.ledger.usable[i].len() >= piece.vcpus.len()
                && self.ledger.mem_capacity[i] >= piece.mem_mib
        })
    }

    /// Whether the piece divided over the node set fits: vCPUs in proportion
    /// to CPUs, memory in proportion to free memory. Leaves the shares in
    /// `shares` for [`Self::split_parts`].
    fn split_fits(
        &self,
        piece: &Piece,
        set: &[usize],
        pol: CpuPolicy,
        shares: &mut SplitShares,
    ) -> bool {
        shares.weights.clear();
        shares
            .weights
            .extend(set.iter().map(|&i| self.ledger.usable[i].len() as u64));
        distribute_shares(piece.vcpus.len() as u64, &shares.weights, &mut shares.vcpus);
        shares.weights.clear();
        shares
            .weights
            .extend(set.iter().map(|&i| self.split_free_mib(piece, i)));
        distribute_shares(piece.mem_mib, &shares.weights, &mut shares.mem);
        // Nodes with no memory free take none: the set must hold it all.
        if shares.mem.iter().sum::<u64>() < piece.mem_mib {
            return false;
        }
        set.iter().enumerate().all(|(k, &i)| {
            let n = shares.vcpus[k] as usize;
            let demand = Demand {
                vcpus: n,
                mem_mib: shares.mem[k],
                hugepage_kib: piece.hugepage_kib,
                load: piece.load * n as f64 / piece.vcpus.len().max(1) as f64,
            };
            self.ledger.fits(i, &demand, pol)
        })
    }

    /// The parts of a split that [`Self::split_fits`] accepted, by node:
    /// vCPUs in contiguous blocks in the order of the set.
    fn split_parts(&self, piece: &Piece, set: &[usize], shares: &SplitShares) -> Vec<Part> {
        let mut parts = Vec::with_capacity(set.len());
        let mut next_vcpu = 0usize;
        for (k, &i) in set.iter().enumerate() {
            let n = shares.vcpus[k] as usize;
            parts.push(Part {
                node: self.ledger.ids[i],
                cell: None,
                load: piece.load * n as f64 / piece.vcpus.len().max(1) as f64,
                vcpus: piece.vcpus[next_vcpu..next_vcpu + n].to_vec(),
                mem_mib: shares.mem[k],
                hugepage_kib: piece.hugepage_kib,
            });
            next_vcpu += n;
        }
        parts.sort_by_key(|p| p.node);
        parts
    }

    /// What moving part `k` of a domain (its only part, or one guest cell)
    /// from node index `hot` to `cold` would gain: how much it narrows the
    /// gap between the two nodes' pressures. `None` when it does not fit,
    /// puts a cell on a node with another of the guest's cells while a
    /// node without one could take it (see [`Self::has_cell_free_node`]),
    /// gains no more than the threshold, or the budget cannot pay for it.
    /// The threshold grows with the memory the move migrates: `min_gain`
    /// x (1 + MiB / the per-cycle budget), so a large guest moves only for
    /// a gain worth its migration.
    ///
    /// The gain is measured on the gap, as the threshold that starts
    /// rebalancing is: measured on the peak alone, a move could never
    /// gain more than half the gap, and gaps up to twice the threshold
    /// would stay.
    fn evaluate_move(
        &mut self,
        info: &DomainInfo,
        domain: usize,
        parts: &[Part],
        k: usize,
        hot: usize,
        cold: usize,
    ) -> Option<Candidate> {
        let from = &parts[k];
        let to_node = self.ledger.ids[cold];
        if info
            .fixed_nodes()
            .is_some_and(|fixed| !fixed.contains(to_node))
            || (parts.iter().any(|p| p.node == to_node) && self.has_cell_free_node(info, parts))
        {
            return None;
        }
        let pol = policy(info);
        let demand = from.demand();
        self.ledger.release(hot, &demand, pol);
        let after = self.ledger.fits(cold, &demand, pol).then(|| {
            self.ledger.reserve(cold, &demand, pol);
            let gap = (self.ledger.pressure(hot) - self.ledger.pressure(cold)).abs();
            self.ledger.release(cold, &demand, pol);
            gap
        });
        self.ledger.reserve(hot, &demand, pol);
        let gain = self.ledger.pressure(hot) - self.ledger.pressure(cold) - after?;
        let target: NodeSet = parts
            .iter()
            .enumerate()
            .map(|(j, p)| if j == k { to_node } else { p.node })
            .collect();
        // Measured cell by cell, the move is what the moved cell has off
        // its new node. Otherwise a cell's memory is on its node, and what
        // the domain has there beyond the cell's size belongs to no other
        // cell of it.
        let mut cells = cells_of(parts);
        if let Some(cell) = from.cell {
            cells.insert(cell, to_node);
        }
        let mib = if parts.len() == 1 {
            info.migrate_mib_to(&target)
        } else if memory_moves(info, &cells, &target).is_some() {
            migrate_mib(info, &cells, &target)
        } else {
            info.migrate_mib_to(&target).min(from.mem_mib)
        };
        let is_move = is_move(info, &target);
        let threshold = self.min_gain * (1.0 + mib as f64 / self.mib_per_cycle.max(1) as f64);
        (gain > threshold && self.budget.affords(is_move, mib)).then(|| Candidate {
            domain,
            part: k,
            from: from.clone(),
            to: Part {
                node: to_node,
                ..from.clone()
            },
            gain,
            mib,
            is_move,
        })
    }

    /// Whether a node the guest may use holds none of its cells. Cells go
    /// to distinct nodes where they can (the guest was told they are
    /// apart). Where every node holds one, as two cells on a two-node host
    /// do, a cell may join another rather than never move: the guest then
    /// runs on one node, its memory all local.
    fn has_cell_free_node(&self, info: &DomainInfo, parts: &[Part]) -> bool {
        (0..self.ledger.ids.len()).any(|i| {
            self.is_candidate(info, i) && parts.iter().all(|p| p.node != self.ledger.ids[i])
        })
    }

    /// Moves single-node domains and single guest cells from the most to
    /// the least pressed node while that narrows the gap by more than the
    /// threshold; when nothing on the most pressed node can move, from the
    /// next most pressed. Guests split over nodes stay where they are.
    fn improve(
        &mut self,
        infos: &[DomainInfo],
        order: &[usize],
        decisions: &mut [Option<Decision>],
    ) {
        let mut moved = vec![false; infos.len()];
        let mut all: Vec<Candidate> = Vec::new();
        loop {
            let cpu_nodes: Vec<usize> = (0..self.ledger.ids.len())
                .filter(|&i| self.ledger.has_cpus(i))
                .collect();
            let Some(cold) = cpu_nodes.iter().copied().reduce(|a, b| {
                if self.ledger.pressure(b) < self.ledger.pressure(a) - 1e-12 {
                    b
                } else {
                    a
                }
            }) else {
                return;
            };
            // The busiest node first; when nothing on it can move, the next
            // busiest, while its gap to the idlest passes the threshold.
            let mut hots: Vec<usize> = cpu_nodes
                .iter()
                .copied()
                .filter(|&h| self.ledger.pressure(h) - self.ledger.pressure(cold) > self.min_gain)
                .collect();
            hots.sort_by(|&a, &b| {
                self.ledger
                    .pressure(b)
                    .total_cmp(&self.ledger.pressure(a))
                    .then(a.cmp(&b))
            });
            let mut best: Option<Candidate> = None;
            let mut hot = cold;
            for h in hots {
                hot = h;
                for &d in order {
                    let Some(parts) = decisions[d].as_ref().and_then(|x| x.parts()) else {
                        continue;
                    };
                    let split = parts.len() > 1 && parts.iter().any(|p| p.cell.is_none());
                    if moved[d] || split {
                        continue;
                    }
                    for k in 0..parts.len() {
                        if parts[k].node != self.ledger.ids[hot] {
                            continue;
                        }
                        let Some(c) = self.evaluate_move(&infos[d], d, parts, k, hot, cold) else {
                            continue;
                        };
                        all.push(c);
                    }
                }
                for c in all.drain(..) {
                    if best.as_ref().is_none_or(|b| c.is_better_than(b)) {
                        best = Some(c);
                    }
                }
                if best.is_some() {
                    break;
                }
            }
            let Some(Candidate {
                domain: d,
                part: k,
                from,
                to,
                gain,
                mib,
                is_move,
            }) = best
            else {
                return;
            };
            let pol = policy(&infos[d]);
            let (hot_before, cold_before) = (self.ledger.pressure(hot), self.ledger.pressure(cold));
            self.ledger.release(hot, &from.demand(), pol);
            self.ledger.reserve(cold, &to.demand(), pol);
            self.budget.spend(is_move, mib);
            moved[d] = true;
            let what = match to.cell {
                Some(cell) => format!("guest cell {cell} "),
                None => String::new(),
            };
            let mut parts = decisions[d]
                .as_ref()
                .and_then(|x| x.parts())
                .expect("candidates have parts")
                .to_vec();
            parts[k] = to.clone();
            decisions[d] = Some(Decision::Placed {
                why: format!(
                    "rebalance: {what}node {} was {:.0}% loaded and node {} {:.0}%; the move narrows the gap by {:.0} points",
                    from.node,
                    hot_before * 100.0,
                    to.node,
                    cold_before * 100.0,
                    gain * 100.0
                ),
                parts,
            });
        }
    }
}
