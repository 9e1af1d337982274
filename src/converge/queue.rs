//! The background mover's bookkeeping, with no side effects: which guest's
//! memory moves next, how far each has come, and what to tell the log.
//! The mover thread (`super::mover`) asks for the next task, carries it
//! out on the host, and reports back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::idset::NodeSet;
use crate::libvirt::DomainRef;

use super::{DomainProgress, Step, Work};

/// How old a check for a job or a pause may be when a chunk starts. Each
/// chunk also needs a check of its own (see [`Queue::done`]), so this only
/// bounds the wait for the rate between the check and the chunk.
pub const ACTIVITY_EVERY: Duration = Duration::from_secs(1);
/// How long a guest held by a job or pause waits before the next check.
pub const HELD_RECHECK: Duration = Duration::from_secs(5);
/// How long a guest whose move failed waits before it is tried again.
pub const FAILED_RETRY: Duration = Duration::from_secs(60);
/// A target reached is gone over again, when the plan still shows memory
/// off it, this long after a pass that moved at least [`REPASS_MIB`]:
/// pages the guest touched while the pass went by, or that the kernel could
/// not move at that moment, go then. Each re-pass of the same target
/// doubles the wait, up to [`REPASS_AT_MOST`]. The wait also outlasts
/// figures that lag a move by a few seconds.
pub const FIRST_REPASS: Duration = Duration::from_secs(30);
/// The longest wait between two passes over a target already reached, and
/// the wait after a pass that moved less than [`REPASS_MIB`]: what such a
/// pass left is pages the kernel does not move, and going over them again
/// costs a scan of the guest's RAM (under TCG, a minute of system time for
/// 320 MiB) for nothing.
pub const REPASS_AT_MOST: Duration = Duration::from_secs(300);
/// What makes a pass worth repeating soon: it moved this much, or the
/// memory the plan shows off its target grew by this much since the first
/// look after it arrived (new pages landed off the guest's node(s), and
/// they are not going to come on their own); the latter goes at once.
pub const REPASS_MIB: u64 = 8;

const MIB: u64 = 1024 * 1024;
/// The transparent huge page size of x86-64 and of 4 KiB-page arm64.
const HUGE_PAGE: u64 = 2 * MIB;

type Key = (String, u32);

fn key_of(d: &DomainRef) -> Key {
    (d.uuid.clone(), d.id)
}

/// What the mover thread does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Ask libvirt whether the domain runs with no job.
    CheckActivity {
        domain: DomainRef,
        disks: Vec<String>,
    },
    /// Find the address ranges of a step (the process's RAM blocks).
    Resolve {
        domain: DomainRef,
        pid: u32,
        step: Step,
    },
    /// Move the pages of `[start, end)` that are off `to` onto it.
    Move {
        domain: DomainRef,
        pid: u32,
        start: u64,
        end: u64,
        to: NodeSet,
    },
    /// After the RAM blocks: the rest of the process's memory, with
    /// migrate_pages(2). Charged `bytes` up front, an estimate (the call
    /// says nothing of what it will move), and squared after with what
    /// left the source nodes. Counted toward the guest's progress only
    /// when no RAM block was found, so that the rest is all its memory.
    Finish {
        domain: DomainRef,
        pid: u32,
        from: NodeSet,
        to: NodeSet,
        bytes: u64,
        counted: bool,
    },
}

impl Task {
    pub fn domain(&self) -> &DomainRef {
        match self {
            Task::CheckActivity { domain, .. }
            | Task::Resolve { domain, .. }
            | Task::Move { domain, .. }
            | Task::Finish { domain, .. } => domain,
        }
    }

    /// What the task does, for the log.
    pub fn kind(&self) -> String {
        match self {
            Task::CheckActivity { .. } => "check activity".into(),
            Task::Resolve { .. } => "find RAM blocks".into(),
            Task::Move { start, end, .. } => {
                format!("move_pages {start:#x}+{} MiB", (end - start) / MIB)
            }
            Task::Finish { from, to, .. } => format!("migrate_pages {from} -> {to}"),
        }
    }

    /// Bytes the rate is charged before the task runs.
    pub fn charge(&self) -> u64 {
        match self {
            Task::Move { start, end, .. } => end - start,
            Task::Finish { bytes, .. } => *bytes,
            _ => 0,
        }
    }
}

