//! One domain's change as a transaction: record the prior state, journal
//! it, apply the steps in order, read each back, and on any failure undo
//! the steps already started in reverse order. A domain is never left
//! half-moved: it ends as planned, as it was, or (when libvirt itself went
//! away mid-undo) with its journal record kept for the next start.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host_error::{ErrorKind, HostError};
use crate::idset::NodeSet;
use crate::libvirt::{DomainRef, Pins, Scope};
use crate::planner::{Action, Recorded};

use super::host::DomainHost;
use super::journal::{Journal, JournalError, Prior, Record};
use super::rollback::rollback;
use super::{ApplyOptions, StepHook};

/// How one domain's transaction ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Every step applied and verified.
    Applied {
        steps: usize,
        /// Whether the change was also written to the persistent
        /// definition (None: not asked for, or the domain is transient).
        persisted: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        persist_error: Option<String>,
    },
    /// The domain stopped before or during its transaction. Not an error.
    Vanished { during: String },
    /// Not attempted, and why.
    Skipped { reason: String },
    /// A step failed and the steps before it were undone.
    RolledBack {
        failed_step: usize,
        action: String,
        error: HostError,
        /// Whether the prior state was read back after the undo.
        restored: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        undo_errors: Vec<String>,
    },
    /// A step failed and the undo could not finish because libvirt could
    /// not be reached, or a step's call timed out and may still land; the
    /// journal record is kept and the daemon's next cycle (or the next
    /// apply or recover) resolves it.
    RollbackPending {
        failed_step: usize,
        action: String,
        error: HostError,
        undo_errors: Vec<String>,
    },
}

impl Outcome {
    /// Whether the outcome needs an operator's or a retry's attention.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::RolledBack { .. } | Outcome::RollbackPending { .. }
        )
    }
}

/// Runs the transaction of one domain. `expected` is the domain as it was
/// when planned; a domain restarted since then is skipped, because its
/// plan describes threads that no longer exist. `planned_from` is the live
/// pins and nodeset the plan was made from: a domain whose live XML says
/// otherwise now was changed by someone else since (an operator's pin),
/// and is skipped untouched, so that the next plan sees the change.
pub fn run(
    host: &dyn DomainHost,
    journal: &Journal,
    opts: &ApplyOptions,
    expected: &DomainRef,
    planned_from: Option<&Recorded>,
    steps: &[Action],
    hook: &mut dyn StepHook,
) -> Result<Outcome, JournalError> {
    let d = match host.domain(&expected.uuid) {
        Ok(d) => d,
        Err(e) if e.is_gone() => {
            return Ok(Outcome::Vanished {
                during: "lookup before the first step".into(),
            });
        }
        Err(e) => {
            return Ok(Outcome::Skipped {
                reason: e.to_string(),
            });
        }
    };
    if d.id != expected.id {
        return Ok(Outcome::Skipped {
            reason: format!(
                "restarted since it was planned (id {} -> {})",
                expected.id, d.id
            ),
        });
    }
    if let Some(reason) = precheck(host, &d, steps) {
        return Ok(reason);
    }
    if let Some(changed) = planned_from.and_then(|p| changed_since_planning(host, &d, p)) {
        return Ok(changed);
    }
    let prior = match read_prior(host, &d, steps) {
        Ok(p) => p,
        Err(e) if e.is_gone() => {
            return Ok(Outcome::Vanished {
                during: "reading its state".into(),
            });
        }
        Err(e) => {
            return Ok(Outcome::Skipped {
                reason: e.to_string(),
            });
        }
    };
    let mut record = Record::new(d.clone(), prior, steps.to_vec());
    journal.write(&record)?;

    // The pins as last read (the prior state, then each pin's read-back)
    // and as they should be: the prior state with the steps done so far.
    let mut last_pins = pins_as_recorded(&record.prior.pins);
    let mut expected_pins = last_pins.clone();
    for (i, step) in steps.iter().enumerate() {
        hook.before_step(&d, i, step);
        // Checked before the step counts as started, so a refusal leaves
        // nothing of it to undo (memory is never moved back under a job,
        // an operator's pin made meanwhile is never overwritten).
        if let Err(error) =
            guard(host, &d, step).and_then(|()| untouched(step, &expected_pins, &last_pins))
        {
            return fail(host, journal, &record, i, error);
        }
        record.attempted = i + 1;
        journal.write(&record)?;
        tracing::info!(
            domain = %d.name,
            action = %step,
            from = %prior_value(&record.prior, step),
            step = i + 1,
            of = steps.len(),
            "applying"
        );
        match execute(host, &d, step, opts) {
            Ok(Some(pins)) => {
                expected_pins = expected_pins.after(std::slice::from_ref(step));
                last_pins = pins_as_recorded(&pins);
            }
            Ok(None) => {}
            Err(error) => return fail(host, journal, &record, i, error),
        }
    }
    if let Err(error) = verify_threads(host, &d, steps) {
        return fail(host, journal, &record, steps.len() - 1, error);
    }
    journal.remove(&d.uuid)?;
    let (persisted, persist_error) = if opts.persist {
        persist(host, &d, steps)
    } else {
        (None, None)
    };
    Ok(Outcome::Applied {
        steps: steps.len(),
        persisted,
        persist_error,
    })
}

