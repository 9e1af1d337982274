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
//!
//! A call given up on may still land: libvirtd goes on with it. Such calls
//! are tracked until they return ([`Libvirt::abandoned_calls`]), so that
//! nobody reads a domain as settled while a change to it is still on its
//! way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Calls given up on that have not returned yet, by call number.
    abandoned: Mutex<BTreeMap<u64, AbandonedCall>>,
}

/// A call numapin stopped waiting for while libvirtd may still carry it
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedCall {
    /// What the call was, e.g. "numatune web-01".
    pub op: String,
    pub since: Instant,
}

/// Where one call is: the caller and the connection's thread race to
/// settle it, the one that comes second learns the other's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Running,
    Returned,
    Abandoned,
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
                abandoned: Mutex::new(BTreeMap::new()),
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

    /// Calls given up on (timed out) that libvirtd has not finished yet.
    pub fn abandoned_calls(&self) -> Vec<AbandonedCall> {
        lock_ignoring_poison(&self.inner.abandoned)
            .values()
            .cloned()
            .collect()
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
        let call = Arc::new(Mutex::new(CallState::Running));
        let number = NEXT_CALL.fetch_add(1, Ordering::Relaxed);
        let settle = {
            let (call, inner, op) = (call.clone(), self.inner.clone(), op.to_string());
            move || {
                let mut state = lock_ignoring_poison(&call);
                if *state == CallState::Abandoned {
                    let started = lock_ignoring_poison(&inner.abandoned).remove(&number);
                    let waited = started.map(|c| c.since.elapsed());
                    tracing::warn!(uri = %inner.uri, op, after = ?waited, "a libvirt call given up on has returned");
                }
                *state = CallState::Returned;
            }
        };
        let job: Job = Box::new(move |conn| {
            // A panic in a call must not take the connection's thread (and
            // every later call) with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            settle();
            let result = match result {
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
                {
                    let mut state = lock_ignoring_poison(&call);
                    if *state == CallState::Running {
                        *state = CallState::Abandoned;
                        lock_ignoring_poison(&self.inner.abandoned).insert(
                            number,
                            AbandonedCall {
                                op: op.to_string(),
                                since: Instant::now(),
                            },
                        );
                    }
                }
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
        lock_ignoring_poison(&self.inner.state)
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

/// Numbers calls, to track the abandoned ones.
static NEXT_CALL: AtomicU64 = AtomicU64::new(0);

/// The data behind this module's locks stays consistent through a panic
/// (every update is a single assignment or insert), so poisoning is
/// ignored.
fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// libvirt's in-process test driver: a real connection, no daemon.
    const TEST_URI: &str = "test:///default";

    #[test]
    fn a_call_given_up_on_is_tracked_until_it_returns() {
        // Long enough for the connection to open on a loaded machine.
        let lv = Libvirt::new(TEST_URI, Duration::from_secs(1));
        let err = lv
            .call("slow change", |_conn| {
                thread::sleep(Duration::from_secs(3));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        let abandoned = lv.abandoned_calls();
        assert_eq!(abandoned.len(), 1);
        assert_eq!(abandoned[0].op, "slow change");

        // A new connection serves calls meanwhile.
        assert_eq!(lv.call("quick", |_conn| Ok(7)).unwrap(), 7);

        let deadline = Instant::now() + Duration::from_secs(10);
        while !lv.abandoned_calls().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(lv.abandoned_calls().is_empty(), "the call returned");
    }

    #[test]
    fn calls_answered_in_time_are_not_tracked() {
        let lv = Libvirt::new(TEST_URI, Duration::from_secs(5));
        lv.call("quick", |conn| conn.hostname()).unwrap();
        assert!(lv.abandoned_calls().is_empty());
    }
}