/// Something the log should say, once.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Started {
        domain: DomainRef,
        mib: u64,
        steps: String,
    },
    Retargeted {
        domain: DomainRef,
        from: String,
        to: String,
    },
    Dropped {
        domain: DomainRef,
        moved_mib: u64,
        left_mib: u64,
    },
    Held {
        domain: DomainRef,
        reason: String,
    },
    Failed {
        domain: DomainRef,
        error: String,
    },
    Arrived {
        domain: DomainRef,
        moved_mib: u64,
        secs: f64,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    work: Work,
    /// Bumped when the target changes, so a task answered after that is
    /// not counted toward the new one.
    generation: u64,
    step: usize,
    ranges: Option<Vec<(u64, u64)>>,
    range: usize,
    offset: u64,
    finished_step: bool,
    moved: u64,
    since: Instant,
    checked_at: Option<Instant>,
    held: Option<(String, Instant)>,
}

impl Entry {
    fn new(work: Work, generation: u64, now: Instant) -> Self {
        Self {
            work,
            generation,
            step: 0,
            ranges: None,
            range: 0,
            offset: 0,
            finished_step: false,
            moved: 0,
            since: now,
            checked_at: None,
            held: None,
        }
    }

    fn left_mib(&self) -> u64 {
        self.work.mib.saturating_sub(self.moved / MIB)
    }

    fn waiting(&self, now: Instant) -> bool {
        self.held.as_ref().is_some_and(|(_, until)| now < *until)
    }

    /// The step's next task (no activity check), advancing past steps
    /// that are done; `None` once every step is. A guest with no more than
    /// one chunk off target moves it with one migrate_pages(2) call: a
    /// pass over its RAM blocks page by page would cost more than it
    /// moves, and a chunk is what the rate allows at once.
    fn next_task(&mut self, chunk: u64) -> Option<Task> {
        let domain = self.work.domain.clone();
        let pid = self.work.pid;
        loop {
            let step = self.work.steps.get(self.step)?.clone();
            if self.ranges.is_none()
                && matches!(step, Step::Whole { .. })
                && self.left_mib() * MIB <= chunk
            {
                self.ranges = Some(Vec::new());
            }
            let Some(ranges) = &self.ranges else {
                return Some(Task::Resolve { domain, pid, step });
            };
            if let Some(&(start, end)) = ranges.get(self.range) {
                let at = start + self.offset;
                if at >= end {
                    self.range += 1;
                    self.offset = 0;
                    continue;
                }
                // A chunk ends on a huge page boundary where it can: a
                // transparent huge page moves whole, so a chunk ending
                // inside one would move the rest of it too, uncounted.
                let want = at.saturating_add(chunk.max(4096));
                let aligned = want / HUGE_PAGE * HUGE_PAGE;
                let stop = end.min(if aligned > at { aligned } else { want });
                return Some(Task::Move {
                    domain,
                    pid,
                    start: at,
                    end: stop,
                    to: step.to().clone(),
                });
            }
            match &step {
                Step::Whole { from, to } if !self.finished_step => {
                    // What the RAM blocks did not hold; all of it when no
                    // RAM block was found.
                    let counted = ranges.is_empty();
                    let bytes = if counted {
                        self.left_mib() * MIB
                    } else {
                        (self.left_mib() * MIB).min(64 * MIB)
                    };
                    return Some(Task::Finish {
                        domain,
                        pid,
                        from: from.clone(),
                        to: to.clone(),
                        bytes,
                        counted,
                    });
                }
                _ => {
                    self.step += 1;
                    self.ranges = None;
                    self.range = 0;
                    self.offset = 0;
                    self.finished_step = false;
                }
            }
        }
    }
}

/// A target a guest's memory reached, and when to go over it again.
#[derive(Debug)]
struct Arrival {
    steps: Vec<Step>,
    at: Instant,
    /// MiB the plan showed off the target at its first look after `at`.
    first_look: Option<u64>,
    /// How long after `at` a re-pass may start.
    wait: Duration,
}

impl Arrival {
    /// Whether memory the plan shows off the same target (`off_mib`) is
    /// worth a pass now. The first look only sets the baseline.
    fn repass(&mut self, off_mib: u64, now: Instant) -> bool {
        let Some(first) = self.first_look else {
            self.first_look = Some(off_mib);
            return false;
        };
        off_mib >= first.saturating_add(REPASS_MIB)
            || now.saturating_duration_since(self.at) >= self.wait
    }
}

/// Every guest whose memory is on its way, and what has moved.
#[derive(Debug, Default)]
pub struct Queue {
    entries: BTreeMap<Key, Entry>,
    arrived: BTreeMap<Key, Arrival>,
    generation: u64,
    /// Bytes moved since the daemon started.
    pub moved_total: u64,
}

/// Whether two lists of steps send the memory to the same places (where
/// it comes from changes as it moves).
fn same_target(a: &[Step], b: &[Step]) -> bool {
    let target = |s: &Step| match s {
        Step::Cell { cell, to } => (Some(*cell), to.clone()),
        Step::Whole { to, .. } => (None, to.clone()),
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| target(x) == target(y))
}

