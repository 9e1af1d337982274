//! libvirt domain lifecycle events, so a domain is placed as soon as it
//! starts, resumes or arrives by migration instead of at the next interval.
//!
//! libvirt delivers events (and keepalive replies) only while an event loop
//! runs: one process-wide thread runs libvirt's default loop. Callbacks run
//! on that thread and only hand the event to a sink (the daemon's channel).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::{Arc, Once};
use std::thread;

use virt::connect::Connect;
use virt::sys;

/// What happened to a domain, as libvirt's lifecycle event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    Other(i32),
}

impl Lifecycle {
    fn from_raw(event: c_int) -> Self {
        match event as u32 {
            sys::VIR_DOMAIN_EVENT_DEFINED => Lifecycle::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => Lifecycle::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => Lifecycle::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => Lifecycle::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => Lifecycle::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => Lifecycle::Stopped,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => Lifecycle::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Lifecycle::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => Lifecycle::Crashed,
            other => Lifecycle::Other(other as i32),
        }
    }

    /// Whether placement may need to change: a domain appeared, came back
    /// or left (freeing room).
    pub fn needs_cycle(self) -> bool {
        matches!(
            self,
            Lifecycle::Started | Lifecycle::Resumed | Lifecycle::Stopped | Lifecycle::Defined
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Domain {
        name: String,
        uuid: String,
        what: Lifecycle,
        /// libvirt's detail code (e.g. started by migration).
        detail: i32,
    },
    /// A libvirt job (migration, dump, backup, block job) on a domain
    /// ended: a domain held for it can be placed now.
    JobEnded { name: String },
    /// The connection closed (libvirtd stopped or stopped answering).
    ConnectionClosed,
}

pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

static EVENT_LOOP: Once = Once::new();

/// Starts libvirt's event loop thread, once per process. Must run before
/// the connection that registers callbacks is opened.
pub fn start_event_loop() {
    EVENT_LOOP.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "cannot start libvirt's event loop; domain events are off");
            return;
        }
        let spawned = thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::error!(error = %e, "libvirt event loop");
                        thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start libvirt's event loop thread");
        }
    });
}

/// Registrations on one connection, removed when the connection's thread
/// ends.
pub struct Registration {
    ids: Vec<c_int>,
}

/// The domain's name, inside a callback.
///
/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn domain_name(dom: sys::virDomainPtr) -> String {
    // SAFETY: per the caller; the name is owned by the domain object.
    unsafe {
        let name_ptr = sys::virDomainGetName(dom);
        if name_ptr.is_null() {
            String::new()
        } else {
            CStr::from_ptr(name_ptr).to_string_lossy().into_owned()
        }
    }
}

/// Hands a JobEnded event to the sink.
///
/// # Safety
/// As for `on_lifecycle`: `opaque` is a registered sink, `dom` valid.
unsafe fn job_ended(dom: sys::virDomainPtr, opaque: *mut c_void) {
    // SAFETY: per the caller.
    unsafe {
        let sink = &*(opaque as *const EventSink);
        sink(Event::JobEnded {
            name: domain_name(dom),
        });
    }
}

unsafe extern "C" fn on_job_completed(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _params: sys::virTypedParameterPtr,
    _nparams: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: as for `on_lifecycle`.
    unsafe { job_ended(dom, opaque) }
}

unsafe extern "C" fn on_block_job(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _disk: *const c_char,
    _kind: c_int,
    status: c_int,
    opaque: *mut c_void,
) {
    // Only the end of a block job matters (completed, failed, cancelled;
    // READY means a copy is mirroring and still running).
    if status as u32 == sys::VIR_DOMAIN_BLOCK_JOB_READY {
        return;
    }
    // SAFETY: as for `on_lifecycle`.
    unsafe { job_ended(dom, opaque) }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the boxed sink registered below, alive until
    // libvirt calls `free_sink`; `dom` is valid during the callback.
    unsafe {
        let sink = &*(opaque as *const EventSink);
        let name = domain_name(dom);
        let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        let uuid = if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        } else {
            String::new()
        };
        sink(Event::Domain {
            name,
            uuid,
            what: Lifecycle::from_raw(event),
            detail,
        });
    }
    0
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, _reason: c_int, opaque: *mut c_void) {
    // SAFETY: as for `on_lifecycle`.
    unsafe {
        let sink = &*(opaque as *const EventSink);
        sink(Event::ConnectionClosed);
    }
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: created by Box::into_raw in `register`, freed once by libvirt.
    unsafe { drop(Box::from_raw(opaque as *mut EventSink)) };
}

/// Registers lifecycle and close callbacks on `conn`, and keepalive so a
/// libvirtd that stops answering is noticed within seconds.
pub fn register(conn: &Connect, sink: &EventSink) -> Option<Registration> {
    let _ = conn.set_keep_alive(5, 3);
    // SAFETY: the callback has the lifecycle signature libvirt calls it
    // with for VIR_DOMAIN_EVENT_ID_LIFECYCLE (the generic type is how the
    // C API passes every callback); opaque and freecb follow libvirt's
    // ownership rules.
    unsafe {
        let lifecycle_cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            c_int,
            c_int,
            *mut c_void,
        ) -> c_int = on_lifecycle;
        let job_cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            sys::virTypedParameterPtr,
            c_int,
            *mut c_void,
        ) = on_job_completed;
        let block_cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            *const c_char,
            c_int,
            c_int,
            *mut c_void,
        ) = on_block_job;
        let callbacks = [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lifecycle_cb as *const c_void,
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                job_cb as *const c_void,
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                block_cb as *const c_void,
            ),
        ];
        let mut ids = Vec::new();
        for (event, cb) in callbacks {
            let generic: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void) =
                std::mem::transmute(cb);
            let opaque = Box::into_raw(Box::new(sink.clone())) as *mut c_void;
            let id = sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                event as c_int,
                Some(generic),
                opaque,
                Some(free_sink),
            );
            if id < 0 {
                drop(Box::from_raw(opaque as *mut EventSink));
                tracing::warn!(event, error = %virt::error::Error::last_error(), "cannot register for domain events; relying on the interval");
            } else {
                ids.push(id);
            }
        }
        let close_opaque = Box::into_raw(Box::new(sink.clone())) as *mut c_void;
        if sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(on_close),
            close_opaque,
            Some(free_sink),
        ) < 0
        {
            drop(Box::from_raw(close_opaque as *mut EventSink));
        }
        Some(Registration { ids })
    }
}

/// Removes the callbacks, so the connection can be freed.
pub fn deregister(conn: &Connect, reg: Registration) {
    // SAFETY: ids and callback returned by `register` on this connection.
    unsafe {
        for id in reg.ids {
            sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
        }
        sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(on_close));
    }
}
