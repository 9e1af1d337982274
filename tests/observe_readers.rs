//! The observe readers against a tree captured from this machine (cgroup v1,
//! one node, a TCG domain), a hand-made cgroup v2 two-node tree, temporary
//! trees for broken and vanishing files, and a real process that exits.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use numapin::observe::cgroup::{self, CgroupVersion};
use numapin::observe::{ObserveError, node_stats, numa_maps, pid_file, proc_stat, threads};

const MIB: u64 = 1024 * 1024;
const SCOPE: &str = r"sys/fs/cgroup/machine.slice/machine-qemu\x2d1\x2dlab\x2dvm.scope";

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/proc")
        .join(rel)
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn nodes(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
    pairs.iter().copied().collect()
}

// --- captured from this machine ---------------------------------------------

fn this_machine() -> (PathBuf, u32) {
    let root = data("this-machine");
    let pid = pid_file::read(&root, "obs-cap").unwrap();
    (root, pid)
}

#[test]
fn this_machine_memory_from_numa_maps_and_the_v1_cgroup() {
    let (root, pid) = this_machine();
    let maps = numa_maps::read(&root, pid).unwrap();
    assert_eq!(maps.resident.keys().collect::<Vec<_>>(), [&0]);
    // Nothing binds memory on an unpinned domain.
    assert_eq!(maps.policies.keys().collect::<Vec<_>>(), ["default"]);
    assert!(maps.policies["default"].mappings > 100);

    let cg = cgroup::read(&root, pid).unwrap();
    assert_eq!(cg.version, CgroupVersion::V1);
    assert!(!cg.from_ancestor);
    // Without systemd, libvirt names the domain's cgroup `qemu-ID-NAME.libvirt-qemu`.
    let dir = cg.path.parent().unwrap();
    assert_eq!(
        dir.parent().unwrap(),
        root.join("sys/fs/cgroup/memory/machine")
    );
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("qemu-") && name.ends_with("-obs-cap.libvirt-qemu"),
        "{name}"
    );
    assert_eq!(cg.resident.keys().collect::<Vec<_>>(), [&0]);
    // numa_maps also counts the QEMU binary's and libraries' shared page
    // cache, which is charged to whoever read it first, not to the domain.
    assert!(
        cg.total_bytes() > 4 * MIB && cg.total_bytes() < maps.total_bytes(),
        "cgroup {} numa_maps {}",
        cg.total_bytes(),
        maps.total_bytes()
    );
}

#[test]
fn this_machine_threads() {
    let (root, pid) = this_machine();
    let tasks = threads::read(&root, pid).unwrap();
    assert_eq!(tasks[0].tid, pid);
    let vcpus: Vec<_> = tasks.iter().filter(|t| t.vcpu.is_some()).collect();
    let shown: Vec<_> = vcpus
        .iter()
        .map(|t| (t.vcpu.unwrap(), t.comm.as_str(), t.cpus_allowed.to_string()))
        .collect();
    assert_eq!(
        shown,
        [(0, "CPU 0/TCG", "0".into()), (1, "CPU 1/TCG", "1".into())]
    );
    let names: Vec<_> = tasks.iter().map(|t| t.comm.as_str()).collect();
    assert!(names.contains(&"IO iothread1"), "{names:?}");
    for t in &tasks {
        assert_eq!(t.mems_allowed.to_string(), "0");
        // The name comes from `stat`; it must agree with the `comm` file.
        let comm =
            fs::read_to_string(root.join(format!("proc/{pid}/task/{}/comm", t.tid))).unwrap();
        assert_eq!(comm.trim_end_matches('\n'), t.comm);
    }
    assert!(vcpus[0].cpu_time_ns > 0);
}

#[test]
fn this_machine_cpus_and_nodes() {
    let root = data("this-machine");
    let cpus = proc_stat::read(&root).unwrap();
    assert_eq!(cpus.keys().collect::<Vec<_>>(), [&0, &1]);
    // This machine is itself a guest, and its outer hypervisor steals time.
    assert!(cpus.values().all(|c| c.steal > 0 && c.steal < c.total));

    let stats = node_stats::read(&root).unwrap();
    assert_eq!(stats.keys().collect::<Vec<_>>(), [&0]);
    let n0 = stats[&0];
    assert!(n0.numa_hit > 0);
    assert_eq!((n0.numa_miss, n0.other_node), (0, 0));
    assert_eq!(n0.local_node, n0.numa_hit);
}

// --- hand-made cgroup v2, two nodes --------------------------------------------

fn lab() -> (PathBuf, u32) {
    let root = data("cgroup-v2");
    let pid = pid_file::read(&root, "lab-vm").unwrap();
    assert_eq!(pid, 4242);
    (root, pid)
}