/// Conditions that changed between planning and now: a job started, a
/// target CPU went offline, a vCPU was unplugged. The domain is skipped
/// untouched and retried next cycle.
fn precheck(host: &dyn DomainHost, d: &DomainRef, steps: &[Action]) -> Option<Outcome> {
    let skip = |reason: String| Some(Outcome::Skipped { reason });
    match host.activity(d) {
        Ok(Some(hold)) => return skip(hold),
        Ok(None) => {}
        Err(e) if e.is_gone() => {
            return Some(Outcome::Vanished {
                during: "the check before the first step".into(),
            });
        }
        Err(e) => return skip(e.to_string()),
    }
    let online = match host.online_cpus() {
        Ok(o) => o,
        Err(e) => return skip(e.to_string()),
    };
    let threads = match host.vcpu_thread_affinity(d) {
        Ok(t) => t,
        Err(e) if e.is_gone() => {
            return Some(Outcome::Vanished {
                during: "the check before the first step".into(),
            });
        }
        Err(e) => return skip(e.to_string()),
    };
    for step in steps {
        let cpus = match step {
            Action::Vcpupin { vcpu, cpus } => {
                if !threads.contains_key(vcpu) {
                    return skip(format!(
                        "vCPU {vcpu} is not online any more (vCPUs changed since planning)"
                    ));
                }
                cpus
            }
            Action::Emulatorpin { cpus } | Action::Iothreadpin { cpus, .. } => cpus,
            _ => continue,
        };
        if let Some(cpu) = cpus.difference(&online).first() {
            return skip(format!("CPU {cpu} went offline since planning"));
        }
    }
    None
}

/// What the steps will touch, as it is now.
fn read_prior(host: &dyn DomainHost, d: &DomainRef, steps: &[Action]) -> Result<Prior, HostError> {
    let moves_memory = steps.iter().any(moves_memory);
    let mut cell_memory_mib = BTreeMap::new();
    for step in steps {
        if let Action::MoveCellMemory { cell, .. } = step {
            cell_memory_mib.insert(*cell, host.cell_memory(d, *cell)?);
        }
    }
    Ok(Prior {
        pins: host.pins(d)?,
        binding: host.memory_binding(d)?,
        memory_mib: if moves_memory {
            host.memory_per_node(d)?
        } else {
            BTreeMap::new()
        },
        cell_memory_mib,
    })
}

/// Whether a step moves memory: such steps never run under a libvirt job.
pub(super) fn moves_memory(step: &Action) -> bool {
    matches!(
        step,
        Action::MigratePages { .. }
            | Action::SetMemoryNodeset { .. }
            | Action::MoveCellMemory { .. }
    )
}

