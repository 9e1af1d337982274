//! One cycle of the daemon: observe, plan, apply (or, in dry-run, say what
//! would be applied). Synchronous: it runs on a blocking thread, never on
//! the async runtime's workers, because every libvirt call blocks.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyOptions, Journal, Outcome, Placements, StepHook};
use crate::config::Config;
use crate::libvirt::DomainRef;
use crate::live::{LiveHost, LiveState, Sampler};
use crate::planner::{Action, Plan};
use crate::report::status::{self, StatusReport};

use super::notify::Notifier;

/// What the cycle does besides planning.
#[derive(Debug, Clone, Copy)]
pub struct CycleRequest {
    /// Reconsider domains held in place by the move threshold.
    pub rebalance: bool,
}

/// The daemon's state that cycles work on; owned by one cycle at a time.
pub struct Worker {
    pub config: Arc<Config>,
    pub dry_run: bool,
    pub host: LiveHost,
    pub sampler: Sampler,
    pub journal: Journal,
    pub placements: Placements,
    pub notifier: Notifier,
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub duration: Duration,
    pub domains: usize,
    pub managed: usize,
    /// Steps applied (or, in dry-run, that would be).
    pub actions: usize,
    pub applied: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub skipped: usize,
    pub error: Option<String>,
    pub status: Option<StatusReport>,
}

impl CycleReport {
    /// One line for STATUS= and the log.
    pub fn summary(&self, dry_run: bool) -> String {
        let mode = if dry_run { "dry run: " } else { "" };
        let verb = if dry_run { "would apply" } else { "applied" };
        let mut s = format!(
            "{mode}{} domains, {} managed; last cycle {:.2} s: {verb} {} step(s) to {} domain(s)",
            self.domains,
            self.managed,
            self.duration.as_secs_f64(),
            self.actions,
            self.applied
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed and rolled back", self.failed));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("; last error: {e}"));
        }
        s
    }
}

/// Feeds the watchdog as transactions progress: a cycle that moves is a
/// live daemon even when it takes longer than the watchdog period.
struct Progress<'a>(&'a Notifier);

impl StepHook for Progress<'_> {
    fn before_step(&mut self, _d: &DomainRef, _i: usize, _s: &Action) {
        self.0.watchdog();
    }
}

impl Worker {
    pub fn cycle(&mut self, req: CycleRequest, first_sample: Duration) -> CycleReport {
        let start = Instant::now();
        let mut report = match self.sampler.read(first_sample) {
            Ok(state) => self.plan_and_apply(&state, req),
            Err(e) => CycleReport {
                error: Some(crate::report::error_chain(&e)),
                ..CycleReport::default()
            },
        };
        report.duration = start.elapsed();
        report
    }

    fn plan_and_apply(&mut self, state: &LiveState, req: CycleRequest) -> CycleReport {
        let mut report = CycleReport {
            domains: state.domains.len(),
            ..CycleReport::default()
        };
        if let Err((key, reason)) = self.config.validate_for_host(&state.topology) {
            report.error = Some(format!("config does not fit this host: {key}: {reason}"));
            return report;
        }
        let refs = state.refs();
        if !self.dry_run {
            self.placements.prune(&refs);
        }
        let plan = crate::live::plan(state, &self.config, &self.placements, req.rebalance, &[]);
        report.managed = plan.domains.iter().filter(|d| d.managed).count();
        if self.dry_run {
            log_would_apply(&plan, &mut report);
        } else {
            self.apply(&plan, &refs, &mut report);
        }
        report.status = Some(status::build(state, &plan, &self.config, Vec::new()));
        report
    }

    fn apply(&mut self, plan: &Plan, refs: &[DomainRef], report: &mut CycleReport) {
        let mut opts = ApplyOptions::from(&self.config.apply);
        opts.stop = Some(self.stop.clone());
        let notifier = self.notifier.clone();
        let outcomes = match apply::apply_plan(
            &self.host,
            &self.journal,
            &self.placements,
            &opts,
            plan,
            refs,
            &mut Progress(&notifier),
        ) {
            Ok(o) => o,
            Err(e) => {
                report.error = Some(crate::report::error_chain(&e));
                return;
            }
        };
        for o in &outcomes {
            match &o.outcome {
                Outcome::Applied { steps, .. } => {
                    report.applied += 1;
                    report.actions += steps;
                }
                Outcome::RolledBack { .. } => {
                    report.failed += 1;
                    report.rolled_back += 1;
                }
                Outcome::RollbackPending { error, .. } => {
                    report.failed += 1;
                    report.error = Some(error.to_string());
                }
                Outcome::Vanished { .. } | Outcome::Skipped { .. } => report.skipped += 1,
            }
        }
    }
}

fn log_would_apply(plan: &Plan, report: &mut CycleReport) {
    for d in plan
        .domains
        .iter()
        .filter(|d| d.managed && !d.actions.is_empty())
    {
        report.applied += 1;
        report.actions += d.actions.len();
        for a in &d.actions {
            tracing::info!(domain = %d.name, action = %a, reason = %d.reason, "dry run: would apply");
        }
    }
}
