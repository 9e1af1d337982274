//! Finishing transactions left unfinished: by a numapin that was killed,
//! or by a step or an undo libvirt did not answer in time (the call may
//! still land later). Runs before anything else changes the host at start,
//! and at the start of every daemon cycle.
//!
//! A record whose every step reads back as its target (the call numapin
//! gave up on landed after all) is kept as applied: rolling it back would
//! only move the domain again. Anything else is rolled back.

use serde::Serialize;

use crate::host_error::HostError;
use crate::libvirt::DomainRef;

use super::host::DomainHost;
use super::journal::{Journal, JournalError, Record};
use super::rollback::{Expected, differences, rollback};
use crate::planner::Action;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovered {
    pub domain: DomainRef,
    /// Steps that had been started.
    pub attempted: usize,
    pub result: RecoveryResult,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RecoveryResult {
    /// The started steps were undone and the prior state read back.
    RolledBack,
    /// Every step had been started and reads back as planned: the
    /// transaction is complete, and kept.
    Completed,
    /// The domain stopped or was restarted since: its threads, and so the
    /// half-applied pins, are gone with it.
    Obsolete { reason: String },
    /// The undo ran but the prior state did not read back; the record is
    /// kept and the domain is not touched until an operator looks.
    Failed { errors: Vec<String> },
}

impl RecoveryResult {
    /// Whether the pins now on the domain are numapin's own to record.
    pub fn leaves_numapins_pins(&self) -> bool {
        matches!(self, RecoveryResult::RolledBack | RecoveryResult::Completed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// libvirt cannot be reached: nothing may change until the unfinished
    /// transactions are rolled back.
    #[error("rolling back the unfinished transaction of {domain}")]
    Unreachable {
        domain: String,
        #[source]
        source: HostError,
    },
}

/// Why a domain whose rollback did not verify is left alone.
pub fn failed_hold_reason(errors: &[String]) -> String {
    format!(
        "a failed change could not be rolled back ({}); retried by the daemon each cycle and by numapin recover",
        errors.join("; ")
    )
}

/// What one pass over the journal did.
#[derive(Debug, Default)]
pub struct Pass {
    pub resolved: Vec<Recovered>,
    /// Records left for a later pass because libvirt could not be asked
    /// (down, or busy past the call timeout), with the error.
    pub waiting: Vec<(DomainRef, HostError)>,
}

/// Resolves every unfinished transaction in the journal. Fails on the
/// first record libvirt cannot help resolve: at start, nothing may change
/// until all are.
pub fn recover(host: &dyn DomainHost, journal: &Journal) -> Result<Vec<Recovered>, RecoveryError> {
    let pass = recover_pass(host, journal)?;
    match pass.waiting.into_iter().next() {
        Some((d, source)) => Err(RecoveryError::Unreachable {
            domain: d.name,
            source,
        }),
        None => Ok(pass.resolved),
    }
}

/// Resolves what it can of the journal; the domains it cannot resolve yet
/// are in [`Pass::waiting`], and must be left alone until a later pass.
pub fn recover_pass(host: &dyn DomainHost, journal: &Journal) -> Result<Pass, JournalError> {
    let mut pass = Pass::default();
    for record in journal.pending()? {
        let d = record.domain.clone();
        match resolve(host, &record) {
            Ok(result) => {
                match &result {
                    RecoveryResult::Failed { errors } => {
                        tracing::error!(domain = %d.name, errors = ?errors, "unfinished transaction could not be rolled back; journal record kept")
                    }
                    _ => {
                        tracing::info!(domain = %d.name, result = ?result, "unfinished transaction resolved");
                        journal.remove(&d.uuid)?;
                    }
                }
                pass.resolved.push(Recovered {
                    domain: d,
                    attempted: record.attempted,
                    result,
                });
            }
            Err(e) => pass.waiting.push((d, e)),
        }
    }
    Ok(pass)
}

/// Resolves one record; an error means libvirt could not be asked.
fn resolve(host: &dyn DomainHost, record: &Record) -> Result<RecoveryResult, HostError> {
    let d = &record.domain;
    match host.domain(&d.uuid) {
        Err(e) if e.is_gone() => {
            return Ok(RecoveryResult::Obsolete {
                reason: "the domain is no longer running".into(),
            });
        }
        Err(e) => return Err(e),
        Ok(now) if now.id != d.id => {
            return Ok(RecoveryResult::Obsolete {
                reason: format!("the domain was restarted since (id {} -> {})", d.id, now.id),
            });
        }
        Ok(_) => {}
    }
    match landed(host, record) {
        Ok(true) => return Ok(RecoveryResult::Completed),
        Ok(false) => {}
        Err(e) if e.is_gone() => {
            return Ok(RecoveryResult::Obsolete {
                reason: "the domain stopped during recovery".into(),
            });
        }
        Err(e) if e.is_unreachable() => return Err(e),
        // A read refused: rolling back reads again, and says why.
        Err(_) => {}
    }
    tracing::warn!(domain = %d.name, steps = record.attempted, "rolling back an unfinished transaction");
    let undo = rollback(host, record);
    if undo.unreachable {
        return Err(HostError::unavailable("rollback", &undo.errors.join("; ")));
    }
    Ok(if undo.gone {
        RecoveryResult::Obsolete {
            reason: "the domain stopped during the rollback".into(),
        }
    } else if undo.restored {
        RecoveryResult::RolledBack
    } else {
        RecoveryResult::Failed {
            errors: undo.errors,
        }
    })
}

/// Whether every step was started and the domain reads back as their
/// targets. Only for records of libvirt settings: a memory move numapin
/// runs itself cannot land after numapin gave up on it, and where pages
/// are is not read back exactly, so such records are rolled back.
fn landed(host: &dyn DomainHost, record: &Record) -> Result<bool, HostError> {
    if record.attempted < record.steps.len()
        || record.steps.iter().any(|s| {
            matches!(
                s,
                Action::MigratePages { .. } | Action::MoveCellMemory { .. }
            )
        })
    {
        return Ok(false);
    }
    Ok(differences(host, record, Expected::Target)?.is_empty())
}
