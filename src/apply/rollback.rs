//! Undoing a transaction's started steps, in reverse order, and checking
//! that the domain reads back as it was. Used when a step fails and when
//! a later start finds a transaction a killed numapin left unfinished.

use crate::host_error::HostError;
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
    match read_back_matches(host, record) {
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

/// Differences between the domain now and its prior state, for the
/// settings the record's steps touched.
fn read_back_matches(host: &dyn DomainHost, record: &Record) -> Result<Vec<String>, HostError> {
    let d = &record.domain;
    let prior = &record.prior;
    let pins = host.pins(d)?;
    let mut out = Vec::new();
    for step in &record.steps[..record.attempted.min(record.steps.len())] {
        match step {
            Action::Vcpupin { vcpu, .. } => {
                if let Some(was) = prior.pins.vcpus.get(vcpu)
                    && pins.vcpus.get(vcpu) != Some(was)
                {
                    out.push(format!(
                        "vCPU {vcpu} is on {}, was {was}",
                        show(pins.vcpus.get(vcpu))
                    ));
                }
            }
            Action::Emulatorpin { .. } if pins.emulator != prior.pins.emulator => {
                out.push(format!(
                    "emulator is on {}, was {}",
                    pins.emulator, prior.pins.emulator
                ));
            }
            Action::Iothreadpin { iothread, .. } => {
                if let Some(was) = prior.pins.iothreads.get(iothread)
                    && pins.iothreads.get(iothread) != Some(was)
                {
                    out.push(format!(
                        "iothread {iothread} is on {}, was {was}",
                        show(pins.iothreads.get(iothread))
                    ));
                }
            }
            Action::SetMemoryNodeset { .. } => {
                let now = host.memory_binding(d)?.nodeset;
                if now != prior.binding.nodeset {
                    out.push(format!(
                        "memory nodeset is {}, was {}",
                        show(now.as_ref()),
                        show(prior.binding.nodeset.as_ref())
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
