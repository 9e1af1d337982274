//! The walk cadence on hand-made trees: a QEMU process with two guest
//! cells of 64 and 96 MiB (smaps cut from a real QEMU 7.2, as in
//! `observe::ram_blocks`), with or without a v1 memory cgroup of its own.

use std::path::Path;

use super::*;
use crate::idset::CpuSet;

const PID: u32 = 4242;
const CGROUP_DIR: &str = "sys/fs/cgroup/memory/machine/qemu-1-vm.libvirt-qemu";

const SMAPS: &str = "\
55d1c0a00000-55d1c0e5c000 r--p 00000000 fe:01 1835226                    /usr/bin/qemu-system-x86_64
Size:               4464 kB
VmFlags: rd mr mw me sd
7fb2cdc00000-7fb2d3c00000 rw-p 00000000 00:00 0 
Size:              98304 kB
VmFlags: rd wr mr mw me dc ac dd hg mg
7fb2d3e00000-7fb2d7e00000 rw-p 00000000 00:00 0 
Size:              65536 kB
VmFlags: rd wr mr mw me dc ac dd hg mg
";

/// numa_maps with cell 0 (the 64 MiB block) on node `n0` and cell 1 on
/// node 1, `mib1` MiB of it.
fn numa_maps(n0: u32, mib1: u64) -> String {
    format!(
        "55d1c0a00000 default file=/usr/bin/qemu-system-x86_64 mapped=256 N0=256 kernelpagesize_kB=4\n\
         7fb2cdc00000 default anon={p1} dirty={p1} N1={p1} kernelpagesize_kB=4\n\
         7fb2d3e00000 default anon=16384 dirty=16384 N{n0}=16384 kernelpagesize_kB=4\n",
        p1 = mib1 * 256
    )
}

fn cells() -> Vec<GuestCell> {
    [(0, 64 * 1024), (1, 96 * 1024)]
        .into_iter()
        .map(|(id, memory_kib)| GuestCell {
            id,
            cpus: CpuSet::default(),
            memory_kib,
            distances: Default::default(),
        })
        .collect()
}

struct Tree(tempfile::TempDir);

impl Tree {
    fn new(cgroup: bool) -> Self {
        let t = Tree(tempfile::tempdir().unwrap());
        t.write("smaps", SMAPS);
        t.write("numa_maps", &numa_maps(0, 96));
        t.set_resident_mib(164);
        if cgroup {
            t.write(
                "cgroup",
                "7:memory:/machine/qemu-1-vm.libvirt-qemu/vcpu0\n0::/\n",
            );
            t.set_cgroup_mib(&[(0, 64), (1, 96)]);
        } else {
            // A v2 cgroup without memory accounting (its directory is
            // there: a missing one would mean the domain stopped).
            t.write("cgroup", "0::/user.slice\n");
            std::fs::create_dir_all(t.root().join("sys/fs/cgroup/user.slice")).unwrap();
        }
        t
    }