/// Applies one step and reads it back; the pins read back, for a pin.
fn execute(
    host: &dyn DomainHost,
    d: &DomainRef,
    step: &Action,
    opts: &ApplyOptions,
) -> Result<Option<Pins>, HostError> {
    let mismatch =
        |what: String| HostError::new(&format!("verify {step}"), ErrorKind::Failed, &what);
    match step {
        Action::Vcpupin { vcpu, cpus } => {
            host.pin_vcpu(d, *vcpu, cpus, Scope::Live)?;
            let pins = host.pins(d)?;
            let now = pins.vcpus.get(vcpu);
            if now != Some(cpus) {
                return Err(mismatch(format!(
                    "libvirt reports vCPU {vcpu} on {} after pinning it to {cpus}",
                    show(now)
                )));
            }
            return Ok(Some(pins));
        }
        Action::Emulatorpin { cpus } => {
            host.pin_emulator(d, cpus, Scope::Live)?;
            let pins = host.pins(d)?;
            if &pins.emulator != cpus {
                return Err(mismatch(format!(
                    "libvirt reports the emulator on {} after pinning it to {cpus}",
                    pins.emulator
                )));
            }
            return Ok(Some(pins));
        }
        Action::Iothreadpin { iothread, cpus } => {
            host.pin_iothread(d, *iothread, cpus, Scope::Live)?;
            let pins = host.pins(d)?;
            let now = pins.iothreads.get(iothread);
            if now != Some(cpus) {
                return Err(mismatch(format!(
                    "libvirt reports iothread {iothread} on {} after pinning it to {cpus}",
                    show(now)
                )));
            }
            return Ok(Some(pins));
        }
        Action::SetMemoryNodeset { nodeset } => {
            host.set_memory_nodeset(d, nodeset, Scope::Live)?;
            let now = host.memory_binding(d)?.nodeset;
            if now.as_ref() != Some(nodeset) {
                return Err(mismatch(format!(
                    "libvirt reports memory nodeset {} after setting {nodeset}",
                    show(now.as_ref())
                )));
            }
            wait_for_memory(host, d, nodeset, opts)?;
        }
        Action::MigratePages { from, to, .. } => {
            host.migrate_pages(d, from, to)?;
            wait_for_memory(host, d, to, opts)?;
        }
        Action::MoveCellMemory { cell, to, .. } => {
            let weights = to.iter().map(|n| (n, 1)).collect();
            host.move_cell_memory(d, *cell, &weights)?;
            wait_for_cell_memory(host, d, *cell, to, opts)?;
        }
    }
    Ok(None)
}

/// Skips a domain whose live pins or nodeset are no longer those the plan
/// was made from: someone changed them since (an operator's `virsh
/// vcpupin`), and the next plan, which sees the change, decides.
fn changed_since_planning(
    host: &dyn DomainHost,
    d: &DomainRef,
    planned_from: &Recorded,
) -> Option<Outcome> {
    match host.recorded(d) {
        Ok(now) => planned_from.changes_to(&now).map(|what| Outcome::Skipped {
            reason: format!("changed since it was planned ({what}); planned again next cycle"),
        }),
        Err(e) if e.is_gone() => Some(Outcome::Vanished {
            during: "the check before the first step".into(),
        }),
        Err(e) => Some(Outcome::Skipped {
            reason: e.to_string(),
        }),
    }
}

/// Whether the domain's pins are still as the transaction left them
/// (`expected`), as last read back: a pin another hand changed during the
/// transaction (an operator's `virsh vcpupin`) is left as that hand set
/// it, the steps before are undone and none after runs. Only pins count:
/// neither side carries the nodeset.
fn untouched(step: &Action, expected: &Recorded, last: &Recorded) -> Result<(), HostError> {
    let pins_only = Recorded {
        nodeset: None,
        ..expected.clone()
    };
    match pins_only.changes_to(last) {
        None => Ok(()),
        Some(changes) => Err(HostError::new(
            &step.to_string(),
            ErrorKind::Failed,
            &format!("pinned by someone else during the change ({changes}); left so"),
        )),
    }
}

/// libvirt's pins (every thread's affinity) in the shape of a live
/// `<cputune>`, without a nodeset, so that [`Recorded::changes_to`]
/// compares and describes them.
pub(super) fn pins_as_recorded(pins: &Pins) -> Recorded {
    Recorded {
        cputune: crate::guest::CpuTune {
            vcpupin: pins.vcpus.clone(),
            emulatorpin: Some(pins.emulator.clone()),
            iothreadpin: pins.iothreads.clone(),
        },
        nodeset: None,
    }
}

