//! libvirtd restarted under a running numapin: calls fail as
//! "unavailable" (never hang), and the connection comes back by itself.
//! A file of its own: the restart would disturb tests running alongside.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Spec, TestDomain, URI};
use numapin::host_error::ErrorKind;
use numapin::libvirt::Libvirt;

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn numapin_reconnects_after_libvirtd_restarts() {
    let d = TestDomain::start("restart", &Spec::default());
    numapin::libvirt::silence_default_error_printer();
    let lv = Libvirt::new(URI, Duration::from_secs(10));
    let before = lv.running_domains().unwrap();
    assert!(before.iter().any(|r| r.name == d.name));

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
    let e = lv.running_domains().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    // While it is down, calls fail fast instead of hanging.
    let t = Instant::now();
    let e = lv.capabilities().unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(11), "{:?}", t.elapsed());

    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/start-libvirt"))
        .status()
        .unwrap();
    assert!(status.success(), "libvirtd restarts");
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
