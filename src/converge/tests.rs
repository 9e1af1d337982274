//! The mover's bookkeeping and thread against a fake host.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::queue::{Change, FIRST_REPASS, HELD_RECHECK, Queue, REPASS_AT_MOST, REPASS_MIB, Task};
use super::{Mover, PageHost, Step, Work};
use crate::host_error::{ErrorKind, HostError};
use crate::idset::NodeSet;
use crate::libvirt::DomainRef;

const MIB: u64 = 1024 * 1024;

fn dom(name: &str) -> DomainRef {
    DomainRef {
        name: name.into(),
        uuid: format!("uuid-{name}"),
        id: 1,
    }
}

fn whole(name: &str, mib: u64) -> Work {
    Work {
        domain: dom(name),
        pid: 100,
        disks: Vec::new(),
        steps: vec![Step::Whole {
            from: NodeSet::single(0),
            to: NodeSet::single(1),
        }],
        mib,
        harmed: false,
    }
}

/// Runs the queue's tasks as a host where every range moves whole once.
fn drive(q: &mut Queue, now: Instant) -> Vec<Change> {
    drive_moving(q, now, true)
}

/// A queue whose guest "a" has reached its target once, `mib` planned, on
/// a host whose pages move (`moves`) or stay; and the time it arrived.
fn reached(mib: u64, moves: bool) -> (Queue, Instant) {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.retarget(vec![whole("a", mib)], t0);
    let changes = drive_moving(&mut q, t0, moves);
    assert!(
        matches!(&changes[..], [Change::Arrived { .. }]),
        "{changes:?}"
    );
    (q, t0)
}

/// [`drive`], on a host whose pages move (`moves`) or stay where they are.
fn drive_moving(q: &mut Queue, now: Instant, moves: bool) -> Vec<Change> {
    let mut changes = Vec::new();
    while let Some((task, generation)) = q.next(now, 64 * MIB) {
        let change = match &task {
            Task::CheckActivity { domain, .. } => q.checked(domain, generation, None, now),
            Task::Resolve { domain, .. } => {
                q.resolved(domain, generation, vec![(0, 100 * MIB)]);
                None
            }
            Task::Move { start, end, .. } => {
                let bytes = if moves { end - start } else { 0 };
                q.done(&task, generation, bytes, now)
            }
            // Charged as the mover does: the estimate, when counted.
            Task::Finish { bytes, counted, .. } => {
                let bytes = if moves && *counted { *bytes } else { 0 };
                q.done(&task, generation, bytes, now)
            }
        };
        changes.extend(change);
    }
    changes
}

#[test]
fn a_guest_moves_chunk_by_chunk_then_its_rest_and_arrives_once() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    let started = q.retarget(vec![whole("a", 100)], t0);
    assert!(matches!(&started[..], [Change::Started { mib: 100, .. }]));
    let changes = drive(&mut q, t0);
    assert!(
        matches!(&changes[..], [Change::Arrived { moved_mib: 100, .. }]),
        "{changes:?}"
    );
    assert!(q.is_idle());
    assert_eq!(q.moved_total, 100 * MIB);
    // The plan still shows the same target (figures lag the move): it is
    // not gone over again.
    assert!(q.retarget(vec![whole("a", 3)], t0).is_empty());
    assert!(
        q.retarget(vec![whole("a", 3)], t0 + FIRST_REPASS / 2)
            .is_empty()
    );
    assert!(q.is_idle());
}

#[test]
fn memory_left_off_a_reached_target_goes_again_later_and_less_often_each_time() {
    let (mut q, t0) = reached(100, true);
    // 40 MiB stayed behind (the kernel could not move them then, or the
    // guest touched them after the pass went by): gone over 30 s later.
    let mut at = t0;
    for wait in [
        FIRST_REPASS,
        2 * FIRST_REPASS,
        4 * FIRST_REPASS,
        8 * FIRST_REPASS,
        REPASS_AT_MOST,
        REPASS_AT_MOST,
    ] {
        assert!(
            q.retarget(vec![whole("a", 40)], at).is_empty(),
            "the first look after {wait:?}"
        );
        let early = at + wait - Duration::from_secs(1);
        assert!(
            q.retarget(vec![whole("a", 40)], early).is_empty(),
            "re-passed before {wait:?}"
        );
        at += wait;
        let changes = q.retarget(vec![whole("a", 40)], at);
        assert!(
            matches!(&changes[..], [Change::Started { mib: 40, .. }]),
            "not re-passed after {wait:?}: {changes:?}"
        );
        let changes = drive(&mut q, at);
        assert!(
            matches!(&changes[..], [Change::Arrived { .. }]),
            "{changes:?}"
        );
    }
    // A new target forgets the old one's waits.
    let mut elsewhere = whole("a", 40);
    elsewhere.steps = vec![Step::Whole {
        from: NodeSet::single(1),
        to: NodeSet::single(0),
    }];
    let changes = q.retarget(vec![elsewhere.clone()], at);
    assert!(
        matches!(&changes[..], [Change::Started { .. }]),
        "{changes:?}"
    );
    drive(&mut q, at);
    assert!(q.retarget(vec![elsewhere.clone()], at).is_empty());
    let changes = q.retarget(vec![elsewhere], at + FIRST_REPASS);
    assert!(
        matches!(&changes[..], [Change::Started { .. }]),
        "{changes:?}"
    );
}

