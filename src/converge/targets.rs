//! The cycle's side of memory convergence: which guests' memory the mover
//! is to move after this cycle's transactions, and what it charges.

use std::collections::{BTreeMap, BTreeSet};

use super::{Step, Work};
use crate::apply::{DomainOutcome, Outcome};
use crate::live::LiveState;
use crate::planner::{Action, Plan, Status};

/// What the transactions carry out of `plan`: everything but page moves,
/// which the mover does afterwards.
pub fn without_page_moves(plan: &Plan) -> Plan {
    let mut out = plan.clone();
    for d in &mut out.domains {
        d.actions.retain(|a| !a.is_page_move());
    }
    out
}

/// Locality of each guest when numapin first confined it, by UUID: a guest
/// below it is served first (see [`Work::harmed`]).
#[derive(Debug, Default)]
pub struct LocalityBefore(BTreeMap<String, f64>);

impl LocalityBefore {
    /// Notes the guests confined this cycle and forgets those gone.
    pub fn update(&mut self, plan: &Plan) {
        let running: BTreeSet<&str> = plan.domains.iter().map(|d| d.uuid.as_str()).collect();
        self.0.retain(|uuid, _| running.contains(uuid.as_str()));
        for d in &plan.domains {
            if d.managed && matches!(d.status, Status::Placed | Status::Moved) {
                self.0.entry(d.uuid.clone()).or_insert(d.current.locality);
            }
        }
    }

    fn harmed(&self, uuid: &str, now: f64) -> bool {
        self.0.get(uuid).is_some_and(|before| now + 0.01 < *before)
    }
}

/// The guests whose memory is to move: managed and placed, their
/// transaction applied (or nothing else to change), running with no job,
/// and with page moves in the plan. Placed guests with none come with no
/// steps: their memory, as far as the plan sees, is in place.
pub fn works(
    plan: &Plan,
    state: &LiveState,
    outcomes: &[DomainOutcome],
    before: &LocalityBefore,
) -> Vec<Work> {
    let failed: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Applied { .. }))
        .map(|o| o.uuid.as_str())
        .collect();
    plan.domains
        .iter()
        .filter(|d| d.managed && matches!(d.status, Status::Placed | Status::Moved | Status::Kept))
        .filter(|d| !failed.contains(d.uuid.as_str()))
        .filter_map(|d| {
            let steps = Step::from_actions(&d.actions);
            let live = state.domains.iter().find(|l| l.r.uuid == d.uuid)?;
            if live.input.hold.is_some() {
                return None;
            }
            Some(Work {
                domain: live.r.clone(),
                pid: live.pid?,
                disks: live.input.live.disks.clone(),
                steps,
                mib: d.migrate_mib,
                harmed: before.harmed(&d.uuid, d.current.locality),
            })
        })
        .collect()
}

/// MiB that restrictive nodeset changes applied this cycle moved (libvirt
/// migrates them in one call): the mover's rate is charged for them.
pub fn moved_by_nodeset_changes(plan: &Plan, outcomes: &[DomainOutcome]) -> u64 {
    outcomes
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Applied { .. }))
        .filter_map(|o| plan.domains.iter().find(|d| d.uuid == o.uuid))
        .filter(|d| {
            d.actions
                .iter()
                .any(|a| matches!(a, Action::SetMemoryNodeset { .. }))
        })
        .map(|d| d.migrate_mib)
        .sum()
}
