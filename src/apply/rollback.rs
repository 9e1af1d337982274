//! Undoing a transaction's started steps, in reverse order, and checking
//! that the domain reads back as it was. Used when a step fails and when
//! a later start finds a transaction a killed numapin left unfinished.

use crate::host_error::HostError;
use crate::idset::IdSet;
use crate::libvirt::Scope;
use crate::planner::Action;

use super::host::DomainHost;
use super::journal::Record;
use super::transaction::show;

/// The result of undoing a record's started steps.
#[derive(Debug, Default)]
pub struct Undo {
    pub restored: bool,
    /// The domain stopped: nothing left to restore.
    pub gone: bool,
    /// libvirt could not be reached: try again later.
    pub unreachable: bool,
    pub errors: Vec<String>,
}

/// Undoes the started steps of `record` in reverse order, then reads the
/// state back and compares it with the prior state. Every step is undone
/// even when an earlier undo fails: each restores an independent setting.
pub fn rollback(host: &dyn DomainHost, record: &Record) -> Undo {
    let d = &record.domain;
    let prior = &record.prior;
    let mut undo = Undo::default();
    for step in record.steps[..record.attempted.min(record.steps.len())]
        .iter()
        .rev()
    {
        let result = match step {
            Action::Vcpupin { vcpu, .. } => match prior.pins.vcpus.get(vcpu) {
                Some(cpus) => host.pin_vcpu(d, *vcpu, cpus, Scope::Live),
                None => Ok(()),
            },
            Action::Emulatorpin { .. } => host.pin_emulator(d, &prior.pins.emulator, Scope::Live),
            Action::Iothreadpin { iothread, .. } => match prior.pins.iothreads.get(iothread) {
                Some(cpus) => host.pin_iothread(d, *iothread, cpus, Scope::Live),
                None => Ok(()),
            },
            // Only when it changed: libvirt refuses any nodeset call on a
            // strict binding, even one that changes nothing.
            Action::SetMemoryNodeset { .. } => match &prior.binding.nodeset {
                Some(nodeset) => match host.memory_binding(d) {
                    Ok(now) if now.nodeset.as_ref() == Some(nodeset) => Ok(()),
                    Ok(_) => host.set_memory_nodeset(d, nodeset, Scope::Live),
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            // Pages that moved go back where they came from.
            Action::MigratePages { from, to, .. } => host.migrate_pages(d, to, from),
            // A cell's RAM goes back over the nodes it was on, in the
            // proportions it had there.
            Action::MoveCellMemory { cell, .. } => match prior.cell_memory_mib.get(cell) {
                Some(was) if was.values().any(|&m| m > 0) => host.move_cell_memory(d, *cell, was),
                _ => Ok(()),
            },
        };
        match result {
            Ok(()) => tracing::info!(domain = %d.name, action = %step, "undone"),
            Err(e) if e.is_gone() => {
                undo.gone = true;
                return undo;
            }
            Err(e) => {
                undo.unreachable |= e.is_unreachable();
                tracing::error!(domain = %d.name, action = %step, error = %e, "undo failed");
                undo.errors.push(e.to_string());
            }
        }
    }
    match differences(host, record, Expected::Prior) {
        Ok(mismatches) => {
            for m in &mismatches {
                tracing::error!(domain = %d.name, mismatch = %m, "not restored");
            }
            undo.restored = mismatches.is_empty() && undo.errors.is_empty();
            undo.errors.extend(mismatches);
        }
        Err(e) if e.is_gone() => undo.gone = true,
        Err(e) => {
            undo.unreachable |= e.is_unreachable();
            undo.errors.push(format!("read back: {e}"));
        }
    }
    undo
}

/// The state a read-back is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// As the domain was before the transaction.
    Prior,
    /// As the transaction's steps set it.
    Target,
}

/// Differences between the domain now and `expected`, for the settings the
/// record's started steps touched. Memory moves are not compared: where
/// pages are is not a libvirt setting, and numapin runs those moves itself.
pub fn differences(
    host: &dyn DomainHost,
    record: &Record,
    expected: Expected,
) -> Result<Vec<String>, HostError> {
    let d = &record.domain;
    let prior = &record.prior;
    let pins = host.pins(d)?;
    let mut out = Vec::new();
    let mut compare = |what: String, now: Option<&IdSet>, prior: Option<&IdSet>, target: &IdSet| {
        let want = match expected {
            Expected::Prior => prior,
            Expected::Target => Some(target),
        };
        // A setting the prior state does not have (a vCPU plugged since)
        // has nothing to be restored to.
        if want.is_some() && now != want {
            out.push(format!("{what} is {}, expected {}", show(now), show(want)));
        }
    };
    for step in &record.steps[..record.attempted.min(record.steps.len())] {
        match step {
            Action::Vcpupin { vcpu, cpus } => compare(
                format!("vCPU {vcpu}'s pin"),
                pins.vcpus.get(vcpu),
                prior.pins.vcpus.get(vcpu),
                cpus,
            ),
            Action::Emulatorpin { cpus } => compare(
                "the emulator pin".into(),
                Some(&pins.emulator),
                Some(&prior.pins.emulator),
                cpus,
            ),
            Action::Iothreadpin { iothread, cpus } => compare(
                format!("iothread {iothread}'s pin"),
                pins.iothreads.get(iothread),
                prior.pins.iothreads.get(iothread),
                cpus,
            ),
            Action::SetMemoryNodeset { nodeset } => {
                let now = host.memory_binding(d)?.nodeset;
                compare(
                    "the memory nodeset".into(),
                    now.as_ref(),
                    prior.binding.nodeset.as_ref(),
                    nodeset,
                );
            }
            Action::MigratePages { .. } | Action::MoveCellMemory { .. } => {}
        }
    }
    Ok(out)
}
