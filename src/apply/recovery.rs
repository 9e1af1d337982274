//! Rolling back transactions a previous numapin left unfinished (it was
//! killed, or lost libvirt mid-undo). Runs before anything else changes
//! the host.

use serde::Serialize;

use crate::host_error::HostError;
use crate::libvirt::DomainRef;

use super::host::DomainHost;
use super::journal::{Journal, JournalError};
use super::rollback::rollback;

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
    /// The domain stopped or was restarted since: its threads, and so the
    /// half-applied pins, are gone with it.
    Obsolete { reason: String },
    /// The undo ran but the prior state did not read back; the record is
    /// kept and the domain is not touched until an operator looks.
    Failed { errors: Vec<String> },
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

/// Rolls back every unfinished transaction in the journal.
pub fn recover(host: &dyn DomainHost, journal: &Journal) -> Result<Vec<Recovered>, RecoveryError> {
    let mut out = Vec::new();
    for record in journal.pending()? {
        let d = &record.domain;
        let obsolete = match host.domain(&d.uuid) {
            Err(e) if e.is_gone() => Some("the domain is no longer running".to_string()),
            Err(e) => {
                return Err(RecoveryError::Unreachable {
                    domain: d.name.clone(),
                    source: e,
                });
            }
            Ok(now) if now.id != d.id => Some(format!(
                "the domain was restarted since (id {} -> {})",
                d.id, now.id
            )),
            Ok(_) => None,
        };
        let result = match obsolete {
            Some(reason) => RecoveryResult::Obsolete { reason },
            None => {
                tracing::warn!(domain = %d.name, steps = record.attempted, "rolling back an unfinished transaction");
                let undo = rollback(host, &record);
                if undo.unreachable {
                    return Err(RecoveryError::Unreachable {
                        domain: d.name.clone(),
                        source: HostError::unavailable("rollback", &undo.errors.join("; ")),
                    });
                }
                if undo.gone {
                    RecoveryResult::Obsolete {
                        reason: "the domain stopped during the rollback".into(),
                    }
                } else if undo.restored {
                    RecoveryResult::RolledBack
                } else {
                    RecoveryResult::Failed {
                        errors: undo.errors,
                    }
                }
            }
        };
        match &result {
            RecoveryResult::Failed { errors } => {
                tracing::error!(domain = %d.name, errors = ?errors, "unfinished transaction could not be rolled back; journal record kept")
            }
            _ => {
                tracing::info!(domain = %d.name, result = ?result, "unfinished transaction resolved");
                journal.remove(&d.uuid)?;
            }
        }
        out.push(Recovered {
            domain: d.clone(),
            attempted: record.attempted,
            result,
        });
    }
    Ok(out)
}
