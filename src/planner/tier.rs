//! Memory-only nodes (CXL expanders, HBM) as a memory tier. Such a node
//! has no CPU to run a vCPU on, so it only ever holds part of a guest's
//! memory, the nearest such node by SLIT distance first:
//!
//! - `overflow` (default): what does not fit the guest's CPU node goes
//!   there, so no guest is left unplaced while a memory-only node has room;
//! - `prefer-for-idle`: an idle guest's memory goes there first, leaving
//!   the CPU nodes' memory to busy guests;
//! - `never`: memory-only nodes stay unused.
//!
//! The part's memory nodeset then holds both nodes; the kernel fills the
//! CPU node first for new allocations. Locality counts the far part at its
//! distance, so the score says what the guest pays for it.

use crate::config::MemoryTier;

use super::choose::{Chooser, part_of, policy};
use super::domain_info::{DomainInfo, Piece};
use super::ledger::{Demand, Part};

impl Chooser<'_> {
    /// Memory-only node indexes, nearest to CPU node index `i` first, then
    /// by id.
    fn tiers_near(&self, i: usize) -> Vec<usize> {
        let from = self.ledger.ids[i];
        let mut tiers: Vec<usize> = (0..self.ledger.ids.len())
            .filter(|&t| self.topo.nodes[t].cpus.is_empty() && self.ledger.mem_capacity[t] > 0)
            .collect();
        tiers.sort_by_key(|&t| (self.distances.get(from, self.ledger.ids[t]), t));
        tiers
    }

    /// The piece on a CPU node with as much of its memory as that node has
    /// free, and the rest on the nearest memory-only node with room; the
    /// CPU node chosen as for any placement, weighing the far memory's
    /// distance. `None` when memory-only nodes are off, the piece is
    /// backed by hugepages (pools do not spill), or nothing has room.
    pub(super) fn overflow_part(&mut self, info: &DomainInfo, piece: &Piece) -> Option<Part> {
        if self.tier == MemoryTier::Never || piece.hugepage_kib.is_some() {
            return None;
        }
        self.best_tier_part(info, piece, |free, need| need.saturating_sub(free))
    }

    /// Under `prefer-for-idle`, an idle guest's memory all on the nearest
    /// memory-only node with room, its vCPUs on the CPU node chosen as for
    /// any placement.
    pub(super) fn idle_part(&mut self, info: &DomainInfo, piece: &Piece) -> Option<Part> {
        if self.tier != MemoryTier::PreferForIdle || !info.idle || piece.hugepage_kib.is_some() {
            return None;
        }
        self.best_tier_part(info, piece, |_, need| need)
    }

    /// Tries every CPU node the piece may use, with `far(free MiB on the
    /// CPU node, MiB needed)` MiB on the nearest memory-only node that
    /// takes them; keeps the cheapest.
    fn best_tier_part(
        &mut self,
        info: &DomainInfo,
        piece: &Piece,
        far: impl Fn(u64, u64) -> u64,
    ) -> Option<Part> {
        if self.topo.nodes.iter().all(|n| !n.cpus.is_empty()) {
            return None;
        }
        let pol = policy(info);
        let mut best: Option<(f64, Part)> = None;
        for i in 0..self.ledger.ids.len() {
            let node = self.ledger.ids[i];
            if !self.is_candidate(info, i) || !piece.allows(node) {
                continue;
            }
            let free = self.ledger.mem_free[i].max(0) as u64;
            let spill = far(free, piece.mem_mib);
            if spill == 0 {
                continue;
            }
            let near = Demand {
                mem_mib: piece.mem_mib - spill,
                ..piece.demand()
            };
            if !self.ledger.fits(i, &near, pol) {
                continue;
            }
            let Some(t) = self
                .tiers_near(i)
                .into_iter()
                .find(|&t| self.ledger.mem_free[t] >= spill as i64)
            else {
                continue;
            };
            let tier = self.ledger.ids[t];
            // The far share costs in proportion to how much slower it is.
            let distance = self.distances.get(node, tier) as f64 / 10.0;
            let share = spill as f64 / piece.mem_mib.max(1) as f64;
            let cost = self.cost(info, i, &near, piece.cell) + share * (distance - 1.0);
            if best.as_ref().is_none_or(|(c, _)| cost < c - 1e-12) {
                let mut part = part_of(piece, node);
                part.mem_mib = near.mem_mib;
                part.spill = Some((tier, spill));
                best = Some((cost, part));
            }
        }
        best.map(|(_, part)| part)
    }
}