/// What a step's setting was before the transaction, for the log.
fn prior_value(prior: &Prior, step: &Action) -> String {
    match step {
        Action::Vcpupin { vcpu, .. } => show(prior.pins.vcpus.get(vcpu)),
        Action::Emulatorpin { .. } => prior.pins.emulator.to_string(),
        Action::Iothreadpin { iothread, .. } => show(prior.pins.iothreads.get(iothread)),
        Action::SetMemoryNodeset { .. } => show(prior.binding.nodeset.as_ref()),
        Action::MigratePages { from, .. } => from.to_string(),
        Action::MoveCellMemory { cell, .. } => prior
            .cell_memory_mib
            .get(cell)
            .map_or_else(|| "unknown".into(), show_mib),
    }
}

/// MiB per node as `N0=4 N1=92`, the way numa_maps prints pages.
pub(super) fn show_mib(mib: &BTreeMap<u32, u64>) -> String {
    let parts: Vec<String> = mib.iter().map(|(n, m)| format!("N{n}={m}")).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" ")
    }
}

pub(super) fn show(set: Option<&crate::idset::IdSet>) -> String {
    set.map_or_else(|| "nothing".into(), |s| s.to_string())
}

/// Memory never moves while a migration, backup or other job runs on the
/// domain: one started since the transaction began fails a memory step
/// before it starts.
fn guard(host: &dyn DomainHost, d: &DomainRef, step: &Action) -> Result<(), HostError> {
    if !moves_memory(step) {
        return Ok(());
    }
    match host.activity(d)? {
        Some(hold) => Err(HostError::new(&step.to_string(), ErrorKind::Failed, &hold)),
        None => Ok(()),
    }
}

/// Waits until the configured share of the domain's memory is on
/// `target`. A restrictive nodeset change migrates in the background, so
/// this polls; migrate_pages(2) returns when done, so it passes at once.
fn wait_for_memory(
    host: &dyn DomainHost,
    d: &DomainRef,
    target: &NodeSet,
    opts: &ApplyOptions,
) -> Result<(), HostError> {
    let what = format!("memory of {}", d.name);
    wait_for_share(&what, target, opts, || host.memory_per_node(d))
}

/// Waits until the configured share of one guest cell's RAM is on
/// `target`. move_pages(2) returns when done, so this normally passes at
/// once; it polls like [`wait_for_memory`] all the same.
fn wait_for_cell_memory(
    host: &dyn DomainHost,
    d: &DomainRef,
    cell: u32,
    target: &NodeSet,
    opts: &ApplyOptions,
) -> Result<(), HostError> {
    let what = format!("cell {cell} memory of {}", d.name);
    wait_for_share(&what, target, opts, || host.cell_memory(d, cell))
}