    fn root(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, file: &str, text: &str) {
        let dir = self.root().join(format!("proc/{PID}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    fn set_resident_mib(&self, mib: u64) {
        let pages = mib * (1 << 20) / procfs::page_size();
        self.write("statm", &format!("100000 {pages} 100 10 0 50000 0\n"));
    }

    fn set_cgroup_mib(&self, nodes: &[(u32, u64)]) {
        let dir = self.root().join(CGROUP_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let pages = |mib: u64| mib * (1 << 20) / procfs::page_size();
        let total: u64 = nodes.iter().map(|&(_, m)| pages(m)).sum();
        let per_node: String = nodes
            .iter()
            .map(|&(n, m)| format!(" N{n}={}", pages(m)))
            .collect();
        std::fs::write(
            dir.join("memory.numa_stat"),
            format!("total={total}{per_node}\nhierarchical_total={total}{per_node}\n"),
        )
        .unwrap();
    }
}

fn key() -> (String, u32) {
    ("6f1c9a52-1d5e-4c1a-9d8e-1a2b3c4d5e6f".into(), 1)
}

fn read(w: &mut MemoryWalks, t: &Tree, cells: &[GuestCell], at: Instant) -> DomainMemory {
    w.read(t.root(), &key(), PID, cells, at).unwrap()
}

#[test]
fn a_guest_with_cells_is_walked_when_first_seen_then_its_figures_reused() {
    let t = Tree::new(true);
    let mut w = MemoryWalks::new(WALK_REFRESH);
    let t0 = Instant::now();
    let first = read(&mut w, &t, &cells(), t0);
    assert!(first.walked);
    assert_eq!(first.cell_memory_mib[&0], BTreeMap::from([(0, 64)]));
    assert_eq!(first.cell_memory_mib[&1], BTreeMap::from([(1, 96)]));
    // The guest's pages move on the host (numa_maps says so) but the
    // cgroup's per-node figures do not show it: no walk, the cached
    // figures stand.
    t.write("numa_maps", &numa_maps(1, 96));
    let later = read(&mut w, &t, &cells(), t0 + Duration::from_secs(30));
    assert!(!later.walked);
    assert_eq!(later.cell_memory_mib, first.cell_memory_mib);
    assert_eq!(later.memory_mib, BTreeMap::from([(0, 64), (1, 96)]));
}

#[test]
fn a_planned_move_the_refresh_period_or_new_cells_walk_again() {
    let t = Tree::new(true);
    let mut w = MemoryWalks::new(Duration::from_secs(600));
    let t0 = Instant::now();
    assert!(read(&mut w, &t, &cells(), t0).walked);
    t.write("numa_maps", &numa_maps(1, 96));

    // A move is planned: walked every reading while it is wanted.
    w.want(BTreeSet::from([key().0]));
    for s in [1, 2] {
        let m = read(&mut w, &t, &cells(), t0 + Duration::from_secs(s));
        assert!(m.walked, "reading {s}");
        assert_eq!(m.cell_memory_mib[&0], BTreeMap::from([(1, 64)]));
    }
    w.want(BTreeSet::new());
    assert!(!read(&mut w, &t, &cells(), t0 + Duration::from_secs(3)).walked);

    // The refresh period, counted from the last walk (at 2 s).
    t.write("numa_maps", &numa_maps(0, 96));
    assert!(!read(&mut w, &t, &cells(), t0 + Duration::from_secs(601)).walked);
    let m = read(&mut w, &t, &cells(), t0 + Duration::from_secs(602));
    assert!(m.walked);
    assert_eq!(m.cell_memory_mib[&0], BTreeMap::from([(0, 64)]));

    // Other cells (a new definition of the same run): walked at once,
    // and finding no block of the new size says so.
    let mut other = cells();
    other[1].memory_kib = 128 * 1024;
    let m = read(&mut w, &t, &other, t0 + Duration::from_secs(603));
    assert!(m.walked && m.no_cell_blocks && m.cell_memory_mib.is_empty());
    let m = read(&mut w, &t, &other, t0 + Duration::from_secs(604));
    assert!(!m.walked && m.no_cell_blocks, "not looked for every cycle");
}

#[test]
fn drift_in_the_cheap_figures_walks_again_and_small_growth_rescales() {
    let t = Tree::new(true);
    let mut w = MemoryWalks::new(WALK_REFRESH);
    let t0 = Instant::now();
    read(&mut w, &t, &cells(), t0);
    // 8 MiB more on node 1 (5%): reused, rescaled by 168/160.
    t.set_cgroup_mib(&[(0, 64), (1, 104)]);
    let m = read(&mut w, &t, &cells(), t0 + Duration::from_secs(1));
    assert!(!m.walked);
    assert_eq!(m.cell_memory_mib[&0], BTreeMap::from([(0, 67)]));
    assert_eq!(m.cell_memory_mib[&1], BTreeMap::from([(1, 101)]));
    assert_eq!(m.memory_mib, BTreeMap::from([(0, 64), (1, 104)]));
    // 32 MiB moved from node 0 to node 1 with the total unchanged (20%):
    // walked.
    t.set_cgroup_mib(&[(0, 32), (1, 128)]);
    t.write("numa_maps", &numa_maps(1, 96));
    let m = read(&mut w, &t, &cells(), t0 + Duration::from_secs(2));
    assert!(m.walked);
    assert_eq!(m.cell_memory_mib[&0], BTreeMap::from([(1, 64)]));
}

#[test]
fn without_a_cgroup_of_its_own_numa_maps_follows_the_same_cadence() {
    let t = Tree::new(false);
    let mut w = MemoryWalks::new(WALK_REFRESH);
    let t0 = Instant::now();
    let one_cell = &cells()[..1];
    let m = read(&mut w, &t, one_cell, t0);
    assert!(m.walked);
    assert_eq!(m.memory_mib, BTreeMap::from([(0, 65), (1, 96)]));
    assert!(m.cell_memory_mib.is_empty(), "one cell: no cell figures");
    // Resident size up 5%: reused and rescaled.
    t.set_resident_mib(172);
    let m = read(&mut w, &t, one_cell, t0 + Duration::from_secs(1));
    assert!(!m.walked);
    assert_eq!(m.memory_mib, BTreeMap::from([(0, 68), (1, 101)]));
    // Up by a third: walked.
    t.set_resident_mib(220);
    assert!(read(&mut w, &t, one_cell, t0 + Duration::from_secs(2)).walked);
}

#[test]
fn a_guest_without_cells_under_its_own_cgroup_is_never_walked() {
    let t = Tree::new(true);
    // Its page tables could not be read: nothing tries.
    t.write("numa_maps", "garbage\n");
    t.write("smaps", "garbage\n");
    let mut w = MemoryWalks::new(WALK_REFRESH);
    w.want(BTreeSet::from([key().0]));
    let m = read(&mut w, &t, &cells()[..1], Instant::now());
    assert!(!m.walked);
    assert_eq!(m.memory_mib, BTreeMap::from([(0, 64), (1, 96)]));
}

#[test]
fn stopped_runs_are_forgotten() {
    let t = Tree::new(true);
    let mut w = MemoryWalks::new(WALK_REFRESH);
    let t0 = Instant::now();
    read(&mut w, &t, &cells(), t0);
    w.retain(&BTreeSet::new());
    assert!(read(&mut w, &t, &cells(), t0 + Duration::from_secs(1)).walked);
}

#[test]
fn drift_counts_moved_memory_once() {
    let a = BTreeMap::from([(0, 100), (1, 100)]);
    assert_eq!(drift(&a, &a), 0.0);
    assert_eq!(drift(&a, &BTreeMap::from([(0, 80), (1, 120)])), 0.1);
    assert_eq!(drift(&a, &BTreeMap::from([(0, 100), (1, 150)])), 0.2);
    assert_eq!(drift(&BTreeMap::new(), &BTreeMap::new()), 0.0);
}
