//! libvirtd restarted under a running numapin: calls fail as
//! "unavailable" (never hang), and the connection comes back by itself.
//! A file of its own: the restart would disturb tests running alongside,
//! and its tests take turns for the same reason.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Spec, TestDomain, URI, serial};
use numapin::host_error::ErrorKind;
use numapin::libvirt::Libvirt;

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .status()
        .is_ok_and(|s| s.success())
}

fn stop_libvirtd() {
    assert!(
        Command::new("pkill")
            .args(["-x", "libvirtd"])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while libvirtd_running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "libvirtd does not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_libvirtd() {
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/start-libvirt"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "libvirtd restarts");
}

#[test]
fn numapin_reconnects_after_libvirtd_restarts() {
    let _turn = serial();
    let d = TestDomain::start("restart", &Spec::default());
    numapin::libvirt::silence_default_error_printer();
    let lv = Libvirt::new(URI, Duration::from_secs(10));
    let before = lv.running_domains().unwrap();
    assert!(before.iter().any(|r| r.name == d.name));

    stop_libvirtd();
    let e = lv.running_domains().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    // While it is down, calls fail fast instead of hanging.
    let t = Instant::now();
    let e = lv.capabilities().unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(11), "{:?}", t.elapsed());

    start_libvirtd();
    // The same handle reconnects (after its backoff) and sees the domain
    // that kept running meanwhile.
    let start = Instant::now();
    let after = loop {
        match lv.running_domains() {
            Ok(list) => break list,
            Err(e) => {
                assert!(e.is_unreachable(), "{e}");
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no reconnection: {e}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    };
    let same = after
        .iter()
        .find(|r| r.name == d.name)
        .expect("still listed");
    assert_eq!(same.uuid, d.uuid());
    assert!(lv.pins(same).is_ok());
}

/// Regression (chaos soak, seed 7): the daemon died of SIGPIPE when
/// libvirt's client wrote to the socket of a libvirtd that had just gone.
/// The daemon ignores SIGPIPE, lives through libvirtd going away and
/// coming back several times, and cycles again afterwards.
#[test]
fn the_daemon_survives_libvirtd_restarts_under_it() {
    let _turn = serial();
    let d = TestDomain::start("restart-daemon", &Spec::default());
    let dir = tempfile::tempdir().unwrap();
    let config = common::isolated_config(
        dir.path(),
        &[&d],
        &format!(
            "[daemon]\ninterval_secs = 1\npid_file = \"{}\"\n",
            dir.path().join("numapin.pid").display()
        ),
    );
    // Started once its first cycle is logged.
    let mut daemon = Daemon::start(&config, &[], &[]);
    let good_cycles = |d: &Daemon| {
        d.log()
            .lines()
            .filter(|l| l.contains(" INFO ") && l.contains("cycle:"))
            .count()
    };

    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap();
    assert_ne!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE not ignored"
    );

    for round in 0..3 {
        stop_libvirtd();
        // Cycles meanwhile fail: each one writes to a dead connection.
        std::thread::sleep(Duration::from_secs(3));
        start_libvirtd();
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            panic!(
                "the daemon died in round {round}: {exit}; log:\n{}",
                daemon.log()
            );
        }
        let before = good_cycles(&daemon);
        daemon.wait_log("a good cycle", Duration::from_secs(60), |_| {
            good_cycles(&daemon) > before
        });
    }
}
