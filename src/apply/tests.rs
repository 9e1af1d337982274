//! Transaction and recovery rules against the fake host. The same
//! guarantees are checked against a real libvirtd in tests/apply_live.rs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::host_error::ErrorKind;
use crate::idset::IdSet;
use crate::libvirt::{DomainRef, MemoryBinding, Pins};
use crate::planner::Action;

use super::fake::{FakeHost, FakeState};
use super::host::DomainHost;
use super::journal::{Journal, Prior, Record};
use super::recovery::{RecoveryResult, recover, recover_pass};
use super::transaction::{Outcome, run};
use super::{ApplyOptions, NoHook, StepHook};

fn set(text: &str) -> IdSet {
    text.parse().unwrap()
}

fn domain() -> DomainRef {
    DomainRef {
        name: "web-01".into(),
        uuid: "6f1c0a52-0000-4000-8000-000000000001".into(),
        id: 3,
    }
}

fn state(mode: Option<&str>) -> FakeState {
    FakeState {
        domain: domain(),
        running: true,
        pins: Pins {
            vcpus: BTreeMap::from([(0, set("0-7")), (1, set("0-7"))]),
            emulator: set("0-7"),
            iothreads: BTreeMap::from([(1, set("0-7"))]),
        },
        binding: MemoryBinding {
            mode: mode.map(str::to_string),
            nodeset: mode.map(|_| set("0")),
        },
        memory: BTreeMap::from([(0, 1024)]),
        cells: BTreeMap::new(),
        config_writes: Vec::new(),
    }
}

/// A move of the whole domain to node 1 (CPUs 4-7).
fn steps(memory: Action) -> Vec<Action> {
    vec![
        Action::Emulatorpin { cpus: set("4-7") },
        Action::Iothreadpin {
            iothread: 1,
            cpus: set("4-7"),
        },
        Action::Vcpupin {
            vcpu: 0,
            cpus: set("4-5"),
        },
        Action::Vcpupin {
            vcpu: 1,
            cpus: set("6-7"),
        },
        memory,
    ]
}

fn restrictive() -> Action {
    Action::SetMemoryNodeset { nodeset: set("1") }
}

fn migrate() -> Action {
    Action::MigratePages {
        from: set("0"),
        to: set("1"),
        mib: 1024,
    }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        persist: false,
        memory_on_target_share: 0.9,
        memory_verify_timeout: Duration::from_millis(300),
        stop: None,
    }
}

/// What a record of the unbound domain of [`state`] holds from before its
/// change (no memory measured).
fn unbound_prior() -> Prior {
    let s = state(None);
    Prior {
        pins: s.pins,
        binding: s.binding,
        memory_mib: BTreeMap::new(),
        cell_memory_mib: BTreeMap::new(),
    }
}

fn journal() -> (tempfile::TempDir, Journal) {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    (tmp, j)
}

fn apply(host: &FakeHost, j: &Journal, steps: &[Action]) -> Outcome {
    run(host, j, &opts(), &domain(), None, steps, &mut NoHook).unwrap()
}

/// The move of [`steps`] with `migrate()`, planned from `planned_from`.
fn apply_planned(
    host: &FakeHost,
    j: &Journal,
    planned_from: &crate::planner::Recorded,
    hook: &mut dyn StepHook,
) -> Outcome {
    let steps = steps(migrate());
    run(
        host,
        j,
        &opts(),
        &domain(),
        Some(planned_from),
        &steps,
        hook,
    )
    .unwrap()
}

#[test]
fn applies_every_step_and_leaves_no_journal() {
    for (mode, memory) in [(Some("restrictive"), restrictive()), (None, migrate())] {
        let host = FakeHost::new(state(mode));
        let (_t, j) = journal();
        let outcome = apply(&host, &j, &steps(memory));
        assert!(
            matches!(outcome, Outcome::Applied { steps: 5, .. }),
            "{outcome:?}"
        );
        let s = host.snapshot();
        assert_eq!(s.pins.vcpus[&0], set("4-5"));
        assert_eq!(s.pins.emulator, set("4-7"));
        assert_eq!(s.pins.iothreads[&1], set("4-7"));
        assert_eq!(s.memory, BTreeMap::from([(1, 1024)]));
        assert!(s.config_writes.is_empty(), "live only unless persisting");
        assert!(j.pending().unwrap().is_empty());
    }
}

