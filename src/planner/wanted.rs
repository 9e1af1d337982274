//! Rebalancing moves wait until they are wanted for a while.
//!
//! A node's pressure comes from loads measured over one window, the time
//! since the last reading. A guest's boot, a burst of work, a backup at
//! midnight: a load that lasts one window can make a placed guest look
//! worth moving, and the move migrates its memory. When the load is gone
//! the next cycle sees the imbalance the move made and moves another guest
//! back. So the daemon moves a placed guest to even out nodes only when
//! every cycle over at least `planner.rebalance_wait_secs` has wanted that
//! same move: the imbalance it corrects has lasted. A first placement, and
//! a guest that no longer fits where it is, do not wait.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DomainPlan, Plan};

/// A rebalancing move of one part of a domain: the domain (when `cell` is
/// `None`) or its guest cell goes to host node `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WantedMove {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<u32>,
    pub to: u32,
}

impl std::fmt::Display for WantedMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cell {
            Some(cell) => write!(f, "guest cell {cell} to node {}", self.to),
            None => write!(f, "node {}", self.to),
        }
    }
}

/// The moves earlier cycles wanted and did not make, by domain UUID, with
/// when each was first wanted (seconds on the caller's clock).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WantedMoves {
    since: BTreeMap<String, (WantedMove, f64)>,
}

/// What a plan needs to tell a move that has been wanted long enough from
/// one that has not.
#[derive(Debug, Clone, Copy)]
pub struct MoveConfirmation<'a> {
    pub wanted: &'a WantedMoves,
    /// This cycle's time, on the clock of `wanted`.
    pub now: f64,
    /// How long a move must have been wanted, in seconds.
    pub after_secs: f64,
}

impl MoveConfirmation<'_> {
    /// Whether the cycles since at least `after_secs` ago all wanted this
    /// move of the domain.
    pub fn confirms(&self, uuid: &str, wanted: WantedMove) -> bool {
        self.wanted
            .since
            .get(uuid)
            .is_some_and(|&(m, since)| m == wanted && self.now - since >= self.after_secs)
    }
}

impl WantedMoves {
    /// Takes in the moves a cycle's plan wanted and did not make: one
    /// wanted before keeps its time, a new one (or one to another node)
    /// starts now, and the rest are forgotten: made, or no longer wanted.
    /// Returns the domains whose move is newly wanted, with the move.
    pub fn update<'p>(&mut self, plan: &'p Plan, now: f64) -> Vec<(&'p DomainPlan, WantedMove)> {
        let mut newly = Vec::new();
        let mut since = BTreeMap::new();
        for d in &plan.domains {
            let Some(m) = d.wanted_move else { continue };
            let at = match self.since.get(&d.uuid) {
                Some(&(was, at)) if was == m => at,
                _ => {
                    newly.push((d, m));
                    now
                }
            };
            since.insert(d.uuid.clone(), (m, at));
        }
        self.since = since;
        newly
    }

    /// When the domain's current wanted move was first wanted, if it has one.
    pub fn since(&self, uuid: &str) -> Option<f64> {
        self.since.get(uuid).map(|&(_, at)| at)
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}