#[test]
fn v2_memory_is_read_at_the_domain_scope() {
    let (root, pid) = lab();
    let cg = cgroup::read(&root, pid).unwrap();
    assert_eq!(cg.version, CgroupVersion::V2);
    assert_eq!(cg.path, root.join(SCOPE).join("memory.numa_stat"));
    assert!(!cg.from_ancestor);
    // anon + file_mapped (+ hugetlb): the 6 MiB of page cache on node 0
    // that nothing maps, kernel memory and the THP/LRU breakdowns are not
    // added.
    assert_eq!(cg.resident, nodes(&[(0, 809_500_672), (1, 270_811_136)]));
}

#[test]
fn v2_numa_maps_show_the_bound_guest_ram() {
    let (root, pid) = lab();
    let maps = numa_maps::read(&root, pid).unwrap();
    assert_eq!(
        maps.resident,
        nodes(&[(0, 201_439 * 4096), (1, 66_428 * 4096)])
    );
    let bound = maps.policies["bind:0-1"];
    assert_eq!((bound.mappings, bound.resident_bytes), (1, 1024 * MIB));
}

#[test]
fn v2_threads_and_their_loads() {
    let (root, pid) = lab();
    let tasks = threads::read(&root, pid).unwrap();
    let shown: Vec<_> = tasks
        .iter()
        .map(|t| (t.tid, t.vcpu, t.cpus_allowed.to_string(), t.last_cpu))
        .collect();
    assert_eq!(
        shown,
        [
            (4242, None, "0-1,3".into(), 0),
            (4246, None, "0-1,3".into(), 1),
            (4250, Some(0), "0-1".into(), 1),
            (4251, Some(1), "3".into(), 3),
        ]
    );
    assert!(tasks.iter().all(|t| t.mems_allowed.to_string() == "0-1"));

    // 1200 + 300 ticks of USER_HZ, which is 100 on every architecture
    // numapin runs on.
    assert_eq!(tasks[3].cpu_time_ns, 15_000_000_000);

    // Ten seconds later vCPU 0 used 5 s more and vCPU 1 nothing.
    let mut later = tasks.clone();
    later[2].cpu_time_ns += 5_000_000_000;
    let loads = threads::vcpu_loads(&tasks, &later, Duration::from_secs(10));
    assert_eq!(loads, [Some(0.5), Some(0.0)]);
}

#[test]
fn v2_offline_cpu_keeps_proc_stat_ids_and_steal() {
    let (root, _) = lab();
    let before = proc_stat::read(&root).unwrap();
    assert_eq!(before.keys().collect::<Vec<_>>(), [&0, &1, &3]);
    let mut after = before.clone();
    let cpu3 = after.get_mut(&3).unwrap();
    cpu3.total += 100;
    cpu3.steal += 30;
    let steal = proc_stat::steal_fractions(&before, &after);
    assert_eq!(steal, BTreeMap::from([(0, 0.0), (1, 0.0), (3, 0.3)]));
}

#[test]
fn v2_node_counters() {
    let (root, _) = lab();
    let stats = node_stats::read(&root).unwrap();
    assert_eq!(stats[&0].numa_foreign, stats[&1].numa_miss);
    let json = serde_json::to_value(stats[&1]).unwrap();
    assert_eq!(json["other_node"], 118_436);
}

// --- walking up, vanishing and broken trees ------------------------------------

fn v2_tree(leaf: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "run/libvirt/qemu/vm.pid", "77\n");
    write(
        dir.path(),
        "proc/77/cgroup",
        &format!("0::/machine.slice/vm.scope/libvirt/{leaf}\n"),
    );
    fs::create_dir_all(
        dir.path()
            .join("sys/fs/cgroup/machine.slice/vm.scope/libvirt/vcpu0"),
    )
    .unwrap();
    write(
        dir.path(),
        "sys/fs/cgroup/machine.slice/memory.numa_stat",
        "anon N0=8192\nfile N0=0\n",
    );
    dir
}

#[test]
fn a_scope_without_memory_accounting_reads_the_parent_and_says_so() {
    let tree = v2_tree("vcpu0");
    let cg = cgroup::read(tree.path(), 77).unwrap();
    assert!(cg.from_ancestor);
    assert_eq!(
        cg.path,
        tree.path()
            .join("sys/fs/cgroup/machine.slice/memory.numa_stat")
    );
    assert_eq!(cg.resident, nodes(&[(0, 8192)]));
}

#[test]
fn the_cgroup_root_is_never_read() {
    let tree = v2_tree("vcpu0");
    fs::remove_file(
        tree.path()
            .join("sys/fs/cgroup/machine.slice/memory.numa_stat"),
    )
    .unwrap();
    write(
        tree.path(),
        "sys/fs/cgroup/memory.numa_stat",
        "anon N0=1\nfile N0=1\n",
    );
    let e = cgroup::read(tree.path(), 77).unwrap_err();
    assert!(matches!(e, ObserveError::NoNumaStat { .. }), "{e}");
    write(tree.path(), "proc/77/cgroup", "0::/\n");
    let e = cgroup::read(tree.path(), 77).unwrap_err();
    assert!(matches!(e, ObserveError::NoNumaStat { .. }), "{e}");
}