#[test]
fn memory_a_pass_could_not_move_waits_the_longest_before_the_next() {
    let (mut q, t0) = reached(18, false);
    assert_eq!(q.moved_total, 0);
    // The 10 MiB the plan still shows are pages the kernel does not move:
    // another scan of the guest's RAM soon would move nothing either.
    assert!(q.retarget(vec![whole("a", 10)], t0).is_empty());
    let before = t0 + REPASS_AT_MOST - Duration::from_secs(1);
    assert!(q.retarget(vec![whole("a", 10)], before).is_empty());
    let changes = q.retarget(vec![whole("a", 10)], t0 + REPASS_AT_MOST);
    assert!(
        matches!(&changes[..], [Change::Started { .. }]),
        "{changes:?}"
    );
}

#[test]
fn memory_that_grows_off_a_reached_target_goes_at_once() {
    let (mut q, t0) = reached(100, true);
    let t1 = t0 + Duration::from_secs(5);
    assert!(q.retarget(vec![whole("a", 12)], t1).is_empty());
    // Less than the growth that counts: it waits.
    let below = 12 + REPASS_MIB - 1;
    assert!(q.retarget(vec![whole("a", below)], t1).is_empty());
    let changes = q.retarget(
        vec![whole("a", 12 + REPASS_MIB)],
        t1 + Duration::from_secs(5),
    );
    assert!(
        matches!(&changes[..], [Change::Started { .. }]),
        "new pages off the target wait for nothing: {changes:?}"
    );
}

#[test]
fn a_little_memory_off_target_moves_in_one_call_without_a_pass_over_the_ram() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.retarget(vec![whole("a", 20)], t0);
    let (check, generation) = q.next(t0, 64 * MIB).unwrap();
    q.checked(check.domain(), generation, None, t0);
    // More than a chunk (a quarter second at the rate): a pass.
    assert!(matches!(
        q.next(t0, 16 * MIB),
        Some((Task::Resolve { .. }, _))
    ));
    let (task, generation) = q.next(t0, 64 * MIB).unwrap();
    assert!(
        matches!(task, Task::Finish { bytes, counted: true, .. } if bytes == 20 * MIB),
        "{task:?}"
    );
    assert!(matches!(
        q.done(&task, generation, 20 * MIB, t0),
        Some(Change::Arrived { moved_mib: 20, .. })
    ));
}

#[test]
fn a_job_or_pause_holds_the_guest_and_it_is_checked_again_later() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.retarget(vec![whole("a", 100)], t0);
    let (task, generation) = q.next(t0, 64 * MIB).unwrap();
    assert!(matches!(task, Task::CheckActivity { .. }));
    let held = q.checked(&dom("a"), generation, Some("paused".into()), t0);
    assert!(matches!(held, Some(Change::Held { .. })));
    // Nothing moves while it is held.
    assert_eq!(q.next(t0 + Duration::from_secs(1), 64 * MIB), None);
    // Checked again later; the same reason is not logged twice.
    let later = t0 + HELD_RECHECK;
    let (task, generation) = q.next(later, 64 * MIB).unwrap();
    assert!(matches!(task, Task::CheckActivity { .. }));
    assert_eq!(
        q.checked(&dom("a"), generation, Some("paused".into()), later),
        None
    );
    assert_eq!(q.progress(100.0, later)[0].held.as_deref(), Some("paused"));
}

