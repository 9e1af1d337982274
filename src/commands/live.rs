//! Commands that read (and for apply, change) the running host through
//! libvirt and the kernel's files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::apply::recovery::{self, RecoveryError, RecoveryResult};
use crate::apply::{
    self, ApplyOptions, Journal, JournalError, NoHook, PauseBetweenSteps, Placements, StepHook,
};
use crate::cli::{Format, LiveArgs};
use crate::config::Config;
use crate::converge::{LivePages, Mover, Work, targets};
use crate::exit::Exit;
use crate::libvirt::{self, Libvirt};
use crate::live::state::LiveError;
use crate::live::{LiveHost, LiveState, Sampler};
use crate::planner::Plan;
use crate::report::{apply_table, status as status_report};
use crate::snapshot::{self, DomainXml};

use super::{Failure, config_for_host, load_config, print_json, print_out};

struct Session {
    config: Config,
    source: String,
    host: LiveHost,
    sampler: Sampler,
}

impl From<LiveError> for Failure {
    fn from(e: LiveError) -> Self {
        let exit = match &e {
            LiveError::Libvirt(_) => Exit::Unavailable,
            LiveError::Capabilities(_) => Exit::DataErr,
            LiveError::NodeMemory { .. } => Exit::IoErr,
        };
        Failure::new(exit, e)
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        let exit = match &e {
            JournalError::Locked { .. } => Exit::TempFail,
            JournalError::Corrupt { .. } => Exit::DataErr,
            JournalError::Io { .. } => Exit::IoErr,
        };
        Failure::new(exit, e)
    }
}

fn connect(args: &LiveArgs) -> Result<Session, Failure> {
    let (config, source) = load_config(args.config.as_deref())?;
    if !(args.sample.is_finite() && (0.0..=60.0).contains(&args.sample)) {
        return Err(Failure::new(
            Exit::Usage,
            format!("--sample {} is not between 0 and 60 seconds", args.sample),
        ));
    }
    libvirt::silence_default_error_printer();
    let uri = args
        .uri
        .clone()
        .unwrap_or_else(|| config.libvirt.uri.clone());
    let lv = Libvirt::new(&uri, Duration::from_secs(config.libvirt.call_timeout_secs));
    lv.connect()
        .map_err(|e| Failure::new(Exit::Unavailable, e))?;
    // A one-shot command sees one window: entries in it are enough.
    let sampler = Sampler::new(
        lv.clone(),
        args.root.clone(),
        config.planner.default_vcpu_load,
    )
    .with_nested(1, config.planner.nested_quiet_secs);
    Ok(Session {
        host: LiveHost::new(lv, args.root.clone()),
        sampler,
        config,
        source,
    })
}

impl Session {
    fn read(&mut self, args: &LiveArgs) -> Result<LiveState, Failure> {
        let state = self.sampler.read(Duration::from_secs_f64(args.sample))?;
        config_for_host(&self.config, &self.source, &state.topology)?;
        Ok(state)
    }

    /// Plans `state`. Domains with an unfinished transaction in the journal
    /// are held (whoever holds the lock resolves them), as are those in
    /// `held`.
    fn plan(
        &self,
        state: &LiveState,
        rebalance: bool,
        held: &BTreeMap<String, String>,
    ) -> Result<Plan, Failure> {
        let state_dir = &self.config.apply.state_dir;
        let mut all_held: BTreeMap<String, String> = Journal::peek(state_dir)?
            .into_iter()
            .map(|r| {
                (
                    r.domain.uuid,
                    "a change is unfinished (transaction journal); the daemon, numapin apply or numapin recover resolves it".to_string(),
                )
            })
            .collect();
        all_held.extend(held.iter().map(|(k, v)| (k.clone(), v.clone())));
        let placements = Placements::existing(state_dir);
        Ok(crate::live::plan(
            state,
            &self.config,
            &placements,
            rebalance,
            &all_held,
            // One run has no earlier cycles: what it wants it makes.
            None,
        ))
    }
}

pub fn snapshot(out: &Path, args: &LiveArgs) -> Result<(), Failure> {
    let mut s = connect(args)?;
    let state = s.read(args)?;
    let domains: Vec<DomainXml> = state
        .domains
        .iter()
        .map(|d| DomainXml {
            name: &d.r.name,
            live: &d.live_xml,
            persistent: d.persistent_xml.as_deref(),
        })
        .collect();
    snapshot::write(out, &state.capabilities_xml, &domains, &state.observations)
        .map_err(|e| Failure::new(Exit::IoErr, e))?;
    let mut text = format!(
        "wrote a snapshot of {} running domain(s) on {} node(s) to {}\n",
        domains.len(),
        state.topology.nodes.len(),
        out.display()
    );
    for u in &state.unreadable {
        text.push_str(&format!(
            "not included, unreadable: {}: {}\n",
            u.name, u.reason
        ));
    }
    print_out(&text)
}