#[test]
fn a_failure_at_any_step_restores_the_prior_state() {
    for (mode, memory) in [(Some("restrictive"), restrictive()), (None, migrate())] {
        let all = steps(memory);
        for k in 0..all.len() {
            let before = state(mode);
            let host = FakeHost::new(before.clone());
            host.faults.borrow_mut().fail_change = Some((k, ErrorKind::Failed));
            let (_t, j) = journal();
            let outcome = apply(&host, &j, &all);
            match &outcome {
                Outcome::RolledBack {
                    failed_step,
                    restored,
                    ..
                } => {
                    assert_eq!(*failed_step, k + 1);
                    assert!(restored, "step {k}: {outcome:?}");
                }
                other => panic!("step {k}: {other:?}"),
            }
            let after = host.snapshot();
            assert_eq!(after.pins, before.pins, "step {k}");
            assert_eq!(after.binding, before.binding, "step {k}");
            assert_eq!(after.memory, before.memory, "step {k}");
            assert!(j.pending().unwrap().is_empty());
            // Undo runs in reverse order of the steps started. A nodeset
            // change that failed changed nothing and is not re-sent (libvirt
            // refuses any nodeset call on a strict binding).
            let changes = host.changes.borrow();
            let undo: Vec<&String> = changes[k + 1..].iter().collect();
            let nodeset_failed = matches!(all[k], Action::SetMemoryNodeset { .. });
            let expected = if nodeset_failed { k } else { k + 1 };
            assert_eq!(undo.len(), expected, "step {k}: {changes:?}");
            let first_undone = if nodeset_failed { k - 1 } else { k };
            assert!(
                undo[0].starts_with(&changes[first_undone][..4]),
                "{changes:?}"
            );
        }
    }
}

