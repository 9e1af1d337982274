//! One cycle of the daemon: observe, plan, apply (or, in dry-run, say what
//! would be applied). Synchronous: it runs on a blocking thread, never on
//! the async runtime's workers, because every libvirt call blocks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::apply::recovery::{self, RecoveryResult};
use crate::apply::{self, ApplyOptions, Journal, Outcome, Placements, StepHook};
use crate::config::Config;
use crate::libvirt::DomainRef;
use crate::live::{LiveHost, LiveState, Sampler};
use crate::planner::{Action, MoveConfirmation, Plan, WantedMoves};
use crate::report::status::{self, StatusReport};

use crate::metrics::{DomainGauge, Metrics, NodeGauge};

use super::notify::Notifier;
use crate::converge::Mover;
use crate::converge::targets::{self as memory, LocalityBefore};

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
    pub metrics: Arc<Metrics>,
    /// The host as the last cycle read it: a reloaded config is checked
    /// against it before it replaces the running one.
    pub topology: Option<crate::topology::HostTopology>,
    /// Domains an operator took over, by UUID, with what they changed.
    pub changed_by_operator: std::collections::BTreeMap<String, String>,
    /// Domains left alone whose threads may run on dedicated CPUs, by
    /// UUID, as last logged.
    pub on_dedicated_cpus: std::collections::BTreeMap<String, String>,
    /// Moves guests' memory in the background (none in dry-run).
    pub mover: Option<Mover>,
    /// Each guest's locality when numapin first confined it.
    pub locality_before: LocalityBefore,
    /// Rebalancing moves wanted by the cycles so far and not made yet.
    pub wanted_moves: WantedMoves,
    /// The clock `wanted_moves` counts on.
    pub started: Instant,
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
        if self.rolled_back > 0 {
            s.push_str(&format!(", {} failed and rolled back", self.rolled_back));
        }
        let unresolved = self.failed.saturating_sub(self.rolled_back);
        if unresolved > 0 {
            s.push_str(&format!(
                ", {unresolved} failed and left journaled until libvirt answers"
            ));
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
    pub fn cycle(&mut self, req: CycleRequest, new_guest_window: Duration) -> CycleReport {
        let start = Instant::now();
        // Before the reading: a rollback changes what it would show.
        let held = match self.finish_unfinished() {
            Ok(held) => held,
            Err(error) => {
                let mut report = CycleReport {
                    error: Some(error),
                    ..CycleReport::default()
                };
                report.duration = start.elapsed();
                self.publish(&report);
                return report;
            }
        };
        let mut report = match self.sampler.read(new_guest_window) {
            Ok(state) => self.plan_and_apply(&state, req, &held, start),
            Err(e) => CycleReport {
                error: Some(crate::report::error_chain(&e)),
                ..CycleReport::default()
            },
        };
        report.duration = start.elapsed();
        self.publish(&report);
        report
    }

    /// Metrics for the cycle: counters, and gauges that replace the last
    /// cycle's (domains that left disappear from the output).
    fn publish(&self, report: &CycleReport) {
        let m = &self.metrics;
        m.cycle_done(report.duration, report.error.is_none());
        if !self.dry_run {
            m.actions_applied(report.actions as u64);
            m.transactions_failed(report.failed as u64);
            m.rollbacks(report.rolled_back as u64);
            m.domains_skipped(report.skipped as u64);
        }
        if let Some(status) = &report.status {
            let domains: Vec<DomainGauge> = status
                .domains
                .iter()
                .map(|d| DomainGauge {
                    name: d.name.clone(),
                    managed: d.managed,
                    locality: d.locality,
                    nodes_spanned: d.vcpu_nodes.len(),
                    memory_mib: d.memory_mib.values().sum(),
                    changed_by_operator: d.changed_by_operator.is_some(),
                    nested_hypervisor: d.nested_hypervisor,
                    vcpu_wait: d.vcpu_wait,
                    on_dedicated_cpus: d.on_dedicated_cpus.is_some(),
                    memory_to_move_mib: d.memory_to_move.as_ref().map(|m| m.mib),
                    confined_secs: d.confined_secs,
                })
                .collect();
            m.set_domains(&domains);
            if let Some(moved) = status.memory_moved_mib {
                m.set_memory_moved(moved, status.memory_move_rate_mib_s);
            }
            let nodes: Vec<NodeGauge> = status
                .nodes
                .iter()
                .map(|n| NodeGauge {
                    id: n.id,
                    free_mib: n.free_mib,
                    vcpu_demand: n.vcpu_demand,
                    cpus: n.cpus.len(),
                    dedicated_cpus: n.dedicated_cpus.len(),
                    vcpu_wait: n.vcpu_wait,
                })
                .collect();
            m.set_nodes(&nodes);
        }
        let textfile = &self.config.metrics.textfile;
        if !textfile.is_empty()
            && let Err(e) = crate::metrics::write_textfile(std::path::Path::new(textfile), m)
        {
            tracing::warn!(path = %textfile, error = %e, "cannot write the metrics textfile");
        }
    }

    /// Resolves the transactions a failed step or undo left in the journal
    /// (see [`recovery`]): once libvirt has returned every call numapin
    /// gave up on, each is kept if it landed whole, else rolled back.
    /// Returns the domains to leave alone meanwhile, and why. An error
    /// (an unreadable journal) stops the cycle: the domains it names may be
    /// half-changed.
    fn finish_unfinished(&mut self) -> Result<BTreeMap<String, String>, String> {
        let mut held = BTreeMap::new();
        if self.dry_run {
            return Ok(held);
        }
        let journal_error = |e: &apply::JournalError| {
            format!(
                "cannot read the transaction journal: {}",
                crate::report::error_chain(e)
            )
        };
        let records = self.journal.pending().map_err(|e| journal_error(&e))?;
        if records.is_empty() {
            return Ok(held);
        }
        if let Some(call) = self.host.libvirt.abandoned_calls().first() {
            let reason = format!(
                "a change failed; waiting for libvirt to return a call numapin gave up on {:.0} s ago ({}) to resolve it",
                call.since.elapsed().as_secs_f64(),
                call.op
            );
            for r in records {
                tracing::info!(domain = %r.domain.name, reason = %reason, "unfinished transaction");
                held.insert(r.domain.uuid, reason.clone());
            }
            return Ok(held);
        }
        let pass =
            recovery::recover_pass(&self.host, &self.journal).map_err(|e| journal_error(&e))?;
        for r in &pass.resolved {
            if r.result.leaves_numapins_pins() {
                apply::remember(&self.host, &self.placements, &r.domain);
            }
            if let RecoveryResult::Failed { errors } = &r.result {
                held.insert(r.domain.uuid.clone(), recovery::failed_hold_reason(errors));
            }
        }
        for (d, e) in pass.waiting {
            tracing::warn!(domain = %d.name, error = %e, "unfinished transaction: libvirt does not answer; retried next cycle");
            held.insert(
                d.uuid,
                format!("a change failed and libvirt does not answer to resolve it ({e}); retried each cycle"),
            );
        }
        Ok(held)
    }

    fn plan_and_apply(
        &mut self,
        state: &LiveState,
        req: CycleRequest,
        held: &BTreeMap<String, String>,
        start: Instant,
    ) -> CycleReport {
        let mut report = CycleReport {
            domains: state.domains.len(),
            ..CycleReport::default()
        };
        self.topology = Some(state.topology.clone());
        if let Err((key, reason)) = self.config.validate_for_host(&state.topology) {
            report.error = Some(format!("config does not fit this host: {key}: {reason}"));
            return report;
        }
        let refs = state.refs();
        if !self.dry_run {
            self.placements.prune(&refs);
        }
        // Timed from the cycle's start, so that the wait is counted from
        // when the loads that wanted a move were read.
        let now = (start - self.started).as_secs_f64();
        let confirm = MoveConfirmation {
            wanted: &self.wanted_moves,
            now,
            after_secs: self.config.planner.rebalance_wait_secs as f64,
        };
        let plan = crate::live::plan(
            state,
            &self.config,
            &self.placements,
            req.rebalance,
            held,
            Some(confirm),
        );
        self.note_wanted_moves(&plan, now);
        let mut walk = memory_moves(&plan);
        if let Some(mover) = &self.mover {
            walk.extend(mover.progress().domains.into_iter().map(|d| d.domain.uuid));
        }
        self.sampler.want_memory_walk(walk);
        report.managed = plan.domains.iter().filter(|d| d.managed).count();
        self.note_operator_changes(&plan);
        if self.dry_run {
            log_would_apply(&plan, &mut report);
        } else {
            self.apply(&plan, state, &refs, &mut report);
        }
        let mut status = status::build(state, &plan, &self.config, Vec::new());
        if let Some(mover) = &self.mover {
            status.set_memory_progress(&mover.progress());
            let now = std::time::SystemTime::now();
            for (d, live) in status.domains.iter_mut().zip(&state.domains) {
                d.confined_secs = self
                    .placements
                    .recorded_at(&live.r)
                    .and_then(|at| now.duration_since(at).ok())
                    .map(|s| s.as_secs_f64().round());
            }
        }
        report.status = Some(status);
        report
    }

    /// Keeps the moves the plan wanted and did not make, and logs each
    /// newly wanted one once.
    fn note_wanted_moves(&mut self, plan: &Plan, now: f64) {
        for (d, to) in self.wanted_moves.update(plan, now) {
            tracing::info!(
                domain = %d.name,
                action = "want-move",
                from = %d.current.nodes,
                to = %to,
                wait_secs = self.config.planner.rebalance_wait_secs,
                "rebalancing move wanted; made once every cycle for planner.rebalance_wait_secs has wanted it"
            );
        }
    }

    /// Logs, once per change, a domain numapin stopped managing because an
    /// operator changed it.
    fn note_operator_changes(&mut self, plan: &Plan) {
        let now: std::collections::BTreeMap<String, String> = plan
            .domains
            .iter()
            .filter_map(|d| Some((d.uuid.clone(), d.changed_by_operator.clone()?)))
            .collect();
        for d in &plan.domains {
            if let Some(change) = &d.changed_by_operator
                && self.changed_by_operator.get(&d.uuid) != Some(change)
            {
                tracing::warn!(
                    domain = %d.name,
                    change = %change,
                    "changed by hand after numapin placed it; no longer managed (numapin manage {} hands it back)",
                    d.name
                );
            }
        }
        self.changed_by_operator = now;
        let shared: std::collections::BTreeMap<String, String> = plan
            .domains
            .iter()
            .filter_map(|d| Some((d.uuid.clone(), d.on_dedicated_cpus.as_ref()?.to_string())))
            .collect();
        for d in &plan.domains {
            if let Some(cpus) = &d.on_dedicated_cpus
                && self.on_dedicated_cpus.get(&d.uuid) != Some(&cpus.to_string())
            {
                tracing::warn!(
                    domain = %d.name,
                    cpus = %cpus,
                    reason = %d.reason,
                    "may run on CPUs dedicated to other guests; numapin leaves it alone"
                );
            }
        }
        self.on_dedicated_cpus = shared;
    }

    fn apply(
        &mut self,
        plan: &Plan,
        state: &LiveState,
        refs: &[DomainRef],
        report: &mut CycleReport,
    ) {
        let mut opts = ApplyOptions::from(&self.config.apply);
        opts.stop = Some(self.stop.clone());
        let notifier = self.notifier.clone();
        // Pins and bindings are transactions; pages follow in the
        // background, so no cycle waits for memory.
        let outcomes = match apply::apply_plan(
            &self.host,
            &self.journal,
            &self.placements,
            &opts,
            &memory::without_page_moves(plan),
            refs,
            &mut Progress(&notifier),
        ) {
            Ok(o) => o,
            Err(e) => {
                report.error = Some(crate::report::error_chain(&e));
                return;
            }
        };
        self.locality_before.update(plan);
        if let Some(mover) = &self.mover {
            mover.set_rate(self.config.apply.migrate_rate_mib_s);
            mover.charge(memory::moved_by_nodeset_changes(plan, &outcomes));
            let works = if self.config.apply.migrate_memory {
                memory::works(plan, state, &outcomes, &self.locality_before)
            } else {
                Vec::new()
            };
            mover.retarget(works);
        }
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

/// The domains (by UUID) whose plan moves memory: the sampler walks their
/// page tables at the next reading, and every other guest's only now and
/// then (`live::walks`). The mover's moves in flight join this set.
fn memory_moves(plan: &Plan) -> std::collections::BTreeSet<String> {
    plan.domains
        .iter()
        .filter(|d| {
            d.actions.iter().any(|a| {
                matches!(
                    a,
                    Action::SetMemoryNodeset { .. }
                        | Action::MigratePages { .. }
                        | Action::MoveCellMemory { .. }
                )
            })
        })
        .map(|d| d.uuid.clone())
        .collect()
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
