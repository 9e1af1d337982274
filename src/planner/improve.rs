//! The third phase of choosing: while nodes are unbalanced by more than
//! the threshold, move the domain (or guest cell) whose move helps most,
//! within the cycle's budget.

use crate::idset::NodeSet;

use super::cell_memory::{cells_of, memory_moves, migrate_mib};
use super::choose::{Chooser, Decision, cells_why, is_move, policy};
use super::domain_info::DomainInfo;
use super::ledger::Part;
use super::wanted::WantedMove;

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
    /// Whether the cycle's budget can pay for it.
    affordable: bool,
}

impl Candidate {
    /// Gain per GiB migrated (a move of less than a GiB counts as one):
    /// the move that evens the nodes out most for the memory it moves;
    /// then the larger gain, then the smaller migration.
    pub(super) fn is_better_than(&self, other: &Candidate) -> bool {
        let per_gib = |c: &Candidate| c.gain / c.mib.max(1024) as f64;
        let (a, b) = (per_gib(self), per_gib(other));
        a > b * (1.0 + 1e-9)
            || (a > b * (1.0 - 1e-9)
                && (self.gain > other.gain + 1e-12
                    || (self.gain > other.gain - 1e-12 && self.mib < other.mib)))
    }
}

impl Chooser<'_> {
    /// What moving part `k` of a domain (its only part, or one guest cell)
    /// from node index `hot` to `cold` would gain: how much it narrows the
    /// gap between the two nodes' pressures. `None` when it does not fit,
    /// puts a cell on a node with another of the guest's cells while a
    /// node without one could take it (see [`Self::has_cell_free_node`]),
    /// or gains no more than the threshold. Whether the budget can pay for
    /// it is said in the candidate: a move wanted but not affordable this
    /// cycle is still wanted (see [`super::wanted`]).
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
        let bound_elsewhere = info
            .pieces
            .iter()
            .any(|p| p.cell == from.cell && !p.allows(to_node));
        if bound_elsewhere
            || info
                .fixed_nodes()
                .is_some_and(|fixed| !fixed.contains(to_node))
            || (parts.iter().any(|p| p.node == to_node) && self.has_cell_free_node(info, parts))
            || (self.crowds_cells(info, parts, to_node) && self.ledger.pressure(hot) <= 1.0)
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
        (gain > threshold).then(|| Candidate {
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
            affordable: self.budget.affords(is_move, mib),
        })
    }

    /// Whether one more of the guest's cells on `node` would put more than
    /// its even share there: ceil(cells / nodes it may use). Only a node
    /// past its capacity (pressure over 1: demand and the work it loses to
    /// shared cores beyond its CPUs, or memory full) lets a cell go there
    /// all the same: capacity, not mere imbalance, forces it.
    fn crowds_cells(&self, info: &DomainInfo, parts: &[Part], node: u32) -> bool {
        let cells = parts.iter().filter(|p| p.cell.is_some()).count();
        if cells < 2 {
            return false;
        }
        let nodes = self.candidates(info).len().max(1);
        let here = parts.iter().filter(|p| p.node == node).count();
        here + 1 > cells.div_ceil(nodes)
    }

    /// Whether a node the guest may use holds none of its cells. Cells go
    /// to distinct nodes where they can (the guest was told they are
    /// apart). Where every node holds one, as two cells on a two-node host
    /// do, a cell may join another rather than never move: the guest then
    /// runs on one node, its memory all local.
    pub(super) fn has_cell_free_node(&self, info: &DomainInfo, parts: &[Part]) -> bool {
        (0..self.ledger.ids.len()).any(|i| {
            self.is_candidate(info, i) && parts.iter().all(|p| p.node != self.ledger.ids[i])
        })
    }

    /// Whether a candidate that passes the threshold is made now: the
    /// budget pays for it and, for a move of a placed guest when the plan
    /// confirms moves, it has been wanted long enough. A move that is not
    /// is noted as wanted (a later cycle may make it).
    fn may_make(&mut self, info: &DomainInfo, c: &Candidate) -> bool {
        let Some(confirm) = self.confirm.filter(|_| c.is_move) else {
            return c.affordable;
        };
        let wanted = WantedMove {
            cell: c.to.cell,
            to: c.to.node,
        };
        self.wanted.insert(c.domain, wanted);
        c.affordable && confirm.confirms(&info.domain.uuid, wanted)
    }

    /// Moves single-node domains and single guest cells from the most to
    /// the least pressed node while that narrows the gap by more than the
    /// threshold; when nothing on the most pressed node can move, from the
    /// next most pressed. Guests split over nodes stay where they are.
    pub(super) fn improve(
        &mut self,
        infos: &[DomainInfo],
        order: &[usize],
        decisions: &mut [Option<Decision>],
    ) {
        let mut moved = vec![false; infos.len()];
        let mut all: Vec<Candidate> = Vec::new();
        loop {
            // What this pass cannot make yet: the last pass, which makes
            // nothing, leaves the moves still wanted after those made.
            self.wanted.clear();
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
                    // Memory on a memory-only node stays with its placement.
                    let spilled = parts.iter().any(|p| p.spill.is_some());
                    if moved[d] || split || spilled {
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
                    if self.may_make(&infos[c.domain], &c)
                        && best.as_ref().is_none_or(|b| c.is_better_than(b))
                    {
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
                ..
            }) = best
            else {
                return;
            };
            self.wanted.remove(&d);
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
            // A guest placed for the first time this cycle is placed, not
            // moved: its reason says where it goes, evened out.
            let why = if !is_move && matches!(decisions[d], Some(Decision::Placed { .. })) {
                let info = &infos[d];
                let placed = if parts.iter().any(|p| p.cell.is_some()) {
                    cells_why(info, &parts)
                } else {
                    format!("fits one node: node {}", to.node)
                };
                format!("{placed}, evening out node loads")
            } else {
                format!(
                    "rebalance: {what}node {} was {:.0}% loaded and node {} {:.0}%; the move narrows the gap by {:.0} points",
                    from.node,
                    hot_before * 100.0,
                    to.node,
                    cold_before * 100.0,
                    gain * 100.0
                )
            };
            decisions[d] = Some(Decision::Placed { why, parts });
        }
    }
}
