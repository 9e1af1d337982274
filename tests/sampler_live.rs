//! The live sampler against the real libvirtd: which loads a reading has
//! measured, and when it waits to measure them.

mod common;

use std::time::{Duration, Instant};

use common::{Spec, TestDomain, URI};
use numapin::libvirt::Libvirt;
use numapin::live::{LiveState, Sampler};

const WINDOW: Duration = Duration::from_millis(500);

fn sampler() -> Sampler {
    numapin::libvirt::silence_default_error_printer();
    Sampler::new(Libvirt::new(URI, Duration::from_secs(30)), "/".into(), 1.0)
}

/// The vCPU loads the reading measured for `d` (none: left to the
/// configured default).
fn loads(state: &LiveState, d: &TestDomain) -> Vec<f64> {
    state
        .observations
        .domains
        .get(&d.name)
        .map(|o| o.vcpu_load.clone())
        .unwrap_or_default()
}

fn assert_measured(state: &LiveState, d: &TestDomain, vcpus: usize) {
    let l = loads(state, d);
    assert_eq!(l.len(), vcpus, "{}: loads {l:?}", d.name);
    // A guest with no OS idles; a share of its boot may still be in the
    // window. Measured means a figure of this window, not the default.
    assert!(
        l.iter().all(|x| (0.0..=1.5).contains(x)),
        "{}: loads {l:?}",
        d.name
    );
}

#[test]
fn a_guest_started_since_the_last_reading_is_measured_before_its_first_plan() {
    let first = TestDomain::start("sampler-first", &Spec::default());
    let mut sampler = sampler();
    let state = sampler.read(WINDOW).unwrap();
    assert_measured(&state, &first, 2);

    // A guest that appears between two readings has no earlier figure: it
    // is read once more a window before, so its first plan goes by its
    // own load and not by the default of 1 per vCPU.
    let second = TestDomain::start(
        "sampler-second",
        &Spec {
            vcpus: 1,
            ..Spec::default()
        },
    );
    let t = Instant::now();
    let state = sampler.read(WINDOW).unwrap();
    assert!(t.elapsed() >= WINDOW, "no window for the new guest");
    assert_measured(&state, &second, 1);
    assert_measured(&state, &first, 2);

    // Nothing new: the reading does not wait (the window is long, so that
    // a slow libvirtd cannot pass for it).
    let long = Duration::from_secs(20);
    let t = Instant::now();
    let state = sampler.read(long).unwrap();
    assert!(
        t.elapsed() < long,
        "waited {:?} with no new guest",
        t.elapsed()
    );
    assert_measured(&state, &second, 1);

    // Without a window a new guest's load is left to the default.
    let third = TestDomain::start("sampler-third", &Spec::default());
    let state = sampler.read(Duration::ZERO).unwrap();
    assert!(
        loads(&state, &third).is_empty(),
        "{:?}",
        loads(&state, &third)
    );
}
