//! Applying a plan: one transaction per domain, journaled, verified, and
//! rolled back on failure. See [`transaction`] for the guarantees.

pub mod host;
pub mod journal;
pub mod placements;
pub mod recovery;
pub mod rollback;
pub mod transaction;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::ApplyConfig;
use crate::libvirt::DomainRef;
use crate::planner::{Action, Plan};

pub use host::DomainHost;
pub use journal::{Journal, JournalError};
pub use placements::Placements;
pub use transaction::Outcome;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub persist: bool,
    pub memory_on_target_share: f64,
    pub memory_verify_timeout: Duration,
    /// Set to stop after the transaction in flight (a shutdown): the
    /// remaining domains are left for the next start.
    pub stop: Option<Arc<AtomicBool>>,
}

impl From<&ApplyConfig> for ApplyOptions {
    fn from(c: &ApplyConfig) -> Self {
        Self {
            persist: c.persist,
            memory_on_target_share: c.memory_on_target_share,
            memory_verify_timeout: Duration::from_secs(c.memory_verify_timeout_secs),
            stop: None,
        }
    }
}

/// Called before each step; lets a caller watch a transaction progress,
/// and tests interrupt it at a chosen point.
pub trait StepHook {
    fn before_step(&mut self, _domain: &DomainRef, _index: usize, _step: &Action) {}
}

/// No hook.
pub struct NoHook;
impl StepHook for NoHook {}

/// Waits a fixed time before every step but the first, so a change can be
/// watched (or interrupted) step by step.
pub struct PauseBetweenSteps(pub Duration);
impl StepHook for PauseBetweenSteps {
    fn before_step(&mut self, _domain: &DomainRef, index: usize, _step: &Action) {
        if index > 0 {
            std::thread::sleep(self.0);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainOutcome {
    pub name: String,
    pub uuid: String,
    pub actions: Vec<Action>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Applies every managed domain's actions, one transaction each, in the
/// plan's order. `running` is the host's domains as observed for the plan
/// (their ids tell a domain restarted since). A journal error stops the
/// run: without a journal a crash could leave a domain half-changed.
pub fn apply_plan(
    host: &dyn DomainHost,
    journal: &Journal,
    placements: &Placements,
    opts: &ApplyOptions,
    plan: &Plan,
    running: &[DomainRef],
    hook: &mut dyn StepHook,
) -> Result<Vec<DomainOutcome>, JournalError> {
    let mut out = Vec::new();
    for dp in plan
        .domains
        .iter()
        .filter(|d| d.managed && !d.actions.is_empty())
    {
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            tracing::info!(domain = %dp.name, "stopping: left for the next start");
            break;
        }
        let outcome = match running.iter().find(|r| r.uuid == dp.uuid) {
            None => Outcome::Vanished {
                during: "planning".into(),
            },
            Some(expected) => {
                tracing::info!(
                    domain = %dp.name,
                    from = %dp.current.nodes,
                    to = %dp.nodes,
                    mib = dp.migrate_mib,
                    load = dp.load,
                    reason = %dp.reason,
                    "changing placement"
                );
                transaction::run(
                    host,
                    journal,
                    opts,
                    expected,
                    Some(&dp.planned_from),
                    &dp.actions,
                    hook,
                )?
            }
        };
        // libvirt cannot unpin a running domain, so even a rollback leaves
        // explicit (prior-valued) pins behind; they are numapin's too.
        let numapins_left = matches!(
            outcome,
            Outcome::Applied { .. } | Outcome::RolledBack { restored: true, .. }
        );
        if let (true, Some(d)) = (numapins_left, running.iter().find(|r| r.uuid == dp.uuid)) {
            // A change made by another hand right after the transaction is
            // theirs, not numapin's: only the live XML the actions left is
            // recorded as numapin's own.
            let left = matches!(outcome, Outcome::Applied { .. })
                .then(|| dp.planned_from.after(&dp.actions));
            remember_unless_changed(host, placements, d, left.as_ref());
        }
        log_outcome(&dp.name, &outcome);
        out.push(DomainOutcome {
            name: dp.name.clone(),
            uuid: dp.uuid.clone(),
            actions: dp.actions.clone(),
            outcome,
        });
    }
    Ok(out)
}

/// Records the pins numapin left, so the next round knows them for its own.
pub fn remember(host: &dyn DomainHost, placements: &Placements, d: &DomainRef) {
    remember_unless_changed(host, placements, d, None)
}

/// [`remember`], unless the live XML differs from `left`, what numapin's
/// change left: then someone changed the domain after it, and nothing is
/// recorded, so the pins count as theirs.
fn remember_unless_changed(
    host: &dyn DomainHost,
    placements: &Placements,
    d: &DomainRef,
    left: Option<&crate::planner::Recorded>,
) {
    let result = host
        .recorded(d)
        .map_err(|e| e.to_string())
        .and_then(|recorded| {
            if let Some(what) = left.and_then(|l| l.changes_to(&recorded)) {
                return Err(format!(
                    "changed by someone else after numapin's change ({what})"
                ));
            }
            placements
                .record(&placements::Placement {
                    domain: d.clone(),
                    recorded,
                })
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::warn!(domain = %d.name, error = %e, "cannot record the placement; its pins will count as an operator's");
    }
}

fn log_outcome(domain: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Applied { steps, .. } => {
            tracing::info!(domain, steps, result = "applied", "domain placed")
        }
        Outcome::Vanished { during } => {
            tracing::info!(domain, during = %during, result = "vanished", "domain stopped; skipped")
        }
        Outcome::Skipped { reason } => {
            tracing::warn!(domain, reason = %reason, result = "skipped", "domain not changed")
        }
        Outcome::RolledBack {
            action,
            error,
            restored,
            ..
        } => {
            tracing::error!(domain, action = %action, error = %error, restored, result = "rolled back", "change failed")
        }
        Outcome::RollbackPending { action, error, .. } => {
            tracing::error!(domain, action = %action, error = %error, result = "rollback pending", "change failed and could not be undone yet")
        }
    }
}