/// Names of domains with an unfinished transaction, without creating the
/// state dir (status may run as a user who cannot).
fn pending_names(state_dir: &Path) -> Vec<String> {
    if !state_dir.exists() {
        return Vec::new();
    }
    match Journal::open(state_dir).and_then(|j| j.pending()) {
        Ok(records) => records.into_iter().map(|r| r.domain.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the transaction journal");
            Vec::new()
        }
    }
}

pub fn status(format: Format, args: &LiveArgs) -> Result<(), Failure> {
    let mut s = connect(args)?;
    let state = s.read(args)?;
    let plan = s.plan(&state, false, &BTreeMap::new())?;
    let pending = pending_names(&s.config.apply.state_dir);
    let report = status_report::build(&state, &plan, &s.config, pending);
    match format {
        Format::Json => print_json(&report),
        Format::Table => print_out(&status_report::render(&report)),
    }
}

pub fn apply(
    dry_run: bool,
    rebalance: bool,
    format: Format,
    pause_between_steps_ms: Option<u64>,
    args: &LiveArgs,
) -> Result<(), Failure> {
    let mut s = connect(args)?;
    let state_dir = s.config.apply.state_dir.clone();
    if dry_run {
        let state = s.read(args)?;
        let plan = s.plan(&state, rebalance, &BTreeMap::new())?;
        let pending = pending_names(&state_dir);
        if !pending.is_empty() {
            // Not eprintln!, which panics when stderr cannot be written.
            let _ = writeln!(
                std::io::stderr(),
                "note: unfinished transactions of {} would be rolled back first",
                pending.join(", ")
            );
        }
        return match format {
            Format::Json => print_json(&plan),
            Format::Table => print_out(&apply_table::render(&planned(&plan), true)),
        };
    }

    // Held to the end: nothing else may change domains meanwhile.
    let _lock = Journal::lock(&state_dir)?;
    let journal = Journal::open(&state_dir)?;
    let stuck = roll_back_unfinished(&s.host, &journal, &state_dir)?;

    let state = s.read(args)?;
    let plan = s.plan(&state, rebalance, &stuck)?;
    let opts = ApplyOptions::from(&s.config.apply);
    let mut pause;
    let hook: &mut dyn StepHook = match pause_between_steps_ms {
        Some(ms) => {
            pause = PauseBetweenSteps(Duration::from_millis(ms));
            &mut pause
        }
        None => &mut NoHook,
    };
    let placements = Placements::open(&state_dir)
        .map_err(|e| Failure::new(Exit::IoErr, format!("{}: {e}", state_dir.display())))?;
    placements.prune(&state.refs());
    // Pins and bindings are transactions; pages follow them, at the
    // configured rate, once those have landed.
    let outcomes = apply::apply_plan(
        &s.host,
        &journal,
        &placements,
        &opts,
        &targets::without_page_moves(&plan),
        &state.refs(),
        hook,
    )?;
    if s.config.apply.migrate_memory {
        let works = targets::works(&plan, &state, &outcomes, &Default::default());
        move_memory_now(&s, works, &args.root)?;
    }
    match format {
        Format::Json => print_json(&outcomes)?,
        Format::Table => print_out(&apply_table::render(&outcomes, false))?,
    }
    let failed = |pending: bool| {
        outcomes.iter().any(|o| {
            matches!(o.outcome, apply::Outcome::RollbackPending { .. }) == pending
                && o.outcome.is_failure()
        })
    };
    if failed(true) {
        return Err(Failure::new(
            Exit::Unavailable,
            "libvirt went away during a rollback; the next start finishes it",
        ));
    }
    if failed(false) || !stuck.is_empty() {
        return Err(Failure::new(
            Exit::TempFail,
            "some changes failed and were rolled back (see above)",
        ));
    }
    Ok(())
}