#[test]
fn a_new_target_starts_over_and_answers_for_the_old_one_are_ignored() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.retarget(vec![whole("a", 100)], t0);
    let (check, generation) = q.next(t0, 64 * MIB).unwrap();
    q.checked(check.domain(), generation, None, t0);
    let (resolve, generation) = q.next(t0, 64 * MIB).unwrap();
    q.resolved(resolve.domain(), generation, vec![(0, 100 * MIB)]);
    let (first, old) = q.next(t0, 64 * MIB).unwrap();
    let mut to_two = whole("a", 100);
    to_two.steps = vec![Step::Whole {
        from: NodeSet::single(0),
        to: NodeSet::single(2),
    }];
    let changes = q.retarget(vec![to_two], t0);
    assert!(
        matches!(&changes[..], [Change::Retargeted { .. }]),
        "{changes:?}"
    );
    // The chunk that was under way lands; it counts host-wide, not
    // toward the new target.
    assert_eq!(q.done(&first, old, 64 * MIB, t0), None);
    assert_eq!(q.progress(100.0, t0)[0].moved_mib, 0);
    // The new target begins with a check.
    assert!(matches!(
        q.next(t0, 64 * MIB),
        Some((Task::CheckActivity { .. }, _))
    ));
}

#[test]
fn a_shrinking_source_is_the_same_target_and_a_plan_with_nothing_left_means_arrival() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    let mut w = whole("a", 100);
    w.steps = vec![Step::Whole {
        from: "0,2".parse().unwrap(),
        to: NodeSet::single(1),
    }];
    q.retarget(vec![w], t0);
    let (check, generation) = q.next(t0, 64 * MIB).unwrap();
    q.checked(check.domain(), generation, None, t0);
    let (resolve, generation) = q.next(t0, 64 * MIB).unwrap();
    q.resolved(resolve.domain(), generation, vec![(0, 128 * MIB)]);
    let (chunk, generation) = q.next(t0, 64 * MIB).unwrap();
    assert_eq!(q.done(&chunk, generation, 64 * MIB, t0), None);
    // The next plan: what was on node 2 has moved, the target is the same.
    assert!(q.retarget(vec![whole("a", 40)], t0).is_empty());
    assert_eq!(q.progress(100.0, t0)[0].moved_mib, 64);
    // The plan after that finds it all in place.
    let mut settled = whole("a", 0);
    settled.steps.clear();
    let changes = q.retarget(vec![settled], t0);
    assert!(
        matches!(&changes[..], [Change::Arrived { moved_mib: 64, .. }]),
        "{changes:?}"
    );
    assert!(q.is_idle());
}

#[test]
fn a_guest_no_longer_planned_stops_and_says_how_far_it_came() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.retarget(vec![whole("a", 100)], t0);
    let changes = q.retarget(Vec::new(), t0);
    assert!(matches!(
        &changes[..],
        [Change::Dropped {
            moved_mib: 0,
            left_mib: 100,
            ..
        }]
    ));
    assert!(q.is_idle());
}

#[test]
fn harmed_guests_go_first_then_the_most_memory_and_etas_add_up() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    let mut harmed = whole("c", 10);
    harmed.harmed = true;
    q.retarget(vec![whole("a", 100), whole("b", 300), harmed], t0);
    let order: Vec<(String, f64)> = q
        .progress(10.0, t0)
        .into_iter()
        .map(|p| (p.domain.name, p.eta_secs))
        .collect();
    assert_eq!(
        order,
        [("c".into(), 1.0), ("b".into(), 31.0), ("a".into(), 41.0)]
    );
    assert!(
        matches!(q.next(t0, MIB), Some((Task::CheckActivity { domain, .. }, _)) if domain.name == "c")
    );
}

#[test]
fn cells_move_each_to_their_node_then_the_rest_of_the_guest() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    let mut w = whole("a", 200);
    w.steps = vec![
        Step::Cell {
            cell: 1,
            to: NodeSet::single(1),
        },
        Step::Whole {
            from: NodeSet::single(2),
            to: "0-1".parse().unwrap(),
        },
    ];
    q.retarget(vec![w], t0);
    let mut targets = Vec::new();
    while let Some((task, generation)) = q.next(t0, 64 * MIB) {
        match &task {
            Task::CheckActivity { domain, .. } => {
                q.checked(domain, generation, None, t0);
            }
            Task::Resolve { domain, step, .. } => {
                let r = match step {
                    Step::Cell { .. } => vec![(0, 64 * MIB)],
                    Step::Whole { .. } => vec![(0, 64 * MIB), (128 * MIB, 192 * MIB)],
                };
                q.resolved(domain, generation, r);
            }
            Task::Move { to, .. } => {
                targets.push(to.to_string());
                q.done(&task, generation, 0, t0);
            }
            Task::Finish { .. } => {
                targets.push("rest".into());
                q.done(&task, generation, 0, t0);
            }
        }
    }
    assert_eq!(targets, ["1", "0-1", "0-1", "rest"]);
    assert!(q.is_idle());
}

