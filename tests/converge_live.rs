//! The background memory mover against the real libvirtd and real QEMU
//! processes. This machine has one NUMA node, so pages can only "move"
//! within node 0, where they already are: what is tested here is what the
//! mover reads and checks for real (the guest's RAM blocks from smaps, a
//! pause and a block job from libvirt, a domain that goes away) and that
//! it touches no page of a guest while it is held. Moves between nodes, a
//! restart of numapin in the middle of one included, run in the lab
//! (`lab/run busy-start converge-churn`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Spec, TestDomain, URI, serial, virsh};
use numapin::converge::{LivePages, Mover, PageHost, Step, Work};
use numapin::host_error::HostError;
use numapin::idset::NodeSet;
use numapin::libvirt::{DomainRef, Libvirt};

const MIB: u64 = 1024 * 1024;

/// Page moves asked for: (pid, start, end).
type Moves = Arc<Mutex<Vec<(u32, u64, u64)>>>;

/// The real host, with every page move recorded.
struct Recording {
    inner: LivePages,
    moves: Moves,
}

impl PageHost for Recording {
    fn hold(&self, d: &DomainRef, disks: &[String]) -> Result<Option<String>, HostError> {
        self.inner.hold(d, disks)
    }

    fn ranges(&self, d: &DomainRef, pid: u32, step: &Step) -> Result<Vec<(u64, u64)>, String> {
        self.inner.ranges(d, pid, step)
    }

    fn move_off(&self, pid: u32, start: u64, end: u64, to: &NodeSet) -> std::io::Result<u64> {
        self.moves.lock().unwrap().push((pid, start, end));
        self.inner.move_off(pid, start, end, to)
    }

    fn migrate(&self, pid: u32, from: &NodeSet, to: &NodeSet) -> std::io::Result<Option<u64>> {
        self.inner.migrate(pid, from, to)
    }
}

fn mover() -> (Mover, Moves) {
    let moves = Arc::new(Mutex::new(Vec::new()));
    let libvirt = Libvirt::new(URI, Duration::from_secs(10));
    let host = Recording {
        inner: LivePages::new(libvirt, "/".into()),
        moves: moves.clone(),
    };
    (Mover::start(Box::new(host), 256).unwrap(), moves)
}

fn work(d: &TestDomain, disks: &[&str]) -> Work {
    let id = virsh(&["domid", &d.name]).unwrap().trim().parse().unwrap();
    Work {
        domain: DomainRef {
            name: d.name.clone(),
            uuid: d.uuid(),
            id,
        },
        pid: d.pid(),
        disks: disks.iter().map(|s| s.to_string()).collect(),
        steps: vec![Step::Whole {
            from: NodeSet::new(),
            to: NodeSet::single(0),
        }],
        // More than one call's worth, so the RAM blocks are gone over.
        mib: 1024,
        harmed: false,
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn moved_bytes(moves: &Mutex<Vec<(u32, u64, u64)>>, pid: u32) -> u64 {
    moves
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.0 == pid)
        .map(|m| m.2 - m.1)
        .sum()
}

#[test]
fn a_paused_guest_s_memory_waits_and_goes_over_its_ram_once_resumed() {
    let _s = serial();
    let d = TestDomain::start("converge-paused", &Spec::default());
    virsh(&["suspend", &d.name]).unwrap();
    let (mover, moves) = mover();
    mover.retarget(vec![work(&d, &[])]);
    wait_for("the pause seen", Duration::from_secs(20), || {
        mover
            .progress()
            .domains
            .first()
            .and_then(|p| p.held.clone())
            .is_some_and(|h| h.contains("paused"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        moved_bytes(&moves, d.pid()),
        0,
        "a page range touched while paused"
    );

    virsh(&["resume", &d.name]).unwrap();
    assert!(
        mover.wait_idle(Duration::from_secs(60)),
        "{:?}",
        mover.progress()
    );
    // Every RAM block of the process was gone over: the guest's 64 MiB at
    // least (QEMU adds its ROMs and video RAM as blocks of their own).
    let covered = moved_bytes(&moves, d.pid());
    assert!(covered >= 64 * MIB, "{covered} bytes of RAM blocks");
    // One node: nothing is off target, so nothing moved or was charged.
    assert_eq!(mover.progress().moved_total_mib, 0);
}

#[test]
fn a_block_job_holds_the_move_until_it_ends() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    // Random data, so a copy throttled to 1 MiB/s runs for a minute.
    let disk = tmp.path().join("disk.img");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&disk, data).unwrap();
    let d = TestDomain::start(
        "converge-blockjob",
        &Spec {
            vcpus: 1,
            devices: format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                disk.display()
            ),
            ..Spec::default()
        },
    );
    let copy = tmp.path().join("copy.img");
    virsh(&[
        "blockcopy",
        &d.name,
        "vda",
        copy.to_str().unwrap(),
        "--bandwidth",
        "1",
    ])
    .unwrap();
    let (mover, moves) = mover();
    mover.retarget(vec![work(&d, &["vda"])]);
    wait_for("the job seen", Duration::from_secs(20), || {
        mover
            .progress()
            .domains
            .first()
            .and_then(|p| p.held.clone())
            .is_some_and(|h| h.contains("block copy on vda"))
    });
    assert_eq!(
        moved_bytes(&moves, d.pid()),
        0,
        "a page range touched under a job"
    );

    virsh(&["blockjob", &d.name, "vda", "--abort"]).unwrap();
    assert!(
        mover.wait_idle(Duration::from_secs(60)),
        "{:?}",
        mover.progress()
    );
    assert!(moved_bytes(&moves, d.pid()) >= 64 * MIB);
}

#[test]
fn a_guest_that_stops_mid_way_is_dropped_without_error() {
    let _s = serial();
    let d = TestDomain::start("converge-gone", &Spec::default());
    virsh(&["suspend", &d.name]).unwrap();
    let (mover, _) = mover();
    mover.retarget(vec![work(&d, &[])]);
    wait_for("the pause seen", Duration::from_secs(20), || {
        mover
            .progress()
            .domains
            .first()
            .is_some_and(|p| p.held.is_some())
    });
    d.destroy();
    // Checked again after the hold: libvirt says it is gone.
    assert!(
        mover.wait_idle(Duration::from_secs(30)),
        "{:?}",
        mover.progress()
    );
    assert_eq!(mover.progress().moved_total_mib, 0);
}