#[test]
fn a_pin_libvirt_did_not_apply_is_caught_and_rolled_back() {
    let host = FakeHost::new(state(Some("restrictive")));
    host.faults.borrow_mut().pins_do_not_stick = true;
    let (_t, j) = journal();
    match apply(&host, &j, &steps(restrictive())) {
        Outcome::RolledBack {
            failed_step, error, ..
        } => {
            assert_eq!(failed_step, 1);
            assert!(error.message.contains("emulator on 0-7"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn threads_the_kernel_did_not_move_fail_the_transaction() {
    let before = state(Some("restrictive"));
    let host = FakeHost::new(before.clone());
    host.faults.borrow_mut().threads_on = Some(set("0-7"));
    let (_t, j) = journal();
    match apply(&host, &j, &steps(restrictive())) {
        Outcome::RolledBack {
            error, restored, ..
        } => {
            assert!(
                error.message.contains("the kernel has it on 0-7"),
                "{error}"
            );
            assert!(restored);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(host.snapshot().pins, before.pins);
}

#[test]
fn memory_that_does_not_arrive_is_moved_back() {
    let host = FakeHost::new(state(None));
    host.faults.borrow_mut().memory_stuck = true;
    let (_t, j) = journal();
    match apply(&host, &j, &steps(migrate())) {
        Outcome::RolledBack { error, .. } => {
            assert!(error.message.contains("only 0 of 1024 MiB"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let changes = host.changes.borrow();
    assert_eq!(changes[5], "migrate_pages 1 -> 0", "{changes:?}");
}

#[test]
fn a_domain_that_stops_midway_is_reported_not_failed() {
    let host = FakeHost::new(state(Some("restrictive")));
    host.faults.borrow_mut().stop_at_change = Some(2);
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(restrictive()));
    assert!(matches!(outcome, Outcome::Vanished { .. }), "{outcome:?}");
    assert!(!outcome.is_failure());
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn a_domain_restarted_since_planning_is_skipped_untouched() {
    let mut s = state(None);
    s.domain.id = 9;
    let host = FakeHost::new(s);
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(migrate()));
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.contains("restarted")),
        "{outcome:?}"
    );
    assert!(host.changes.borrow().is_empty());
}

#[test]
fn libvirt_lost_mid_undo_keeps_the_journal_and_recovery_finishes_it() {
    let before = state(Some("restrictive"));
    let host = FakeHost::new(before.clone());
    {
        let mut f = host.faults.borrow_mut();
        f.fail_change = Some((3, ErrorKind::Failed));
        f.unreachable_from_change = Some(5);
    }
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(restrictive()));
    assert!(
        matches!(outcome, Outcome::RollbackPending { failed_step: 4, .. }),
        "{outcome:?}"
    );
    assert_eq!(j.pending().unwrap().len(), 1);

    // While libvirt is still away, recovery refuses to go on.
    assert!(recover(&host, &j).is_err());
    assert_eq!(j.pending().unwrap().len(), 1);

    // libvirt is back: the next start rolls the transaction back.
    host.faults.borrow_mut().unreachable_from_change = None;
    let recovered = recover(&host, &j).unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].result, RecoveryResult::RolledBack);
    assert_eq!(host.snapshot().pins, before.pins);
    assert_eq!(host.snapshot().binding, before.binding);
    assert!(j.pending().unwrap().is_empty());
}

/// Stops the transaction for good after `at` steps, as a SIGKILL would.
struct KillAt(usize);
impl StepHook for KillAt {
    fn before_step(&mut self, _d: &DomainRef, index: usize, _s: &Action) {
        if index == self.0 {
            std::panic::panic_any("killed");
        }
    }
}

#[test]
fn a_transaction_killed_between_steps_is_rolled_back_at_the_next_start() {
    for at in 1..5 {
        let before = state(Some("restrictive"));
        let host = FakeHost::new(before.clone());
        let (_t, j) = journal();
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(
                &host,
                &j,
                &opts(),
                &domain(),
                None,
                &steps(restrictive()),
                &mut KillAt(at),
            )
        }));
        assert!(killed.is_err());
        assert_ne!(host.snapshot().pins, before.pins, "half applied");
        let pending = j.pending().unwrap();
        assert_eq!(pending[0].attempted, at);

        let recovered = recover(&host, &j).unwrap();
        assert_eq!(recovered[0].result, RecoveryResult::RolledBack);
        assert_eq!(host.snapshot().pins, before.pins, "killed before step {at}");
        assert_eq!(host.snapshot().binding, before.binding);
        assert!(j.pending().unwrap().is_empty());
    }
}

#[test]
fn recovery_drops_records_of_domains_that_stopped_or_restarted() {
    let (_t, j) = journal();
    j.write(&Record::new(domain(), unbound_prior(), steps(migrate())))
        .unwrap();
    let mut restarted = state(None);
    restarted.domain.id = 4;
    let host = FakeHost::new(restarted);
    let recovered = recover(&host, &j).unwrap();
    assert!(
        matches!(&recovered[0].result, RecoveryResult::Obsolete { reason } if reason.contains("restarted")),
        "{recovered:?}"
    );
    assert!(host.changes.borrow().is_empty());
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn persisting_writes_the_definition_after_the_live_change_is_verified() {
    let host = FakeHost::new(state(Some("restrictive")));
    let (_t, j) = journal();
    let mut o = opts();
    o.persist = true;
    let outcome = run(
        &host,
        &j,
        &o,
        &domain(),
        None,
        &steps(restrictive()),
        &mut NoHook,
    )
    .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Applied {
                persisted: Some(true),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        host.snapshot().config_writes,
        [
            "emulator=4-7",
            "iothread1=4-7",
            "vcpu0=4-5",
            "vcpu1=6-7",
            "nodeset=1"
        ]
    );
    let changes = host.changes.borrow();
    let first_config = changes.iter().position(|c| c.ends_with("Config")).unwrap();
    assert!(
        changes[..first_config]
            .iter()
            .all(|c| !c.ends_with("Config"))
    );
    assert_eq!(first_config, 5, "{changes:?}");
}

#[test]
fn a_domain_busy_with_a_job_is_skipped_untouched() {
    let host = FakeHost::new(state(None));
    host.faults.borrow_mut().busy = Some("busy: outgoing migration in progress".into());
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(migrate()));
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.contains("outgoing migration")),
        "{outcome:?}"
    );
    assert!(host.changes.borrow().is_empty());
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn a_target_cpu_gone_offline_is_never_pinned_to() {
    let host = FakeHost::new(state(None));
    host.faults.borrow_mut().online = Some(set("0-5"));
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(migrate()));
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.contains("CPU 6 went offline")),
        "{outcome:?}"
    );
    assert!(host.changes.borrow().is_empty());
}

