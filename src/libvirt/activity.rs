//! What a domain is doing besides running its guest: its state and any
//! job libvirt runs on it (migration, save, dump, snapshot, backup, block
//! jobs). numapin does not touch a domain that is not running or has a job
//! in progress: moving its threads or pages would race libvirt's own work.

use std::ffi::CString;
use std::os::raw::{c_int, c_uint};

use serde::{Deserialize, Serialize};
use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use crate::host_error::HostError;

use super::calls::DomainRef;
use super::connection::Libvirt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// running, paused, shutting down, crashed, pm-suspended, ...
    pub state: String,
    /// Why it is in that state, when it is not simply running.
    pub reason: Option<String>,
    /// The job in progress, if any: "outgoing migration", "dump",
    /// "block copy on vda", ...
    pub job: Option<String>,
}

impl Activity {
    pub fn running() -> Self {
        Self {
            state: "running".into(),
            reason: None,
            job: None,
        }
    }

    /// Why numapin must leave the domain alone now, if it must.
    pub fn hold(&self) -> Option<String> {
        if let Some(job) = &self.job {
            return Some(format!("busy: {job} in progress; retried when it ends"));
        }
        if self.state != "running" {
            return Some(match &self.reason {
                Some(r) => format!("{} ({r}); re-checked when it runs", self.state),
                None => format!("{}; re-checked when it runs", self.state),
            });
        }
        None
    }
}

fn state_name(state: c_int) -> &'static str {
    match state as u32 {
        // Blocked on a resource is still a running guest.
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => "running",
        sys::VIR_DOMAIN_PAUSED => "paused",
        sys::VIR_DOMAIN_SHUTDOWN => "shutting down",
        sys::VIR_DOMAIN_SHUTOFF => "shut off",
        sys::VIR_DOMAIN_CRASHED => "crashed",
        sys::VIR_DOMAIN_PMSUSPENDED => "pm-suspended",
        _ => "in no known state",
    }
}

fn paused_reason(reason: c_int) -> Option<&'static str> {
    Some(match reason as u32 {
        sys::VIR_DOMAIN_PAUSED_USER => "paused by a user",
        sys::VIR_DOMAIN_PAUSED_MIGRATION => "migration",
        sys::VIR_DOMAIN_PAUSED_SAVE => "save",
        sys::VIR_DOMAIN_PAUSED_DUMP => "dump",
        sys::VIR_DOMAIN_PAUSED_IOERROR => "I/O error",
        sys::VIR_DOMAIN_PAUSED_WATCHDOG => "watchdog",
        sys::VIR_DOMAIN_PAUSED_FROM_SNAPSHOT | sys::VIR_DOMAIN_PAUSED_SNAPSHOT => "snapshot",
        sys::VIR_DOMAIN_PAUSED_SHUTTING_DOWN => "shutting down",
        sys::VIR_DOMAIN_PAUSED_CRASHED => "crashed",
        sys::VIR_DOMAIN_PAUSED_STARTING_UP => "starting up",
        sys::VIR_DOMAIN_PAUSED_POSTCOPY | sys::VIR_DOMAIN_PAUSED_POSTCOPY_FAILED => {
            "post-copy migration"
        }
        _ => return None,
    })
}

fn job_name(operation: Option<i32>) -> String {
    match operation.map(|o| o as u32) {
        Some(sys::VIR_DOMAIN_JOB_OPERATION_START) => "start",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_SAVE) => "save",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_RESTORE) => "restore",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN) => "incoming migration",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT) => "outgoing migration",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_SNAPSHOT)
        | Some(sys::VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_REVERT)
        | Some(sys::VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE) => "snapshot",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_DUMP) => "dump",
        Some(sys::VIR_DOMAIN_JOB_OPERATION_BACKUP) => "backup",
        _ => "libvirt job",
    }
    .to_string()
}

fn block_job_name(kind: c_int) -> &'static str {
    match kind as u32 {
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_PULL => "block pull",
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY => "block copy",
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT | sys::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT => {
            "block commit"
        }
        sys::VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP => "backup",
        _ => "block job",
    }
}

