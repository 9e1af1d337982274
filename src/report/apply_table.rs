//! What `numapin apply` did, per domain.

use std::fmt::Write;

use crate::apply::recovery::{Recovered, RecoveryResult};
use crate::apply::{DomainOutcome, Outcome};

pub fn render_recovered(recovered: &[Recovered]) -> String {
    let mut s = String::new();
    for r in recovered {
        let what = match &r.result {
            RecoveryResult::RolledBack => "rolled back".to_string(),
            RecoveryResult::Completed => "completed: every step had landed".to_string(),
            RecoveryResult::Obsolete { reason } => format!("dropped: {reason}"),
            RecoveryResult::Failed { errors } => {
                format!("ROLLBACK FAILED, left alone: {}", errors.join("; "))
            }
        };
        let _ = writeln!(
            s,
            "unfinished transaction of {} ({} step(s) started): {what}",
            r.domain.name, r.attempted
        );
    }
    s
}

pub fn render(outcomes: &[DomainOutcome], dry_run: bool) -> String {
    let mut s = String::new();
    if outcomes.is_empty() {
        let _ = writeln!(s, "nothing to change: every managed domain is in place");
        return s;
    }
    for o in outcomes {
        let head = match &o.outcome {
            _ if dry_run => format!("would apply {} step(s)", o.actions.len()),
            Outcome::Applied {
                steps,
                persisted,
                persist_error,
            } => {
                let mut t = format!("applied {steps} step(s)");
                match (persisted, persist_error) {
                    (Some(true), _) => t.push_str(", persisted"),
                    (Some(false), Some(e)) => t.push_str(&format!(", NOT persisted: {e}")),
                    _ => {}
                }
                t
            }
            Outcome::Vanished { during } => format!("stopped during {during}; skipped"),
            Outcome::Skipped { reason } => format!("skipped: {reason}"),
            Outcome::RolledBack {
                failed_step,
                action,
                error,
                restored,
                undo_errors,
            } => {
                let mut t = format!(
                    "FAILED at step {failed_step} ({action}): {error}; rolled back, {}",
                    if *restored {
                        "prior state verified"
                    } else {
                        "PRIOR STATE NOT VERIFIED"
                    }
                );
                for e in undo_errors {
                    t.push_str(&format!("\n    undo: {e}"));
                }
                t
            }
            Outcome::RollbackPending {
                failed_step,
                action,
                error,
                ..
            } => format!(
                "FAILED at step {failed_step} ({action}): {error}; rollback pending (libvirt unreachable), kept in the journal"
            ),
        };
        let _ = writeln!(s, "{}: {head}", o.name);
        for (i, a) in o.actions.iter().enumerate() {
            let _ = writeln!(s, "  {:>2}. {a}", i + 1);
        }
    }
    s
}
