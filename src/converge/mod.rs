//! Memory convergence: moving a guest's pages to the node(s) it was
//! confined to, in the background and at a bounded, host-wide rate.
//!
//! Pinning a vCPU is cheap and instant; moving memory is what costs. So a
//! cycle confines every guest at once (a transaction: journaled, verified,
//! rolled back on failure) and hands the memory that is still elsewhere to
//! the mover, which moves it chunk by chunk at `apply.migrate_rate_mib_s`.
//! Moving pages is convergence toward a placement already applied, not a
//! change of its own: it is never rolled back, and after a restart the
//! first cycle plans the same placement (numapin's pins are read back) and
//! the moves go on from where the pages are, so nothing moves twice. A
//! move stops when the plan changes (it re-targets), when the guest starts
//! a job or is paused (checked before each chunk, so a chunk under way
//! when a job starts, a quarter second of moving at the rate, is the most
//! that can overlap it), and when it stops.

pub mod mover;
pub mod queue;
pub mod rate;
pub mod targets;

use std::fmt;

use serde::Serialize;

use crate::idset::NodeSet;
use crate::libvirt::DomainRef;
use crate::planner::Action;

pub use mover::{LivePages, Mover, PageHost};

/// One part of a guest's memory and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One guest cell's RAM block onto its node(s).
    Cell { cell: u32, to: NodeSet },
    /// All of the process's memory off `from` onto `to`: its RAM blocks
    /// page by page, then the rest in one call.
    Whole { from: NodeSet, to: NodeSet },
}

impl Step {
    pub fn to(&self) -> &NodeSet {
        match self {
            Step::Cell { to, .. } | Step::Whole { to, .. } => to,
        }
    }

    /// The steps of a plan's page moves, in plan order (cells first).
    pub fn from_actions(actions: &[Action]) -> Vec<Step> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::MoveCellMemory { cell, to, .. } => Some(Step::Cell {
                    cell: *cell,
                    to: to.clone(),
                }),
                Action::MigratePages { from, to, .. } => Some(Step::Whole {
                    from: from.clone(),
                    to: to.clone(),
                }),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Cell { cell, to } => write!(f, "cell {cell} -> {to}"),
            Step::Whole { from, to } => write!(f, "{from} -> {to}"),
        }
    }
}

/// A guest whose memory is to move.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub domain: DomainRef,
    /// Its QEMU process.
    pub pid: u32,
    /// Its disks, for the block-job check.
    pub disks: Vec<String>,
    pub steps: Vec<Step>,
    /// MiB the plan says are off target.
    pub mib: u64,
    /// Its locality is below what it was before numapin first confined it
    /// (it could not be confined where its memory is): it is served first.
    pub harmed: bool,
}

/// How far one guest's memory has come, for `status` and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainProgress {
    pub domain: DomainRef,
    /// MiB still to move, as planned less what moved since.
    pub left_mib: u64,
    pub moved_mib: u64,
    /// Seconds until its memory should have arrived at the configured rate,
    /// counting the guests served before it.
    pub eta_secs: f64,
    /// Seconds since its current target was set.
    pub since_secs: f64,
    /// Why it does not move now (a job, a pause, a failure), if so.
    pub held: Option<String>,
}

/// The mover's state as the daemon publishes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    pub mib_per_sec: f64,
    /// MiB moved since the daemon started.
    pub moved_total_mib: u64,
    pub domains: Vec<DomainProgress>,
}

impl Progress {
    pub fn of(&self, uuid: &str) -> Option<&DomainProgress> {
        self.domains.iter().find(|d| d.domain.uuid == uuid)
    }
}

#[cfg(test)]
mod tests;