/// Ranges moved so far, by process.
type MovedRanges = BTreeMap<u32, Vec<(u64, u64)>>;

/// A host whose guests' pages move once each: a range moved again moves
/// nothing. Domains named in `held` are paused.
#[derive(Clone, Default)]
struct FakePages {
    moved: Arc<Mutex<MovedRanges>>,
    calls: Arc<Mutex<Vec<(u32, u64, Instant)>>>,
    held: Arc<Mutex<Vec<String>>>,
}

impl PageHost for FakePages {
    fn hold(&self, d: &DomainRef, _disks: &[String]) -> Result<Option<String>, HostError> {
        if d.name == "gone" {
            return Err(HostError::new("state", ErrorKind::Gone, "no domain"));
        }
        let held = self.held.lock().unwrap().contains(&d.name);
        Ok(held.then(|| "paused (paused by a user)".into()))
    }

    fn ranges(&self, _d: &DomainRef, _pid: u32, _step: &Step) -> Result<Vec<(u64, u64)>, String> {
        Ok(vec![(0, 64 * MIB)])
    }

    fn move_off(&self, pid: u32, start: u64, end: u64, _to: &NodeSet) -> io::Result<u64> {
        let mut moved = self.moved.lock().unwrap();
        let done = moved.entry(pid).or_default();
        let bytes = if done.contains(&(start, end)) {
            0
        } else {
            done.push((start, end));
            end - start
        };
        self.calls
            .lock()
            .unwrap()
            .push((pid, bytes, Instant::now()));
        Ok(bytes)
    }

    fn migrate(&self, _pid: u32, _from: &NodeSet, _to: &NodeSet) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

#[test]
fn the_mover_keeps_to_its_rate_and_never_moves_a_held_guest() {
    let host = FakePages::default();
    host.held.lock().unwrap().push("paused".into());
    let mover = Mover::start(Box::new(host.clone()), 64).unwrap();
    let t0 = Instant::now();
    let mut works = Vec::new();
    for (i, name) in ["a", "b", "paused"].into_iter().enumerate() {
        // 128 MiB planned: its 64 MiB RAM block page by page, then the
        // rest in one call, charged 64 MiB.
        let mut w = whole(name, 128);
        w.pid = 100 + i as u32;
        works.push(w);
    }
    mover.retarget(works);
    // a and b arrive; the paused guest waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while mover.progress().domains.len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = mover.progress();
    assert_eq!(p.domains.len(), 1, "{p:?}");
    assert_eq!(p.domains[0].domain.name, "paused");
    assert!(p.domains[0].held.is_some());
    assert_eq!(p.moved_total_mib, 128);
    // 256 MiB charged at 64 MiB/s with one second saved up: at least 3 s.
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    let calls = host.calls.lock().unwrap();
    assert!(calls.iter().all(|(pid, _, _)| *pid != 102), "{calls:?}");
}

#[test]
fn a_restart_goes_on_from_where_the_pages_are_and_moves_nothing_twice() {
    // The first mover moves a's pages and is dropped (numapin killed);
    // the second is given the same target by the next daemon's first
    // cycle and finds nothing left to move.
    let host = FakePages::default();
    let first = Mover::start(Box::new(host.clone()), 1024).unwrap();
    first.retarget(vec![whole("a", 128)]);
    assert!(first.wait_idle(Duration::from_secs(30)));
    drop(first);
    let second = Mover::start(Box::new(host.clone()), 1024).unwrap();
    second.retarget(vec![whole("a", 128)]);
    assert!(second.wait_idle(Duration::from_secs(30)));
    assert_eq!(second.progress().moved_total_mib, 0);
    let total: u64 = host.calls.lock().unwrap().iter().map(|c| c.1).sum();
    assert_eq!(total, 64 * MIB);
}

#[test]
fn a_guest_that_is_gone_is_dropped() {
    let mover = Mover::start(Box::new(FakePages::default()), 1024).unwrap();
    mover.retarget(vec![whole("gone", 64)]);
    assert!(mover.wait_idle(Duration::from_secs(30)));
    assert_eq!(mover.progress().moved_total_mib, 0);
}