/// The current job's operation code, None when no job runs. Called
/// through the C API directly: `virt`'s `job_stats` builds a Vec from the
/// parameter array even when libvirt returns none (a null pointer).
fn current_job(dom: &Domain) -> Result<Option<Option<i32>>, Error> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: c_int = 0;
    // SAFETY: out-parameters; libvirt allocates `params`, freed below.
    let rc =
        unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut nparams, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    let mut operation: c_int = 0;
    let found = !params.is_null()
        // SAFETY: params/nparams as returned by libvirt.
        && unsafe {
            sys::virTypedParamsGetInt(
                params,
                nparams,
                sys::VIR_DOMAIN_JOB_OPERATION.as_ptr(),
                &mut operation,
            )
        } == 1;
    if !params.is_null() {
        // SAFETY: frees what libvirt allocated, once.
        unsafe { sys::virTypedParamsFree(params, nparams) };
    }
    Ok((kind as u32 != sys::VIR_DOMAIN_JOB_NONE).then_some(found.then_some(operation)))
}

fn read(dom: &Domain, disks: &[String]) -> Result<Activity, Error> {
    let (mut state, mut reason): (c_int, c_int) = (0, 0);
    // SAFETY: plain out-parameters.
    if unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) } < 0 {
        return Err(Error::last_error());
    }
    let reason_text = if state as u32 == sys::VIR_DOMAIN_PAUSED {
        paused_reason(reason).map(str::to_string)
    } else {
        None
    };
    let mut job = current_job(dom)?.map(job_name);
    if job.is_none() {
        for disk in disks {
            let Ok(name) = CString::new(disk.as_str()) else {
                continue;
            };
            // SAFETY: zeroed plain struct filled by libvirt.
            let mut info: sys::virDomainBlockJobInfo = unsafe { std::mem::zeroed() };
            let found = unsafe {
                sys::virDomainGetBlockJobInfo(dom.as_ptr(), name.as_ptr(), &mut info, 0 as c_uint)
            };
            if found > 0 {
                job = Some(format!("{} on {disk}", block_job_name(info.type_)));
                break;
            }
        }
    }
    Ok(Activity {
        state: state_name(state).to_string(),
        reason: reason_text,
        job,
    })
}

/// What one reading needs of a running domain, from one call.
#[derive(Debug)]
pub struct DomainReading<T> {
    pub live_xml: String,
    pub persistent_xml: Option<String>,
    /// What the caller's `parse` made of the live XML.
    pub parsed: T,
    pub activity: Activity,
}

impl Libvirt {
    /// The live XML, the persistent XML when there is one, and the state
    /// and jobs, from one lookup on the connection's thread: a reading of
    /// every domain each cycle made two calls of it (XML, then activity)
    /// and looked the domain up twice, and with 100 domains those calls
    /// were most of the daemon's CPU. `parse` turns the live XML into the
    /// caller's value and the disk targets whose block jobs count.
    pub fn read_running<T, F>(&self, d: &DomainRef, parse: F) -> Result<DomainReading<T>, HostError>
    where
        T: Send + 'static,
        F: FnOnce(&str) -> (T, Vec<String>) + Send + 'static,
    {
        let uuid = d.uuid.clone();
        self.call(&format!("read {}", d.name), move |c| {
            let dom = c.lookup_domain_by_uuid_string(&uuid)?;
            let live_xml = dom.xml_desc(0)?;
            let persistent_xml = if dom.is_persistent()? {
                Some(dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
            } else {
                None
            };
            let (parsed, disks) = parse(&live_xml);
            let activity = read(&dom, &disks)?;
            Ok(DomainReading {
                live_xml,
                persistent_xml,
                parsed,
                activity,
            })
        })
    }

    /// The domain's state and job, `disks` being its disk targets.
    pub fn activity(&self, d: &DomainRef, disks: &[String]) -> Result<Activity, HostError> {
        let (uuid, disks) = (d.uuid.clone(), disks.to_vec());
        self.call(&format!("state and jobs of {}", d.name), move |c| {
            read(&c.lookup_domain_by_uuid_string(&uuid)?, &disks)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_domain_without_jobs_is_not_held() {
        assert_eq!(Activity::running().hold(), None);
    }

    #[test]
    fn jobs_and_states_hold_with_a_reason() {
        let mut a = Activity::running();
        a.job = Some("outgoing migration".into());
        assert!(a.hold().unwrap().contains("outgoing migration in progress"));
        let paused = Activity {
            state: "paused".into(),
            reason: Some("paused by a user".into()),
            job: None,
        };
        assert_eq!(
            paused.hold().unwrap(),
            "paused (paused by a user); re-checked when it runs"
        );
    }
}