fn arrival(e: &Entry, now: Instant) -> Change {
    Change::Arrived {
        domain: e.work.domain.clone(),
        moved_mib: e.moved / MIB,
        secs: now.saturating_duration_since(e.since).as_secs_f64(),
    }
}

fn show_steps(steps: &[Step]) -> String {
    steps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Queue {
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces what is to move with `works`: the cycle's plan for every
    /// guest whose memory is off its placement, and, with no steps, every
    /// placed guest whose memory the plan finds in place. A guest with the
    /// same target goes on where it was; a new target starts over (pages
    /// already moved are where they go, so nothing moves twice); one the
    /// plan finds in place has arrived; a guest no longer listed stops.
    pub fn retarget(&mut self, works: Vec<Work>, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut next: BTreeMap<Key, Entry> = BTreeMap::new();
        // An arrival is remembered while its re-passes may still come, so
        // that their wait keeps growing; a guest on its way keeps its own.
        let entries = &self.entries;
        self.arrived.retain(|key, a| {
            entries.contains_key(key) || now.saturating_duration_since(a.at) < 2 * REPASS_AT_MOST
        });
        for mut work in works {
            let key = key_of(&work.domain);
            if work.steps.is_empty() {
                // The plan has nothing left to move: what was under way
                // has arrived (pages the pass had not reached yet were
                // already in place).
                if let Some(e) = self.entries.remove(&key) {
                    changes.push(arrival(&e, now));
                    self.arrive(key, e.work.steps, e.moved, now);
                }
                continue;
            }
            if let Some(a) = self.arrived.get_mut(&key) {
                if !same_target(&a.steps, &work.steps) {
                    self.arrived.remove(&key);
                } else if !self.entries.contains_key(&key) && !a.repass(work.mib, now) {
                    // (A re-pass under way goes on like any other pass.)
                    continue;
                }
            }
            match self.entries.remove(&key) {
                Some(mut e) if same_target(&e.work.steps, &work.steps) => {
                    work.harmed |= e.work.harmed;
                    // The plan's figure is fresher; what moved since the
                    // target was set counts against the older one only.
                    e.work.mib = work.mib.max(e.moved / MIB);
                    e.work.harmed = work.harmed;
                    e.work.pid = work.pid;
                    e.work.disks = work.disks;
                    // Where the memory still is changes as it moves; the
                    // target does not.
                    e.work.steps = work.steps;
                    next.insert(key, e);
                }
                Some(e) => {
                    self.generation += 1;
                    changes.push(Change::Retargeted {
                        domain: work.domain.clone(),
                        from: show_steps(&e.work.steps),
                        to: show_steps(&work.steps),
                    });
                    next.insert(key, Entry::new(work, self.generation, now));
                }
                None => {
                    self.generation += 1;
                    changes.push(Change::Started {
                        domain: work.domain.clone(),
                        mib: work.mib,
                        steps: show_steps(&work.steps),
                    });
                    next.insert(key, Entry::new(work, self.generation, now));
                }
            }
        }
        for (_, e) in std::mem::take(&mut self.entries) {
            changes.push(Change::Dropped {
                domain: e.work.domain.clone(),
                moved_mib: e.moved / MIB,
                left_mib: e.left_mib(),
            });
        }
        self.entries = next;
        changes
    }

    /// The guest served next: one whose locality is below what it was
    /// before numapin confined it first, then the one with the most memory
    /// left to move; the name breaks ties.
    fn first(&self, now: Instant) -> Option<&Key> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.waiting(now))
            .min_by_key(|(_, e)| {
                (
                    !e.work.harmed,
                    std::cmp::Reverse(e.left_mib()),
                    e.work.domain.name.clone(),
                )
            })
            .map(|(k, _)| k)
    }

    /// The next task, with its generation; `None` when nothing may move now.
    /// `chunk` bounds the bytes of one move.
    pub fn next(&mut self, now: Instant, chunk: u64) -> Option<(Task, u64)> {
        let key = self.first(now)?.clone();
        let e = self.entries.get_mut(&key)?;
        let generation = e.generation;
        if e.checked_at
            .is_none_or(|at| now.saturating_duration_since(at) >= ACTIVITY_EVERY)
        {
            let task = Task::CheckActivity {
                domain: e.work.domain.clone(),
                disks: e.work.disks.clone(),
            };
            return Some((task, generation));
        }
        e.next_task(chunk).map(|t| (t, generation))
    }

    fn entry(&mut self, d: &DomainRef, generation: u64) -> Option<&mut Entry> {
        self.entries
            .get_mut(&key_of(d))
            .filter(|e| e.generation == generation)
    }

    /// The answer of a [`Task::CheckActivity`]: `Some(reason)` holds the
    /// guest (a job, a pause); it is checked again later.
    pub fn checked(
        &mut self,
        d: &DomainRef,
        generation: u64,
        hold: Option<String>,
        now: Instant,
    ) -> Option<Change> {
        let e = self.entry(d, generation)?;
        e.checked_at = Some(now);
        match hold {
            None => {
                e.held = None;
                None
            }
            Some(reason) => {
                let again = e.held.as_ref().is_some_and(|(r, _)| *r == reason);
                e.held = Some((reason.clone(), now + HELD_RECHECK));
                e.checked_at = None;
                (!again).then(|| Change::Held {
                    domain: d.clone(),
                    reason,
                })
            }
        }
    }

    /// The ranges of the current step, from a [`Task::Resolve`].
    pub fn resolved(&mut self, d: &DomainRef, generation: u64, ranges: Vec<(u64, u64)>) {
        if let Some(e) = self.entry(d, generation) {
            e.ranges = Some(ranges);
            e.range = 0;
            e.offset = 0;
        }
    }

    /// A task done: `bytes` really moved. Says when the guest's memory has
    /// arrived.
    pub fn done(
        &mut self,
        task: &Task,
        generation: u64,
        bytes: u64,
        now: Instant,
    ) -> Option<Change> {
        self.moved_total += bytes;
        let d = task.domain().clone();
        let e = self.entry(&d, generation)?;
        e.moved += bytes;
        // The next chunk needs a fresh check: memory never starts moving
        // under a job libvirt already reports.
        e.checked_at = None;
        match task {
            Task::Move { end, .. } => {
                if let Some(&(start, _)) = e.ranges.as_ref().and_then(|r| r.get(e.range)) {
                    e.offset = end - start;
                }
            }
            Task::Finish { .. } => e.finished_step = true,
            _ => {}
        }
        let finished = self.all_done(&d);
        finished.then(|| {
            let e = self
                .entries
                .remove(&key_of(&d))
                .expect("the entry just looked at");
            let change = arrival(&e, now);
            self.arrive(key_of(&d), e.work.steps, e.moved, now);
            change
        })
    }

    /// Notes that `steps` were carried out, moving `moved` bytes: a
    /// re-pass of the same target waits twice as long as the last one did,
    /// and one after a pass that moved next to nothing waits the longest.
    fn arrive(&mut self, key: Key, steps: Vec<Step>, moved: u64, now: Instant) {
        let wait = if moved < REPASS_MIB * MIB {
            REPASS_AT_MOST
        } else {
            self.arrived
                .get(&key)
                .filter(|a| same_target(&a.steps, &steps))
                .map_or(FIRST_REPASS, |a| (a.wait * 2).min(REPASS_AT_MOST))
        };
        let arrival = Arrival {
            steps,
            at: now,
            first_look: None,
            wait,
        };
        self.arrived.insert(key, arrival);
    }

    /// Whether nothing is left of the guest's steps.
    fn all_done(&self, d: &DomainRef) -> bool {
        self.entries
            .get(&key_of(d))
            .is_some_and(|e| e.clone().next_task(u64::MAX).is_none())
    }

    /// A task failed: the guest is left for a while and tried again.
    pub fn failed(
        &mut self,
        d: &DomainRef,
        generation: u64,
        error: String,
        now: Instant,
    ) -> Option<Change> {
        let e = self.entry(d, generation)?;
        e.held = Some((error.clone(), now + FAILED_RETRY));
        e.checked_at = None;
        e.ranges = None;
        Some(Change::Failed {
            domain: d.clone(),
            error,
        })
    }

    /// The guest is gone (its process exited): nothing more moves for it.
    pub fn gone(&mut self, d: &DomainRef) {
        self.entries.remove(&key_of(d));
    }

    /// Per guest, what is left and when it should be done at `mib_per_sec`,
    /// in the order the guests are served.
    pub fn progress(&self, mib_per_sec: f64, now: Instant) -> Vec<DomainProgress> {
        let mut order: Vec<&Entry> = self.entries.values().collect();
        order.sort_by_key(|e| {
            (
                !e.work.harmed,
                std::cmp::Reverse(e.left_mib()),
                e.work.domain.name.clone(),
            )
        });
        let mut ahead = 0u64;
        order
            .into_iter()
            .map(|e| {
                ahead += e.left_mib();
                DomainProgress {
                    domain: e.work.domain.clone(),
                    left_mib: e.left_mib(),
                    moved_mib: e.moved / MIB,
                    eta_secs: ahead as f64 / mib_per_sec.max(1.0),
                    since_secs: now.saturating_duration_since(e.since).as_secs_f64(),
                    held: e
                        .held
                        .as_ref()
                        .filter(|(_, until)| now < *until)
                        .map(|(r, _)| r.clone()),
                }
            })
            .collect()
    }
}