/// Polls `read` (MiB per node) until `apply.memory_on_target_share` of it
/// is on `target`, for at most `apply.memory_verify_timeout_secs`.
fn wait_for_share(
    what: &str,
    target: &NodeSet,
    opts: &ApplyOptions,
    read: impl Fn() -> Result<BTreeMap<u32, u64>, HostError>,
) -> Result<(), HostError> {
    let deadline = Instant::now() + opts.memory_verify_timeout;
    loop {
        let mem = read()?;
        let total: u64 = mem.values().sum();
        let on: u64 = mem
            .iter()
            .filter(|(n, _)| target.contains(**n))
            .map(|(_, m)| m)
            .sum();
        if total == 0 || on as f64 >= opts.memory_on_target_share * total as f64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HostError::new(
                &format!("verify {what} on node(s) {target}"),
                ErrorKind::Failed,
                &format!(
                    "only {on} of {total} MiB there after {:?} (needs {:.0}%)",
                    opts.memory_verify_timeout,
                    opts.memory_on_target_share * 100.0
                ),
            ));
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The kernel's view: every vCPU thread's affinity is what was pinned.
/// Catches a libvirt that reports a pin it did not apply.
fn verify_threads(host: &dyn DomainHost, d: &DomainRef, steps: &[Action]) -> Result<(), HostError> {
    let wanted: BTreeMap<u32, &crate::idset::CpuSet> = steps
        .iter()
        .filter_map(|s| match s {
            Action::Vcpupin { vcpu, cpus } => Some((*vcpu, cpus)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let actual = host.vcpu_thread_affinity(d)?;
    for (vcpu, cpus) in wanted {
        // An offline vCPU has no thread; libvirt keeps its pin for later.
        if let Some(now) = actual.get(&vcpu)
            && now != cpus
        {
            return Err(HostError::new(
                &format!("verify vCPU {vcpu} thread of {}", d.name),
                ErrorKind::Failed,
                &format!("the kernel has it on {now}, not {cpus}"),
            ));
        }
    }
    Ok(())
}

/// Step `failed` went wrong: undo it and everything before it.
fn fail(
    host: &dyn DomainHost,
    journal: &Journal,
    record: &Record,
    failed: usize,
    error: HostError,
) -> Result<Outcome, JournalError> {
    let d = &record.domain;
    let action = record.steps[failed].to_string();
    if error.is_gone() {
        tracing::warn!(domain = %d.name, action, "domain stopped during its transaction");
        journal.remove(&d.uuid)?;
        return Ok(Outcome::Vanished {
            during: format!("step {} ({action})", failed + 1),
        });
    }
    if error.kind == ErrorKind::Timeout {
        // libvirtd may still carry the call out after numapin gave up on
        // it: an undo now could be overtaken by it. The journal keeps the
        // transaction; it is resolved once the call has returned.
        tracing::error!(domain = %d.name, action, step = failed + 1, error = %error, "libvirt did not answer in time; the change may still land, resolved once libvirt returns the call");
        return Ok(Outcome::RollbackPending {
            failed_step: failed + 1,
            action,
            error,
            undo_errors: Vec::new(),
        });
    }
    tracing::warn!(domain = %d.name, action, step = failed + 1, error = %error, "step failed; rolling back");
    let undo = rollback(host, record);
    if undo.gone {
        journal.remove(&d.uuid)?;
        return Ok(Outcome::Vanished {
            during: format!("rollback after step {} failed: {error}", failed + 1),
        });
    }
    if undo.unreachable {
        tracing::error!(domain = %d.name, "libvirt unreachable during rollback; the journal keeps the transaction for the next start");
        return Ok(Outcome::RollbackPending {
            failed_step: failed + 1,
            action,
            error,
            undo_errors: undo.errors,
        });
    }
    journal.remove(&d.uuid)?;
    Ok(Outcome::RolledBack {
        failed_step: failed + 1,
        action,
        error,
        restored: undo.restored,
        undo_errors: undo.errors,
    })
}

/// Writes the verified live settings into the persistent definition.
/// Failing here leaves the live change in place (it is verified) and is
/// reported; the next start would re-place the domain anyway.
fn persist(
    host: &dyn DomainHost,
    d: &DomainRef,
    steps: &[Action],
) -> (Option<bool>, Option<String>) {
    match host.is_persistent(d) {
        Ok(false) => return (None, None),
        Ok(true) => {}
        Err(e) => return (Some(false), Some(e.to_string())),
    }
    for step in steps {
        let result = match step {
            Action::Vcpupin { vcpu, cpus } => host.pin_vcpu(d, *vcpu, cpus, Scope::Config),
            Action::Emulatorpin { cpus } => host.pin_emulator(d, cpus, Scope::Config),
            Action::Iothreadpin { iothread, cpus } => {
                host.pin_iothread(d, *iothread, cpus, Scope::Config)
            }
            Action::SetMemoryNodeset { nodeset } => {
                host.set_memory_nodeset(d, nodeset, Scope::Config)
            }
            Action::MigratePages { .. } | Action::MoveCellMemory { .. } => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(domain = %d.name, action = %step, error = %e, "could not persist");
            return (Some(false), Some(e.to_string()));
        }
    }
    (Some(true), None)
}
