//! The background mover: one thread that moves guests' memory chunk by
//! chunk at the configured rate, as [`super::queue::Queue`] directs. The
//! daemon's cycle hands it targets and reads its progress; no cycle ever
//! waits for memory.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host_error::HostError;
use crate::idset::NodeSet;
use crate::libvirt::{DomainRef, Libvirt};
use crate::live::{LiveHost, migrate, move_pages};
use crate::observe::{numa_maps, ram_blocks};

use super::queue::{Change, Queue, Task};
use super::rate::Rate;
use super::{DomainProgress, Progress, Step, Work};

const MIB: u64 = 1024 * 1024;
/// How long the thread sleeps when nothing is to move (a retarget wakes
/// it at once).
const IDLE: Duration = Duration::from_secs(1);

/// Everything the mover does to the host.
pub trait PageHost: Send {
    /// Why the domain's memory must not move now (a job, a pause); a Gone
    /// error when it is not running.
    fn hold(&self, d: &DomainRef, disks: &[String]) -> Result<Option<String>, HostError>;
    /// The address ranges of a step in the domain's QEMU process.
    fn ranges(&self, d: &DomainRef, pid: u32, step: &Step) -> Result<Vec<(u64, u64)>, String>;
    /// Moves the pages of `[start, end)` off other nodes onto `to`;
    /// returns the bytes moved.
    fn move_off(&self, pid: u32, start: u64, end: u64, to: &NodeSet) -> io::Result<u64>;
    /// Moves the rest of the process's pages on `from` to `to`; returns
    /// the bytes that left `from`, when they could be measured.
    fn migrate(&self, pid: u32, from: &NodeSet, to: &NodeSet) -> io::Result<Option<u64>>;
}

/// The real host: libvirt for the checks, the kernel for the moves.
pub struct LivePages {
    host: LiveHost,
}

impl LivePages {
    pub fn new(libvirt: Libvirt, root: PathBuf) -> Self {
        Self {
            host: LiveHost::new(libvirt, root),
        }
    }
}

impl PageHost for LivePages {
    fn hold(&self, d: &DomainRef, disks: &[String]) -> Result<Option<String>, HostError> {
        Ok(self.host.libvirt.activity(d, disks)?.hold())
    }

    fn ranges(&self, d: &DomainRef, pid: u32, step: &Step) -> Result<Vec<(u64, u64)>, String> {
        match step {
            Step::Cell { cell, .. } => {
                let op = format!("find guest cell {cell}'s RAM of {}", d.name);
                let (now_pid, block) = self
                    .host
                    .cell_block(d, *cell, &op)
                    .map_err(|e| e.to_string())?;
                if now_pid != pid {
                    return Err(format!("QEMU process {pid} was replaced by {now_pid}"));
                }
                Ok(vec![(block.start, block.end)])
            }
            Step::Whole { .. } => {
                ram_blocks::all(&self.host.root, pid).map_err(|e| crate::report::error_chain(&e))
            }
        }
    }

    fn move_off(&self, pid: u32, start: u64, end: u64, to: &NodeSet) -> io::Result<u64> {
        let nodes: Vec<u32> = to.iter().collect();
        move_pages::move_off(pid, start, end, &nodes)
    }

    fn migrate(&self, pid: u32, from: &NodeSet, to: &NodeSet) -> io::Result<Option<u64>> {
        // migrate_pages(2) says only what it could not move; what it moved
        // is what left `from` in the process's numa_maps. Shared pages, which
        // it leaves, count on both sides; a read that fails leaves the
        // charge at its estimate.
        let on_from = || {
            numa_maps::read(&self.host.root, pid).ok().map(|m| {
                m.resident
                    .iter()
                    .filter(|(n, _)| from.contains(**n))
                    .map(|(_, b)| *b)
                    .sum::<u64>()
            })
        };
        let before = on_from();
        migrate::migrate_pages(pid, from, to)?;
        Ok(before.zip(on_from()).map(|(b, a)| b.saturating_sub(a)))
    }
}