#[test]
fn a_removed_domain_cgroup_is_gone_not_its_parent() {
    let tree = v2_tree("vcpu0");
    fs::remove_dir_all(tree.path().join("sys/fs/cgroup/machine.slice/vm.scope")).unwrap();
    let e = cgroup::read(tree.path(), 77).unwrap_err();
    assert!(e.is_gone(), "{e}");
}

#[test]
fn a_stopped_domain_is_gone_for_every_reader() {
    let tree = v2_tree("emulator");
    let root = tree.path();
    assert_eq!(pid_file::read(root, "vm").unwrap(), 77);
    // The pid file outlives the process by a moment; or there is none.
    fs::remove_dir_all(root.join("proc/77")).unwrap();
    assert!(pid_file::read(root, "vm").unwrap_err().is_gone());
    assert!(pid_file::read(root, "other").unwrap_err().is_gone());
    assert!(cgroup::read(root, 77).unwrap_err().is_gone());
    assert!(numa_maps::read(root, 77).unwrap_err().is_gone());
    assert!(threads::read(root, 77).unwrap_err().is_gone());
    // An exiting process has no address space left to print.
    write(root, "proc/77/numa_maps", "");
    assert!(numa_maps::read(root, 77).unwrap_err().is_gone());
}

#[test]
fn a_thread_exiting_mid_read_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let status = "Cpus_allowed_list:\t0-3\nMems_allowed_list:\t0\n";
    for tid in [5, 6] {
        write(
            root,
            &format!("proc/5/task/{tid}/stat"),
            &format!("{tid} (CPU {}/KVM) S {}", tid - 5, "0 ".repeat(40)),
        );
        write(root, &format!("proc/5/task/{tid}/status"), status);
    }
    // Thread 7 is listed but its files are already gone.
    fs::create_dir_all(root.join("proc/5/task/7")).unwrap();
    let tasks = threads::read(root, 5).unwrap();
    assert_eq!(tasks.iter().map(|t| t.tid).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(tasks[1].vcpu, Some(1));
}

#[test]
fn broken_files_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "run/libvirt/qemu/vm.pid", "not a pid\n");
    write(root, "proc/stat", "cpu  1 2 3 4\ncpu0 1 2 x 4\n");
    write(
        root,
        "sys/devices/system/node/node0/numastat",
        "numa_hit lots\n",
    );
    write(
        root,
        "proc/9/numa_maps",
        "7f00 default N0=many kernelpagesize_kB=4\n",
    );
    write(root, "proc/9/cgroup", "0::/vm.scope\n");
    write(
        root,
        "sys/fs/cgroup/vm.scope/memory.numa_stat",
        "anon N0=1\n",
    );
    let errors = [
        pid_file::read(root, "vm").unwrap_err(),
        proc_stat::read(root).unwrap_err(),
        node_stats::read(root).unwrap_err(),
        numa_maps::read(root, 9).unwrap_err(),
        cgroup::read(root, 9).unwrap_err(),
    ];
    for (e, file) in errors.iter().zip([
        "run/libvirt/qemu/vm.pid",
        "proc/stat",
        "sys/devices/system/node/node0/numastat",
        "proc/9/numa_maps",
        "sys/fs/cgroup/vm.scope/memory.numa_stat",
    ]) {
        let ObserveError::BadContent { path, .. } = e else {
            panic!("{file}: {e:?}")
        };
        assert_eq!(path, &root.join(file));
        assert!(!e.is_gone());
        assert!(e.to_string().contains(file), "{e}");
    }
}

// --- the live machine ---------------------------------------------------------

#[test]
fn a_real_process_that_exits_becomes_gone() {
    let root = Path::new("/");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    let tasks = threads::read(root, pid).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].comm, "sleep");
    assert!(!numa_maps::read(root, pid).unwrap().resident.is_empty());
    child.kill().unwrap();
    // A zombie still has its /proc entry but no address space.
    wait_until_zombie(pid);
    assert!(threads::read(root, pid).unwrap_err().is_gone());
    assert!(numa_maps::read(root, pid).unwrap_err().is_gone());
    child.wait().unwrap();
    for e in [
        threads::read(root, pid).unwrap_err(),
        numa_maps::read(root, pid).unwrap_err(),
        cgroup::read(root, pid).unwrap_err(),
    ] {
        assert!(e.is_gone(), "{e}");
    }
}

#[test]
fn this_host_reads_without_errors() {
    let root = Path::new("/");
    let cpus = proc_stat::read(root).unwrap();
    assert!(!cpus.is_empty());
    let _ = node_stats::read(root).unwrap();
    let me = std::process::id();
    assert!(threads::read(root, me).unwrap().iter().any(|t| t.tid == me));
}

fn wait_until_zombie(pid: u32) {
    for _ in 0..500 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        if stat.rsplit_once(") ").unwrap().1.starts_with('Z') {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{pid} did not exit");
}