#[test]
fn an_unplugged_vcpu_is_never_pinned() {
    let mut s = state(None);
    s.pins.vcpus.remove(&1);
    let host = FakeHost::new(s);
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(migrate()));
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.contains("vCPU 1 is not online")),
        "{outcome:?}"
    );
    assert!(host.changes.borrow().is_empty());
}

/// Starts a job once the pins are done, before the memory step.
struct JobBeforeMemory<'a>(&'a FakeHost);
impl StepHook for JobBeforeMemory<'_> {
    fn before_step(&mut self, _d: &DomainRef, index: usize, _s: &Action) {
        if index == 4 {
            self.0.faults.borrow_mut().busy = Some("busy: backup in progress".into());
        }
    }
}

#[test]
fn memory_never_moves_under_a_job_that_started_meanwhile() {
    let before = state(None);
    let host = FakeHost::new(before.clone());
    let (_t, j) = journal();
    let outcome = run(
        &host,
        &j,
        &opts(),
        &domain(),
        None,
        &steps(migrate()),
        &mut JobBeforeMemory(&host),
    )
    .unwrap();
    match outcome {
        Outcome::RolledBack {
            failed_step,
            error,
            restored,
            ..
        } => {
            assert_eq!(failed_step, 5);
            assert!(error.message.contains("backup"), "{error}");
            assert!(restored);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !host
            .changes
            .borrow()
            .iter()
            .any(|c| c.starts_with("migrate_pages"))
    );
    assert_eq!(host.snapshot().pins, before.pins);
}

/// libvirt did not answer the nodeset change in time. numapin must not
/// undo anything while the call may still land: the journal keeps the
/// transaction and no undo is sent.
fn timed_out_at_the_last_step(host: &FakeHost, j: &Journal) {
    host.faults.borrow_mut().fail_change = Some((4, ErrorKind::Timeout));
    let outcome = apply(host, j, &steps(restrictive()));
    assert!(
        matches!(outcome, Outcome::RollbackPending { failed_step: 5, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        host.changes.borrow().len(),
        5,
        "no undo sent: {:?}",
        host.changes.borrow()
    );
    assert_eq!(j.pending().unwrap().len(), 1);
    host.faults.borrow_mut().fail_change = None;
}

#[test]
fn a_timed_out_change_that_landed_late_is_kept_as_applied() {
    let host = FakeHost::new(state(Some("restrictive")));
    let (_t, j) = journal();
    timed_out_at_the_last_step(&host, &j);
    // libvirtd finishes the call after numapin gave up on it.
    host.state.borrow_mut().binding.nodeset = Some(set("1"));
    let changes_before = host.changes.borrow().len();

    let pass = recover_pass(&host, &j).unwrap();
    assert!(pass.waiting.is_empty());
    assert_eq!(pass.resolved[0].result, RecoveryResult::Completed);
    assert!(pass.resolved[0].result.leaves_numapins_pins());
    assert_eq!(
        host.changes.borrow().len(),
        changes_before,
        "nothing moved again"
    );
    assert_eq!(host.snapshot().pins.emulator, set("4-7"));
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn a_timed_out_change_that_never_landed_is_rolled_back() {
    let before = state(Some("restrictive"));
    let host = FakeHost::new(before.clone());
    let (_t, j) = journal();
    timed_out_at_the_last_step(&host, &j);

    let pass = recover_pass(&host, &j).unwrap();
    assert_eq!(pass.resolved[0].result, RecoveryResult::RolledBack);
    assert_eq!(host.snapshot().pins, before.pins);
    assert_eq!(host.snapshot().binding, before.binding);
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn a_timed_out_step_before_the_last_is_rolled_back_even_when_it_landed() {
    let before = state(Some("restrictive"));
    let host = FakeHost::new(before.clone());
    host.faults.borrow_mut().fail_change = Some((2, ErrorKind::Timeout));
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &steps(restrictive()));
    assert!(
        matches!(outcome, Outcome::RollbackPending { failed_step: 3, .. }),
        "{outcome:?}"
    );
    host.faults.borrow_mut().fail_change = None;
    // The vCPU pin lands late; the rest of the transaction never ran.
    host.state.borrow_mut().pins.vcpus.insert(0, set("4-5"));

    let pass = recover_pass(&host, &j).unwrap();
    assert_eq!(pass.resolved[0].result, RecoveryResult::RolledBack);
    assert_eq!(host.snapshot().pins, before.pins);
}

#[test]
fn a_pass_leaves_records_libvirt_cannot_resolve_waiting() {
    let host = FakeHost::new(state(Some("restrictive")));
    let (_t, j) = journal();
    timed_out_at_the_last_step(&host, &j);
    host.faults.borrow_mut().unreachable_from_change = Some(0);

    let pass = recover_pass(&host, &j).unwrap();
    assert!(pass.resolved.is_empty());
    assert_eq!(pass.waiting.len(), 1);
    assert!(pass.waiting[0].1.is_unreachable());
    assert_eq!(j.pending().unwrap().len(), 1, "kept for the next pass");
}

/// A two-cell guest whose cell 1 RAM sits on cell 0's node; `cell1` is
/// where cell 1's RAM is, by node.
fn cells_state(cell1: &[(u32, u64)]) -> FakeState {
    let mut s = state(None);
    let cell1: BTreeMap<u32, u64> = cell1.iter().copied().collect();
    s.memory = BTreeMap::from([(0, 512)]);
    for (n, m) in &cell1 {
        *s.memory.entry(*n).or_default() += m;
    }
    s.cells = BTreeMap::from([(0, BTreeMap::from([(0, 512)])), (1, cell1)]);
    s
}

/// Cell 0 on node 0 (CPUs 0-3), cell 1 on node 1 (CPUs 4-7), then cell
/// 1's RAM to node 1, then `after`.
fn cell_steps(after: Option<Action>) -> Vec<Action> {
    let mut out = vec![
        Action::Emulatorpin { cpus: set("0-7") },
        Action::Vcpupin {
            vcpu: 0,
            cpus: set("0-3"),
        },
        Action::Vcpupin {
            vcpu: 1,
            cpus: set("4-7"),
        },
        Action::MoveCellMemory {
            cell: 1,
            to: set("1"),
            mib: 512,
        },
    ];
    out.extend(after);
    out
}

#[test]
fn a_cells_memory_moves_to_its_node_and_nowhere_else() {
    let host = FakeHost::new(cells_state(&[(0, 512)]));
    let (_t, j) = journal();
    let outcome = apply(&host, &j, &cell_steps(None));
    assert!(
        matches!(outcome, Outcome::Applied { steps: 4, .. }),
        "{outcome:?}"
    );
    let s = host.snapshot();
    assert_eq!(s.cells[&1], BTreeMap::from([(1, 512)]));
    assert_eq!(s.cells[&0], BTreeMap::from([(0, 512)]), "cell 0 untouched");
    assert_eq!(s.memory, BTreeMap::from([(0, 512), (1, 512)]));
    assert_eq!(host.changes.borrow()[3], "move cell 1 memory -> 1");
    assert!(j.pending().unwrap().is_empty());
}

#[test]
fn a_failure_at_or_after_a_cell_move_restores_the_cell_where_it_was() {
    // Cell 1 was spread over nodes 0 and 2: it goes back in proportion.
    // (A step after the move stands for any later failure.)
    let rest = Action::Iothreadpin {
        iothread: 1,
        cpus: set("4-7"),
    };
    let all = cell_steps(Some(rest));
    for k in 0..all.len() {
        let before = cells_state(&[(0, 384), (2, 128)]);
        let host = FakeHost::new(before.clone());
        host.faults.borrow_mut().fail_change = Some((k, ErrorKind::Failed));
        let (_t, j) = journal();
        match apply(&host, &j, &all) {
            Outcome::RolledBack {
                failed_step,
                restored: true,
                ..
            } => assert_eq!(failed_step, k + 1),
            other => panic!("step {k}: {other:?}"),
        }
        let after = host.snapshot();
        assert_eq!(after.pins, before.pins, "step {k}");
        assert_eq!(after.cells, before.cells, "step {k}");
        assert_eq!(after.memory, before.memory, "step {k}");
        assert!(j.pending().unwrap().is_empty());
    }
}

#[test]
fn a_cell_whose_memory_does_not_arrive_is_moved_back() {
    let host = FakeHost::new(cells_state(&[(0, 512)]));
    host.faults.borrow_mut().memory_stuck = true;
    let (_t, j) = journal();
    match apply(&host, &j, &cell_steps(None)) {
        Outcome::RolledBack { error, .. } => {
            assert!(
                error.op.contains("cell 1") && error.message.contains("only 0 of 512 MiB"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    let changes = host.changes.borrow();
    assert_eq!(changes[4], "move cell 1 memory -> 0", "{changes:?}");
}

#[test]
fn a_cells_memory_never_moves_under_a_job_that_started_meanwhile() {
    let before = cells_state(&[(0, 512)]);
    let host = FakeHost::new(before.clone());
    let (_t, j) = journal();
    struct JobBeforeCell<'a>(&'a FakeHost);
    impl StepHook for JobBeforeCell<'_> {
        fn before_step(&mut self, _d: &DomainRef, index: usize, _s: &Action) {
            if index == 3 {
                self.0.faults.borrow_mut().busy = Some("busy: backup in progress".into());
            }
        }
    }
    let outcome = run(
        &host,
        &j,
        &opts(),
        &domain(),
        None,
        &cell_steps(None),
        &mut JobBeforeCell(&host),
    )
    .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::RolledBack {
                failed_step: 4,
                restored: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(
        !host
            .changes
            .borrow()
            .iter()
            .any(|c| c.starts_with("move cell"))
    );
    assert_eq!(host.snapshot(), {
        let mut s = before;
        s.config_writes.clear();
        s
    });
}

#[test]
fn a_transaction_killed_before_a_cell_move_is_rolled_back() {
    let before = cells_state(&[(0, 512)]);
    let host = FakeHost::new(before.clone());
    let (_t, j) = journal();
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(
            &host,
            &j,
            &opts(),
            &domain(),
            None,
            &cell_steps(None),
            &mut KillAt(3),
        )
    }));
    assert!(killed.is_err());
    let pending = j.pending().unwrap();
    assert_eq!(pending[0].attempted, 3);
    assert_eq!(
        pending[0].prior.cell_memory_mib[&1],
        BTreeMap::from([(0, 512)]),
        "the journal knows where the cell was"
    );
    let recovered = recover(&host, &j).unwrap();
    assert_eq!(recovered[0].result, RecoveryResult::RolledBack);
    assert_eq!(host.snapshot().pins, before.pins);
    assert_eq!(host.snapshot().cells, before.cells);
}

#[test]
fn a_record_with_a_cell_move_is_rolled_back_never_taken_as_landed() {
    let before = cells_state(&[(0, 512)]);
    let host = FakeHost::new(before.clone());
    let (_t, j) = journal();
    let steps = cell_steps(None);
    let prior = Prior {
        pins: before.pins.clone(),
        binding: before.binding.clone(),
        memory_mib: before.memory.clone(),
        cell_memory_mib: BTreeMap::from([(1, BTreeMap::from([(0, 512)]))]),
    };
    let mut record = Record::new(domain(), prior, steps.clone());
    record.attempted = steps.len();
    j.write(&record).unwrap();
    // Every step landed, the cell's RAM included.
    let (_t2, other) = journal();
    assert!(matches!(
        apply(&host, &other, &steps),
        Outcome::Applied { .. }
    ));
    let recovered = recover(&host, &j).unwrap();
    assert_eq!(recovered[0].result, RecoveryResult::RolledBack);
    assert_eq!(host.snapshot().cells, before.cells);
    assert_eq!(host.snapshot().pins, before.pins);
}

#[test]
fn a_journal_record_without_cell_memory_still_loads() {
    let (_t, j) = journal();
    j.write(&Record::new(domain(), unbound_prior(), steps(migrate())))
        .unwrap();
    let text = std::fs::read_to_string(
        std::fs::read_dir(_t.path().join("transactions"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(!text.contains("cell_memory_mib"), "{text}");
    assert_eq!(
        j.pending().unwrap()[0].prior.cell_memory_mib,
        BTreeMap::new()
    );
}

/// An operator's pin made between planning and applying is never
/// overwritten: the transaction finds the live XML changed and leaves the
/// domain untouched to the next plan.
#[test]
fn a_pin_changed_since_planning_skips_the_domain_untouched() {
    let before = state(None);
    let host = FakeHost::new(before.clone());
    let planned_from = host.recorded(&domain()).unwrap();
    host.state.borrow_mut().pins.emulator = set("2");
    let (_t, j) = journal();
    let outcome = apply_planned(&host, &j, &planned_from, &mut NoHook);
    assert!(
        matches!(&outcome, Outcome::Skipped { reason }
            if reason.contains("changed since it was planned (emulator 0-7 -> 2)")),
        "{outcome:?}"
    );
    assert!(host.changes.borrow().is_empty());
    assert_eq!(host.snapshot().pins.emulator, set("2"));
    assert!(j.pending().unwrap().is_empty());
}

/// An operator pins vCPU 1 while the transaction runs (after its first
/// steps): that pin stays as the operator set it, the steps before are
/// undone, and nothing after runs.
struct OperatorPinsVcpu1<'a>(&'a FakeHost);
impl StepHook for OperatorPinsVcpu1<'_> {
    fn before_step(&mut self, _d: &DomainRef, index: usize, _s: &Action) {
        if index == 2 {
            self.0.state.borrow_mut().pins.vcpus.insert(1, set("3"));
        }
    }
}

#[test]
fn a_pin_an_operator_makes_during_the_transaction_is_left_as_set() {
    let before = state(None);
    let host = FakeHost::new(before.clone());
    let planned_from = host.recorded(&domain()).unwrap();
    let (_t, j) = journal();
    let outcome = apply_planned(&host, &j, &planned_from, &mut OperatorPinsVcpu1(&host));
    match &outcome {
        Outcome::RolledBack {
            failed_step,
            error,
            restored,
            ..
        } => {
            // Steps are counted from 1: the vCPU 1 pin is the fourth.
            assert_eq!(*failed_step, 4);
            assert!(
                error
                    .message
                    .contains("pinned by someone else during the change (vCPU 1 0-7 -> 3)"),
                "{error}"
            );
            assert!(restored);
        }
        other => panic!("{other:?}"),
    }
    let after = host.snapshot();
    assert_eq!(
        after.pins.vcpus[&1],
        set("3"),
        "the operator's pin was overwritten"
    );
    assert_eq!(after.pins.vcpus[&0], before.pins.vcpus[&0]);
    assert_eq!(after.pins.emulator, before.pins.emulator);
    assert_eq!(after.pins.iothreads, before.pins.iothreads);
    assert!(
        !host
            .changes
            .borrow()
            .iter()
            .any(|c| c.starts_with("vcpupin 1 ") || c.starts_with("migrate_pages")),
        "{:?}",
        host.changes.borrow()
    );
}
