//! apply against the real libvirtd and real QEMU domains: what the plan
//! says is what the kernel shows, dry runs change nothing, and a failure
//! at any step, a domain destroyed mid-way or numapin killed between steps
//! leaves the domain exactly as it was.
//!
//! This machine has one NUMA node and two CPUs: configs reserve CPU 0 so
//! a domain's pins really change (to CPU 1). Memory moves between nodes
//! are exercised in the multi-node lab; here the memory steps run for real
//! within node 0.

mod common;
mod plan_json;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Spec, TestDomain, isolated_config, numapin, serial};
use numapin::apply::transaction::{self, Outcome};
use numapin::apply::{ApplyOptions, DomainHost, Journal, NoHook, Placements, StepHook};
use numapin::host_error::HostError;
use numapin::idset::CpuSet;
use numapin::idset::NodeSet;
use numapin::libvirt::{DomainRef, Libvirt, Pins};
use numapin::libvirt::{MemoryBinding, Scope};
use numapin::live::{LiveHost, Sampler};
use numapin::planner::Recorded;
use numapin::planner::{self, Action, PlanInput};

fn host() -> LiveHost {
    numapin::libvirt::silence_default_error_printer();
    LiveHost::new(
        Libvirt::new(common::URI, Duration::from_secs(30)),
        "/".into(),
    )
}

fn set(text: &str) -> CpuSet {
    text.parse().unwrap()
}

fn domain_ref(host: &LiveHost, d: &TestDomain) -> DomainRef {
    host.libvirt.domain(&d.uuid()).unwrap()
}

/// Everything apply can change, read back from libvirt and the kernel.
#[derive(Debug, PartialEq)]
struct Observed {
    pins: Pins,
    nodeset: Option<String>,
    threads: BTreeMap<u32, String>,
}

fn observe(host: &LiveHost, d: &TestDomain) -> Observed {
    let r = domain_ref(host, d);
    Observed {
        pins: host.libvirt.pins(&r).unwrap(),
        nodeset: host
            .libvirt
            .memory_binding(&r)
            .unwrap()
            .nodeset
            .map(|s| s.to_string()),
        threads: d.vcpu_thread_cpus(),
    }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        persist: false,
        memory_on_target_share: 0.9,
        memory_verify_timeout: Duration::from_secs(5),
        stop: None,
    }
}

fn restrictive() -> Spec {
    Spec {
        vcpus: 1,
        iothreads: 1,
        extra: "<numatune><memory mode='restrictive' nodeset='0'/></numatune>".into(),
        ..Spec::default()
    }
}

fn strict() -> Spec {
    Spec {
        vcpus: 1,
        extra: "<numatune><memory mode='strict' nodeset='0'/></numatune>".into(),
        ..Spec::default()
    }
}

