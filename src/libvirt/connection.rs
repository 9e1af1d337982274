//! One libvirt connection, owned by a thread of its own.
//!
//! libvirt calls block, and any of them can hang (a stuck QEMU monitor, a
//! libvirtd that stopped answering). So no caller ever touches the
//! connection: each call is sent to the connection's thread and the caller
//! waits a bounded time for the answer. A call that does not answer in time
//! makes the connection be abandoned (its thread exits once the call finally
//! returns) and the next call opens a new one. A connection whose peer went
//! away is dropped the same way, and reopened with exponential backoff so a
//! restarting libvirtd is not hammered.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use virt::connect::Connect;

use virt::sys;

use crate::host_error::{ErrorKind, HostError};

use super::events::{self, EventSink};

type Job = Box<dyn FnOnce(&Connect) + Send>;

/// First wait before reopening after a failed open; doubles up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A libvirt connection that reconnects by itself. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub struct Libvirt {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    timeout: Duration,
    /// Receives domain events from every connection opened, when set.
    events: Option<EventSink>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    worker: Option<Worker>,
    /// Counts opened connections, so a failed call only drops the
    /// connection it ran on, not a newer one.
    generation: u64,
    backoff: Option<Duration>,
    next_attempt: Option<Instant>,
}

#[derive(Clone)]
struct Worker {
    jobs: mpsc::Sender<Job>,
    generation: u64,
}

impl Libvirt {
    /// Does not connect yet: the first call does.
    pub fn new(uri: &str, timeout: Duration) -> Self {
        Self::build(uri, timeout, None)
    }

    /// Like [`Libvirt::new`], and every connection it opens delivers
    /// domain lifecycle events (and its own closing) to `sink`.
    pub fn with_events(uri: &str, timeout: Duration, sink: EventSink) -> Self {
        events::start_event_loop();
        Self::build(uri, timeout, Some(sink))
    }