struct State {
    queue: Queue,
    rate: Rate,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on the mover thread must not take the daemon with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle the daemon keeps; dropping it stops the thread.
pub struct Mover {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Bytes per move: a quarter second at the rate, between 2 and 64 MiB, so
/// that a job check is never far behind and one call stays short; never
/// less than one transparent huge page, which moves whole.
fn chunk_bytes(mib_per_sec: f64) -> u64 {
    ((mib_per_sec / 4.0) as u64).clamp(2, 64) * MIB
}

impl Mover {
    pub fn start(host: Box<dyn PageHost>, mib_per_sec: u64) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Queue::default(),
                rate: Rate::new(mib_per_sec, Instant::now()),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("memory-mover".into())
            .spawn(move || run(&for_thread, host.as_ref()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// What is to move from now on (see [`Queue::retarget`]).
    pub fn retarget(&self, works: Vec<Work>) {
        let changes = self.shared.lock().queue.retarget(works, Instant::now());
        changes.iter().for_each(log);
        self.shared.wake.notify_all();
    }

    /// Memory libvirt moved in one call (a restrictive nodeset change):
    /// the mover waits until the rate has paid for it.
    pub fn charge(&self, mib: u64) {
        self.shared
            .lock()
            .rate
            .charge(mib.saturating_mul(MIB), Instant::now());
    }

    pub fn set_rate(&self, mib_per_sec: u64) {
        self.shared
            .lock()
            .rate
            .set_mib_per_sec(mib_per_sec, Instant::now());
        self.shared.wake.notify_all();
    }

    pub fn progress(&self) -> Progress {
        let st = self.shared.lock();
        let rate = st.rate.mib_per_sec();
        Progress {
            mib_per_sec: rate,
            moved_total_mib: st.queue.moved_total / MIB,
            domains: st.queue.progress(rate, Instant::now()),
        }
    }

    /// Waits until nothing is left to move or `timeout` passes; whether
    /// everything arrived (for one-shot commands and tests).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !st.queue.is_idle() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, host: &dyn PageHost) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        let chunk = chunk_bytes(st.rate.mib_per_sec());
        let Some((task, generation)) = st.queue.next(now, chunk) else {
            shared.wake.notify_all(); // wait_idle
            st = shared
                .wake
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        };
        let cost = task.charge();
        if cost > 0 {
            let wait = st.rate.wait_for(cost, now);
            if !wait.is_zero() {
                // Targets may change meanwhile: choose again after.
                st = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            st.rate.charge(cost, now);
        }
        drop(st);
        let (started, cpu_before) = (Instant::now(), thread_cpu());
        let answer = carry_out(host, &task);
        let moved = match &answer {
            Answer::Moved(bytes) => Some(*bytes),
            Answer::Finished { moved, .. } => *moved,
            _ => None,
        };
        tracing::debug!(
            domain = %task.domain().name,
            action = "move memory",
            task = task.kind(),
            secs = format_args!("{:.3}", started.elapsed().as_secs_f64()),
            cpu_secs = format_args!("{:.3}", (thread_cpu() - cpu_before).as_secs_f64()),
            moved_mib = moved
                .map(|b| format!("{:.1}", b as f64 / MIB as f64))
                .as_deref()
                .unwrap_or("-"),
            "mover task done"
        );
        st = shared.lock();
        let now = Instant::now();
        let change = match answer {
            Answer::Hold(hold) => st.queue.checked(task.domain(), generation, hold, now),
            Answer::Ranges(ranges) => {
                st.queue.resolved(task.domain(), generation, ranges);
                None
            }
            Answer::Moved(bytes) => {
                st.rate.settle(cost, bytes, now);
                st.queue.done(&task, generation, bytes, now)
            }
            Answer::Finished { moved, progress } => {
                if let Some(moved) = moved {
                    st.rate.settle(cost, moved, now);
                }
                st.queue.done(&task, generation, progress, now)
            }
            Answer::Gone => {
                st.queue.gone(task.domain());
                tracing::info!(domain = %task.domain().name, action = "move memory", "stopped: the domain is gone");
                None
            }
            Answer::Failed(error) => {
                st.rate.refund(cost);
                st.queue.failed(task.domain(), generation, error, now)
            }
        };
        if let Some(c) = change {
            log(&c);
        }
        if st.queue.is_idle() {
            shared.wake.notify_all();
        }
    }
}

/// CPU time this thread has used: what a task cost the host beyond its
/// wall time (a move's page walks and copies are kernel time here).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

enum Answer {
    Hold(Option<String>),
    Ranges(Vec<(u64, u64)>),
    Moved(u64),
    /// The rest of a process moved: the bytes measured (when they could
    /// be), and the bytes that count toward the guest's progress.
    Finished {
        moved: Option<u64>,
        progress: u64,
    },
    Gone,
    Failed(String),
}

fn carry_out(host: &dyn PageHost, task: &Task) -> Answer {
    let syscall = |e: io::Error| {
        if e.raw_os_error() == Some(libc::ESRCH) {
            Answer::Gone
        } else {
            Answer::Failed(e.to_string())
        }
    };
    match task {
        Task::CheckActivity { domain, disks } => match host.hold(domain, disks) {
            Ok(hold) => Answer::Hold(hold),
            Err(e) if e.is_gone() => Answer::Gone,
            Err(e) => Answer::Failed(e.to_string()),
        },
        Task::Resolve { domain, pid, step } => match host.ranges(domain, *pid, step) {
            Ok(r) => Answer::Ranges(r),
            Err(e) => Answer::Failed(e),
        },
        Task::Move {
            pid,
            start,
            end,
            to,
            ..
        } => host
            .move_off(*pid, *start, *end, to)
            .map_or_else(syscall, Answer::Moved),
        Task::Finish {
            pid,
            from,
            to,
            bytes,
            counted,
            ..
        } => host.migrate(*pid, from, to).map_or_else(syscall, |moved| {
            // Progress counts the rest only when no RAM block was found
            // (then it is all of the guest's memory); the rate is charged
            // what moved, or the estimate when that is not known.
            let progress = if *counted { moved.unwrap_or(*bytes) } else { 0 };
            Answer::Finished { moved, progress }
        }),
    }
}

fn log(change: &Change) {
    let action = "move memory";
    match change {
        Change::Started { domain, mib, steps } => {
            tracing::info!(domain = %domain.name, action, to = %steps, mib, "memory starts moving in the background")
        }
        Change::Retargeted { domain, from, to } => {
            tracing::info!(domain = %domain.name, action, from = %from, to = %to, "memory re-targeted: the plan changed")
        }
        Change::Dropped {
            domain,
            moved_mib,
            left_mib,
        } => tracing::info!(
            domain = %domain.name,
            action,
            moved_mib,
            left_mib,
            reason = "no longer planned (moved, stopped, held or left alone)",
            "memory move stopped"
        ),
        Change::Held { domain, reason } => {
            tracing::info!(domain = %domain.name, action, reason = %reason, "memory move waits")
        }
        Change::Failed { domain, error } => {
            tracing::warn!(domain = %domain.name, action, error = %error, "memory move failed; tried again in a minute")
        }
        Change::Arrived {
            domain,
            moved_mib,
            secs,
        } => tracing::info!(
            domain = %domain.name,
            action,
            moved_mib,
            secs = format_args!("{secs:.1}"),
            "memory arrived"
        ),
    }
}

/// Progress of one guest, if its memory is moving.
pub fn progress_of<'a>(p: &'a Progress, d: &DomainRef) -> Option<&'a DomainProgress> {
    p.domains
        .iter()
        .find(|x| x.domain.uuid == d.uuid && x.domain.id == d.id)
}