fn unbound() -> Spec {
    Spec {
        vcpus: 1,
        iothreads: 1,
        ..Spec::default()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn apply_pins_what_the_plan_says_and_dry_run_changes_nothing() {
    let _s = serial();
    let plain = TestDomain::start("apply-plain", &unbound());
    let restr = TestDomain::start("apply-restrictive", &restrictive());
    let strictly = TestDomain::start("apply-strict", &strict());
    let by_hand = TestDomain::start(
        "apply-by-hand",
        &Spec {
            vcpus: 1,
            extra: "<cputune><vcpupin vcpu='0' cpuset='0'/></cputune>".into(),
            ..Spec::default()
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = isolated_config(tmp.path(), &[&plain, &restr, &strictly, &by_hand], "");
    let config = config.to_str().unwrap();
    let h = host();
    let all = [&plain, &restr, &strictly, &by_hand];
    let before: Vec<Observed> = all.iter().map(|d| observe(&h, d)).collect();

    // Dry run: the exact plan, and nothing changes.
    let out = numapin(&[
        "apply",
        "--dry-run",
        "--format",
        "json",
        "--config",
        config,
        "--sample",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = json(&out);
    let planned = |name: &str| plan_json::domain(&plan, name);
    for d in [&plain, &restr, &strictly] {
        let p = planned(&d.name);
        assert_eq!(p["vcpupin"]["0"], "1", "{p}");
        assert_eq!(p["emulatorpin"], "1", "{p}");
        assert!(!p["actions"].as_array().unwrap().is_empty(), "{p}");
    }
    assert_eq!(planned(&restr.name)["iothreadpin"]["1"], "1");
    let strict_plan = planned(&strictly.name);
    assert!(
        strict_plan["advice"].to_string().contains("mode='strict'"),
        "strict memory is advised about: {strict_plan}"
    );
    let hand = planned(&by_hand.name);
    assert_eq!(hand["managed"], false, "{hand}");
    let table = numapin(&["apply", "--dry-run", "--config", config, "--sample", "0"]);
    assert!(stdout(&table).contains("would apply"), "{}", stdout(&table));
    let after_dry: Vec<Observed> = all.iter().map(|d| observe(&h, d)).collect();
    assert_eq!(after_dry, before, "a dry run changed something");

    // Apply: libvirt and the kernel show the planned pins.
    let out = numapin(&[
        "apply", "--format", "json", "--config", config, "--sample", "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcomes = json(&out);
    assert_eq!(outcomes.as_array().unwrap().len(), 3, "{outcomes}");
    for o in outcomes.as_array().unwrap() {
        assert_eq!(o["result"], "applied", "{o}");
    }
    for d in [&plain, &restr, &strictly] {
        let now = observe(&h, d);
        assert_eq!(now.pins.vcpus[&0], set("1"), "{}", d.name);
        assert_eq!(now.pins.emulator, set("1"), "{}", d.name);
        assert_eq!(now.threads[&0], "1", "{}: kernel affinity", d.name);
        for cpus in now.pins.iothreads.values() {
            assert_eq!(cpus, &set("1"), "{}", d.name);
        }
    }
    assert_eq!(
        observe(&h, &by_hand),
        before[3],
        "hand-pinned domain untouched"
    );

    // Applied pins are recognised as numapin's: the next run is a no-op.
    let again = numapin(&["apply", "--config", config, "--sample", "0"]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("nothing to change"),
        "{}",
        stdout(&again)
    );
    let status = numapin(&[
        "status", "--format", "json", "--config", config, "--sample", "0",
    ]);
    let status = json(&status);
    let plain_status = status["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == plain.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(plain_status["managed"], true, "{plain_status}");
    assert_eq!(plain_status["vcpu_nodes"], "0", "{plain_status}");
}

/// The real host, except that change call number `fail_at` is sent to
/// libvirt with a value it must refuse (a CPU or node that does not
/// exist): a real failure, at a chosen step, past the checks numapin makes
/// before a transaction starts.
struct FailAt {
    inner: LiveHost,
    fail_at: usize,
    calls: std::cell::Cell<usize>,
}

impl FailAt {
    fn this_one(&self) -> bool {
        let n = self.calls.get();
        self.calls.set(n + 1);
        n == self.fail_at
    }
}

impl DomainHost for FailAt {
    fn domain(&self, uuid: &str) -> Result<DomainRef, HostError> {
        self.inner.domain(uuid)
    }
    fn pins(&self, d: &DomainRef) -> Result<Pins, HostError> {
        self.inner.pins(d)
    }
    fn memory_binding(&self, d: &DomainRef) -> Result<MemoryBinding, HostError> {
        self.inner.memory_binding(d)
    }
    fn pin_vcpu(
        &self,
        d: &DomainRef,
        vcpu: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let cpus = if self.this_one() {
            set("4000")
        } else {
            cpus.clone()
        };
        self.inner.pin_vcpu(d, vcpu, &cpus, scope)
    }
    fn pin_emulator(&self, d: &DomainRef, cpus: &CpuSet, scope: Scope) -> Result<(), HostError> {
        let cpus = if self.this_one() {
            set("4000")
        } else {
            cpus.clone()
        };
        self.inner.pin_emulator(d, &cpus, scope)
    }
    fn pin_iothread(
        &self,
        d: &DomainRef,
        id: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let cpus = if self.this_one() {
            set("4000")
        } else {
            cpus.clone()
        };
        self.inner.pin_iothread(d, id, &cpus, scope)
    }
    fn set_memory_nodeset(
        &self,
        d: &DomainRef,
        nodeset: &NodeSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let nodeset = if self.this_one() {
            set("7")
        } else {
            nodeset.clone()
        };
        self.inner.set_memory_nodeset(d, &nodeset, scope)
    }
    fn recorded(&self, d: &DomainRef) -> Result<Recorded, HostError> {
        self.inner.recorded(d)
    }
    fn activity(&self, d: &DomainRef) -> Result<Option<String>, HostError> {
        self.inner.activity(d)
    }
    fn online_cpus(&self) -> Result<CpuSet, HostError> {
        self.inner.online_cpus()
    }
    fn is_persistent(&self, d: &DomainRef) -> Result<bool, HostError> {
        self.inner.is_persistent(d)
    }
    fn memory_per_node(&self, d: &DomainRef) -> Result<BTreeMap<u32, u64>, HostError> {
        self.inner.memory_per_node(d)
    }
    fn migrate_pages(&self, d: &DomainRef, from: &NodeSet, to: &NodeSet) -> Result<(), HostError> {
        // migrate_pages(2) to a node that does not exist fails in the kernel.
        let to = if self.this_one() {
            set("63")
        } else {
            to.clone()
        };
        self.inner.migrate_pages(d, from, &to)
    }
    fn cell_memory(&self, d: &DomainRef, cell: u32) -> Result<BTreeMap<u32, u64>, HostError> {
        self.inner.cell_memory(d, cell)
    }
    fn move_cell_memory(
        &self,
        d: &DomainRef,
        cell: u32,
        to: &BTreeMap<u32, u64>,
    ) -> Result<(), HostError> {
        // move_pages(2) to a node that does not exist fails in the kernel.
        let to = if self.this_one() {
            BTreeMap::from([(63, 1)])
        } else {
            to.clone()
        };
        self.inner.move_cell_memory(d, cell, &to)
    }
    fn vcpu_thread_affinity(&self, d: &DomainRef) -> Result<BTreeMap<u32, CpuSet>, HostError> {
        self.inner.vcpu_thread_affinity(d)
    }
}

fn move_to_cpu1(memory: Option<Action>) -> Vec<Action> {
    let mut steps = vec![
        Action::Emulatorpin { cpus: set("1") },
        Action::Iothreadpin {
            iothread: 1,
            cpus: set("1"),
        },
        Action::Vcpupin {
            vcpu: 0,
            cpus: set("1"),
        },
    ];
    steps.extend(memory);
    steps
}

fn run(
    h: &LiveHost,
    j: &Journal,
    d: &TestDomain,
    steps: &[Action],
    hook: &mut dyn StepHook,
) -> Outcome {
    transaction::run(h, j, &opts(), &domain_ref(h, d), None, steps, hook).unwrap()
}

#[test]
fn a_failure_at_each_step_leaves_the_domain_as_it_was() {
    let _s = serial();
    let restr = TestDomain::start("fail-each-restrictive", &restrictive());
    let free = TestDomain::start("fail-each-unbound", &unbound());
    let zero = set("0");
    let cases = [
        (
            &restr,
            move_to_cpu1(Some(Action::SetMemoryNodeset {
                nodeset: zero.clone(),
            })),
        ),
        (
            &free,
            move_to_cpu1(Some(Action::MigratePages {
                from: zero.clone(),
                to: zero.clone(),
                mib: 1,
            })),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    for (d, steps) in &cases {
        let before = observe(&host(), d);
        for k in 0..steps.len() {
            let h = FailAt {
                inner: host(),
                fail_at: k,
                calls: Default::default(),
            };
            let outcome = transaction::run(
                &h,
                &j,
                &opts(),
                &domain_ref(&h.inner, d),
                None,
                steps,
                &mut NoHook,
            )
            .unwrap();
            match outcome {
                Outcome::RolledBack {
                    failed_step,
                    restored,
                    undo_errors,
                    ..
                } => {
                    assert_eq!(failed_step, k + 1, "{}", d.name);
                    assert!(restored, "{} step {k}: {undo_errors:?}", d.name);
                }
                other => panic!("{} step {k}: {other:?}", d.name),
            }
            assert_eq!(
                observe(&h.inner, d),
                before,
                "{} after a failure at step {}",
                d.name,
                k + 1
            );
            assert!(j.pending().unwrap().is_empty());
        }
        // The same steps without an injected failure apply.
        let outcome = run(&host(), &j, d, steps, &mut NoHook);
        assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
        assert_eq!(observe(&host(), d).threads[&0], "1");
    }
}

#[test]
fn a_cpu_that_does_not_exist_is_never_sent_to_libvirt() {
    let _s = serial();
    let d = TestDomain::start("no-such-cpu", &unbound());
    let h = host();
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    let before = observe(&h, &d);
    let steps = vec![
        Action::Emulatorpin { cpus: set("1") },
        Action::Vcpupin {
            vcpu: 0,
            cpus: set("4000"),
        },
    ];
    let outcome = run(&h, &j, &d, &steps, &mut NoHook);
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.contains("CPU 4000")),
        "{outcome:?}"
    );
    assert_eq!(observe(&h, &d), before, "nothing changed, not even step 1");
}

#[test]
fn libvirt_refusing_a_strict_nodeset_change_rolls_back_the_pins() {
    let _s = serial();
    let d = TestDomain::start("strict-refused", &strict());
    let h = host();
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    let before = observe(&h, &d);
    let steps = vec![
        Action::Emulatorpin { cpus: set("1") },
        Action::Vcpupin {
            vcpu: 0,
            cpus: set("1"),
        },
        Action::SetMemoryNodeset { nodeset: set("0") },
    ];
    match run(&h, &j, &d, &steps, &mut NoHook) {
        Outcome::RolledBack {
            failed_step,
            error,
            restored,
            ..
        } => {
            assert_eq!(failed_step, 3);
            assert!(error.message.contains("strict"), "{error}");
            assert!(restored);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(observe(&h, &d), before);
}

#[test]
fn memory_steps_run_for_real() {
    let _s = serial();
    let restr = TestDomain::start("memory-restrictive", &restrictive());
    let free = TestDomain::start("memory-unbound", &unbound());
    let h = host();
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    let zero = set("0");
    let outcome = run(
        &h,
        &j,
        &restr,
        &move_to_cpu1(Some(Action::SetMemoryNodeset {
            nodeset: zero.clone(),
        })),
        &mut NoHook,
    );
    assert!(
        matches!(outcome, Outcome::Applied { steps: 4, .. }),
        "{outcome:?}"
    );
    let outcome = run(
        &h,
        &j,
        &free,
        &move_to_cpu1(Some(Action::MigratePages {
            from: zero.clone(),
            to: zero,
            mib: 1,
        })),
        &mut NoHook,
    );
    assert!(
        matches!(outcome, Outcome::Applied { steps: 4, .. }),
        "{outcome:?}"
    );
    let mem = numapin::apply::DomainHost::memory_per_node(&h, &domain_ref(&h, &free)).unwrap();
    assert!(mem.get(&0).is_some_and(|&m| m > 0), "{mem:?}");
}

/// A guest with two NUMA cells of different sizes, all RAM allocated at
/// start, so both blocks have resident pages.
fn two_cells() -> Spec {
    Spec {
        vcpus: 2,
        memory_mib: 160,
        extra: "<cpu><topology sockets='2' dies='1' cores='1' threads='1'/><numa>\
                <cell id='0' cpus='0' memory='64' unit='MiB'/>\
                <cell id='1' cpus='1' memory='96' unit='MiB'/></numa></cpu>\
                <memoryBacking><allocation mode='immediate'/></memoryBacking>"
            .into(),
        ..Spec::default()
    }
}

/// This host has one NUMA node, so no cell can change node; what can be
/// checked is that both cells' RAM blocks of a real QEMU are found (and
/// observed by the sampler), and that a real move_pages(2) of a block to
/// node 0 runs and verifies, through a transaction, and that a failing
/// one rolls back.
#[test]
fn guest_cells_ram_blocks_are_found_and_moved_for_real() {
    let _s = serial();
    let d = TestDomain::start("memory-cells", &two_cells());
    let h = host();
    let r = domain_ref(&h, &d);
    for (cell, mib) in [(0u32, 64u64), (1, 96)] {
        let mem = h.cell_memory(&r, cell).unwrap();
        let total: u64 = mem.values().sum();
        assert!(
            total > mib / 2 && total <= mib,
            "cell {cell}: {mem:?} for a {mib} MiB cell"
        );
    }
    let mut sampler = Sampler::new(h.libvirt.clone(), "/".into(), 1.0);
    let state = sampler.read(Duration::ZERO).unwrap();
    let o = &state.observations.domains[&d.name];
    assert_eq!(
        o.cell_memory_mib.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "{o:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    let steps = [
        Action::MoveCellMemory {
            cell: 1,
            to: "0".parse().unwrap(),
            mib: 1,
        },
        Action::MoveCellMemory {
            cell: 0,
            to: "0".parse().unwrap(),
            mib: 1,
        },
    ];
    let outcome = run(&h, &j, &d, &steps, &mut NoHook);
    assert!(
        matches!(outcome, Outcome::Applied { steps: 2, .. }),
        "{outcome:?}"
    );
    assert!(j.pending().unwrap().is_empty());

    // The second move is sent to a node the kernel does not have: it
    // fails, and the first is undone (back to node 0, where it was).
    let failing = FailAt {
        inner: host(),
        fail_at: 1,
        calls: std::cell::Cell::new(0),
    };
    let outcome = transaction::run(&failing, &j, &opts(), &r, None, &steps, &mut NoHook).unwrap();
    match &outcome {
        Outcome::RolledBack {
            failed_step,
            restored,
            ..
        } => {
            assert_eq!(*failed_step, 2);
            assert!(restored, "{outcome:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(j.pending().unwrap().is_empty());
    assert!(
        h.cell_memory(&r, 1)
            .unwrap()
            .get(&0)
            .is_some_and(|&m| m > 0)
    );
}

/// Destroys the domain before step `at`.
struct DestroyAt(usize, String);
impl StepHook for DestroyAt {
    fn before_step(&mut self, _d: &DomainRef, index: usize, _s: &Action) {
        if index == self.0 {
            common::virsh(&["destroy", &self.1]).unwrap();
        }
    }
}

#[test]
fn a_domain_destroyed_midway_is_reported_not_failed() {
    let _s = serial();
    let d = TestDomain::start("destroyed-midway", &unbound());
    let h = host();
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    let outcome = run(
        &h,
        &j,
        &d,
        &move_to_cpu1(None),
        &mut DestroyAt(2, d.name.clone()),
    );
    assert!(matches!(outcome, Outcome::Vanished { .. }), "{outcome:?}");
    assert!(!outcome.is_failure());
    assert!(j.pending().unwrap().is_empty(), "nothing left to roll back");
}

#[test]
fn a_domain_that_vanishes_between_plan_and_apply_does_not_stop_the_others() {
    let _s = serial();
    let stays = TestDomain::start("vanish-stays", &unbound());
    let goes = TestDomain::start("vanish-goes", &unbound());
    let tmp = tempfile::tempdir().unwrap();
    let config_path = isolated_config(tmp.path(), &[&stays, &goes], "");
    let config = numapin::config::Config::load(&config_path).unwrap();
    let h = host();
    let (state, plan) = plan_now(&h, &config);
    goes.destroy();
    let outcomes = apply_all(&h, &config, &plan, &state.refs());
    let by_name: BTreeMap<&str, &Outcome> = outcomes
        .iter()
        .map(|o| (o.name.as_str(), &o.outcome))
        .collect();
    assert!(
        matches!(by_name[goes.name.as_str()], Outcome::Vanished { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(by_name[stays.name.as_str()], Outcome::Applied { .. }),
        "{outcomes:?}"
    );
    assert_eq!(stays.vcpu_thread_cpus()[&0], "1");
}

/// The chaos soak's `operator_overwritten`: an operator pinned the
/// emulator between numapin's plan and its transaction, and the
/// transaction pinned it back. Now the transaction finds the live XML
/// changed since planning and leaves the domain untouched, and nothing of
/// it is recorded as numapin's.
#[test]
fn an_operators_pin_made_between_plan_and_apply_is_never_overwritten() {
    let _s = serial();
    let d = TestDomain::start("operator-between", &unbound());
    let tmp = tempfile::tempdir().unwrap();
    let config_path = isolated_config(tmp.path(), &[&d], "");
    let config = numapin::config::Config::load(&config_path).unwrap();
    let h = host();
    let (state, plan) = plan_now(&h, &config);
    let planned = plan.domains.iter().find(|p| p.name == d.name).unwrap();
    assert!(!planned.actions.is_empty(), "nothing planned: {planned:?}");
    common::virsh(&["emulatorpin", &d.name, "0", "--live"]).unwrap();
    let outcomes = apply_all(&h, &config, &plan, &state.refs());
    let outcome = &outcomes.iter().find(|o| o.name == d.name).unwrap().outcome;
    assert!(
        matches!(outcome, Outcome::Skipped { reason } if reason.contains("changed since it was planned")
            && reason.contains("emulator")),
        "{outcome:?}"
    );
    let emulator = common::virsh(&["emulatorpin", &d.name, "--live"]).unwrap();
    assert!(emulator.contains("*: 0"), "{emulator}");
    let state_dir = &config.apply.state_dir;
    assert!(
        Journal::open(state_dir)
            .unwrap()
            .pending()
            .unwrap()
            .is_empty()
    );
    let placements = Placements::open(state_dir).unwrap();
    let refs = state.refs();
    let dom = refs.iter().find(|r| r.name == d.name).unwrap();
    assert!(
        placements.recorded_of(dom).is_none(),
        "the operator's pin recorded as numapin's"
    );
}

/// The host as it is now, and the plan for it, as a daemon's cycle makes
/// them.
fn plan_now(
    h: &LiveHost,
    config: &numapin::config::Config,
) -> (numapin::live::LiveState, planner::Plan) {
    let mut sampler = Sampler::new(h.libvirt.clone(), "/".into(), 1.0);
    let state = sampler.read(Duration::ZERO).unwrap();
    let inputs = state.inputs();
    let plan = planner::plan(&PlanInput {
        topology: &state.topology,
        domains: &inputs,
        observations: &state.observations,
        config,
        rebalance_all: false,
        confirm: None,
    });
    (state, plan)
}

/// Applies `plan` with the journal and placements of `config`'s state dir.
fn apply_all(
    h: &LiveHost,
    config: &numapin::config::Config,
    plan: &planner::Plan,
    running: &[DomainRef],
) -> Vec<numapin::apply::DomainOutcome> {
    let j = Journal::open(&config.apply.state_dir).unwrap();
    let placements = Placements::open(&config.apply.state_dir).unwrap();
    numapin::apply::apply_plan(h, &j, &placements, &opts(), plan, running, &mut NoHook).unwrap()
}

fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    wait_for_or(what, timeout, done, String::new);
}

/// [`wait_for`], adding what `explain` says to the failure on a timeout.
fn wait_for_or(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= timeout {
            panic!("timed out waiting for {what}{}", explain());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attempted_steps(state_dir: &Path) -> usize {
    // `peek`, not `pending`: the test does not hold the state lock, and
    // `pending` tidies the apply's half-written record away under it.
    Journal::peek(state_dir)
        .ok()
        .and_then(|p| p.first().map(|r| r.attempted))
        .unwrap_or(0)
}

#[test]
fn sigkill_between_steps_then_a_restart_restores_the_domain() {
    let _s = serial();
    let d = TestDomain::start("sigkill", &unbound());
    let tmp = tempfile::tempdir().unwrap();
    let config = isolated_config(tmp.path(), &[&d], "");
    let state_dir = tmp.path().join("state");
    let h = host();
    let before = observe(&h, &d);
    let apply_log = tmp.path().join("apply.log");

    let mut child = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args([
            "apply",
            "--sample",
            "0",
            "--pause-between-steps-ms",
            "10000",
        ])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&apply_log).unwrap())
        .spawn()
        .unwrap();
    // Step 1 (emulatorpin) is done once the pause before step 2 begins:
    // the journal then says one step was started. Should it never be, what
    // the apply said is the first thing to know.
    wait_for_or(
        "the first step",
        Duration::from_secs(60),
        || attempted_steps(&state_dir) == 1 && observe(&h, &d).pins.emulator == set("1"),
        || {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            format!(
                "; the apply ({status}) said:\n{}\nthe domain is now {:?}",
                std::fs::read_to_string(&apply_log).unwrap_or_default(),
                observe(&h, &d)
            )
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let half = observe(&h, &d);
    assert_ne!(half, before, "killed mid-transaction: half applied");
    assert_eq!(half.threads, before.threads, "vCPUs not reached yet");

    let out = numapin(&["recover", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&d.name) && said.contains("rolled back"),
        "{said}"
    );
    assert_eq!(observe(&h, &d), before, "restored exactly");
    assert_eq!(attempted_steps(&state_dir), 0, "journal emptied");

    // A later apply does the whole change, in one go.
    let out = numapin(&[
        "apply",
        "--sample",
        "0",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.vcpu_thread_cpus()[&0], "1");
}

#[test]
fn a_second_numapin_is_refused_while_one_applies() {
    let _s = serial();
    let d = TestDomain::start("locked", &unbound());
    let tmp = tempfile::tempdir().unwrap();
    let config = isolated_config(tmp.path(), &[&d], "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_numapin"))
        .args(["apply", "--sample", "0", "--pause-between-steps-ms", "3000"])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_dir = tmp.path().join("state");
    // Any step attempted means the first numapin holds the lock (it is
    // released only when its transaction is done); waiting for exactly
    // one could miss a short window.
    wait_for("the first step", Duration::from_secs(20), || {
        attempted_steps(&state_dir) >= 1
    });
    let out = numapin(&[
        "apply",
        "--sample",
        "0",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("another numapin"));
    assert!(child.wait().unwrap().success());
}