    fn build(uri: &str, timeout: Duration, events: Option<EventSink>) -> Self {
        Self {
            inner: Arc::new(Inner {
                uri: uri.to_string(),
                timeout,
                events,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Opens the connection now if there is none (ignoring any backoff).
    pub fn connect(&self) -> Result<(), HostError> {
        self.worker(true).map(|_| ())
    }

    /// Whether a connection is open (it may still turn out dead on use).
    pub fn is_connected(&self) -> bool {
        self.lock().worker.is_some()
    }

    /// Runs `f` on the connection's thread and waits at most the timeout.
    /// `op` names the call in errors, e.g. "vcpupin web-01 vCPU 3".
    pub fn call<R, F>(&self, op: &str, f: F) -> Result<R, HostError>
    where
        R: Send + 'static,
        F: FnOnce(&Connect) -> Result<R, virt::error::Error> + Send + 'static,
    {
        let worker = self.worker(false)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            // A panic in a call must not take the connection's thread (and
            // every later call) with it.
            let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))) {
                Ok(r) => r,
                Err(_) => {
                    let _ = tx.send((Err(None), true));
                    return;
                }
            };
            let result = result.map_err(Some);
            // A failed call on a dead connection looks like any other
            // error; ask the connection itself whether it is still alive.
            let alive = result.is_ok() || conn.is_alive().unwrap_or(false);
            let _ = tx.send((result, alive));
        });
        if worker.jobs.send(job).is_err() {
            self.drop_worker(worker.generation);
            return Err(HostError::unavailable(
                op,
                "the connection's thread is gone",
            ));
        }
        match rx.recv_timeout(self.inner.timeout) {
            Ok((Ok(value), _)) => Ok(value),
            Ok((Err(None), _)) => Err(HostError::new(op, ErrorKind::Failed, "the call panicked")),
            Ok((Err(Some(e)), alive)) => {
                if !alive {
                    tracing::warn!(uri = %self.inner.uri, error = %e.message(), "libvirt connection lost");
                    self.drop_worker(worker.generation);
                    return Err(HostError::unavailable(op, e.message()));
                }
                Err(classify(op, &e))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(uri = %self.inner.uri, op, timeout = ?self.inner.timeout, "libvirt call timed out; abandoning the connection");
                self.drop_worker(worker.generation);
                Err(HostError::timeout(op, self.inner.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.drop_worker(worker.generation);
                Err(HostError::unavailable(op, "the connection's thread ended"))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (every update is a single assignment), so poisoning is ignored.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn drop_worker(&self, generation: u64) {
        let mut state = self.lock();
        if state.worker.as_ref().map(|w| w.generation) == Some(generation) {
            state.worker = None;
        }
    }

    /// The open connection, opening one if the backoff allows.
    fn worker(&self, ignore_backoff: bool) -> Result<Worker, HostError> {
        let mut state = self.lock();
        if let Some(w) = &state.worker {
            return Ok(w.clone());
        }
        if !ignore_backoff
            && let Some(at) = state.next_attempt
            && let Some(wait) = at.checked_duration_since(Instant::now())
        {
            return Err(HostError::unavailable(
                "connect",
                &format!(
                    "{} is not reachable; next attempt in {:.1} s",
                    self.inner.uri,
                    wait.as_secs_f64()
                ),
            ));
        }
        // Opening under the lock: concurrent callers wait for this attempt
        // instead of starting their own.
        let events = self.inner.events.clone();
        match spawn_worker(
            &self.inner.uri,
            self.inner.timeout,
            state.generation + 1,
            events,
        ) {
            Ok(worker) => {
                tracing::info!(uri = %self.inner.uri, "connected to libvirt");
                state.generation += 1;
                state.backoff = None;
                state.next_attempt = None;
                state.worker = Some(worker.clone());
                Ok(worker)
            }
            Err(e) => {
                let backoff = state
                    .backoff
                    .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                state.backoff = Some(backoff);
                state.next_attempt = Some(Instant::now() + backoff);
                tracing::warn!(uri = %self.inner.uri, error = %e, retry_in = ?backoff, "cannot connect to libvirt");
                Err(e)
            }
        }
    }
}

fn spawn_worker(
    uri: &str,
    timeout: Duration,
    generation: u64,
    events: Option<EventSink>,
) -> Result<Worker, HostError> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let (opened_tx, opened) = mpsc::sync_channel(1);
    let thread_uri = uri.to_string();
    thread::Builder::new()
        .name(format!("libvirt-{generation}"))
        .spawn(move || {
            let conn = match Connect::open(Some(&thread_uri)) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    conn
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            // Ends when every sender is dropped: the connection was
            // abandoned or the last handle went away.
            let registration = events
                .as_ref()
                .and_then(|sink| events::register(&conn, sink));
            // Dropping `conn` afterwards closes it.
            while let Ok(job) = queue.recv() {
                job(&conn);
            }
            if let Some(r) = registration {
                events::deregister(&conn, r);
            }
        })
        .map_err(|e| HostError::unavailable("connect", &format!("cannot start a thread: {e}")))?;
    match opened.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(Worker { jobs, generation }),
        Ok(Err(e)) => Err(HostError::unavailable(
            "connect",
            &format!("cannot connect to {uri}: {}", e.message()),
        )),
        Err(_) => Err(HostError::unavailable(
            "connect",
            &format!("{uri} did not answer within {timeout:?}"),
        )),
    }
}

/// Sorts an error from a call on a live connection.
pub fn classify(op: &str, e: &virt::error::Error) -> HostError {
    let code = e.code().to_raw();
    let kind = if code == sys::VIR_ERR_NO_DOMAIN {
        ErrorKind::Gone
    } else if code == sys::VIR_ERR_OPERATION_INVALID && e.message().contains("not running") {
        // "Requested operation is not valid: domain is not running"
        ErrorKind::Gone
    } else if code == sys::VIR_ERR_NO_CONNECT || code == sys::VIR_ERR_INVALID_CONN {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Failed
    };
    HostError::new(op, kind, e.message())
}