/// Moves the memory of the guests just placed, at the configured rate,
/// and waits for it: as long as it should take at that rate plus
/// `apply.memory_verify_timeout_secs`. Memory that has not arrived by then
/// is left where it is on its way (the daemon, or the next apply, goes on
/// with it); that is said, not an error.
fn move_memory_now(s: &Session, mut works: Vec<Work>, root: &Path) -> Result<(), Failure> {
    works.retain(|w| !w.steps.is_empty());
    if works.is_empty() {
        return Ok(());
    }
    let rate = s.config.apply.migrate_rate_mib_s;
    let planned: u64 = works.iter().map(|w| w.mib).sum();
    let count = works.len();
    let limit = Duration::from_secs_f64(
        planned as f64 / rate as f64 + s.config.apply.memory_verify_timeout_secs as f64,
    );
    let pages = LivePages::new(s.host.libvirt.clone(), root.to_path_buf());
    let mover = Mover::start(Box::new(pages), rate).map_err(|e| {
        Failure::new(
            Exit::Software,
            format!("cannot start the memory mover: {e}"),
        )
    })?;
    let start = std::time::Instant::now();
    mover.retarget(works);
    let arrived = mover.wait_idle(limit);
    let p = mover.progress();
    let _ = writeln!(
        std::io::stderr(),
        "memory: {} MiB moved for {count} domain(s) in {:.1} s at up to {rate} MiB/s{}",
        p.moved_total_mib,
        start.elapsed().as_secs_f64(),
        if arrived {
            String::new()
        } else {
            format!(
                "; {} MiB still on its way (the daemon or the next apply goes on)",
                p.domains.iter().map(|d| d.left_mib).sum::<u64>()
            )
        }
    );
    Ok(())
}

/// Rolls back what a previous numapin left unfinished. Returns the
/// domains whose rollback did not verify (UUID -> why): they are left
/// alone.
fn roll_back_unfinished(
    host: &LiveHost,
    journal: &Journal,
    state_dir: &Path,
) -> Result<BTreeMap<String, String>, Failure> {
    let recovered = recovery::recover(host, journal).map_err(|e| match e {
        RecoveryError::Journal(j) => Failure::from(j),
        e @ RecoveryError::Unreachable { .. } => Failure::new(Exit::Unavailable, e),
    })?;
    let _ = write!(
        std::io::stderr(),
        "{}",
        apply_table::render_recovered(&recovered)
    );
    if recovered.iter().any(|r| r.result.leaves_numapins_pins()) {
        let placements = Placements::open(state_dir)
            .map_err(|e| Failure::new(Exit::IoErr, format!("{}: {e}", state_dir.display())))?;
        for r in recovered.iter().filter(|r| r.result.leaves_numapins_pins()) {
            apply::remember(host, &placements, &r.domain);
        }
    }
    Ok(recovered
        .iter()
        .filter_map(|r| match &r.result {
            RecoveryResult::Failed { errors } => {
                Some((r.domain.uuid.clone(), recovery::failed_hold_reason(errors)))
            }
            _ => None,
        })
        .collect())
}

pub fn recover(args: &LiveArgs) -> Result<(), Failure> {
    let s = connect(args)?;
    let state_dir = s.config.apply.state_dir.clone();
    let _lock = Journal::lock(&state_dir)?;
    let journal = Journal::open(&state_dir)?;
    let stuck = roll_back_unfinished(&s.host, &journal, &state_dir)?;
    if !stuck.is_empty() {
        return Err(Failure::new(
            Exit::TempFail,
            "some unfinished transactions could not be rolled back (see above)",
        ));
    }
    Ok(())
}

pub fn manage(name: &str, args: &LiveArgs) -> Result<(), Failure> {
    let s = connect(args)?;
    let unavailable = |e: crate::host_error::HostError| Failure::new(Exit::Unavailable, e);
    let d = s
        .host
        .libvirt
        .running_domains()
        .map_err(unavailable)?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            Failure::new(
                Exit::NoInput,
                format!("no running domain is called {name:?}"),
            )
        })?;
    let recorded = crate::apply::DomainHost::recorded(&s.host, &d).map_err(unavailable)?;
    let state_dir = &s.config.apply.state_dir;
    Placements::open(state_dir)
        .and_then(|p| {
            p.record(&crate::apply::placements::Placement {
                domain: d.clone(),
                recorded,
            })
        })
        .map_err(|e| Failure::new(Exit::IoErr, format!("{}: {e}", state_dir.display())))?;
    print_out(&format!(
        "numapin manages {name} again, starting from its current pins; the daemon's next cycle (or `numapin apply`) places it\n"
    ))
}

/// The plan's changes, as a dry run reports them.
fn planned(plan: &Plan) -> Vec<apply::DomainOutcome> {
    plan.domains
        .iter()
        .filter(|d| d.managed && !d.actions.is_empty())
        .map(|d| apply::DomainOutcome {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            actions: d.actions.clone(),
            outcome: apply::Outcome::Skipped {
                reason: "dry run".into(),
            },
        })
        .collect()
}
